"""``binlog`` source: MariaDB/MySQL row-based binary log capture in pure Python (no JVM)."""

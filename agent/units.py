"""Human-friendly durations ("30s", "5m") and sizes ("512MiB") for the config."""
from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_FACTORS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)


def parse_duration(value) -> float:
    """Seconds from a number or a string such as "250ms", "30s", "5m", "2h"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"expected a duration such as 30s, 5m or 2h, found {value!r}")
    return float(match.group(1)) * _DURATION_FACTORS[match.group(2)]


def parse_size(value) -> int:
    """Bytes from a number or a string such as "500MB" or "2GiB" (both powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"expected a size such as 500MB or 2GiB, found {value!r}")
    unit = (match.group(2) or "B").upper().replace("I", "")
    power = {"B": 0, "KB": 1, "MB": 2, "GB": 3, "TB": 4}[unit]
    return int(float(match.group(1)) * 1024 ** power)

#!/usr/bin/env bash
# The one test command (README, CI): scripts/test.sh [--setup-services] [pytest args...]
#
#  1. creates .venv if missing and installs the package with its test extras (again only
#     when setup.cfg / pyproject.toml changed since the last install);
#  2. checks that the local PostgreSQL and MariaDB are fit for log-based capture
#     (wal_level=logical; row-format binlog with full images and metadata). Only with
#     --setup-services (or OUTPOST_SETUP_SERVICES=1; .ci/run passes the flag) and as root
#     does it change them: it writes a MariaDB config file, starts them if they are down,
#     restarts them when a setting is not live yet, and apt-installs Chromium for the
#     status-page test. Without the flag nothing is touched (this may be a server next to
#     a production ERP): an unfit service ends the run with what to set or which flag to
#     pass. OUTPOST_SKIP_DB_SETUP=1 skips the check too (the log-capture tests then fail);
#  3. runs pytest with the given arguments (two workers unless -n is given) and exits with its status.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}

say() { echo "test.sh: $*" >&2; }

wait_for() {  # wait_for SECONDS WHAT COMMAND...
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq "$((seconds * 2))"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    say "$what did not come up within ${seconds}s"
    return 1
}

# ---------------------------------------------------------------- 1. virtualenv
ensure_venv() {
    if [ ! -x .venv/bin/python ]; then
        say "creating .venv"
        "$PYTHON" -m venv .venv
    fi
    local stamp=.venv/.outpost-deps want
    want=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing outpost with extras test,postgres,mysql,debezium"
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,postgres,mysql,debezium]'
        echo "$want" >"$stamp"
    fi
    # the install built the Avro encoders; a schema edited since then needs them again
    .venv/bin/python -m agent.avro_codegen >/dev/null
}

# ---------------------------------------------------------------- 2a. PostgreSQL
pg_sql() { psql -h 127.0.0.1 -U postgres -d postgres -XAtqc "$1"; }

setup_postgres() {
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n1)
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        say "starting PostgreSQL $version"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
        wait_for 60 PostgreSQL pg_isready -q -h 127.0.0.1 -p 5432
    fi
    if [ "$(pg_sql 'show wal_level')" != logical ]; then
        say "PostgreSQL: wal_level=logical, restarting"
        pg_sql 'ALTER SYSTEM SET wal_level = logical'
        pg_ctlcluster --skip-systemctl-redirect "$version" main restart
        wait_for 60 PostgreSQL pg_isready -q -h 127.0.0.1 -p 5432
    fi
    say "PostgreSQL: wal_level=$(pg_sql 'show wal_level')"
}

# ---------------------------------------------------------------- 2b. MariaDB
MARIADB_CNF_DIR=/etc/mysql/mariadb.conf.d
MARIADB_CNF=$MARIADB_CNF_DIR/99-outpost.cnf
# binlog_row_metadata=FULL: mysql-replication >= 1.0 reads column names from it.
MARIADB_SETTINGS='[mysqld]
server_id = 1
log_bin = mysql-bin
binlog_format = ROW
binlog_row_image = FULL
binlog_row_metadata = FULL'
MARIADB_WANT='1	ROW	FULL	FULL	1'

maria_sql() { mariadb --protocol=tcp -h 127.0.0.1 -P 3306 -u root -N -B -e "$1"; }
maria_up() { mariadb-admin --protocol=tcp -h 127.0.0.1 -P 3306 -u root ping; }

start_mariadb() {
    install -d -o mysql -g mysql /run/mysqld
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    wait_for 60 MariaDB maria_up
}

stop_mariadb() {
    mariadb-admin --protocol=tcp -h 127.0.0.1 -P 3306 -u root shutdown 2>/dev/null \
        || start-stop-daemon --stop --oknodo --pidfile /run/mysqld/mysqld.pid --retry TERM/60/KILL/5
    # shutdown returns before the process is gone; the port must be free to restart.
    for _ in $(seq 120); do
        [ -e /run/mysqld/mysqld.pid ] && kill -0 "$(cat /run/mysqld/mysqld.pid)" 2>/dev/null || return 0
        sleep 0.5
    done
}

setup_mariadb() {
    mkdir -p "$MARIADB_CNF_DIR"
    if [ "$(cat "$MARIADB_CNF" 2>/dev/null)" != "$MARIADB_SETTINGS" ]; then
        printf '%s\n' "$MARIADB_SETTINGS" >"$MARIADB_CNF"
    fi
    # Debian's stock my.cnf includes this directory; a minimal one (as on some CI images)
    # does not, and then our file would be ignored.
    if ! grep -Eq '^[[:space:]]*!includedir[[:space:]]+/etc/mysql/mariadb.conf.d/?[[:space:]]*$' /etc/mysql/my.cnf; then
        say "MariaDB: adding !includedir $MARIADB_CNF_DIR/ to /etc/mysql/my.cnf"
        printf '\n!includedir %s/\n' "$MARIADB_CNF_DIR" >>/etc/mysql/my.cnf
    fi
    if ! maria_up >/dev/null 2>&1; then
        say "starting MariaDB"
        start_mariadb
    fi
    local have
    have=$(maria_sql 'SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata, @@server_id')
    if [ "$have" != "$MARIADB_WANT" ]; then
        say "MariaDB: enabling the row-format binlog, restarting"
        stop_mariadb
        start_mariadb
        have=$(maria_sql 'SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata, @@server_id')
        if [ "$have" != "$MARIADB_WANT" ]; then
            say "MariaDB settings still wrong after restart: $have"
            return 1
        fi
    fi
    say "MariaDB: log_bin=ON binlog_format=ROW binlog_row_image=FULL"
}

# ---------------------------------------------------------------- 2c. check only
# What is wrong with the services as they run now, one line each (nothing is changed).
services_unfit() {
    local have
    if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
        echo "PostgreSQL is not answering on 127.0.0.1:5432 (start it, trust auth for user postgres)"
    elif [ "$(pg_sql 'show wal_level' 2>/dev/null)" != logical ]; then
        echo "PostgreSQL: wal_level is '$(pg_sql 'show wal_level' 2>/dev/null)', needs logical" \
             "(ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL)"
    fi
    if ! maria_up >/dev/null 2>&1; then
        echo "MariaDB is not answering on 127.0.0.1:3306 (start it, user root with an empty password)"
    else
        have=$(maria_sql 'SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata, @@server_id' 2>/dev/null || true)
        if [ "$have" != "$MARIADB_WANT" ]; then
            echo "MariaDB: log_bin/binlog_format/binlog_row_image/binlog_row_metadata/server_id are" \
                 "'$(echo "$have" | tr '\t' ' ')', need '1 ROW FULL FULL 1' (put these lines in" \
                 "$MARIADB_CNF and restart MariaDB: $(echo "$MARIADB_SETTINGS" | tr '\n' ' '))"
        fi
    fi
}

# ---------------------------------------------------------------- main
SETUP_SERVICES=${OUTPOST_SETUP_SERVICES:-0}
if [ "${1:-}" = --setup-services ]; then
    SETUP_SERVICES=1
    shift
fi

ensure_venv
if [ "${OUTPOST_SKIP_DB_SETUP:-0}" = 1 ]; then
    say "OUTPOST_SKIP_DB_SETUP=1: leaving PostgreSQL and MariaDB as they are, unchecked"
elif [ "$SETUP_SERVICES" = 1 ]; then
    if [ "$(id -u)" != 0 ]; then
        say "--setup-services needs root (it edits the MariaDB config and restarts the databases)"
        exit 2
    fi
    setup_postgres
    setup_mariadb
    # headless Chromium for the status-page test (tests/test_http_endpoints.py); idempotent
    if [ ! -x /usr/bin/chromium ]; then
        say "installing chromium and chromium-driver (status page test)"
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver
    fi
else
    unfit=$(services_unfit)
    if [ -n "$unfit" ]; then
        say "the local databases are not fit for the tests, and nothing was changed:"
        printf '%s\n' "$unfit" | sed 's/^/test.sh:   - /' >&2
        say "fix them by hand, or let this script do it (as root; it edits /etc/mysql and restarts"
        say "PostgreSQL and MariaDB): scripts/test.sh --setup-services  (or OUTPOST_SETUP_SERVICES=1)"
        exit 2
    fi
    say "PostgreSQL and MariaDB are fit for log-based capture (checked, not changed)"
    if [ ! -x /usr/bin/chromium ]; then
        say "chromium is not installed: the status-page test is skipped (--setup-services installs it)"
    fi
fi

# Two workers (pytest-xdist): most tests wait on processes, brokers and databases rather
# than compute, so two at a time halve the wall time on two cores. Each worker has its own
# broker; every test has its own databases; the Debezium tests share one worker (see
# tests/conftest.py). OUTPOST_TEST_WORKERS=0 runs them one by one.
workers=(-n "${OUTPOST_TEST_WORKERS:-2}" --dist loadgroup)
for arg in "$@"; do
    case $arg in -n|-n*|--numprocesses*|-p) workers=() ;; esac
done
set +e
.venv/bin/python -m pytest "${workers[@]}" "$@"
status=$?
set -e
exit "$status"

# Sourced by scripts/test and scripts/bench: installs PostgreSQL and MariaDB when they are
# missing and starts them when they do not accept connections (trust logins on loopback, root on
# MariaDB without a password), so both commands work on a fresh Debian machine.

readonly PG_HOST=127.0.0.1
readonly PG_PORT=5432
readonly MARIADB_HOST=127.0.0.1
readonly MARIADB_PORT=3306
readonly SERVICE_START_TIMEOUT_SECONDS=60

source "$(dirname "${BASH_SOURCE[0]}")/packages.sh"

# PostgreSQL and MariaDB; MariaDB's own binaries also start private instances (tests, benchmark).
require pg_ctlcluster postgresql
require pg_isready postgresql-client
require psql postgresql-client
require /usr/sbin/mariadbd mariadb-server
require mariadb-install-db mariadb-server  # the MySQL tests' private MariaDB instances
require mariadb mariadb-client
require mariadb-admin mariadb-client
# wait_for DESCRIPTION COMMAND...: polls COMMAND until it succeeds or the timeout passes.
wait_for() {
    local description=$1
    shift
    local deadline=$((SECONDS + SERVICE_START_TIMEOUT_SECONDS))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            die "$description did not come up within ${SERVICE_START_TIMEOUT_SECONDS}s"
        fi
        sleep 0.5
    done
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL: started when it does not accept connections; trust auth on loopback for the tests.
# ---------------------------------------------------------------------------------------------
pg_accepting() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" >/dev/null 2>&1; }
pg_login_works() {
    psql -w -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1
}

if pg_accepting; then
    log "PostgreSQL is accepting connections on $PG_HOST:$PG_PORT"
else
    pg_version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -z $pg_version ]]; then
        pg_version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
        log "creating PostgreSQL $pg_version cluster main"
        pg_createcluster "$pg_version" main
    elif [[ ! -d /etc/postgresql/$pg_version/main ]]; then
        log "creating PostgreSQL $pg_version cluster main"
        pg_createcluster "$pg_version" main
    fi
    log "starting PostgreSQL $pg_version"
    pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start || true
    wait_for "PostgreSQL on $PG_HOST:$PG_PORT" pg_accepting
    log "PostgreSQL is up"
fi

if ! pg_login_works; then
    # A fresh Debian cluster asks for a password over TCP; the tests log in as postgres without one.
    pg_hba=$(psql -w -U postgres -d postgres -Atqc 'SHOW hba_file' 2>/dev/null \
        || su postgres -c "psql -Atqc 'SHOW hba_file'")
    log "allowing trust logins from loopback in $pg_hba"
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$pg_hba"
    su postgres -c "psql -Atqc 'SELECT pg_reload_conf()'" >/dev/null
    wait_for "a PostgreSQL login as postgres on $PG_HOST:$PG_PORT" pg_login_works
fi

# ---------------------------------------------------------------------------------------------
# MariaDB: started when it does not accept connections; root logs in over TCP without a password.
# ---------------------------------------------------------------------------------------------
mariadb_login_works() {
    mariadb --connect-timeout=2 -h "$MARIADB_HOST" -P "$MARIADB_PORT" -uroot -e 'SELECT 1' >/dev/null 2>&1
}
mariadb_alive() {
    mariadb-admin --connect-timeout=2 -h "$MARIADB_HOST" -P "$MARIADB_PORT" -uroot ping >/dev/null 2>&1
}

if mariadb_alive; then
    log "MariaDB is accepting connections on $MARIADB_HOST:$MARIADB_PORT"
else
    log "starting MariaDB"
    install -d -o mysql -g mysql /run/mysqld
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        log "initialising the MariaDB data directory"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    fi
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    wait_for "MariaDB on $MARIADB_HOST:$MARIADB_PORT" mariadb_alive
    log "MariaDB is up"
fi

if ! mariadb_login_works; then
    # A fresh Debian install lets root in through the unix socket only.
    log "allowing MariaDB root over TCP without a password"
    mariadb -uroot -e "ALTER USER root@localhost IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('')"
    wait_for "a MariaDB login as root on $MARIADB_HOST:$MARIADB_PORT" mariadb_login_works
fi

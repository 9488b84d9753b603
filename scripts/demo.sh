#!/usr/bin/env bash
# make demo: a throwaway PostgreSQL, pgcanary in front of it, a short pgbench through it, and the
# admin endpoints' view of what happened. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/cluster.sh
source scripts/lib/cluster.sh

BIN=${PGCANARY_BIN:-bin/pgcanary}
[ -x "$BIN" ] || go build -o "$BIN" ./cmd/pgcanary
TMP=$(mktemp -d /tmp/pgcanary-demo.XXXXXX)
chmod 755 "$TMP"
PGPORT=$(free_port)
PROXYPORT=$(free_port)
ADMINPORT=$(free_port)
PROXY_PID=

cleanup() {
	[ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null && wait "$PROXY_PID" 2>/dev/null || true
	cluster_stop "$TMP"
	rm -rf "$TMP"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Starting a throwaway PostgreSQL on 127.0.0.1:$PGPORT"
cluster_start "$TMP" "$PGPORT"
BINDIR=$(pg_bindir)
PGBENCH=$(command -v pgbench || echo "$BINDIR/pgbench")
"$PGBENCH" -h 127.0.0.1 -p "$PGPORT" -U postgres -i -s 2 -q postgres 2>&1 | tail -1

step "Starting pgcanary: clients on 127.0.0.1:$PROXYPORT, admin on 127.0.0.1:$ADMINPORT"
"$BIN" serve --listen "127.0.0.1:$PROXYPORT" --admin "127.0.0.1:$ADMINPORT" \
	--upstream "127.0.0.1:$PGPORT" --upstream-sslmode disable --log-level warn 2>"$TMP/pgcanary.log" &
PROXY_PID=$!
for _ in $(seq 50); do
	"$BIN" healthcheck --admin "127.0.0.1:$ADMINPORT" >/dev/null 2>&1 && break
	sleep 0.1
done
echo "healthz: $("$BIN" healthcheck --admin "127.0.0.1:$ADMINPORT")   readyz: $("$BIN" healthcheck --admin "127.0.0.1:$ADMINPORT" --path /readyz)"

step "psql through pgcanary, unchanged"
psql -X -h 127.0.0.1 -p "$PROXYPORT" -U postgres -d postgres -c \
	"select count(*) as accounts, current_setting('server_version') as server from pgbench_accounts"

step "pgbench -S (4 clients, 5 s) through pgcanary"
"$PGBENCH" -h 127.0.0.1 -p "$PROXYPORT" -U postgres -n -S -M prepared -c 4 -j 2 -T 5 postgres 2>&1 |
	grep -E "^(number of transactions actually processed|latency average|tps)"

step "What pgcanary's /metrics saw"
curl -fsS "http://127.0.0.1:$ADMINPORT/metrics" | grep -E '^pgcanary_' || true

step "SIGTERM: pgcanary drains and exits"
kill -TERM "$PROXY_PID"
wait "$PROXY_PID" && echo "pgcanary exited 0"
PROXY_PID=
echo
echo "Done: the throwaway cluster and files are removed."

#!/usr/bin/env bash
# bench/routing.sh — reads served by the new shape vs the same reads on the old shape, both through
# pgcanary: the cost of the compatibility projection, planning and routing.
#
# One database with examples/schema.sql; pgcanary with examples/pgcanary.yaml and a flag file.
# pgbench reads users by key (-M simple and -M extended, whose unnamed statements are routed per
# execution); rounds alternate the flag between 0 % (old shape) and 100 % (new shape).
#
# Usage: bench/routing.sh [--quick]   (env: ROUNDS=3 DURATION=10 USERS=100000 CLIENTS="1 8"
#                                      MODES="simple extended prepared" UPSTREAM=tcp|unix)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/cluster.sh
source scripts/lib/cluster.sh

# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh
bench_init routing "$@"
# simple and extended parse every execution; prepared (named statements, routed per Bind through
# the new-shape variant) plans once.
MODES=${MODES:-"simple extended prepared"}
"$PSQL" -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -c "create database app"
"$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres -d app -v users="$USERS" -v orders=10 -f examples/schema.sql
cp examples/pgcanary.yaml examples/flags.json "$TMP/"
# Routing alone: no comparisons (their cost is the side database's, measured apart).
sed -i 's/"default": 0.1/"default": 0/' "$TMP/flags.json"
export PGCANARY_UPSTREAM=$CANARY_UPSTREAM
export PGCANARY_SIDE_DSN=postgres://postgres@127.0.0.1:$PGPORT/app?sslmode=disable
export PGCANARY_DATABASE=app
"$BIN" serve --config "$TMP/pgcanary.yaml" --upstream-sslmode disable --log-level warn \
	--listen "127.0.0.1:$PROXYPORT" --admin "127.0.0.1:$ADMINPORT" 2>"$TMP/pgcanary.log" &
PROXY_PID=$!
for _ in $(seq 100); do "$BIN" healthcheck --admin "127.0.0.1:$ADMINPORT" >/dev/null 2>&1 && break; sleep 0.1; done

cat >"$TMP/read.sql" <<SQL
\set id random(1, $USERS)
SELECT full_name, email, tier FROM users WHERE id = :id;
SQL
# The new-shape form pgcanary sends for that read (from `pgcanary explain`), run directly: what the
# database pays for the form itself, apart from the proxy hop.
form=$("$BIN" explain --config "$TMP/pgcanary.yaml" 'SELECT full_name, email, tier FROM users WHERE id = $1' |
	sed -n 's/^  new-shape form: //p')
[ -n "$form" ] || { echo "ERROR: pgcanary explain printed no new-shape form" >&2; exit 1; }
log "new-shape form: $form"
printf '\\set id random(1, %s)\n%s;\n' "$USERS" "${form//\$1/:id}" >"$TMP/read_new.sql"
direct() { # script mode clients -> tps, straight to Postgres
	"$PGBENCH" -n -M "$2" -f "$TMP/$1" -c "$3" -j "$(($3 > 1 ? 2 : 1))" -T "$DURATION" \
		-h 127.0.0.1 -p "$PGPORT" -U postgres app 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}

run() { # percent mode clients -> tps
	"$BIN" ramp --config "$TMP/pgcanary.yaml" users-split-name "$1" >/dev/null
	sleep 0.3
	"$PGBENCH" -n -M "$2" -f "$TMP/read.sql" -c "$3" -j "$(($3 > 1 ? 2 : 1))" -T "$DURATION" \
		-h 127.0.0.1 -p "$PROXYPORT" -U postgres app 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}

declare -A results
for round in $(seq "$ROUNDS"); do
	for mode in $MODES; do
		for c in $CLIENTS; do
			order="0 100"
			[ $((round % 2)) -eq 0 ] && order="100 0"
			for pct in $order; do
				tps=$(run "$pct" "$mode" "$c")
				log "round $round $mode c=$c ${pct}%: $tps tps"
				results[$mode.$c.$pct]+="$tps "
			done
			for f in read.sql read_new.sql; do
				tps=$(direct "$f" "$mode" "$c")
				log "round $round $mode c=$c direct $f: $tps tps"
				results[$mode.$c.$f]+="$tps "
			done
		done
	done
done
new_reads=$(curl -fsS "http://127.0.0.1:$ADMINPORT/metrics" | sed -n 's/^pgcanary_statements_total{kind="read",migration="users-split-name",route="new"} //p')

echo
echo "reads by key through pgcanary (median of $ROUNDS x ${DURATION}s, $USERS users, pgcanary reaches postgres over $UPSTREAM)"
printf '%-9s %-8s %-12s %-12s %-9s %s\n' protocol clients "old (0%)" "new (100%)" new/old "direct new-SQL/old-SQL"
for mode in $MODES; do
	for c in $CLIENTS; do
		o=$(echo "${results[$mode.$c.0]}" | tr ' ' '\n' | grep . | median)
		n=$(echo "${results[$mode.$c.100]}" | tr ' ' '\n' | grep . | median)
		dold=$(echo "${results[$mode.$c.read.sql]}" | tr ' ' '\n' | grep . | median)
		dnew=$(echo "${results[$mode.$c.read_new.sql]}" | tr ' ' '\n' | grep . | median)
		printf '%-9s %-8s %-12.0f %-12.0f %-9.2f %.2f\n' "$mode" "$c" "$o" "$n" "$(echo "$n / $o" | bc -l)" "$(echo "$dnew / $dold" | bc -l)"
	done
done
echo "reads served by the new shape during the run: ${new_reads:-0}"
curl -fsS "http://127.0.0.1:$ADMINPORT/v1/migrations/users-split-name" | grep -E '"(engaged|status|comparisons)"' || true

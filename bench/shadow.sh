#!/usr/bin/env bash
# bench/shadow.sh — client reads through pgcanary while every read is sampled for comparison and
# the side database is down (refuses connections) or hangs (accepts and never answers), against
# the same reads with comparisons off. Comparisons run off the client's path: the ratios should
# stay at 1 within noise.
#
# Three pgcanary instances share one cluster (examples/schema.sql); pgbench reads users by key
# through each in turn, rounds rotating the order.
#
# Usage: bench/shadow.sh [--quick]   (env: ROUNDS=3 DURATION=10 USERS=100000 CLIENTS="1 8")
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/cluster.sh
source scripts/lib/cluster.sh
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh
bench_init shadow "$@"
"$PSQL" -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -c "create database app"
"$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres -d app -v users="$USERS" -v orders=10 -f examples/schema.sql

# Side databases that fail once pgcanary has started (it loads its catalog through side_dsn):
# forwarders to the cluster that, on SIGUSR1, refuse connections or go silent.
REFUSEPORT=$(free_port)
python3 bench/lib/sideproxy.py "$REFUSEPORT" "$PGPORT" refuse &
REFUSE_PID=$!
HANGPORT=$(free_port)
python3 bench/lib/sideproxy.py "$HANGPORT" "$PGPORT" hang &
HANG_PID=$!
sleep 0.3

export PGCANARY_UPSTREAM=127.0.0.1:$PGPORT PGCANARY_DATABASE=app
declare -A port pid adminport
start() { # name ratio side_port
	local dir="$TMP/$1"
	mkdir -p "$dir"
	cp examples/pgcanary.yaml examples/flags.json "$dir/"
	sed -i "s/\"default\": 0.1/\"default\": $2/" "$dir/flags.json"
	port[$1]=$(free_port)
	local admin
	admin=$(free_port)
	adminport[$1]=$admin
	PGCANARY_SIDE_DSN="postgres://postgres@127.0.0.1:$3/app?sslmode=disable&connect_timeout=1" \
		"$BIN" serve --config "$dir/pgcanary.yaml" --upstream-sslmode disable --log-level error \
		--listen "127.0.0.1:${port[$1]}" --admin "127.0.0.1:$admin" 2>"$dir/pgcanary.log" &
	pid[$1]=$!
	for _ in $(seq 100); do "$BIN" healthcheck --admin "127.0.0.1:$admin" >/dev/null 2>&1 && break; sleep 0.1; done
}
start off 0 "$PGPORT"
start refuses 1 "$REFUSEPORT"
start hangs 1 "$HANGPORT"
kill -USR1 "$REFUSE_PID" "$HANG_PID"
cleanup_more() {
	kill "${pid[off]}" "${pid[refuses]}" "${pid[hangs]}" "$REFUSE_PID" "$HANG_PID" 2>/dev/null || true
	wait 2>/dev/null || true
	bench_cleanup
}
trap cleanup_more EXIT

cat >"$TMP/read.sql" <<SQL
\set id random(1, $USERS)
SELECT full_name, email, tier FROM users WHERE id = :id;
SQL

declare -A results
names=(off refuses hangs)
for round in $(seq "$ROUNDS"); do
	for c in $CLIENTS; do
		for i in 0 1 2; do
			name=${names[$(((i + round) % 3))]}
			tps=$("$PGBENCH" -n -M extended -f "$TMP/read.sql" -c "$c" -j "$((c > 1 ? 2 : 1))" -T "$DURATION" \
				-h 127.0.0.1 -p "${port[$name]}" -U postgres app 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
			log "round $round c=$c $name: $tps tps"
			results[$c.$name]+="$tps "
		done
	done
done

echo
echo "reads by key through pgcanary, every read sampled for comparison (median of $ROUNDS x ${DURATION}s)"
printf '%-8s %-14s %-16s %-14s %-16s %s\n' clients "off (tps)" "side refuses" "refuses/off" "side hangs" "hangs/off"
for c in $CLIENTS; do
	o=$(echo "${results[$c.off]}" | tr ' ' '\n' | grep . | median)
	r=$(echo "${results[$c.refuses]}" | tr ' ' '\n' | grep . | median)
	h=$(echo "${results[$c.hangs]}" | tr ' ' '\n' | grep . | median)
	printf '%-8s %-14.0f %-16.0f %-14.2f %-16.0f %.2f\n' "$c" "$o" "$r" "$(echo "$r / $o" | bc -l)" "$h" "$(echo "$h / $o" | bc -l)"
done
for name in refuses hangs; do
	echo "side $name: $(curl -fsS "http://127.0.0.1:${adminport[$name]}/metrics" | grep '^pgcanary_comparisons_total' | sed 's/pgcanary_comparisons_total//' | tr '\n' ' ')"
done

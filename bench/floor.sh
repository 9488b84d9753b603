#!/usr/bin/env bash
# bench/floor.sh — where pgcanary's passthrough cost comes from: pgcanary against PgBouncer and
# against two protocol-blind Go relays (bench/relayfloor), interleaved in one run.
#
#   pgcanary             as deployed: sessions on epoll event loops (proxy/loop_linux.go)
#   pgcanary-goroutines  the same binary with --event-loops -1: a goroutine per direction of each
#                        session, waiting in Go's netpoller (what TLS sessions use)
#   relay-goroutines     that second design without any protocol handling
#   relay-epoll          PgBouncer's design (one thread, one epoll loop) without protocol handling
#
# For each target it prints the median TPS of `pgbench -n -S`, the relay's CPU time per
# transaction (user + system, from /proc) and its context switches per transaction, and TPS
# relative to PgBouncer.
#
# Usage: bench/floor.sh [--quick]   (env: ROUNDS=5 DURATION=5 CLIENTS=16 MODE=prepared SCALE=10
#                                    PGCANARY_BIN=bin/pgcanary)
# Every relay reaches Postgres over loopback TCP (the baseline relays speak nothing else).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/cluster.sh
source scripts/lib/cluster.sh
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh
ROUNDS=${ROUNDS:-5} DURATION=${DURATION:-5} UPSTREAM=tcp
bench_init floor "$@"
CLIENTS=${CLIENTS:-16}
[ "$CLIENTS" = "1 8" ] && CLIENTS=16 # bench_init's default is for the other scripts
MODE=${MODE:-prepared}
SCALE=${SCALE:-10}
JOBS=$((CLIENTS > 1 ? 2 : 1))

"$PSQL" -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -c "create database bench"
"$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PGPORT" -U postgres bench >/dev/null 2>&1
pgbouncer_start bench || { echo "ERROR: PgBouncer is not installed (apt-get install pgbouncer)" >&2; exit 1; }
go build -o "$TMP/relayfloor" ./bench/relayfloor

declare -A PORT PID
PORT[pgbouncer]=$BOUNCERPORT
PID[pgbouncer]=$(cat "$TMP/pgbouncer.pid")
"$BIN" serve --listen "127.0.0.1:$PROXYPORT" --upstream "$CANARY_UPSTREAM" --admin "127.0.0.1:$ADMINPORT" \
	--upstream-sslmode disable --log-level warn 2>"$TMP/pgcanary.log" &
PROXY_PID=$!
PORT[pgcanary]=$PROXYPORT
PID[pgcanary]=$PROXY_PID
RELAY_PIDS=()
port=$(free_port)
"$BIN" serve --event-loops -1 --listen "127.0.0.1:$port" --upstream "$CANARY_UPSTREAM" --admin "127.0.0.1:$(free_port)" \
	--upstream-sslmode disable --log-level warn 2>"$TMP/pgcanary-goroutines.log" &
RELAY_PIDS+=($!)
PORT[pgcanary-goroutines]=$port
PID[pgcanary-goroutines]=$!
for design in goroutines epoll; do
	port=$(free_port)
	"$TMP/relayfloor" --design "$design" --listen "127.0.0.1:$port" --upstream "127.0.0.1:$PGPORT" 2>>"$TMP/relayfloor.log" &
	RELAY_PIDS+=($!)
	PORT[relay-$design]=$port
	PID[relay-$design]=$!
done
trap 'kill "${RELAY_PIDS[@]}" 2>/dev/null || true; bench_cleanup' EXIT
TARGETS=(pgbouncer pgcanary pgcanary-goroutines relay-goroutines relay-epoll)
for t in "${TARGETS[@]}"; do
	for _ in $(seq 50); do "$PSQL" -X -q -h 127.0.0.1 -p "${PORT[$t]}" -U postgres -d bench -c 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
switches() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {n += $2} END {print n}'; }
measure() { # target -> "tps cpu_us_per_tx switches_per_tx"
	local t=$1 pid=${PID[$1]} c0 s0 out tx
	c0=$(cpu_ticks "$pid") s0=$(switches "$pid")
	out=$("$PGBENCH" -n -S -M "$MODE" -c "$CLIENTS" -j "$JOBS" -T "$DURATION" -h 127.0.0.1 -p "${PORT[$t]}" -U postgres bench 2>&1)
	tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
	[ -n "$tx" ] && [ "$tx" -gt 0 ] || { echo "NA NA NA"; return; }
	awk -v tps="$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")" -v c="$(($(cpu_ticks "$pid") - c0))" \
		-v s="$(($(switches "$pid") - s0))" -v tx="$tx" -v hz="$(getconf CLK_TCK)" \
		'BEGIN {printf "%.0f %.2f %.2f\n", tps, c * 1e6 / hz / tx, s / tx}'
}

declare -A TPS CPU CS
for round in $(seq "$ROUNDS"); do
	# Rotate the order so that no target always runs first.
	for i in "${!TARGETS[@]}"; do
		t=${TARGETS[$(((i + round) % ${#TARGETS[@]}))]}
		read -r tps cpu cs < <(measure "$t")
		log "round $round $t: $tps tps, $cpu us CPU/tx, $cs switches/tx"
		TPS[$t]+="$tps " CPU[$t]+="$cpu " CS[$t]+="$cs "
	done
done

med() { tr ' ' '\n' <<<"$1" | grep -v '^NA$' | grep . | median; }
echo "pgbench -S -M $MODE, $CLIENTS clients, median of $ROUNDS round(s) x ${DURATION}s, $(nproc) CPUs"
printf '%-20s %8s %12s %12s %14s\n' target tps cpu_us/tx switches/tx tps/pgbouncer
base=$(med "${TPS[pgbouncer]}")
for t in "${TARGETS[@]}"; do
	tps=$(med "${TPS[$t]}")
	printf '%-20s %8.0f %12.2f %12.2f %14.2f\n' "$t" "$tps" "$(med "${CPU[$t]}")" "$(med "${CS[$t]}")" "$(awk -v a="$tps" -v b="$base" 'BEGIN {print a / b}')"
done

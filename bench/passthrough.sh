#!/usr/bin/env bash
# bench/passthrough.sh — pgbench -S through pgcanary vs. direct vs. PgBouncer.
#
# Starts a throwaway PostgreSQL cluster, a PgBouncer (session mode) and
# pgcanary in front of it, then runs `pgbench -n -S` with the simple and the
# prepared protocol at 1 and 16 clients against all three targets,
# interleaved (rotating order) over several rounds, and prints the median TPS
# per cell plus the ratios pgcanary/direct and pgcanary/pgbouncer.
#
# See bench/README.md for details. Usage: bench/passthrough.sh [--help]
set -euo pipefail

usage() {
	cat <<'EOF'
Usage: bench/passthrough.sh [options]

Options (each also settable through the environment variable in brackets):
  --quick              smoke run: ROUNDS=1 DURATION=3 WARMUP=1
  --rounds N           rounds per cell                        [ROUNDS=3]
  --duration S         seconds per pgbench run                [DURATION=10]
  --scale N            pgbench -i scale factor                [SCALE=10]
  --warmup S           seconds of untimed warm-up, 0 = none   [WARMUP=3]
  --pgcanary PATH      pgcanary binary, "none" to skip column [PGCANARY_BIN=./bin/pgcanary]
  --upstream tcp|unix  how PgBouncer and pgcanary reach Postgres: loopback TCP, or
                       Postgres's Unix socket (a proxy on the database host); clients
                       always connect over TCP, direct ones too   [UPSTREAM=tcp]
  --out FILE           also write TSV results to FILE         [BENCH_OUT]
  --keep               keep the temp dir (logs) after exit    [KEEP_TMP=1]
  -h, --help           this help

Other environment: PGBOUNCER_BIN (default: pgbouncer on PATH or /usr/sbin/pgbouncer,
"none" to skip that column), PG_BINDIR (directory holding initdb/pg_ctl/postgres).
EOF
}

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
SCALE=${SCALE:-10}
WARMUP=${WARMUP:-3}
PGCANARY_BUILD=0 # the default binary is built every time (below): a stale one would be measured
[ -z "${PGCANARY_BIN:-}" ] && PGCANARY_BUILD=1
PGCANARY_BIN=${PGCANARY_BIN:-./bin/pgcanary}
PGBOUNCER_BIN=${PGBOUNCER_BIN:-}
BENCH_OUT=${BENCH_OUT:-}
KEEP_TMP=${KEEP_TMP:-0}
PG_BINDIR=${PG_BINDIR:-}
UPSTREAM=${UPSTREAM:-tcp}

while [ $# -gt 0 ]; do
	case "$1" in
	--quick) ROUNDS=1 DURATION=3 WARMUP=1 ;;
	--rounds) ROUNDS=${2:?--rounds needs a value}; shift ;;
	--rounds=*) ROUNDS=${1#*=} ;;
	--duration) DURATION=${2:?--duration needs a value}; shift ;;
	--duration=*) DURATION=${1#*=} ;;
	--scale) SCALE=${2:?--scale needs a value}; shift ;;
	--scale=*) SCALE=${1#*=} ;;
	--warmup) WARMUP=${2:?--warmup needs a value}; shift ;;
	--warmup=*) WARMUP=${1#*=} ;;
	--pgcanary) PGCANARY_BIN=${2:?--pgcanary needs a value} PGCANARY_BUILD=0; shift ;;
	--pgcanary=*) PGCANARY_BIN=${1#*=} PGCANARY_BUILD=0 ;;
	--out) BENCH_OUT=${2:?--out needs a value}; shift ;;
	--out=*) BENCH_OUT=${1#*=} ;;
	--upstream) UPSTREAM=${2:?--upstream needs a value}; shift ;;
	--upstream=*) UPSTREAM=${1#*=} ;;
	--keep) KEEP_TMP=1 ;;
	-h | --help) usage; exit 0 ;;
	*) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
	esac
	shift
done

case "$UPSTREAM" in
tcp | unix) ;;
*) echo "UPSTREAM must be tcp or unix, got '$UPSTREAM'" >&2; exit 2 ;;
esac
for v in ROUNDS DURATION SCALE WARMUP; do
	case "${!v}" in
	'' | *[!0-9]*) echo "$v must be a non-negative integer, got '${!v}'" >&2; exit 2 ;;
	esac
done
if [ "$ROUNDS" -lt 1 ] || [ "$DURATION" -lt 1 ] || [ "$SCALE" -lt 1 ]; then
	echo "ROUNDS, DURATION and SCALE must be >= 1" >&2
	exit 2
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PROTOCOLS=(simple prepared)
CLIENTS=(1 16)
DB=bench
DBUSER=postgres

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- privileges: initdb/pg_ctl/pgbouncer refuse to run as root -------------
IS_ROOT=0
[ "$(id -u)" -eq 0 ] && IS_ROOT=1
as_svc() {
	if [ "$IS_ROOT" -eq 1 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}
if [ "$IS_ROOT" -eq 1 ]; then
	id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' OS user to run the servers as"
	command -v runuser >/dev/null || die "running as root but runuser is missing"
fi

# --- locate PostgreSQL binaries ---------------------------------------------
find_pg_bindir() {
	if [ -n "$PG_BINDIR" ]; then
		echo "$PG_BINDIR"
		return
	fi
	local p
	# Resolve symlinks (e.g. /usr/local/bin/pg_ctl -> /usr/lib/postgresql/15/bin/pg_ctl)
	# so the client tools (pgbench, psql) come from the same installation.
	if p=$(command -v pg_ctl 2>/dev/null) && p=$(readlink -f "$p") && [ -x "$(dirname "$p")/initdb" ]; then
		dirname "$p"
		return
	fi
	local d
	d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
	[ -n "$d" ] || die "PostgreSQL binaries not found (PATH or /usr/lib/postgresql/*/bin); set PG_BINDIR"
	echo "$d"
}
PG_BINDIR=$(find_pg_bindir)
# Prefer the client tools that match the server; fall back to PATH.
pgtool() {
	if [ -x "$PG_BINDIR/$1" ]; then echo "$PG_BINDIR/$1"; else command -v "$1" || die "$1 not found"; fi
}
INITDB=$(pgtool initdb)
PG_CTL=$(pgtool pg_ctl)
PGBENCH=$(pgtool pgbench)
PSQL=$(pgtool psql)
PG_ISREADY=$(pgtool pg_isready)

# --- PgBouncer ---------------------------------------------------------------
PGBOUNCER_NOTE=""
find_pgbouncer() {
	if [ "$PGBOUNCER_BIN" = none ]; then
		PGBOUNCER_NOTE="skipped (PGBOUNCER_BIN=none)"
		PGBOUNCER_BIN=""
		return
	fi
	if [ -n "$PGBOUNCER_BIN" ]; then
		[ -x "$PGBOUNCER_BIN" ] || die "PGBOUNCER_BIN=$PGBOUNCER_BIN is not executable"
		return
	fi
	PGBOUNCER_BIN=$(command -v pgbouncer 2>/dev/null || true)
	[ -z "$PGBOUNCER_BIN" ] && [ -x /usr/sbin/pgbouncer ] && PGBOUNCER_BIN=/usr/sbin/pgbouncer
	[ -n "$PGBOUNCER_BIN" ] && return
	if [ "$IS_ROOT" -eq 1 ] && command -v apt-get >/dev/null; then
		log "pgbouncer not installed; installing the Debian package"
		export DEBIAN_FRONTEND=noninteractive
		if apt-get install -y pgbouncer >&2 || { apt-get update >&2 && apt-get install -y pgbouncer >&2; }; then
			# The package starts its own instance; we only want ours.
			service pgbouncer stop >/dev/null 2>&1 || true
			[ -x /usr/sbin/pgbouncer ] && PGBOUNCER_BIN=/usr/sbin/pgbouncer
		fi
	fi
	if [ -z "$PGBOUNCER_BIN" ]; then
		PGBOUNCER_NOTE="not available (not installed and could not be installed)"
		log "WARNING: pgbouncer $PGBOUNCER_NOTE; running without the pgbouncer column"
	fi
}
find_pgbouncer

# --- pgcanary ----------------------------------------------------------------
PGCANARY_NOTE=""
if [ "$PGCANARY_BIN" = none ]; then
	PGCANARY_BIN=""
	PGCANARY_NOTE="skipped (PGCANARY_BIN=none)"
else
	case "$PGCANARY_BIN" in /*) ;; *) PGCANARY_BIN="$ROOT/${PGCANARY_BIN#./}" ;; esac
	if [ "$PGCANARY_BUILD" = 1 ] || [ ! -x "$PGCANARY_BIN" ]; then
		[ "$PGCANARY_BIN" = "$ROOT/bin/pgcanary" ] || die "PGCANARY_BIN=$PGCANARY_BIN does not exist (use PGCANARY_BIN=none to skip)"
		log "building pgcanary: go build -o bin/pgcanary ./cmd/pgcanary"
		go build -o bin/pgcanary ./cmd/pgcanary ||
			die "building pgcanary failed (set PGCANARY_BIN=none to benchmark only direct and pgbouncer)"
	fi
fi

TARGETS=(direct)
[ -n "$PGBOUNCER_BIN" ] && TARGETS+=(pgbouncer)
[ -n "$PGCANARY_BIN" ] && TARGETS+=(pgcanary)

# --- temp dir and cleanup ----------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/pgcanary-bench.XXXXXX")
chmod 755 "$TMP"
[ "$IS_ROOT" -eq 1 ] && chown postgres: "$TMP"
PGDATA="$TMP/pgdata"
PG_STARTED=0
PGBOUNCER_PIDFILE="$TMP/pgbouncer.pid"
PGCANARY_PID=""

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	if [ -n "$PGCANARY_PID" ]; then
		kill "$PGCANARY_PID" 2>/dev/null
		for _ in $(seq 1 50); do kill -0 "$PGCANARY_PID" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$PGCANARY_PID" 2>/dev/null
		wait "$PGCANARY_PID" 2>/dev/null
	fi
	if [ -s "$PGBOUNCER_PIDFILE" ]; then
		local bpid
		bpid=$(cat "$PGBOUNCER_PIDFILE")
		kill "$bpid" 2>/dev/null
		for _ in $(seq 1 50); do kill -0 "$bpid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$bpid" 2>/dev/null
	fi
	if [ "$PG_STARTED" -eq 1 ]; then
		as_svc "$PG_CTL" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1
	fi
	if [ "$KEEP_TMP" = 1 ]; then
		log "kept temp dir $TMP"
	else
		rm -rf "$TMP"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- helpers -----------------------------------------------------------------
USED_PORTS=" "
free_port() {
	local p
	for _ in $(seq 1 200); do
		# Below the ephemeral range (32768+): a port an outgoing connection holds cannot be bound.
		p=$((10000 + RANDOM % 22000))
		case "$USED_PORTS" in *" $p "*) continue ;; esac
		if ! (: </dev/tcp/127.0.0.1/"$p") 2>/dev/null; then
			USED_PORTS="$USED_PORTS$p "
			echo "$p"
			return
		fi
	done
	die "no free port found"
}

# wait_sql PORT NAME [PID] — wait until `select 1` works through PORT.
wait_sql() {
	local port=$1 name=$2 pid=${3:-}
	for _ in $(seq 1 150); do
		if "$PSQL" -X -q -h 127.0.0.1 -p "$port" -U "$DBUSER" -d "$DB" -tAc 'select 1' >/dev/null 2>&1; then
			return 0
		fi
		if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
			return 1
		fi
		sleep 0.2
	done
	log "$name did not accept connections on port $port within 30s"
	return 1
}

median() { # numbers on stdin -> median, or NA
	sort -g | awk '{a[NR]=$1} END {
		if (NR == 0) print "NA";
		else if (NR % 2) print a[(NR + 1) / 2];
		else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

ratio() { # a b -> a/b with 2 decimals, or NA
	awk -v a="$1" -v b="$2" 'BEGIN {
		if (a == "NA" || b == "NA" || a == "" || b == "" || b + 0 == 0) print "NA";
		else printf "%.2f\n", a / b }'
}

fmt_tps() { # -> integer TPS or NA
	case "$1" in NA | '') echo NA ;; *) printf '%.0f\n' "$1" ;; esac
}

# --- PostgreSQL --------------------------------------------------------------
PGPORT=$(free_port)
log "initdb ($PG_BINDIR) in $PGDATA"
as_svc "$INITDB" -D "$PGDATA" -U "$DBUSER" --auth=trust --no-locale -E UTF8 --no-sync >"$TMP/initdb.log" 2>&1 ||
	{ cat "$TMP/initdb.log" >&2; die "initdb failed"; }
cat >>"$PGDATA/postgresql.conf" <<EOF

# --- pgcanary bench ---
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$TMP'
max_connections = 100
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 256MB
logging_collector = off
EOF
cat >"$PGDATA/pg_hba.conf" <<'EOF'
local all all trust
host  all all 127.0.0.1/32 trust
EOF
[ "$IS_ROOT" -eq 1 ] && chown postgres: "$PGDATA/postgresql.conf" "$PGDATA/pg_hba.conf"
log "starting postgres on 127.0.0.1:$PGPORT"
PG_STARTED=1
as_svc "$PG_CTL" -D "$PGDATA" -l "$TMP/postgres.log" -w -t 60 start >/dev/null ||
	{ tail -n 30 "$TMP/postgres.log" >&2; die "postgres failed to start"; }
"$PG_ISREADY" -q -h 127.0.0.1 -p "$PGPORT" -t 30 || die "postgres not ready"
"$PSQL" -X -q -h 127.0.0.1 -p "$PGPORT" -U "$DBUSER" -d postgres -c "create database $DB" >/dev/null
log "pgbench -i -s $SCALE"
"$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PGPORT" -U "$DBUSER" "$DB" >"$TMP/pgbench-init.log" 2>&1 ||
	{ cat "$TMP/pgbench-init.log" >&2; die "pgbench -i failed"; }
declare -A PORT
PORT[direct]=$PGPORT
# What the proxies dial: PgBouncer takes a socket directory as host, pgcanary DIR:PORT.
if [ "$UPSTREAM" = unix ]; then
	BOUNCER_UPSTREAM_HOST=$TMP
	CANARY_UPSTREAM="$TMP:$PGPORT"
else
	BOUNCER_UPSTREAM_HOST=127.0.0.1
	CANARY_UPSTREAM="127.0.0.1:$PGPORT"
fi

# --- PgBouncer (session mode) ------------------------------------------------
if [ -n "$PGBOUNCER_BIN" ]; then
	PORT[pgbouncer]=$(free_port)
	printf '"%s" ""\n' "$DBUSER" >"$TMP/userlist.txt"
	cat >"$TMP/pgbouncer.ini" <<EOF
[databases]
$DB = host=$BOUNCER_UPSTREAM_HOST port=$PGPORT dbname=$DB

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${PORT[pgbouncer]}
unix_socket_dir =
auth_type = trust
auth_file = $TMP/userlist.txt
admin_users = $DBUSER
pool_mode = session
max_client_conn = 100
default_pool_size = 20
ignore_startup_parameters = extra_float_digits
logfile = $TMP/pgbouncer.log
pidfile = $PGBOUNCER_PIDFILE
log_connections = 0
log_disconnections = 0
EOF
	[ "$IS_ROOT" -eq 1 ] && chown postgres: "$TMP/userlist.txt" "$TMP/pgbouncer.ini"
	log "starting pgbouncer ($PGBOUNCER_BIN) on 127.0.0.1:${PORT[pgbouncer]}"
	as_svc "$PGBOUNCER_BIN" -d -q "$TMP/pgbouncer.ini" ||
		{ tail -n 30 "$TMP/pgbouncer.log" >&2 2>/dev/null; die "pgbouncer failed to start"; }
	wait_sql "${PORT[pgbouncer]}" pgbouncer ||
		{ tail -n 30 "$TMP/pgbouncer.log" >&2 2>/dev/null; die "pgbouncer not ready"; }
fi

# --- pgcanary ----------------------------------------------------------------
if [ -n "$PGCANARY_BIN" ]; then
	PORT[pgcanary]=$(free_port)
	ADMINPORT=$(free_port)
	log "starting pgcanary ($PGCANARY_BIN) on 127.0.0.1:${PORT[pgcanary]} (admin $ADMINPORT)"
	"$PGCANARY_BIN" serve --listen "127.0.0.1:${PORT[pgcanary]}" --upstream "$CANARY_UPSTREAM" \
		--admin "127.0.0.1:$ADMINPORT" --log-level warn >"$TMP/pgcanary.log" 2>&1 &
	PGCANARY_PID=$!
	if ! wait_sql "${PORT[pgcanary]}" pgcanary "$PGCANARY_PID"; then
		tail -n 30 "$TMP/pgcanary.log" >&2
		die "pgcanary did not come up (set PGCANARY_BIN=none to skip it)"
	fi
	if command -v curl >/dev/null; then
		code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$ADMINPORT/healthz" || true)
		[ "$code" = 200 ] || log "WARNING: pgcanary /healthz answered '$code', expected 200"
	fi
fi

# --- benchmark ---------------------------------------------------------------
# run_pgbench TARGET PROTOCOL CLIENTS SECONDS -> prints TPS, or NA on failure
run_pgbench() {
	local target=$1 proto=$2 c=$3 secs=$4 j out tps
	j=$((c < 2 ? 1 : 2))
	out="$TMP/pgbench-$target-$proto-$c.out"
	if ! "$PGBENCH" -n -S -M "$proto" -c "$c" -j "$j" -T "$secs" \
		-h 127.0.0.1 -p "${PORT[$target]}" -U "$DBUSER" "$DB" >"$out" 2>&1; then
		log "WARNING: pgbench against $target ($proto, c=$c) failed:"
		{ grep -iE 'error|fatal|abort' "$out" || tail -n 5 "$out"; } | head -n 8 | sed 's/^/    /' >&2
		echo NA
		return
	fi
	tps=$(sed -n -E 's/^tps = ([0-9.]+) \((without initial connection time|excluding connections establishing)\).*/\1/p' "$out" | head -n 1)
	if [ -z "$tps" ]; then
		log "WARNING: could not parse TPS from pgbench output against $target:"
		sed 's/^/    /' "$out" >&2
		echo NA
		return
	fi
	echo "$tps"
}

PGCANARY_VERSION=""
if [ -n "$PGCANARY_BIN" ]; then
	PGCANARY_VERSION="built $(date -u -r "$PGCANARY_BIN" '+%Y-%m-%dT%H:%M:%SZ'), sha256 $(sha256sum "$PGCANARY_BIN" | cut -c1-12)"
	if v=$(timeout 5 "$PGCANARY_BIN" --version 2>/dev/null | head -n 1) && [ -n "$v" ]; then
		PGCANARY_VERSION="$v, $PGCANARY_VERSION"
	fi
fi
log "targets: ${TARGETS[*]}; rounds=$ROUNDS duration=${DURATION}s scale=$SCALE cpus=$(nproc) upstream=$UPSTREAM"

if [ "$WARMUP" -gt 0 ]; then
	log "warm-up (${WARMUP}s per target, not counted)"
	for t in "${TARGETS[@]}"; do
		run_pgbench "$t" prepared 16 "$WARMUP" >/dev/null
	done
fi

declare -A RESULTS
ntargets=${#TARGETS[@]}
ncells=$((${#PROTOCOLS[@]} * ${#CLIENTS[@]}))
total=$((ROUNDS * ncells * ntargets))
n=0
for ((r = 0; r < ROUNDS; r++)); do
	cell=0
	for proto in "${PROTOCOLS[@]}"; do
		for c in "${CLIENTS[@]}"; do
			# Rotate the target order per round (and per cell) so no target
			# systematically runs first/last.
			for ((k = 0; k < ntargets; k++)); do
				t=${TARGETS[$(((r + cell + k) % ntargets))]}
				n=$((n + 1))
				tps=$(run_pgbench "$t" "$proto" "$c" "$DURATION")
				if [ -n "$PGCANARY_PID" ] && ! kill -0 "$PGCANARY_PID" 2>/dev/null; then
					tail -n 30 "$TMP/pgcanary.log" >&2
					die "pgcanary exited during the benchmark"
				fi
				log "[$n/$total] round $((r + 1)) $proto c=$c $t: $(fmt_tps "$tps") tps"
				if [ "$tps" != NA ]; then RESULTS[$proto,$c,$t]+="$tps "; fi
			done
			cell=$((cell + 1))
		done
	done
done

# --- report ------------------------------------------------------------------
# shellcheck disable=SC2086 # word-splitting the space-separated list is intended
get_median() { printf '%s\n' ${RESULTS[$1]:-} | sed '/^$/d' | median; }

echo
echo "pgcanary passthrough benchmark: pgbench -S, median of $ROUNDS round(s) x ${DURATION}s, scale $SCALE, $(nproc) CPUs"
echo "clients connect over loopback TCP; pgbouncer and pgcanary reach postgres over $([ "$UPSTREAM" = unix ] && echo "its Unix socket" || echo "loopback TCP")"
echo "postgres: $("$PG_CTL" --version)"
if [ -n "$PGBOUNCER_BIN" ]; then
	echo "pgbouncer: $("$PGBOUNCER_BIN" --version 2>/dev/null | head -n 1)"
else
	echo "pgbouncer: $PGBOUNCER_NOTE"
fi
if [ -n "$PGCANARY_BIN" ]; then
	echo "pgcanary: $PGCANARY_BIN ($PGCANARY_VERSION)"
else
	echo "pgcanary: $PGCANARY_NOTE"
fi
echo

TSV=""
[ -n "$BENCH_OUT" ] && TSV=$(printf 'protocol\tclients\tdirect\tpgbouncer\tpgcanary\tpgcanary_direct\tpgcanary_pgbouncer\trounds\tduration_s')

fmt='%-9s %-8s %-8s %-10s %-9s %-16s %s\n'
# shellcheck disable=SC2059
printf "$fmt" protocol clients direct pgbouncer pgcanary pgcanary/direct pgcanary/pgbouncer
goal_bouncer=PASS goal_direct=PASS
for proto in "${PROTOCOLS[@]}"; do
	for c in "${CLIENTS[@]}"; do
		d=$(get_median "$proto,$c,direct")
		b=$(get_median "$proto,$c,pgbouncer")
		p=$(get_median "$proto,$c,pgcanary")
		rd=$(ratio "$p" "$d")
		rb=$(ratio "$p" "$b")
		# shellcheck disable=SC2059
		printf "$fmt" "$proto" "$c" "$(fmt_tps "$d")" "$(fmt_tps "$b")" "$(fmt_tps "$p")" "$rd" "$rb"
		[ -z "$TSV" ] || TSV+=$(printf '\n%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' "$proto" "$c" "$d" "$b" "$p" "$rd" "$rb" "$ROUNDS" "$DURATION")
		if [ "$rb" = NA ] || awk -v x="$rb" 'BEGIN{exit !(x < 1.0)}'; then goal_bouncer=FAIL; fi
		if [ "$proto" = prepared ] && [ "$c" = 1 ]; then
			if [ "$rd" = NA ] || awk -v x="$rd" 'BEGIN{exit !(x < 0.9)}'; then goal_direct=FAIL; fi
		fi
	done
done
echo
if [ -n "$PGCANARY_BIN" ]; then
	[ -n "$PGBOUNCER_BIN" ] || goal_bouncer="n/a (no pgbouncer)"
	echo "goal pgcanary/pgbouncer >= 1.00 in all cells:     $goal_bouncer"
	echo "goal pgcanary/direct >= 0.90 at prepared, 1 client: $goal_direct"
fi

if [ -n "$BENCH_OUT" ]; then
	printf '%s\n' "$TSV" >"$BENCH_OUT"
	log "wrote $BENCH_OUT"
fi

# shellcheck shell=bash
# Shared setup of the scripts that run pgcanary against a throwaway cluster (bench/mirror.sh,
# bench/routing.sh). Source it after scripts/lib/cluster.sh, then call:
#
#   bench_init NAME "$@"   parse --quick, build pgcanary if needed, make $TMP, pick $PGPORT,
#                          $PROXYPORT and $ADMINPORT, start the cluster, set $PSQL and $PGBENCH,
#                          and clean everything up on exit (a pgcanary started into $PROXY_PID too)
#   log MESSAGE            a timestamped progress line on stderr
#   median                 the median of numbers on stdin
#   pgbouncer_start DB     start PgBouncer (session mode) in front of database DB on $BOUNCERPORT,
#                          if installed (returns 1 when it is not); stopped on exit
#
# Settings (environment): ROUNDS=3 DURATION=10 USERS=100000 CLIENTS="1 8" PGCANARY_BIN=bin/pgcanary
# UPSTREAM=tcp|unix: how pgcanary and PgBouncer reach Postgres (loopback TCP, or its Unix socket as
# a proxy on the database host would); bench_init sets $CANARY_UPSTREAM and $BOUNCER_UPSTREAM_HOST.

bench_init() {
	BENCH_NAME=$1
	shift
	ROUNDS=${ROUNDS:-3}
	DURATION=${DURATION:-10}
	USERS=${USERS:-100000}
	CLIENTS=${CLIENTS:-"1 8"}
	[ "${1:-}" = "--quick" ] && ROUNDS=1 DURATION=3 USERS=20000
	# The default binary is built every time (go build does nothing when it is up to date): one
	# left from an older checkout would otherwise be measured in place of the code at hand.
	BIN=${PGCANARY_BIN:-bin/pgcanary}
	if [ -z "${PGCANARY_BIN:-}" ]; then
		go build -o "$BIN" ./cmd/pgcanary || { echo "ERROR: building pgcanary failed" >&2; exit 1; }
	fi
	[ -x "$BIN" ] || { echo "ERROR: PGCANARY_BIN=$BIN does not exist" >&2; exit 1; }
	TMP=$(mktemp -d "/tmp/pgcanary-$BENCH_NAME.XXXXXX")
	chmod 755 "$TMP"
	PGPORT=$(free_port)
	PROXYPORT=$(free_port)
	ADMINPORT=$(free_port)
	PROXY_PID=
	UPSTREAM=${UPSTREAM:-tcp}
	case "$UPSTREAM" in
	tcp) CANARY_UPSTREAM=127.0.0.1:$PGPORT BOUNCER_UPSTREAM_HOST=127.0.0.1 ;;
	unix) CANARY_UPSTREAM=$TMP:$PGPORT BOUNCER_UPSTREAM_HOST=$TMP ;;
	*) echo "UPSTREAM must be tcp or unix, got '$UPSTREAM'" >&2; exit 2 ;;
	esac
	trap bench_cleanup EXIT
	cluster_start "$TMP" "$PGPORT"
	local bindir
	bindir=$(pg_bindir)
	PSQL=$(command -v psql || echo "$bindir/psql")
	PGBENCH=$(command -v pgbench || echo "$bindir/pgbench")
}

bench_cleanup() {
	[ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null && wait "$PROXY_PID" 2>/dev/null || true
	[ -f "$TMP/pgbouncer.pid" ] && kill "$(cat "$TMP/pgbouncer.pid")" 2>/dev/null || true
	cluster_stop "$TMP"
	rm -rf "$TMP"
}

log() { printf '[%s %s] %s\n' "$BENCH_NAME" "$(date +%H:%M:%S)" "$*" >&2; }

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

pgbouncer_start() {
	local db=$1 bin
	bin=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
	[ -x "$bin" ] || return 1
	BOUNCERPORT=$(free_port)
	printf '"postgres" ""\n' >"$TMP/userlist.txt"
	cat >"$TMP/pgbouncer.ini" <<INI
[databases]
$db = host=$BOUNCER_UPSTREAM_HOST port=$PGPORT dbname=$db
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCERPORT
unix_socket_dir =
auth_type = trust
auth_file = $TMP/userlist.txt
pool_mode = session
max_client_conn = 100
default_pool_size = 20
ignore_startup_parameters = extra_float_digits
logfile = $TMP/pgbouncer.log
pidfile = $TMP/pgbouncer.pid
INI
	[ "$(id -u)" -eq 0 ] && chown postgres "$TMP/userlist.txt" "$TMP/pgbouncer.ini"
	as_pg "$bin" -d -q "$TMP/pgbouncer.ini" || { tail -5 "$TMP/pgbouncer.log" >&2; return 1; }
}

#!/usr/bin/env bash
# bench/verify.sh — `pgcanary verify` vs the least a full comparison can cost.
#
# One database with examples/schema.sql ($USERS users; users_v2 is filled by the schema's own
# copy, so the shapes agree). The floor is one statement per table computing the same hash
# aggregate verify uses over all rows: write-map(users) and users_v2 (a sequential scan each, no
# ranges, no snapshots, nothing to drill). `pgcanary verify` (wall clock, checking the
# configuration and connecting included) is timed against it, interleaved over $ROUNDS rounds,
# with --workers 1 and 2. Prints the medians and verify/single (goal: <= 3 with one worker).
#
# Usage: bench/verify.sh [--quick]   (env: ROUNDS=3 USERS=1000000 PGCANARY_BIN=<built here>)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/cluster.sh
source scripts/lib/cluster.sh
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh

USERS=${USERS:-1000000}
own_bin=${PGCANARY_BIN:-}
PGCANARY_BIN=${PGCANARY_BIN:-/nonexistent} # bench_init must not build: bin/pgcanary may be stale
bench_init verify "$@"
if [ -z "$own_bin" ]; then
	BIN=$TMP/pgcanary
	go build -o "$BIN" ./cmd/pgcanary
fi
psql_db() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres -d "$@"; }

psql_db postgres -c "create database app"
psql_db app -v users="$USERS" -v orders=10 -f examples/schema.sql
psql_db app -c "vacuum analyze users, users_v2" # index-only walks of the key need the visibility map
log "loaded $USERS users (users_v2 copied by the schema script)"

export PGCANARY_UPSTREAM=127.0.0.1:$PGPORT
export PGCANARY_SIDE_DSN=postgres://postgres@127.0.0.1:$PGPORT/app?sslmode=disable
export PGCANARY_DATABASE=app

# The same aggregate as verify's, over all rows, the write map spelled as WriteMapColumns does.
single_old="select count(*), coalesce(sum(hashtextextended(row((id)::bigint, (split_part(full_name, ' ', 1))::text,
  (nullif(substr(full_name, length(split_part(full_name, ' ', 1)) + 2), ''))::text, (email)::text, (active)::boolean,
  (tier)::public.user_tier, (birthday)::date, (profile)::jsonb, (tags)::text[], (external_id)::uuid,
  (created_at)::timestamp with time zone)::text, 0)), 0) from users"
single_new="select count(*), coalesce(sum(hashtextextended(row(id, first_name, last_name, email, active, tier, birthday,
  profile, tags, external_id, created_at)::text, 0)), 0) from users_v2"

now() { date +%s.%N; }
time_single() {
	local t0 t1 a b
	t0=$(now)
	a=$(psql_db app -At -c "$single_old")
	b=$(psql_db app -At -c "$single_new")
	t1=$(now)
	[ "$a" = "$b" ] || { echo "ERROR: the single aggregates differ: $a vs $b" >&2; exit 1; }
	echo "$t1 - $t0" | bc -l
}
time_verify() { # workers
	local t0 t1
	t0=$(now)
	"$BIN" verify --config examples/pgcanary.yaml users-split-name --workers "$1" --json >"$TMP/verify.json" ||
		{ echo "ERROR: pgcanary verify exited $?" >&2; cat "$TMP/verify.json" >&2; exit 1; }
	t1=$(now)
	echo "$t1 - $t0" | bc -l
}

time_single >/dev/null # warm the cache: both tables read once before anything is timed
declare -A results
for round in $(seq "$ROUNDS"); do
	order="single verify1 verify2"
	[ $((round % 2)) -eq 0 ] && order="verify2 verify1 single"
	for what in $order; do
		case $what in
		single) s=$(time_single) ;;
		verify1) s=$(time_verify 1) ;;
		verify2) s=$(time_verify 2) ;;
		esac
		log "round $round $what: ${s}s"
		results[$what]+="$s "
	done
done
rows=$(sed -n 's/.*"rows_compared": \([0-9]*\).*/\1/p' "$TMP/verify.json")
[ "$rows" = "$USERS" ] || { echo "ERROR: verify compared $rows rows, want $USERS" >&2; exit 1; }

echo
echo "verify users-split-name ($USERS rows, median of $ROUNDS rounds, wall clock)"
s=$(echo "${results[single]}" | tr ' ' '\n' | grep . | median)
printf '%-26s %8.2fs\n' "single aggregate (x2)" "$s"
for w in 1 2; do
	v=$(echo "${results[verify$w]}" | tr ' ' '\n' | grep . | median)
	printf '%-26s %8.2fs  %.2fx single  %.0f rows/s\n' "pgcanary verify --workers $w" "$v" "$(echo "$v / $s" | bc -l)" "$(echo "$USERS / $v" | bc -l)"
done

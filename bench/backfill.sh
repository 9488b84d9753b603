#!/usr/bin/env bash
# bench/backfill.sh — pgcanary backfill vs one INSERT ... SELECT of the same rows.
#
# A database with examples/schema.sql and USERS users (1,000,000 by default). Each round times,
# with users_v2 truncated before each:
#   single    one statement: INSERT INTO users_v2 SELECT <write map> FROM users (the fastest
#             possible copy, but one long transaction holding every row it read)
#   backfill  pgcanary backfill: key-ordered chunks of ~100 ms, each locking its rows, with the
#             checkpoint advanced in every chunk
# and prints the median wall times and backfill/single (the goal: at most 2).
#
# Usage: bench/backfill.sh [--quick]   (env: ROUNDS=3 USERS=1000000 PGCANARY_BIN=bin/pgcanary)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/cluster.sh
source scripts/lib/cluster.sh

# shellcheck source=scripts/lib/bench.sh
USERS=${USERS:-1000000}
source scripts/lib/bench.sh
bench_init backfill "$@"
psql_db() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres -d "$@"; }

psql_db postgres -c "create database app"
psql_db app -v users="$USERS" -v orders=10 -f examples/schema.sql
log "loaded $USERS users"

export PGCANARY_UPSTREAM=127.0.0.1:$PGPORT
export PGCANARY_SIDE_DSN=postgres://postgres@127.0.0.1:$PGPORT/app?sslmode=disable
export PGCANARY_DATABASE=app

single_sql='insert into users_v2 (id, first_name, last_name, email, active, tier, birthday, profile, tags, external_id, created_at)
select id, split_part(full_name, $$ $$, 1), nullif(substr(full_name, length(split_part(full_name, $$ $$, 1)) + 2), $$$$),
       email, active, tier, birthday, profile, tags, external_id, created_at
from users'

now() { date +%s.%N; }
reset() { psql_db app -c "truncate users_v2" -c "checkpoint"; }

declare -a singles backfills
for round in $(seq "$ROUNDS"); do
	reset
	t0=$(now)
	psql_db app -c "$single_sql"
	s=$(echo "$(now) - $t0" | bc -l)
	log "round $round single INSERT ... SELECT: ${s}s"
	singles+=("$s")

	reset
	t0=$(now)
	"$BIN" backfill --config examples/pgcanary.yaml users-split-name --restart --json >"$TMP/backfill.json"
	b=$(echo "$(now) - $t0" | bc -l)
	log "round $round pgcanary backfill: ${b}s $(cat "$TMP/backfill.json")"
	backfills+=("$b")
done

# The backfill must have produced exactly the write map of users.
check='select (select count(*) from (select id, split_part(full_name, $$ $$, 1), nullif(substr(full_name, length(split_part(full_name, $$ $$, 1)) + 2), $$$$), email from users
	except all select id, first_name, last_name, email from users_v2) d) + (select count(*) from users) - (select count(*) from users_v2)'
diff=$(psql_db app -At -c "$check")
[ "$diff" = 0 ] || { echo "ERROR: users_v2 differs from the write map of users on $diff rows" >&2; exit 1; }

s=$(printf '%s\n' "${singles[@]}" | median)
b=$(printf '%s\n' "${backfills[@]}" | median)
echo
echo "copy $USERS users into users_v2 (median of $ROUNDS rounds, wall time)"
printf '%-26s %8.2fs\n' "INSERT ... SELECT (single)" "$s" "pgcanary backfill" "$b"
printf '%-26s %8.2f   (goal <= 2)\n' "backfill/single" "$(echo "$b / $s" | bc -l)"
echo "users_v2 equals the write map of users"

#!/usr/bin/env bash
# bench/mirror.sh — mirrored writes through pgcanary vs the in-database way (a trigger).
#
# Two databases with examples/schema.sql: in one, a row trigger on users mirrors every write into
# users_v2 through the write map; the other has no trigger and is reached through pgcanary, whose
# mirrored form (a data-modifying CTE) does the same. pgbench runs the same UPDATE workload on
# both, interleaved over several rounds, and prints the median TPS and pgcanary/trigger; a third
# column sends pgcanary's mirrored SQL directly, to show the database's cost apart from the hop.
#
# Usage: bench/mirror.sh [--quick]   (env: ROUNDS=3 DURATION=10 USERS=100000 CLIENTS="1 8" UPSTREAM=tcp|unix)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/cluster.sh
source scripts/lib/cluster.sh

# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh
bench_init mirror "$@"
psql_db() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres -d "$@"; }

for db in trig proxied; do
	psql_db postgres -c "create database $db"
	psql_db "$db" -v users="$USERS" -v orders=10 -f examples/schema.sql
done
log "loaded $USERS users into databases trig and proxied"

# The in-database way: a row trigger doing exactly the write map.
psql_db trig <<'SQL'
create function users_mirror() returns trigger language plpgsql as $$
begin
  if tg_op = 'DELETE' then
    delete from users_v2 where id = old.id;
    return old;
  end if;
  insert into users_v2 (id, first_name, last_name, email, active, tier, birthday, profile, tags, external_id, created_at)
  values (new.id, split_part(new.full_name, ' ', 1),
          nullif(substr(new.full_name, length(split_part(new.full_name, ' ', 1)) + 2), ''),
          new.email, new.active, new.tier, new.birthday, new.profile, new.tags, new.external_id, new.created_at)
  on conflict (id) do update set first_name = excluded.first_name, last_name = excluded.last_name,
    email = excluded.email, active = excluded.active, tier = excluded.tier, birthday = excluded.birthday,
    profile = excluded.profile, tags = excluded.tags, external_id = excluded.external_id, created_at = excluded.created_at;
  return new;
end $$;
create trigger users_mirror after insert or update or delete on users for each row execute function users_mirror();
SQL

# The shipped example configuration, pointed at the proxied database.
export PGCANARY_UPSTREAM=$CANARY_UPSTREAM
export PGCANARY_SIDE_DSN=postgres://postgres@127.0.0.1:$PGPORT/proxied?sslmode=disable
export PGCANARY_DATABASE=proxied
"$BIN" serve --config examples/pgcanary.yaml --upstream-sslmode disable --log-level warn --listen "127.0.0.1:$PROXYPORT" --admin "127.0.0.1:$ADMINPORT" 2>"$TMP/pgcanary.log" &
PROXY_PID=$!
for _ in $(seq 100); do "$BIN" healthcheck --admin "127.0.0.1:$ADMINPORT" >/dev/null 2>&1 && break; sleep 0.1; done

cat >"$TMP/update.sql" <<SQL
\set id random(1, $USERS)
UPDATE users SET full_name = 'Name' || :id || ' Last' || (:id % 97) WHERE id = :id;
SQL

# pgcanary's own mirrored form of that UPDATE (from `pgcanary explain`), for a third column: the
# same SQL sent directly, so that what the database pays for it and what the proxy hop costs show apart.
form=$("$BIN" explain --config examples/pgcanary.yaml \
	"UPDATE users SET full_name = 'Name' || \$1 || ' Last' || (\$1 % 97) WHERE id = \$1" | sed -n 's/^  mirrored ([^)]*): //p')
[ -n "$form" ] || { echo "ERROR: pgcanary explain printed no mirrored form" >&2; exit 1; }
printf '\\set id random(1, %s)\n%s;\n' "$USERS" "${form//\$1/:id}" >"$TMP/form.sql"
# And the same SQL through PgBouncer (session mode), when installed: what any relay in the path costs.
TARGETS="trigger pgcanary form"
if pgbouncer_start proxied; then
	TARGETS="$TARGETS bouncer"
else
	log "pgbouncer not installed: no PgBouncer column (apt-get install pgbouncer)"
fi

run() { # target clients -> tps
	local target=$1 c=$2 port=$PGPORT db=trig script=update.sql
	[ "$target" = pgcanary ] && port=$PROXYPORT db=proxied
	[ "$target" = form ] && db=proxied script=form.sql
	[ "$target" = bouncer ] && port=$BOUNCERPORT db=proxied script=form.sql
	"$PGBENCH" -n -M prepared -f "$TMP/$script" -c "$c" -j "$((c > 1 ? 2 : 1))" -T "$DURATION" \
		-h 127.0.0.1 -p "$port" -U postgres "$db" 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}

declare -A results
for round in $(seq "$ROUNDS"); do
	for c in $CLIENTS; do
		order=$TARGETS
		[ $((round % 2)) -eq 0 ] && order=$(echo "$TARGETS" | tr ' ' '\n' | tac | tr '\n' ' ')
		for target in $order; do
			tps=$(run "$target" "$c")
			log "round $round c=$c $target: $tps tps"
			results[$target.$c]+="$tps "
		done
	done
done

# Both databases must end with users_v2 equal to the write map of users.
check='select (select count(*) from (select id, split_part(full_name, $$ $$, 1), nullif(substr(full_name, length(split_part(full_name, $$ $$, 1)) + 2), $$$$) from users except select id, first_name, last_name from users_v2) d)'
for db in trig proxied; do
	diff=$(psql_db "$db" -At -c "$check")
	[ "$diff" = 0 ] || { echo "ERROR: $db: users_v2 differs from the write map of users on $diff rows" >&2; exit 1; }
done

echo
echo "mirrored UPDATE (pgbench -M prepared, median of $ROUNDS x ${DURATION}s, $USERS users, proxies reach postgres over $UPSTREAM)"
printf '%-8s %-9s %-9s %-17s %-12s %-13s %-15s %s\n' clients trigger pgcanary pgcanary/trigger "form direct" form/trigger "form pgbouncer" pgcanary/form-pgbouncer
for c in $CLIENTS; do
	t=$(echo "${results[trigger.$c]}" | tr ' ' '\n' | grep . | median)
	p=$(echo "${results[pgcanary.$c]}" | tr ' ' '\n' | grep . | median)
	f=$(echo "${results[form.$c]}" | tr ' ' '\n' | grep . | median)
	b=$(echo "${results[bouncer.$c]:-}" | tr ' ' '\n' | grep . | median)
	if [ -n "$b" ]; then
		printf '%-8s %-9.0f %-9.0f %-17.2f %-12.0f %-13.2f %-15.0f %.2f\n' "$c" "$t" "$p" "$(echo "$p / $t" | bc -l)" "$f" "$(echo "$f / $t" | bc -l)" "$b" "$(echo "$p / $b" | bc -l)"
	else
		printf '%-8s %-9.0f %-9.0f %-17.2f %-12.0f %-13.2f %-15s %s\n' "$c" "$t" "$p" "$(echo "$p / $t" | bc -l)" "$f" "$(echo "$f / $t" | bc -l)" - -
	fi
done
echo "form direct: pgcanary's mirrored SQL sent straight to Postgres (no proxy): the database's cost of the form"
echo "form pgbouncer: the same SQL through PgBouncer (session mode): the cost of any relay in the path"
echo "both shapes agree in both databases"

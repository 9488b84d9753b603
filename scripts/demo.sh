#!/usr/bin/env bash
# make demo: a schema migration from start to finish through pgcanary, on a throwaway PostgreSQL.
# The two example migrations (examples/): dual writes, backfill, verify, an application-like
# workload while reads ramp 0 -> 5 -> 25 -> 100 % to the new shapes with comparisons running, then a
# deliberately wrong read map that the canary catches and rolls back on its own. Cleans up after
# itself; takes about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/cluster.sh
source scripts/lib/cluster.sh

BIN=${PGCANARY_BIN:-bin/pgcanary}
[ -x "$BIN" ] || go build -o "$BIN" ./cmd/pgcanary
BIN=$(readlink -f "$BIN")
TMP=$(mktemp -d /tmp/pgcanary-demo.XXXXXX)
chmod 755 "$TMP"
PGPORT=$(free_port)
PROXYPORT=$(free_port)
ADMINPORT=$(free_port)
ADMIN=127.0.0.1:$ADMINPORT
CFG=$TMP/pgcanary.yaml
DSN="postgres://postgres@127.0.0.1:$PROXYPORT/app?sslmode=disable"
PROXY_PID=
LOAD_PID=
START=$SECONDS

cleanup() {
	if [ -n "$LOAD_PID" ]; then kill "$LOAD_PID" 2>/dev/null && wait "$LOAD_PID" 2>/dev/null || true; fi
	if [ -n "$PROXY_PID" ]; then kill "$PROXY_PID" 2>/dev/null && wait "$PROXY_PID" 2>/dev/null || true; fi
	cluster_stop "$TMP"
	rm -rf "$TMP"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
note() { printf '\033[2m%s\033[0m\n' "$*"; }
die() {
	echo "demo: $*" >&2
	[ -f "$TMP/pgcanary.log" ] && tail -20 "$TMP/pgcanary.log" >&2
	exit 1
}

metrics() { curl -fsS "http://$ADMIN/metrics"; }
# metric_sum NAME [LABEL-REGEX]: the sum of NAME's series whose labels match.
metric_sum() {
	metrics | awk -v name="$1" -v re="${2:-}" '
		index($0, name) == 1 && (substr($0, length(name) + 1, 1) == "{" || substr($0, length(name) + 1, 1) == " ") && $0 ~ re { s += $NF }
		END { printf "%d\n", s }'
}
# comparisons: pgcanary_comparisons_total by migration and result, one line per migration.
comparisons() {
	metrics | awk '/^pgcanary_comparisons_total\{/ {
			m = $0; sub(/.*migration="/, "", m); sub(/".*/, "", m)
			r = $0; sub(/.*result="/, "", r); sub(/".*/, "", r)
			line[m] = line[m] sprintf("  %s=%d", r, $NF)
		}
		END { for (m in line) printf "  comparisons %-17s%s\n", m, line[m] }' | sort
}
# api_field MIGRATION PATH: one field (e.g. kill_switch.engaged) of GET /v1/migrations/MIGRATION,
# with jq, else python3, else sed (enough for these flat fields of Go's compact JSON).
api_field() {
	local json
	json=$(curl -fsS -H "Authorization: Bearer $TOKEN" "http://$ADMIN/v1/migrations/$1") || return 1
	if command -v jq >/dev/null; then
		jq -r ".$2" <<<"$json"
	elif command -v python3 >/dev/null; then
		python3 -c 'import json, sys
v = json.loads(sys.argv[2])
for k in sys.argv[1].split("."):
    v = v[k]
print(str(v).lower() if isinstance(v, bool) else v)' "$2" "$json"
	else
		if [[ $2 == *.* ]]; then json=${json#*\"${2%%.*}\":*\{}; fi
		grep -oE "\"${2##*.}\": *(\"[^\"]*\"|[^,} ]*)" <<<"$json" | head -1 | sed -E 's/^"[^"]*": *//; s/^"(.*)"$/\1/'
	fi
}
status() { "$BIN" status --config "$CFG" --admin "$ADMIN"; }
# poll SECONDS COMMAND...: run COMMAND every 0.5 s until it succeeds; fails after SECONDS.
poll() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@"; do
		[ "$SECONDS" -lt "$deadline" ] || return 1
		sleep 0.5
	done
}
WORKLOAD=("$TMP/workload" --dsn "$DSN" --clients 8)
# compare_ratio R: set both migrations' compare-ratio flags in the flag file pgcanary watches.
compare_ratio() {
	sed -i -E "/compare-ratio/,/defaultVariant/ s/\"default\": [0-9.]+/\"default\": $1/" "$TMP/flags.json"
	ratio_is() { [ "$(api_field users-split-name compare_ratio)" = "$1" ] && [ "$(api_field orders-cents compare_ratio)" = "$1" ]; }
	poll 10 ratio_is "$1" || die "pgcanary did not pick up compare ratio $1"
}

step "Starting a throwaway PostgreSQL on 127.0.0.1:$PGPORT and loading examples/schema.sql"
note "users -> users_v2 (full_name split in two) and orders.amount_cents next to orders.amount."
cluster_start "$TMP" "$PGPORT"
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres)
"${PSQL[@]}" -d postgres -c "create database app"
"${PSQL[@]}" -d app -v users=50000 -v orders=20000 -f examples/schema.sql
# The new shapes start empty: that is what backfill is for.
"${PSQL[@]}" -d app -c "truncate users_v2" -c "update orders set amount_cents = null" -c "vacuum analyze users_v2, orders"
"${PSQL[@]}" -d app -At -F ' ' -c "select 'users: ' || (select count(*) from users) || ', users_v2: ' || (select count(*) from users_v2)
	|| ', orders: ' || (select count(*) from orders) || ' (amount_cents set: ' || (select count(amount_cents) from orders) || ')'"
go build -o "$TMP/workload" ./examples/workload

step "Starting pgcanary serve --config (examples/pgcanary.yaml, examples/flags.json): clients on :$PROXYPORT, admin on :$ADMINPORT"
# The example configuration with this demo's ports and an admin token (for rollback and resume).
# Comparisons stay off (compare-ratio 0) until backfill and verify have made the new shapes whole:
# compared against an empty users_v2, every read would mismatch and fail the canary.
sed -e "s/^listen: .*/listen: 127.0.0.1:$PROXYPORT/" \
	-e "s/^admin: .*/admin: {listen: $ADMIN, token_file: admin.token}\nlog_level: warn/" \
	examples/pgcanary.yaml >"$CFG"
sed -e 's/"default": 0.1/"default": 0/' examples/flags.json >"$TMP/flags.json"
python3 -c 'import secrets; print(secrets.token_hex(16))' >"$TMP/admin.token" 2>/dev/null || echo "demo-$RANDOM$RANDOM" >"$TMP/admin.token"
chmod 600 "$TMP/admin.token"
TOKEN=$(cat "$TMP/admin.token")
export PGCANARY_UPSTREAM=127.0.0.1:$PGPORT PGCANARY_SIDE_DSN="postgres://postgres@127.0.0.1:$PGPORT/app?sslmode=disable" PGCANARY_DATABASE=app
"$BIN" check --config "$CFG"
echo "What pgcanary will do with an application's UPDATE and SELECT (pgcanary explain, lines cut at 150 characters):"
for sql in 'UPDATE users SET email = $1 WHERE id = $2' 'SELECT id, full_name FROM users WHERE id = $1'; do
	echo "  $sql"
	"$BIN" explain --config "$CFG" "$sql" | awk '{ print "  " (length($0) > 150 ? substr($0, 1, 149) "…" : $0) }'
done
"$BIN" serve --config "$CFG" 2>"$TMP/pgcanary.log" &
PROXY_PID=$!
poll 15 "$BIN" healthcheck --admin "$ADMIN" >/dev/null 2>&1 || die "pgcanary did not become healthy"
echo "healthz: $("$BIN" healthcheck --admin "$ADMIN")   readyz: $("$BIN" healthcheck --admin "$ADMIN" --path /readyz)"

step "Backfill both migrations while the application writes through pgcanary (writes are mirrored)"
"${WORKLOAD[@]}" --duration 5m >"$TMP/workload.out" 2>&1 &
LOAD_PID=$!
sleep 1
"$BIN" backfill --config "$CFG" users-split-name
"$BIN" backfill --config "$CFG" orders-cents
kill -TERM "$LOAD_PID"
wait "$LOAD_PID" || die "workload failed: $(cat "$TMP/workload.out")"
LOAD_PID=
cat "$TMP/workload.out"

step "Verify: the write map of every old row equals the new shape (0 differences)"
"$BIN" verify --config "$CFG" users-split-name
"$BIN" verify --config "$CFG" orders-cents

step "Ramp reads to the new shapes, 0 -> 5 -> 25 -> 100 %, with the workload running at each step"
note "Comparisons on: a quarter of the reads are run old and new in one snapshot, whichever shape served them."
compare_ratio 0.25
for pct in 0 5 25 100; do
	printf '\n\033[1m-- %s %%\033[0m\n' "$pct"
	"$BIN" ramp --config "$CFG" users-split-name "$pct"
	"$BIN" ramp --config "$CFG" orders-cents "$pct"
	"${WORKLOAD[@]}" --duration 4s
	status
	comparisons
done

step "A wrong read map: full_name: concat_ws(' ', first_name, left(last_name, 3))"
note "The config file is hot-reloaded; reads served by users_v2 now return truncated names."
GEN=$(metric_sum pgcanary_config_generation)
sed -i "s/full_name: concat_ws(' ', first_name, last_name)/full_name: concat_ws(' ', first_name, left(last_name, 3))/" "$CFG"
generation_above() { [ "$(metric_sum pgcanary_config_generation)" -gt "$1" ]; }
poll 30 generation_above "$GEN" || die "pgcanary did not reload the configuration"
echo "configuration generation $GEN -> $(metric_sum pgcanary_config_generation)"
killed() { [ "$(api_field users-split-name kill_switch.engaged)" = true ]; }
T0=$SECONDS
"${WORKLOAD[@]}" --duration 30s >"$TMP/workload.out" 2>&1 &
LOAD_PID=$!
poll 30 killed || die "the kill switch did not engage"
echo "verdict $(api_field users-split-name verdict.status), kill switch engaged after $((SECONDS - T0)) s: $(api_field users-split-name kill_switch.reason)"
kill -TERM "$LOAD_PID"
wait "$LOAD_PID" || die "workload failed: $(cat "$TMP/workload.out")"
LOAD_PID=
cat "$TMP/workload.out"

step "The mismatches pgcanary recorded (GET /v1/migrations/users-split-name/mismatches?limit=3)"
MISMATCHES=$(curl -fsS -H "Authorization: Bearer $TOKEN" "http://$ADMIN/v1/migrations/users-split-name/mismatches?limit=3")
if command -v jq >/dev/null; then jq . <<<"$MISMATCHES"; else echo "$MISMATCHES"; fi

step "Kill switch on: every users read is served by the old shape again, whatever the flag says"
note "Comparisons go on (mismatches keep counting) while clients get the old shape's answers."
NEW0=$(metric_sum pgcanary_statements_total 'migration="users-split-name".*route="new"|route="new".*migration="users-split-name"')
"${WORKLOAD[@]}" --duration 3s
NEW1=$(metric_sum pgcanary_statements_total 'migration="users-split-name".*route="new"|route="new".*migration="users-split-name"')
status
comparisons
echo "users-split-name reads served by users_v2 during those 3 s: $((NEW1 - NEW0))"
[ "$NEW1" -eq "$NEW0" ] || die "reads still went to the new shape"

step "Fix the read map, wait for the reload, ramp to 25 % and pgcanary resume: reads go back to users_v2"
GEN=$(metric_sum pgcanary_config_generation)
sed -i "s/full_name: concat_ws(' ', first_name, left(last_name, 3))/full_name: concat_ws(' ', first_name, last_name)/" "$CFG"
poll 30 generation_above "$GEN" || die "pgcanary did not reload the configuration"
# Comparisons still queued from before the fix would be judged after resume: let them finish.
compared() { metric_sum pgcanary_comparisons_total 'result="(match|mismatch|error|skipped)"'; }
settled() {
	local before
	before=$(compared)
	sleep 1
	[ "$(compared)" -eq "$before" ]
}
poll 30 settled || die "comparisons did not settle"
# Resume carefully: at 25 % first, as 'pgcanary resume --help' advises.
"$BIN" ramp --config "$CFG" users-split-name 25
flag_is() { awk -v v="$(api_field users-split-name flag_value)" -v want="$1" 'BEGIN { exit !(v + 0 == want) }'; }
poll 10 flag_is 25 || die "pgcanary did not pick up the flag change"
"$BIN" resume --config "$CFG" --admin "$ADMIN" users-split-name
"${WORKLOAD[@]}" --duration 5s
status
comparisons

step "SIGTERM: pgcanary drains and exits"
kill -TERM "$PROXY_PID"
wait "$PROXY_PID" && echo "pgcanary exited 0"
PROXY_PID=
echo
echo "Done in $((SECONDS - START)) s: the throwaway cluster and files are removed."

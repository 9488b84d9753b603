# shellcheck shell=bash
# Throwaway PostgreSQL clusters for scripts (demo, bench). Source it, then:
#   cluster_start DIR PORT   initdb into DIR/data, start on 127.0.0.1:PORT with trust auth
#   cluster_stop DIR         stop it (fast) — call from an EXIT trap
#   free_port                print a free TCP port on 127.0.0.1
# initdb and pg_ctl refuse to run as root: as root they run as the postgres user.

pg_bindir() {
	local p
	if p=$(command -v initdb 2>/dev/null); then dirname "$(readlink -f "$p")"; return; fi
	p=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
	[ -n "$p" ] || { echo "PostgreSQL not found: run scripts/ensure-postgres.sh" >&2; return 1; }
	echo "$p"
}

as_pg() {
	if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()' 2>/dev/null ||
		echo $((20000 + RANDOM % 20000))
}

cluster_start() {
	local dir=$1 port=$2 bin
	bin=$(pg_bindir) || return 1
	mkdir -p "$dir"
	[ "$(id -u)" -eq 0 ] && chown postgres "$dir"
	as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 ||
		{ cat "$dir/initdb.log" >&2; return 1; }
	as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -o \
		"-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c fsync=off -c synchronous_commit=off -c max_connections=100" \
		start >/dev/null || { tail -20 "$dir/postgres.log" >&2; return 1; }
}

cluster_stop() {
	local dir=$1 bin
	bin=$(pg_bindir) || return 0
	[ -f "$dir/data/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
}

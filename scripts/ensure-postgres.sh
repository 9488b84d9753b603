#!/usr/bin/env bash
# ensure-postgres.sh makes sure PostgreSQL server binaries (initdb, pg_ctl,
# postgres) are available for the tests in test/pgtest, installing them with
# apt-get when running as root on Debian/Ubuntu.
#
# Usage: scripts/ensure-postgres.sh [--with-pgbouncer]
#
# The packaged cluster service is never started: the tests run their own
# throwaway clusters (see test/pgtest), or use PGCANARY_TEST_DSN.
set -euo pipefail

with_pgbouncer=0
for arg in "$@"; do
	case "$arg" in
	--with-pgbouncer) with_pgbouncer=1 ;;
	-h | --help)
		sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "ensure-postgres: unknown argument: $arg" >&2
		exit 2
		;;
	esac
done

# find_initdb prints the initdb that test/pgtest's FindBin would use: PATH
# first, then the highest version under /usr/lib/postgresql (Debian and
# Ubuntu keep the server binaries off PATH).
find_initdb() {
	if command -v initdb 2>/dev/null; then
		return 0
	fi
	local found
	found=$(ls -1d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -t/ -k5,5V | tail -n 1 || true)
	if [[ -n "$found" && -x "$found" ]]; then
		echo "$found"
		return 0
	fi
	return 1
}

# Debian installs pgbouncer in /usr/sbin, which is not on a normal user's PATH.
find_pgbouncer() {
	if command -v pgbouncer 2>/dev/null; then
		return 0
	fi
	if [[ -x /usr/sbin/pgbouncer ]]; then
		echo /usr/sbin/pgbouncer
		return 0
	fi
	return 1
}

report() {
	local initdb
	initdb=$(find_initdb)
	echo "ensure-postgres: initdb: $initdb ($("$initdb" --version))"
	local py
	if py=$(find_psycopg_python); then
		echo "ensure-postgres: $py: psycopg $("$py" -c 'import psycopg; print(psycopg.__version__)'), psycopg2 $("$py" -c 'import psycopg2; print(psycopg2.__version__.split()[0])')"
	fi
	if ((with_pgbouncer)); then
		echo "ensure-postgres: pgbouncer: $(find_pgbouncer)"
	fi
}

# The psycopg driver test (test/e2e/psycopg_test.go) runs Python's psycopg 3 and psycopg2, and
# is skipped without them: they are installed where this script can install, never required.
# Debian's packages go to the system Python, which another python3 on PATH (pyenv) may hide; the
# test looks in the same two places.
find_psycopg_python() {
	local py
	for py in /usr/bin/python3 python3; do
		if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import psycopg, psycopg2' >/dev/null 2>&1; then
			echo "$py"
			return 0
		fi
	done
	return 1
}
have_psycopg() {
	find_psycopg_python >/dev/null
}
can_install() {
	[[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1
}

packages=()
if ! find_initdb >/dev/null; then
	packages+=(postgresql)
fi
if ((with_pgbouncer)) && ! find_pgbouncer >/dev/null; then
	packages+=(pgbouncer)
fi
optional=()
if ! have_psycopg; then
	optional+=(python3-psycopg python3-psycopg2)
fi
if ((${#packages[@]} == 0)) && { ((${#optional[@]} == 0)) || ! can_install; }; then
	if ((${#optional[@]} > 0)); then
		echo "ensure-postgres: python3 psycopg/psycopg2 not installed: the psycopg driver test will be skipped" >&2
	fi
	report
	exit 0
fi

if ! can_install; then
	cat >&2 <<-MSG
		ensure-postgres: missing: ${packages[*]}
		  initdb was not found on PATH nor in /usr/lib/postgresql/*/bin, or pgbouncer
		  was requested and not found. This script only installs automatically as
		  root on a system with apt-get. Install PostgreSQL yourself, for example:
		    Debian/Ubuntu:  sudo apt-get install postgresql-15 postgresql-client-15
		    Fedora/RHEL:    sudo dnf install postgresql-server postgresql
		    macOS:          brew install postgresql@15 (and put its bin on PATH)
		  (plus the pgbouncer package if --with-pgbouncer was given).
		  Alternatively set PGCANARY_TEST_DSN to the superuser DSN of an existing
		  server, e.g. postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable
	MSG
	exit 1
fi

export DEBIAN_FRONTEND=noninteractive

# Keep the packages' maintainer scripts from starting services
# (invoke-rc.d honours policy-rc.d; exit code 101 means "action forbidden").
# Only a policy-rc.d we created is removed again.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod 755 "$policy"
	trap 'rm -f "$policy"' EXIT
fi

echo "ensure-postgres: installing: ${packages[*]} ${optional[*]}"
apt-get update

install=()
for p in "${packages[@]}" "${optional[@]}"; do
	case "$p" in
	postgresql)
		if apt-cache show postgresql-15 >/dev/null 2>&1 && apt-cache show postgresql-client-15 >/dev/null 2>&1; then
			install+=(postgresql-15 postgresql-client-15)
		else
			echo "ensure-postgres: postgresql-15 is not available; installing the distribution's default postgresql" >&2
			install+=(postgresql postgresql-client)
		fi
		;;
	*) install+=("$p") ;;
	esac
done
apt-get install -y --no-install-recommends "${install[@]}"

# If the package created a "main" cluster and managed to start it anyway
# (e.g. under systemd), stop it: the tests start their own clusters, and a
# running system server would only hold port 5432 and memory.
if command -v pg_lsclusters >/dev/null 2>&1; then
	while read -r ver name _; do
		[[ -n "$ver" && -n "$name" ]] || continue
		pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true
	done < <(pg_lsclusters --no-header 2>/dev/null || true)
else
	pg_ctlcluster 15 main stop 2>/dev/null || true
fi
if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
	systemctl disable --now postgresql pgbouncer >/dev/null 2>&1 || true
fi

if ! find_initdb >/dev/null; then
	echo "ensure-postgres: installed ${install[*]} but initdb is still not found" >&2
	exit 1
fi
if ((with_pgbouncer)) && ! find_pgbouncer >/dev/null; then
	echo "ensure-postgres: installed ${install[*]} but pgbouncer is still not found" >&2
	exit 1
fi
report

# shellcheck shell=bash
# bench/cluster/pg.sh - a private PostgreSQL server for bench/cluster.sh.
#
# Sourced after bench/lib.sh, never run. The same recipe as tests/common/pg.rs: initdb
# into a fresh directory (trust authentication, superuser `postgres`, UTF8, C locale),
# `postgres` listening on 127.0.0.1 only on a port free when it started (PG_PORT=0) or
# PG_PORT, its unix socket in that directory. initdb and postgres refuse to run as root:
# as root they run as the OS user `postgres` (created as a system user when missing)
# through runuser (or su), and the directory is made under /tmp (reachable by that user)
# and chowned to it.
#
# Durability is PG_FSYNC: "on" (the default here: fsync, synchronous_commit and
# full_page_writes at PostgreSQL's defaults, i.e. what a production server does) or "off"
# (fsync, synchronous_commit, full_page_writes off, as the tests run it).
#
# Functions (they read PY, HZ, LOOP, KEEP_WORK and the knobs PG_BIN, PG_PORT, PG_FSYNC,
# PG_SHARED_BUFFERS):
#   pg_find_bin            PG_BIN_DIR = $PG_BIN, else `pg_config --bindir`, else the real
#                          directory of `initdb` on PATH, else the newest
#                          /usr/lib/postgresql/*/bin; returns 1 when none has initdb,
#                          pg_ctl and postgres
#   pg_install             as root on Debian/Ubuntu: apt-get install postgresql without
#                          starting its system-wide cluster (policy-rc.d)
#   pg_start               initdb + pg_ctl start + CREATE nothing; sets PG_DIR, PG_PORT,
#                          PG_STARTED=1, PG_VERSION, PG_SETTINGS (as the server reports them)
#   pg_psql DB SQL         psql over TCP, unaligned tuples-only output
#   pg_create_db NAME      CREATE DATABASE NAME
#   pg_url DB              postgres://postgres@127.0.0.1:PORT/DB
#   pg_ticks               utime+stime of the whole instance: postmaster incl. its reaped
#                          children (cutime+cstime) + every live child (backends,
#                          checkpointer, walwriter, autovacuum, ...), in clock ticks
#   pg_log_problems        "N ERROR/FATAL/PANIC lines[: first one]" from postgres.log
#   pg_stop                pg_ctl stop -m fast (then immediate, then KILL), bounded;
#                          removes PG_DIR unless KEEP_WORK=1

PG_BIN_DIR=""
PG_DIR=""
PG_RUN_AS=""
PG_STARTED=0
PG_VERSION=""
PG_SETTINGS=""

pg_has_server() { [[ -n "$1" && -x "$1/initdb" && -x "$1/pg_ctl" && -x "$1/postgres" ]]; }

pg_find_bin() {
	local d candidates=()
	if [[ -n "${PG_BIN:-}" ]]; then
		pg_has_server "$PG_BIN" || die "PG_BIN=$PG_BIN lacks initdb/pg_ctl/postgres"
		PG_BIN_DIR="$PG_BIN"
		return 0
	fi
	candidates+=("$(pg_config --bindir 2>/dev/null || true)")
	d="$(command -v initdb 2>/dev/null || true)"
	[[ -z "$d" ]] || candidates+=("$(dirname "$(readlink -f "$d")")")
	while IFS= read -r d; do candidates+=("$d"); done < <(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4,4 -V -r)
	for d in "${candidates[@]}"; do
		if pg_has_server "$d"; then
			PG_BIN_DIR="$d"
			return 0
		fi
	done
	return 1
}

pg_install() { # pg_install LOGFILE
	[[ "$(id -u)" == 0 ]] || die "no PostgreSQL server binaries and not root: apt-get install postgresql (or set PG_BIN)"
	command -v apt-get >/dev/null || die "no PostgreSQL server binaries (initdb, pg_ctl, postgres): install them or set PG_BIN"
	log "installing postgresql (apt-get; its system-wide cluster is not started)"
	local made_policy=0 rc=0
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		made_policy=1
	fi
	{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql; } >"$1" 2>&1 || rc=$?
	if [[ "$made_policy" == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
	((rc == 0)) || die "apt-get install postgresql failed; see $1"
}

pg_as() { # pg_as PROGRAM ARGS...: a server program, as PG_RUN_AS when set, in PG_DIR
	local prog="$PG_BIN_DIR/$1"
	shift
	if [[ -z "$PG_RUN_AS" ]]; then
		(cd "$PG_DIR" && "$prog" "$@") </dev/null
	elif command -v runuser >/dev/null; then
		(cd "$PG_DIR" && runuser -u "$PG_RUN_AS" -- "$prog" "$@") </dev/null
	else
		local line a
		line="$(printf '%q' "$prog")"
		for a in "$@"; do line+=" $(printf '%q' "$a")"; done
		(cd "$PG_DIR" && su -s /bin/sh "$PG_RUN_AS" -c "$line") </dev/null
	fi
}

pg_client() { # psql / pg_isready: beside the server binaries, else on PATH
	if [[ -x "$PG_BIN_DIR/$1" ]]; then echo "$PG_BIN_DIR/$1"; else echo "$1"; fi
}

pg_free_port() {
	"$PY" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

pg_start() {
	local base="${TMPDIR:-/tmp}" opts attempt fixed_port=0 sc fpw
	if [[ "$(id -u)" == 0 ]]; then
		PG_RUN_AS=postgres
		base=/tmp # TMPDIR may be under /root, which the postgres user cannot reach
		if ! id -u "$PG_RUN_AS" >/dev/null 2>&1; then
			useradd --system --user-group --no-create-home --home-dir /nonexistent \
				--shell /usr/sbin/nologin "$PG_RUN_AS" >/dev/null 2>&1 || true
		fi
		id -u "$PG_RUN_AS" >/dev/null 2>&1 || die "running as root: PostgreSQL needs the OS user $PG_RUN_AS and useradd could not create it"
	fi
	PG_DIR="$(mktemp -d "$base/postern-cluster-pg.XXXXXX")"
	[[ -z "$PG_RUN_AS" ]] || chown "$PG_RUN_AS:" "$PG_DIR"
	pg_as initdb -D "$PG_DIR/data" -U postgres -A trust -E UTF8 --locale=C --no-sync \
		--no-instructions >"$PG_DIR/initdb.log" 2>&1 ||
		die "initdb failed: $(tail -n 5 "$PG_DIR/initdb.log")"
	case "$PG_FSYNC" in
	on) sc=on fpw=on ;;
	off) sc=off fpw=off ;;
	*) die "PG_FSYNC must be on or off (got '$PG_FSYNC')" ;;
	esac
	[[ "$PG_PORT" == 0 ]] || fixed_port=1
	for ((attempt = 1; ; attempt++)); do
		((fixed_port)) || PG_PORT="$(pg_free_port)"
		require_free_port "$PG_PORT" "PostgreSQL" PG_PORT
		opts="-p $PG_PORT -c listen_addresses=$LOOP -k $PG_DIR -c fsync=$PG_FSYNC"
		opts+=" -c synchronous_commit=$sc -c full_page_writes=$fpw"
		opts+=" -c shared_buffers=$PG_SHARED_BUFFERS -c max_connections=200"
		PG_STARTED=1
		if pg_as pg_ctl -D "$PG_DIR/data" -w -t 60 start -l "$PG_DIR/postgres.log" -o "$opts" \
			>"$PG_DIR/pg_ctl.log" 2>&1; then
			break
		fi
		if ((!fixed_port && attempt < 5)) && grep -q "could not bind" "$PG_DIR/postgres.log" 2>/dev/null; then
			PG_STARTED=0 # it exited: the port was taken after we looked
			continue
		fi
		die "PostgreSQL did not start: $(tail -n 3 "$PG_DIR/pg_ctl.log") $(tail -n 5 "$PG_DIR/postgres.log" 2>/dev/null)"
	done
	local deadline=$((SECONDS + 60))
	until "$(pg_client pg_isready)" -h "$LOOP" -p "$PG_PORT" -U postgres -d postgres -t 1 >/dev/null 2>&1; do
		((SECONDS < deadline)) || die "PostgreSQL not ready on $LOOP:$PG_PORT after 60 s: $(tail -n 5 "$PG_DIR/postgres.log")"
		sleep 0.1
	done
	PG_VERSION="$("$PG_BIN_DIR/postgres" --version 2>/dev/null | awk '{ print $3 }')"
	PG_SETTINGS="$(pg_psql postgres "SELECT 'fsync=' || current_setting('fsync')
		|| ', synchronous_commit=' || current_setting('synchronous_commit')
		|| ', full_page_writes=' || current_setting('full_page_writes')
		|| ', shared_buffers=' || current_setting('shared_buffers')
		|| ', max_connections=' || current_setting('max_connections')")" ||
		die "psql failed: $PG_SETTINGS"
}

pg_psql() { # pg_psql DB SQL
	"$(pg_client psql)" -X -q -A -t -v ON_ERROR_STOP=1 -w -h "$LOOP" -p "$PG_PORT" -U postgres \
		-d "$1" -c "$2" </dev/null 2>&1
}

pg_create_db() {
	local out
	out="$(pg_psql postgres "CREATE DATABASE $1")" || die "CREATE DATABASE $1 failed: $out"
}

pg_url() { echo "postgres://postgres@$LOOP:$PG_PORT/$1"; }

pg_master_pid() { head -n 1 "$PG_DIR/data/postmaster.pid" 2>/dev/null | tr -dc '0-9' || true; }

pg_ticks() {
	local master total c
	master="$(pg_master_pid)"
	[[ -n "$master" ]] || {
		echo 0
		return
	}
	total="$(ticks_of "$master" all)"
	for c in $(ps -o pid= --ppid "$master" 2>/dev/null); do
		total=$((total + $(ticks_of "$c")))
	done
	echo "$total"
}

pg_log_problems() {
	local f="$PG_DIR/postgres.log" n first
	n="$(grep -cE '(ERROR|FATAL|PANIC):' "$f" 2>/dev/null || true)"
	n="${n:-0}"
	first="$(grep -m1 -E '(ERROR|FATAL|PANIC):' "$f" 2>/dev/null | cut -c1-200 || true)"
	echo "$n ERROR/FATAL/PANIC lines${first:+; first: $first}"
}

pg_stop() {
	[[ -n "$PG_DIR" ]] || return 0
	if [[ "$PG_STARTED" == 1 ]]; then
		local master
		master="$(pg_master_pid)"
		pg_as pg_ctl -D "$PG_DIR/data" -w -t 30 stop -m fast >/dev/null 2>&1 ||
			pg_as pg_ctl -D "$PG_DIR/data" -w -t 10 stop -m immediate >/dev/null 2>&1 || true
		[[ -z "$master" ]] || await_exit "$master" 10 "postgres $master still running; killing it"
		PG_STARTED=0
	fi
	if [[ "$KEEP_WORK" == 1 ]]; then
		log "kept the PostgreSQL directory $PG_DIR (postgres.log)"
	else
		rm -rf "$PG_DIR"
	fi
	PG_DIR=""
}

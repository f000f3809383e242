#!/usr/bin/env bash
# bench/outbound.sh - outbound (sending) throughput benchmark, loopback only.
#
# Measures, in one run, and prints a table side by side:
#   1. postern end to end: HTTP Messaging API -> postern -> smtp-sink, twice (DKIM
#      rsa-sha256 = RSA-2048, then ed25519-sha256; a fresh data dir each time).
#      MESSAGES messages of ~5 KB (a 5,000-character text body) sent as
#      MESSAGES/PER_REQUEST requests of PER_REQUEST destinations each
#      ("to":[{"email":[...100 addresses]}], no multipleToRecipients: one message and
#      one tid per address). Done = the asset's delivery_webhook (bench/outbound/dlr_sink.py)
#      has received a 7501 (Submitted: the smarthost said 250) for every message.
#      msgs/s = MESSAGES / (first API request sent -> last 7501 received).
#      CPU s per 1,000 msgs = postern's utime+stime (/proc/PID/stat) over that span;
#      peak RSS = VmHWM of postern after the run.
#   2. The reference: a private Postfix instance (own config/queue/data dirs in the temp
#      dir, smtpd on 127.0.0.1:POSTFIX_PORT) relaying `smtp-source -s 20 -m MESSAGES
#      -l 5120 -f a@bench.test -t u@relay.test` to the same kind of smtp-sink
#      (relayhost = [127.0.0.1]:SINK_PORT). msgs/s = MESSAGES / (smtp-source start ->
#      smtp-sink has counted MESSAGES messages).
#   3. postern's API accept latency (request sent -> 202) at a fixed, scheduled rate of
#      LAT_RATE requests/s for LAT_DURATION s, 1 destination per request
#      (bench/outbound/loadgen.py rate; open loop, paced by schedule).
# Goals printed with met / not met (informational, never change the exit status):
#   postern RSA-2048 >= 2x Postfix relay, postern Ed25519 >= 3x Postfix relay.
#
# Usage (as root: installs Postfix's tools when missing and runs a private Postfix):
#   bench/outbound.sh                    # full run, 20,000 messages per measurement
#   MESSAGES=2000 bench/outbound.sh      # quick run
#   bench/outbound.sh > result.txt       # progress on stderr, the report on stdout
#
# Knobs (environment):
#   MESSAGES=20000       messages per measurement (a multiple of PER_REQUEST)
#   PER_REQUEST=100      destinations per API request
#   TEXT_CHARS=5000      characters of the text body (~5 KB messages)
#   SIZE=5120            smtp-source message size (-l) for the Postfix reference
#   SESSIONS=20          smtp-source sessions; also Postfix's relay concurrency limit
#   BULK_CONCURRENCY=8   API requests in flight during the bulk send
#   ALGORITHMS="rsa-sha256 ed25519-sha256"   postern runs, in this order
#   LAT_RATE=200 LAT_DURATION=10   latency test (LAT_RATE=0 skips it)
#   LAT_ALGORITHM=rsa-sha256       the postern run after which the latency test runs
#   QUEUE_CONCURRENCY=32           postern [queue] concurrency
#   SKIP_POSTFIX=1 SKIP_POSTERN=1  leave a part out
#   SKIP_BUILD=1         do not run `cargo build --release`
#   POSTERN_BIN=...      binary (default <repo>/target/release/postern)
#   RUN_TIMEOUT=600      seconds one measurement may take before it is cut short
#   QUIET_WAIT=1200      seconds to wait for a running bench/inbound.sh before each
#                        measurement (then measure anyway, flagged in the report)
#   BUILD_QUIET_WAIT=300 same for a running rustc (someone building on this machine)
#   IDLE_WAIT=120 IDLE_MAX_BUSY=25   then wait (bounded) until the whole machine is at most
#                        25% busy over one second (other tests, fuzzers, ...)
#   BUILD_TRIES=5 BUILD_RETRY_WAIT=120   bounded retry when the build fails
#   KEEP_WORK=1          keep the temp dir (configs, logs, postern.log, Postfix maillog)
#   SINK_PORT=12602 POSTFIX_PORT=12603 POSTERN_SMTP_PORT=12526
#   POSTERN_HTTP_PORT=18081 DLR_PORT=19001
#   (ports differ from bench/inbound.sh's, so the two never collide on a port)
# Reference figure: Postfix relay ~520 msgs/s end to end at 5 KB on this machine class
# (REF_POSTFIX=520). Exit status: 0 unless the setup breaks (build, a daemon not coming
# up, ...); a missed goal or an incomplete run is reported, not fatal.
# Helpers and more notes: bench/outbound/README.md.
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"
export LC_ALL=C

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
HELPERS="$HERE/outbound"
LOOP=127.0.0.1 # never anything else

MESSAGES="${MESSAGES:-20000}"
PER_REQUEST="${PER_REQUEST:-100}"
TEXT_CHARS="${TEXT_CHARS:-5000}"
SIZE="${SIZE:-5120}"
SESSIONS="${SESSIONS:-20}"
BULK_CONCURRENCY="${BULK_CONCURRENCY:-8}"
ALGORITHMS="${ALGORITHMS:-rsa-sha256 ed25519-sha256}"
LAT_RATE="${LAT_RATE:-200}"
LAT_DURATION="${LAT_DURATION:-10}"
LAT_ALGORITHM="${LAT_ALGORITHM:-rsa-sha256}"
QUEUE_CONCURRENCY="${QUEUE_CONCURRENCY:-32}"
SKIP_POSTFIX="${SKIP_POSTFIX:-0}"
SKIP_POSTERN="${SKIP_POSTERN:-0}"
SKIP_BUILD="${SKIP_BUILD:-0}"
POSTERN_BIN="${POSTERN_BIN:-$REPO/target/release/postern}"
RUN_TIMEOUT="${RUN_TIMEOUT:-600}"
QUIET_WAIT="${QUIET_WAIT:-1200}"
BUILD_QUIET_WAIT="${BUILD_QUIET_WAIT:-300}"
IDLE_WAIT="${IDLE_WAIT:-120}"
IDLE_MAX_BUSY="${IDLE_MAX_BUSY:-25}"
BUILD_TRIES="${BUILD_TRIES:-5}"
BUILD_RETRY_WAIT="${BUILD_RETRY_WAIT:-120}"
KEEP_WORK="${KEEP_WORK:-0}"
SINK_PORT="${SINK_PORT:-12602}"
POSTFIX_PORT="${POSTFIX_PORT:-12603}"
POSTERN_SMTP_PORT="${POSTERN_SMTP_PORT:-12526}"
POSTERN_HTTP_PORT="${POSTERN_HTTP_PORT:-18081}"
DLR_PORT="${DLR_PORT:-19001}"
REF_POSTFIX="${REF_POSTFIX:-520}"
GOAL_RSA=2
GOAL_ED=3

SERVICE_KEY="bench-key"

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

for v in MESSAGES PER_REQUEST TEXT_CHARS SIZE SESSIONS BULK_CONCURRENCY LAT_RATE LAT_DURATION \
	QUEUE_CONCURRENCY RUN_TIMEOUT QUIET_WAIT BUILD_QUIET_WAIT IDLE_WAIT IDLE_MAX_BUSY BUILD_TRIES BUILD_RETRY_WAIT SINK_PORT POSTFIX_PORT \
	POSTERN_SMTP_PORT POSTERN_HTTP_PORT DLR_PORT REF_POSTFIX; do
	[[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
((MESSAGES > 0 && PER_REQUEST > 0 && SESSIONS > 0)) || die "MESSAGES, PER_REQUEST and SESSIONS must be > 0"
((PER_REQUEST <= 1000)) || die "PER_REQUEST must be at most 1000 (postern's per-request cap)"
((MESSAGES % PER_REQUEST == 0)) || die "MESSAGES ($MESSAGES) must be a multiple of PER_REQUEST ($PER_REQUEST)"
REQUESTS=$((MESSAGES / PER_REQUEST))
for a in $ALGORITHMS; do
	[[ "$a" == rsa-sha256 || "$a" == ed25519-sha256 ]] || die "ALGORITHMS: unknown '$a'"
done

# ---------------------------------------------------------------- state + cleanup
WORK=""
SINK_PID=""
DLR_PID=""
POSTERN_PID=""
LOAD_PID=""
PF_ETC=""
PF_STARTED=0

stop_pid() { # stop_pid PID [grace-seconds]: TERM, bounded wait, then KILL
	local pid="$1" grace="${2:-10}" i
	[[ -n "$pid" ]] || return 0
	kill -0 "$pid" 2>/dev/null || {
		wait "$pid" 2>/dev/null || true
		return 0
	}
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < grace * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "pid $pid did not stop after ${grace}s; killing it"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}

postfix_master_pid() { tr -dc '0-9' <"$WORK/postfix/spool/pid/master.pid" 2>/dev/null || true; }

postfix_stop() {
	[[ "$PF_STARTED" == 1 ]] || return 0
	local master_pid i
	master_pid="$(postfix_master_pid)"
	postsuper -c "$PF_ETC" -d ALL >/dev/null 2>&1 || true
	postfix -c "$PF_ETC" stop >/dev/null 2>&1 || true
	if [[ -n "$master_pid" ]]; then
		for ((i = 0; i < 100; i++)); do
			kill -0 "$master_pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$master_pid" 2>/dev/null; then
			log "postfix master $master_pid still running; killing it"
			kill -KILL "$master_pid" 2>/dev/null || true
		fi
	fi
	PF_STARTED=0
}

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	((rc == 0)) || log "exiting with status $rc; cleaning up"
	stop_pid "$LOAD_PID" 5
	stop_pid "$POSTERN_PID" 30
	postfix_stop
	stop_pid "$SINK_PID" 5
	stop_pid "$DLR_PID" 5
	if [[ -n "$WORK" && -d "$WORK" ]]; then
		if [[ "$KEEP_WORK" == 1 ]]; then
			log "kept work directory $WORK"
		else
			rm -rf "$WORK"
		fi
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers
now() { date +%s.%N; }
fsub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }

port_open() { # something accepts connections on 127.0.0.1:$1
	(exec 3<>"/dev/tcp/$LOOP/$1") 2>/dev/null
}

wait_port() { # wait_port PORT DEADLINE-SECONDS PID NAME
	local port="$1" deadline=$((SECONDS + $2)) pid="$3" name="$4"
	until port_open "$port"; do
		[[ -z "$pid" ]] || kill -0 "$pid" 2>/dev/null || die "$name exited before listening on $LOOP:$port"
		((SECONDS < deadline)) || die "$name is not listening on $LOOP:$port after $2 s"
		sleep 0.1
	done
}

require_free_port() {
	if port_open "$1"; then die "$LOOP:$1 is already in use ($2); set ${3}=<free port>"; fi
}

http_code() { curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true; }

ticks_of() { # ticks_of PID [all]: utime+stime (+cutime+cstime with "all"), in clock ticks
	local mode="${2:-}" f
	f="$(cat "/proc/$1/stat" 2>/dev/null)" || {
		echo 0
		return
	}
	f="${f##*) }"
	# shellcheck disable=SC2086
	set -- $f
	# after "pid (comm) ": $1=state ... $12=utime $13=stime $14=cutime $15=cstime
	if [[ "$mode" == all ]]; then echo $((${12} + ${13} + ${14} + ${15})); else echo $((${12} + ${13})); fi
}

postfix_ticks() { # CPU of the Postfix instance: master incl. reaped children + live children
	local master_pid total c
	master_pid="$(postfix_master_pid)"
	[[ -n "$master_pid" ]] || {
		echo 0
		return
	}
	total="$(ticks_of "$master_pid" all)"
	for c in $(ps -o pid= --ppid "$master_pid" 2>/dev/null); do
		total=$((total + $(ticks_of "$c")))
	done
	echo "$total"
}

status_kb() { # status_kb PID FIELD -> value in kB from /proc/PID/status
	awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0
}

sink_mesg() { # last "mesg=N" counter printed by smtp-sink -c
	tr '\r' '\n' <"$WORK/smtp-sink.out" 2>/dev/null |
		awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^mesg=/) { sub("mesg=", "", $i); m = $i } } END { print m + 0 }'
}

# dlr_counts -> "TOTAL N7501 LAST7501 BAD" from the notification sink
dlr_counts() {
	curl -s -m 5 "http://$LOOP:$DLR_PORT/count.txt" 2>/dev/null |
		awk '$1 == "total" { t = $2 } $1 == "bad" { b = $2 }
		     $1 == "code" && $2 == "7501" { n = $3; last = $5 }
		     END { printf "%d %d %s %d\n", t, n, (last == "" ? "0" : last), b }' || echo "0 0 0 0"
}
dlr_codes() { # other codes seen, e.g. "7520=3 7592=1"
	curl -s -m 5 "http://$LOOP:$DLR_PORT/count.txt" 2>/dev/null |
		awk '$1 == "code" && $2 != "7501" { printf "%s%s=%s", sep, $2, $3; sep = " " }' || true
}

json_get() { # json_get FILE KEY -> value (or empty)
	"$PY" -c 'import json,sys
d = json.load(open(sys.argv[1]))
v = d.get(sys.argv[2])
print("" if v is None else v)' "$1" "$2" 2>/dev/null || true
}

DISTURBED=""
BUILD_DISTURBED=""
IDLE_DISTURBED=""
wait_quiet() { # wait (bounded) until no bench/inbound.sh and no rustc runs, so the figures are undisturbed
	local what="$1" deadline=$((SECONDS + QUIET_WAIT)) said=0
	while pgrep -f "bench/inbound.sh" >/dev/null 2>&1; do
		if ((!said)); then
			log "bench/inbound.sh is running; waiting up to ${QUIET_WAIT}s before measuring $what"
			said=1
		fi
		if ((SECONDS >= deadline)); then
			log "WARNING: bench/inbound.sh still running; measuring $what anyway"
			DISTURBED="${DISTURBED:+$DISTURBED, }$what"
			break
		fi
		sleep 5
	done
	((!said)) || log "done waiting for bench/inbound.sh"
	# A compiler running on these 2 cores (someone building) distorts every figure too.
	deadline=$((SECONDS + BUILD_QUIET_WAIT))
	said=0
	while pgrep -x rustc >/dev/null 2>&1; do
		if ((!said)); then
			log "rustc is running (a build); waiting up to ${BUILD_QUIET_WAIT}s before measuring $what"
			said=1
		fi
		if ((SECONDS >= deadline)); then
			log "WARNING: rustc still running; measuring $what anyway"
			BUILD_DISTURBED="${BUILD_DISTURBED:+$BUILD_DISTURBED, }$what"
			break
		fi
		sleep 2
	done
	((!said)) || log "done waiting for rustc"
	# Anything else busy on the machine (tests, a fuzzer): wait for a quiet second, bounded.
	local b
	deadline=$((SECONDS + IDLE_WAIT))
	said=0
	while :; do
		b="$(busy_now)"
		((b <= IDLE_MAX_BUSY)) && break
		if ((!said)); then
			log "machine CPU ${b}% busy; waiting up to ${IDLE_WAIT}s for <= ${IDLE_MAX_BUSY}% before measuring $what"
			said=1
		fi
		if ((SECONDS >= deadline)); then
			log "WARNING: machine still ${b}% busy; measuring $what anyway"
			IDLE_DISTURBED="${IDLE_DISTURBED:+$IDLE_DISTURBED, }$what (${b}% busy before)"
			said=0
			break
		fi
	done
	((!said)) || log "machine quiet enough (${b}% busy)"
	[[ -z "${2:-}" ]] || PRE_BUSY[$2]="${b}%"
}

busy_now() { # whole-machine CPU busy % over the next second, as an integer
	local a
	a="$(cpu_snapshot)"
	sleep 1
	busy_pct "$a" "$(cpu_snapshot)" | tr -dc '0-9'
}

cpu_snapshot() { # "BUSY TOTAL" jiffies of the whole machine from /proc/stat
	awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat
}
busy_pct() { # busy_pct "B0 T0" "B1 T1" -> machine CPU busy % over the interval
	local b0 t0 b1 t1
	read -r b0 t0 <<<"$1"
	read -r b1 t1 <<<"$2"
	awk -v b="$((b1 - b0))" -v t="$((t1 - t0))" 'BEGIN { if (t > 0) printf "%.0f%%", 100 * b / t; else print "0%" }'
}

# ---------------------------------------------------------------- setup
ensure_postfix_tools() {
	if ! { command -v smtp-source && command -v smtp-sink && command -v postfix; } >/dev/null; then
		[[ "$(id -u)" == 0 ]] || die "smtp-source/smtp-sink/postfix missing and not root: apt-get install postfix"
		log "installing postfix (for smtp-source, smtp-sink and the Postfix reference)"
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
		# Keep the package from starting a system-wide postfix on port 25 while it installs.
		local made_policy=0 rc=0
		if [[ ! -e /usr/sbin/policy-rc.d ]]; then
			printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
			chmod 755 /usr/sbin/policy-rc.d
			made_policy=1
		fi
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postfix; } \
			>"${TMPDIR:-/tmp}/postern-outbound-bench-apt.log" 2>&1 || rc=$?
		[[ "$made_policy" == 1 ]] && rm -f /usr/sbin/policy-rc.d
		((rc == 0)) || die "apt-get install postfix failed; see ${TMPDIR:-/tmp}/postern-outbound-bench-apt.log"
		command -v smtp-source >/dev/null || die "smtp-source still missing after installing postfix"
	fi
	# "No configuration" leaves the system instance unconfigured; make sure it is not running
	# (it would listen on port 25, and it is not part of what is measured).
	if [[ -d /run/systemd/system ]] && systemctl is-active --quiet postfix.service 2>/dev/null; then
		log "stopping the system-wide postfix.service"
		systemctl disable --now postfix.service >/dev/null 2>&1 || true
	fi
	if [[ -f /etc/postfix/main.cf ]] && postfix status >/dev/null 2>&1; then
		log "stopping the system-wide Postfix instance"
		postfix stop >/dev/null 2>&1 || true
	fi
	if port_open 25; then
		log "note: something still listens on $LOOP:25 (not used by this benchmark)"
	fi
}

build_postern() {
	[[ "$SKIP_BUILD" == 1 ]] && return 0
	command -v cargo >/dev/null || die "cargo not found (or set SKIP_BUILD=1 POSTERN_BIN=...)"
	local try
	for ((try = 1; try <= BUILD_TRIES; try++)); do
		log "cargo build --release (try $try/$BUILD_TRIES)"
		if (cd "$REPO" && cargo build --release) >"$WORK/build.log" 2>&1; then
			return 0
		fi
		log "build failed: $(grep -m1 -E '^error' "$WORK/build.log" || tail -n 1 "$WORK/build.log")"
		((try < BUILD_TRIES)) || break
		log "the source may be mid-edit; retrying in ${BUILD_RETRY_WAIT}s"
		sleep "$BUILD_RETRY_WAIT"
	done
	die "cargo build --release failed $BUILD_TRIES times; last log: $WORK/build.log (KEEP_WORK=1 keeps it)"
}

start_sink() { # fresh smtp-sink (counter starts at 0)
	require_free_port "$SINK_PORT" "smtp-sink" SINK_PORT
	smtp-sink -c -u postfix "$LOOP:$SINK_PORT" 1000 >"$WORK/smtp-sink.out" 2>"$WORK/smtp-sink.err" &
	SINK_PID=$!
	wait_port "$SINK_PORT" 15 "$SINK_PID" "smtp-sink"
}
stop_sink() {
	stop_pid "$SINK_PID" 5
	SINK_PID=""
}

start_dlr_sink() {
	require_free_port "$DLR_PORT" "notification sink" DLR_PORT
	"$PY" "$HELPERS/dlr_sink.py" "$DLR_PORT" >"$WORK/dlr-sink.log" 2>&1 &
	DLR_PID=$!
	wait_port "$DLR_PORT" 15 "$DLR_PID" "notification sink"
}

# ---------------------------------------------------------------- results
declare -A RATE WALL DONE CPU1K RSS NOTE
LAT_JSON=""

rate_of() { awk -v n="$1" -v t="$2" 'BEGIN { if (t > 0) printf "%.1f", n / t; else print 0 }'; }
cpu1k() { awk -v c="$1" -v hz="$HZ" -v n="$2" 'BEGIN { if (n > 0) printf "%.3f", c / hz / n * 1000; else print "-" }'; }

# ---------------------------------------------------------------- Postfix relay reference
postfix_setup() {
	local pf="$WORK/postfix"
	PF_ETC="$pf/etc"
	mkdir -p "$PF_ETC" "$pf/spool" "$pf/data"
	chmod 755 "$WORK" "$pf" "$pf/spool"
	chown postfix "$pf/data"
	cat >"$PF_ETC/main.cf" <<EOF
# Private benchmark instance generated by bench/outbound.sh: relays mail for relay.test
# from loopback to the smtp-sink on $LOOP:$SINK_PORT.
compatibility_level = 3.6
queue_directory = $pf/spool
data_directory = $pf/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = \$myhostname
mydestination =
relay_domains = relay.test
relayhost = [$LOOP]:$SINK_PORT
inet_interfaces = $LOOP
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no
smtpd_banner = \$myhostname ESMTP
default_destination_concurrency_limit = $SESSIONS
relay_destination_concurrency_limit = $SESSIONS
smtp_destination_concurrency_limit = $SESSIONS
default_process_limit = 100
smtp_dns_support_level = disabled
alias_maps =
alias_database =
local_recipient_maps =
biff = no
maillog_file = $pf/maillog
maillog_file_prefixes = $pf
EOF
	cat >"$PF_ETC/master.cf" <<EOF
# service type  private unpriv  chroot  wakeup  maxproc command + args
$LOOP:$POSTFIX_PORT inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
}

postfix_queue_files() {
	find "$WORK/postfix/spool/maildrop" "$WORK/postfix/spool/incoming" "$WORK/postfix/spool/active" \
		"$WORK/postfix/spool/deferred" "$WORK/postfix/spool/hold" -type f 2>/dev/null | wc -l
}

bench_postfix() {
	require_free_port "$POSTFIX_PORT" "Postfix" POSTFIX_PORT
	postfix_setup
	start_sink
	log "starting private Postfix instance ($PF_ETC): smtpd $LOOP:$POSTFIX_PORT, relayhost [$LOOP]:$SINK_PORT"
	postfix -c "$PF_ETC" check >"$WORK/postfix-check.log" 2>&1 ||
		die "postfix check failed: $(tail -n 5 "$WORK/postfix-check.log")"
	PF_STARTED=1
	postfix -c "$PF_ETC" start >"$WORK/postfix-start.log" 2>&1 ||
		die "postfix start failed: $(tail -n 5 "$WORK/postfix-start.log")"
	wait_port "$POSTFIX_PORT" 30 "" "Postfix smtpd"

	wait_quiet "Postfix relay" postfix
	local key=postfix t0 t1="" c0 c1 m0 n=0 rc=0 deadline note="" src_done=0
	local out="$WORK/smtp-source-postfix.log"
	log "Postfix relay: smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE -> $LOOP:$POSTFIX_PORT -> smtp-sink"
	c0="$(postfix_ticks)"
	m0="$(cpu_snapshot)"
	t0="$(now)"
	smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -f a@bench.test -t u@relay.test \
		"$LOOP:$POSTFIX_PORT" >"$out" 2>&1 &
	LOAD_PID=$!
	deadline=$((SECONDS + RUN_TIMEOUT))
	while :; do
		n="$(sink_mesg)"
		if ((n >= MESSAGES)); then
			t1="$(now)"
			break
		fi
		if ((!src_done)) && ! kill -0 "$LOAD_PID" 2>/dev/null; then
			wait "$LOAD_PID" || rc=$?
			LOAD_PID=""
			src_done=1
			((rc == 0)) || log "smtp-source exited $rc: $(tail -n 2 "$out" | tr '\n' ' ')"
		fi
		if ((src_done)) && ((rc != 0 || $(postfix_queue_files) == 0)); then
			sleep 0.5 # bounded: let smtp-sink print its last counter line
			n="$(sink_mesg)"
			((n >= MESSAGES)) && break
			t1="$(now)"
			note="queue empty with $n of $MESSAGES at the sink"
			break
		fi
		if ((SECONDS >= deadline)); then
			t1="$(now)"
			note="timeout after ${RUN_TIMEOUT}s"
			break
		fi
		sleep 0.05
	done
	[[ -n "$t1" ]] || t1="$(now)"
	c1="$(postfix_ticks)"
	BUSY[$key]="$(busy_pct "$m0" "$(cpu_snapshot)")"
	if [[ -n "$LOAD_PID" ]]; then
		wait "$LOAD_PID" || rc=$?
		LOAD_PID=""
		((rc == 0)) || note="${note:+$note; }smtp-source exited $rc"
	fi
	WALL[$key]="$(fsub "$t1" "$t0")"
	DONE[$key]="$n"
	RATE[$key]="$(rate_of "$n" "${WALL[$key]}")"
	CPU1K[$key]="$(cpu1k $((c1 - c0)) "$n")"
	RSS[$key]="-"
	SINK_RATE[$key]="${RATE[$key]}"
	NOTE[$key]="$note"
	log "Postfix relay: $n msgs in ${WALL[$key]}s = ${RATE[$key]} msgs/s, CPU ${CPU1K[$key]} s/1000 msgs ${note:+($note)}"
	postfix_stop
	stop_sink
}

# ---------------------------------------------------------------- postern
write_postern_config() { # write_postern_config DIR ALGORITHM
	local dir="$1" alg="$2"
	mkdir -p "$dir/data"
	cat >"$dir/postern.toml" <<EOF
# generated by bench/outbound.sh
[server]
hostname = "mx.bench.test"
data_dir = "$dir/data"
public_url = "http://$LOOP:$POSTERN_HTTP_PORT"
inbound_domain = "inbound.bench.test"
bounce_domain = "bounces.bench.test"

[smtp]
listen = ["$LOOP:$POSTERN_SMTP_PORT"]

[http]
listen = "$LOOP:$POSTERN_HTTP_PORT"

[admin]
token = "bench"

[dns]
resolver = "off"

[queue]
concurrency = $QUEUE_CONCURRENCY

[webhooks]
concurrency = 32

[[service]]
id = "svc_bench"
key = "$SERVICE_KEY"
secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQ="
tps = 100000
assets = ["a_bench"]

[[asset]]
id = "a_bench"
domains = ["bench.test"]
delivery_webhook = "http://$LOOP:$DLR_PORT/dlr"

[asset.route]
kind = "smtp"
host = "$LOOP"
port = $SINK_PORT
security = "none"
auth = "none"

[asset.dkim]
selector = "bench1"
algorithm = "$alg"
EOF
}

start_postern() { # start_postern DIR
	local dir="$1" deadline
	require_free_port "$POSTERN_SMTP_PORT" "postern SMTP" POSTERN_SMTP_PORT
	require_free_port "$POSTERN_HTTP_PORT" "postern HTTP" POSTERN_HTTP_PORT
	"$POSTERN_BIN" check-config --config "$dir/postern.toml" >"$dir/check-config.log" 2>&1 ||
		die "postern check-config failed: $(tail -n 5 "$dir/check-config.log")"
	RUST_LOG="${RUST_LOG:-warn}" "$POSTERN_BIN" serve --config "$dir/postern.toml" >"$dir/postern.log" 2>&1 &
	POSTERN_PID=$!
	deadline=$((SECONDS + 120))
	until [[ "$(http_code "http://$LOOP:$POSTERN_HTTP_PORT/readyz")" == 200 ]]; do
		kill -0 "$POSTERN_PID" 2>/dev/null || die "postern exited during start: $(tail -n 5 "$dir/postern.log")"
		((SECONDS < deadline)) || die "postern not ready (GET /readyz) after 120 s"
		sleep 0.1
	done
}

alg_key() { [[ "$1" == rsa-sha256 ]] && echo rsa || echo ed25519; }
alg_label() { [[ "$1" == rsa-sha256 ]] && echo "postern RSA-2048" || echo "postern Ed25519"; }

bench_postern() { # bench_postern ALGORITHM
	local alg="$1" key dir label
	key="$(alg_key "$alg")"
	label="$(alg_label "$alg")"
	dir="$WORK/postern-$key"
	write_postern_config "$dir" "$alg"
	start_sink
	start_dlr_sink
	log "$label: starting postern (fresh data dir $dir/data)"
	start_postern "$dir"

	wait_quiet "$label" "$key"
	local bulk="$dir/bulk.json" c0 c1 deadline note="" total=0 n=0 last=0 bad=0 expected="$MESSAGES"
	local load_done=0 rc=0 tfirst wall sinkn sink_t="" m0
	log "$label: $REQUESTS requests x $PER_REQUEST destinations (${TEXT_CHARS}-char text), $BULK_CONCURRENCY in flight"
	c0="$(ticks_of "$POSTERN_PID")"
	m0="$(cpu_snapshot)"
	"$PY" "$HELPERS/loadgen.py" bulk --url "http://$LOOP:$POSTERN_HTTP_PORT/v2/messages" --key "$SERVICE_KEY" \
		--requests "$REQUESTS" --per-request "$PER_REQUEST" --concurrency "$BULK_CONCURRENCY" \
		--text-chars "$TEXT_CHARS" >"$bulk" 2>"$dir/bulk.err" &
	LOAD_PID=$!
	deadline=$((SECONDS + RUN_TIMEOUT))
	while :; do
		read -r total n last bad <<<"$(dlr_counts)"
		if [[ -z "$sink_t" ]] && (($(sink_mesg) >= MESSAGES)); then sink_t="$(now)"; fi
		if ((!load_done)) && ! kill -0 "$LOAD_PID" 2>/dev/null; then
			wait "$LOAD_PID" || rc=$?
			LOAD_PID=""
			load_done=1
			((rc == 0)) || die "$label: load generator failed: $(tail -n 3 "$dir/bulk.err")"
			expected="$(json_get "$bulk" tids)"
			[[ "$expected" =~ ^[0-9]+$ ]] || expected=0
			local errs
			errs="$(json_get "$bulk" errors)"
			if [[ "$errs" != 0 ]]; then
				note="$errs API requests failed: $(json_get "$bulk" first_error)"
				log "$label: $note"
			fi
			log "$label: API accepted $(json_get "$bulk" accepted) requests ($expected tids) in $(fsub "$(json_get "$bulk" t_last_done)" "$(json_get "$bulk" t_first_sent)")s; waiting for the 7501s"
		fi
		if ((n >= MESSAGES)); then break; fi
		if ((load_done && total >= expected)); then
			((n >= expected)) || note="${note:+$note; }notifications: $n x 7501, others: $(dlr_codes)"
			break
		fi
		if ((SECONDS >= deadline)); then
			note="${note:+$note; }timeout after ${RUN_TIMEOUT}s: $n of $MESSAGES 7501s"
			last="$(now)"
			break
		fi
		sleep 0.2
	done
	c1="$(ticks_of "$POSTERN_PID")"
	BUSY[$key]="$(busy_pct "$m0" "$(cpu_snapshot)")"
	curl -s -m 5 "http://$LOOP:$POSTERN_HTTP_PORT/metrics" >"$dir/metrics.txt" 2>/dev/null || true
	if [[ -n "$LOAD_PID" ]]; then
		wait "$LOAD_PID" || true
		LOAD_PID=""
	fi
	tfirst="$(json_get "$bulk" t_first_sent)"
	[[ -n "$tfirst" ]] || die "$label: no start time from the load generator ($(tail -n 3 "$dir/bulk.err"))"
	[[ "$last" != 0 ]] || last="$(now)"
	wall="$(fsub "$last" "$tfirst")"
	sinkn="$(sink_mesg)"
	WALL[$key]="$wall"
	DONE[$key]="$n"
	RATE[$key]="$(rate_of "$n" "$wall")"
	CPU1K[$key]="$(cpu1k $((c1 - c0)) "$n")"
	RSS[$key]="$(status_kb "$POSTERN_PID" VmHWM)"
	((n >= MESSAGES)) || note="${note:+$note; }$n of $MESSAGES submitted"
	NOTE[$key]="$note"
	BULK_ACCEPT[$key]="$(fsub "$(json_get "$bulk" t_last_done)" "$tfirst")"
	# Diagnostic: when the smtp-sink had all messages (polled every ~0.2 s), so a slow
	# notification path can be told apart from slow delivery.
	if [[ -n "$sink_t" ]]; then SINK_RATE[$key]="$(rate_of "$MESSAGES" "$(fsub "$sink_t" "$tfirst")")"; fi
	log "$label: $n msgs in ${wall}s = ${RATE[$key]} msgs/s end to end, CPU ${CPU1K[$key]} s/1000 msgs, VmHWM ${RSS[$key]} kB, smtp-sink counted $sinkn${note:+ ($note)}"

	if [[ "$alg" == "$LAT_ALGORITHM" ]] && ((LAT_RATE > 0 && LAT_DURATION > 0)); then
		wait_quiet "API latency"
		log "API latency: $LAT_RATE requests/s x ${LAT_DURATION}s, 1 destination each ($label)"
		LAT_JSON="$dir/latency.json"
		LAT_LABEL="$label"
		"$PY" "$HELPERS/loadgen.py" rate --url "http://$LOOP:$POSTERN_HTTP_PORT/v2/messages" --key "$SERVICE_KEY" \
			--rate "$LAT_RATE" --duration "$LAT_DURATION" --text-chars "$TEXT_CHARS" \
			>"$LAT_JSON" 2>"$dir/latency.err" &
		LOAD_PID=$!
		rc=0
		wait "$LOAD_PID" || rc=$?
		LOAD_PID=""
		((rc == 0)) || die "latency load generator failed: $(tail -n 3 "$dir/latency.err")"
		log "API latency: p50 $(json_get "$LAT_JSON" service_p50_ms) ms, p99 $(json_get "$LAT_JSON" service_p99_ms) ms (from send)"
	fi

	stop_pid "$POSTERN_PID" 30
	POSTERN_PID=""
	stop_pid "$DLR_PID" 5
	DLR_PID=""
	stop_sink
}

# ---------------------------------------------------------------- report
fmt_rate() { awk -v x="$1" 'BEGIN { if (x == "" || x == "-") print "-"; else printf "%.0f", x }'; }
mib() { awk -v k="$1" 'BEGIN { if (k == "" || k == "-") print "-"; else printf "%.1f MiB", k / 1024 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 <= 0) print "n/a"; else printf "%.2fx", a / b }'; }
goal() { # goal RATE BASE FACTOR -> met / not met / n/a
	awk -v a="$1" -v b="$2" -v f="$3" 'BEGIN {
		if (a == "" || b == "" || b + 0 <= 0) print "n/a"
		else if (a + 0 >= f * b) print "met"
		else print "not met" }'
}

report() {
	local cols=() labels=() c
	for a in $ALGORITHMS; do
		if [[ -n "${RATE[$(alg_key "$a")]:-}" ]]; then
			cols+=("$(alg_key "$a")")
			labels+=("$(alg_label "$a")")
		fi
	done
	if [[ -n "${RATE[postfix]:-}" ]]; then
		cols+=(postfix)
		labels+=("Postfix relay")
	fi
	local pf="${RATE[postfix]:-}"
	row() { # row LABEL VALUE...
		local l="$1"
		shift
		printf '%-30s' "$l"
		for v in "$@"; do printf ' | %16s' "$v"; done
		printf '\n'
	}
	local vals
	echo
	echo "postern outbound benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, loopback only"
	echo "load: $MESSAGES messages; postern: $REQUESTS API requests x $PER_REQUEST destinations, ${TEXT_CHARS}-char text body;"
	echo "      Postfix: smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE -> Postfix -> relayhost smtp-sink"
	echo
	row "" "${labels[@]}"
	vals=()
	for c in "${cols[@]}"; do vals+=("${DONE[$c]}"); done
	row "messages delivered to sink" "${vals[@]}"
	vals=()
	for c in "${cols[@]}"; do vals+=("${WALL[$c]}"); done
	row "end-to-end wall s" "${vals[@]}"
	vals=()
	for c in "${cols[@]}"; do vals+=("$(fmt_rate "${RATE[$c]}")"); done
	row "msgs/s end to end" "${vals[@]}"
	vals=()
	for c in "${cols[@]}"; do vals+=("$(ratio "${RATE[$c]}" "$pf")"); done
	row "ratio to Postfix (this run)" "${vals[@]}"
	vals=()
	for c in "${cols[@]}"; do vals+=("$(ratio "${RATE[$c]}" "$REF_POSTFIX")"); done
	row "ratio to Postfix ref ${REF_POSTFIX}/s" "${vals[@]}"
	vals=()
	for c in "${cols[@]}"; do vals+=("${CPU1K[$c]}"); done
	row "CPU s / 1000 msgs" "${vals[@]}"
	vals=()
	for c in "${cols[@]}"; do vals+=("$(mib "${RSS[$c]}")"); done
	row "peak RSS (VmHWM)" "${vals[@]}"
	vals=()
	for c in "${cols[@]}"; do vals+=("${BULK_ACCEPT[$c]:--}"); done
	row "API: all requests 202, s" "${vals[@]}"
	vals=()
	for c in "${cols[@]}"; do vals+=("$(fmt_rate "${SINK_RATE[$c]:-}")"); done
	row "msgs/s until sink had all" "${vals[@]}"
	vals=()
	for c in "${cols[@]}"; do vals+=("${BUSY[$c]:--}"); done
	row "machine CPU busy (all procs)" "${vals[@]}"
	vals=()
	for c in "${cols[@]}"; do vals+=("${PRE_BUSY[$c]:--}"); done
	row "  (busy in the 1 s before)" "${vals[@]}"
	echo
	for c in "${cols[@]}"; do
		[[ -z "${NOTE[$c]}" ]] || echo "note ($c): ${NOTE[$c]}"
	done
	if [[ -n "$LAT_JSON" && -s "$LAT_JSON" ]]; then
		echo "API accept latency ($LAT_LABEL, after its run): $LAT_RATE requests/s scheduled for ${LAT_DURATION}s, 1 destination each"
		printf '  request sent -> 202:  p50 %s ms  p99 %s ms  (p90 %s, max %s)\n' \
			"$(json_get "$LAT_JSON" service_p50_ms)" "$(json_get "$LAT_JSON" service_p99_ms)" \
			"$(json_get "$LAT_JSON" service_p90_ms)" "$(json_get "$LAT_JSON" service_max_ms)"
		printf '  request due  -> 202:  p50 %s ms  p99 %s ms  (includes client-side queueing)\n' \
			"$(json_get "$LAT_JSON" schedule_p50_ms)" "$(json_get "$LAT_JSON" schedule_p99_ms)"
		printf '  202s %s of %s, errors %s, achieved %s req/s, late starts %s\n' \
			"$(json_get "$LAT_JSON" accepted)" "$(json_get "$LAT_JSON" sent)" "$(json_get "$LAT_JSON" errors)" \
			"$(json_get "$LAT_JSON" achieved_rps)" "$(json_get "$LAT_JSON" late_starts)"
	fi
	echo
	echo "goals (informational; never change the exit status):"
	if [[ -n "${RATE[rsa]:-}" ]]; then
		printf '  postern RSA-2048 >= %sx Postfix relay:  %s (%s)   [against the reference %s/s: %s (%s)]\n' \
			"$GOAL_RSA" "$(goal "${RATE[rsa]}" "$pf" "$GOAL_RSA")" "$(ratio "${RATE[rsa]}" "$pf")" \
			"$REF_POSTFIX" "$(goal "${RATE[rsa]}" "$REF_POSTFIX" "$GOAL_RSA")" "$(ratio "${RATE[rsa]}" "$REF_POSTFIX")"
	fi
	if [[ -n "${RATE[ed25519]:-}" ]]; then
		printf '  postern Ed25519  >= %sx Postfix relay:  %s (%s)   [against the reference %s/s: %s (%s)]\n' \
			"$GOAL_ED" "$(goal "${RATE[ed25519]}" "$pf" "$GOAL_ED")" "$(ratio "${RATE[ed25519]}" "$pf")" \
			"$REF_POSTFIX" "$(goal "${RATE[ed25519]}" "$REF_POSTFIX" "$GOAL_ED")" "$(ratio "${RATE[ed25519]}" "$REF_POSTFIX")"
	fi
	[[ -z "$DISTURBED" ]] || echo "WARNING: bench/inbound.sh was still running during: $DISTURBED"
	[[ -z "$BUILD_DISTURBED" ]] || echo "WARNING: rustc (a build) was running during: $BUILD_DISTURBED"
	[[ -z "$IDLE_DISTURBED" ]] || echo "WARNING: the machine was not idle (> ${IDLE_MAX_BUSY}%) when measuring: $IDLE_DISTURBED"
}

# ---------------------------------------------------------------- main
declare -A BULK_ACCEPT SINK_RATE BUSY PRE_BUSY
LAT_LABEL=""
PY="$(command -v python3 || true)"
[[ -n "$PY" ]] || die "python3 not found"
command -v curl >/dev/null || die "curl not found"
HZ="$(getconf CLK_TCK)"

ensure_postfix_tools
WORK="$(mktemp -d "${TMPDIR:-/tmp}/postern-outbound-bench.XXXXXX")"
log "work directory $WORK"

if [[ "$SKIP_POSTERN" != 1 ]]; then
	build_postern
	[[ -x "$POSTERN_BIN" ]] || die "no postern binary at $POSTERN_BIN"
fi
if [[ "$SKIP_POSTFIX" != 1 ]]; then
	bench_postfix
fi
if [[ "$SKIP_POSTERN" != 1 ]]; then
	for a in $ALGORITHMS; do bench_postern "$a"; done
fi
report

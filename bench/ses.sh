#!/usr/bin/env bash
# bench/ses.sh - the Amazon SES route and SES event ingestion, loopback only.
#
# Measures, in one run, and prints a table:
#   0. The SES stub's own ceiling: bench/ses/stubload.py drives bench/ses/ses_stub.py (a
#      stand-in for SES v2 SendEmail, asyncio, keep-alive) directly with STUB_LOAD
#      postern-shaped SendEmail calls over STUB_CONNECTIONS connections; reported as
#      requests/s and as the stub's CPU s per 1,000 calls (so its one-core ceiling).
#   1. postern end to end on the SES route: HTTP Messaging API -> durable queue -> DKIM ->
#      SES v2 SendEmail (SigV4, raw MIME) -> the stub, once per DKIM algorithm in
#      ALGORITHMS (default Ed25519, then RSA-2048; a fresh data dir each time). MESSAGES
#      messages of ~5 KB (a TEXT_CHARS-character text body) as MESSAGES/PER_REQUEST
#      requests of PER_REQUEST destinations (bench/outbound/loadgen.py bulk, as
#      bench/outbound.sh does: one message, one tid and one SendEmail per address).
#      Done = the delivery webhook (bench/outbound/dlr_sink.py) has a 7501 for every
#      message. msgs/s = MESSAGES / (first API request sent -> last 7501 received);
#      CPU s per 1,000 msgs = postern's utime+stime (/proc/PID/stat) over that span;
#      peak RSS = VmHWM of postern after the run.
#      The same load through the SMTP route to smtp-sink (as bench/outbound.sh measures
#      it; same harness, same daemon settings) is the side-by-side reference.
#   2. SES event ingestion, right after the first SES run, on the same daemon: the stub
#      has recorded every MessageId it issued; bench/ses/sns_events.py makes a test
#      RSA-2048 key and self-signed certificate (served on 127.0.0.1:CERT_PORT, a prefix
#      in the config's [ses] trust_url_prefixes), pre-signs EVENTS SNS Notifications
#      (SignatureVersion 2) each carrying an SES Delivery event for one issued MessageId
#      and its recipient, then POSTs them to /ses/events: the first alone (postern
#      fetches the certificate; timed separately), the rest over CONCURRENCY keep-alive
#      connections. Reported: notifications/s answered 200, p50/p99 latency, and the
#      time until the delivery webhook has a 7500 for every one.
#
# Usage (as root on a fresh machine: installs `cryptography` with pip and Postfix's
# smtp-sink with apt-get when missing):
#   bench/ses.sh                         # full run, 10,000 messages per measurement
#   MESSAGES=1000 bench/ses.sh           # quick run
#   bench/ses.sh > result.txt            # progress on stderr, the report on stdout
#
# Knobs (environment):
#   MESSAGES=10000       messages per measurement (a multiple of PER_REQUEST)
#   PER_REQUEST=100      destinations per API request
#   TEXT_CHARS=5000      characters of the text body (~5 KB messages)
#   BULK_CONCURRENCY=8   API requests in flight during the bulk send
#   ALGORITHMS="ed25519-sha256 rsa-sha256"   DKIM algorithms, in this order; the events
#                        are measured after the first SES run
#   QUEUE_CONCURRENCY=32 postern [queue] concurrency
#   EVENTS=$MESSAGES     SNS notifications to post (at most one per issued MessageId)
#   CONCURRENCY=16       keep-alive connections posting them
#   STUB_LOAD=50000 STUB_CONNECTIONS=32   the stub's direct load (STUB_LOAD=0 skips it)
#   SKIP_SMTP=1          leave out the SMTP route reference
#   SKIP_EVENTS=1        leave out the event ingestion
#   SKIP_BUILD=1         do not run `cargo build --release`
#   POSTERN_BIN=...      binary (default <repo>/target/release/postern)
#   RUN_TIMEOUT=300      seconds one measurement may take before it is cut short
#   QUIET_WAIT=600       seconds to wait for a running bench/inbound.sh or
#                        bench/outbound.sh before each measurement (then measure anyway,
#                        flagged in the report)
#   BUILD_QUIET_WAIT=180 same for a running rustc (someone building on this machine)
#   IDLE_WAIT=60 IDLE_MAX_BUSY=25   then wait (bounded) until the whole machine is at
#                        most 25% busy over one second (tests, fuzzers, ...)
#   BUILD_TRIES=3 BUILD_RETRY_WAIT=60   bounded retry when the build fails
#   KEEP_WORK=1          keep the temp dir (configs, postern.log, helper JSON)
#   POSTERN_SMTP_PORT=12527 POSTERN_HTTP_PORT=18082 DLR_PORT=19002 STUB_PORT=19003
#   CERT_PORT=19004 SINK_PORT=12604
#   (distinct from bench/inbound.sh's and bench/outbound.sh's ports)
# Exit status: 0 unless the setup breaks (build, a daemon not coming up, a helper
# crashing); an incomplete run is reported, not fatal. More: bench/ses/README.md.
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"
export LC_ALL=C

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
HELPERS="$HERE/ses"
OUTBOUND="$HERE/outbound"
LOOP=127.0.0.1 # never anything else

MESSAGES="${MESSAGES:-10000}"
PER_REQUEST="${PER_REQUEST:-100}"
TEXT_CHARS="${TEXT_CHARS:-5000}"
BULK_CONCURRENCY="${BULK_CONCURRENCY:-8}"
ALGORITHMS="${ALGORITHMS:-ed25519-sha256 rsa-sha256}"
QUEUE_CONCURRENCY="${QUEUE_CONCURRENCY:-32}"
EVENTS="${EVENTS:-$MESSAGES}"
CONCURRENCY="${CONCURRENCY:-16}"
STUB_LOAD="${STUB_LOAD:-50000}"
STUB_CONNECTIONS="${STUB_CONNECTIONS:-32}"
SKIP_SMTP="${SKIP_SMTP:-0}"
SKIP_EVENTS="${SKIP_EVENTS:-0}"
SKIP_BUILD="${SKIP_BUILD:-0}"
POSTERN_BIN="${POSTERN_BIN:-$REPO/target/release/postern}"
RUN_TIMEOUT="${RUN_TIMEOUT:-300}"
QUIET_WAIT="${QUIET_WAIT:-600}"
BUILD_QUIET_WAIT="${BUILD_QUIET_WAIT:-180}"
IDLE_WAIT="${IDLE_WAIT:-60}"
IDLE_MAX_BUSY="${IDLE_MAX_BUSY:-25}"
BUILD_TRIES="${BUILD_TRIES:-3}"
BUILD_RETRY_WAIT="${BUILD_RETRY_WAIT:-60}"
KEEP_WORK="${KEEP_WORK:-0}"
POSTERN_SMTP_PORT="${POSTERN_SMTP_PORT:-12527}"
POSTERN_HTTP_PORT="${POSTERN_HTTP_PORT:-18082}"
DLR_PORT="${DLR_PORT:-19002}"
STUB_PORT="${STUB_PORT:-19003}"
CERT_PORT="${CERT_PORT:-19004}"
SINK_PORT="${SINK_PORT:-12604}"

SERVICE_KEY="bench-key"
TOPIC_ARN="arn:aws:sns:us-east-1:123456789012:postern-events"
CERT_URL="http://$LOOP:$CERT_PORT/SimpleNotificationService-bench0123456789abcdef.pem"

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

for v in MESSAGES PER_REQUEST TEXT_CHARS BULK_CONCURRENCY QUEUE_CONCURRENCY EVENTS CONCURRENCY STUB_LOAD \
	STUB_CONNECTIONS RUN_TIMEOUT QUIET_WAIT BUILD_QUIET_WAIT IDLE_WAIT IDLE_MAX_BUSY BUILD_TRIES BUILD_RETRY_WAIT \
	POSTERN_SMTP_PORT POSTERN_HTTP_PORT DLR_PORT STUB_PORT CERT_PORT SINK_PORT; do
	[[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
((MESSAGES > 0 && PER_REQUEST > 0 && CONCURRENCY > 0 && STUB_CONNECTIONS > 0)) ||
	die "MESSAGES, PER_REQUEST, CONCURRENCY and STUB_CONNECTIONS must be > 0"
((PER_REQUEST <= 1000)) || die "PER_REQUEST must be at most 1000 (postern's per-request cap)"
((MESSAGES % PER_REQUEST == 0)) || die "MESSAGES ($MESSAGES) must be a multiple of PER_REQUEST ($PER_REQUEST)"
REQUESTS=$((MESSAGES / PER_REQUEST))
[[ -n "$ALGORITHMS" ]] || die "ALGORITHMS is empty"
for a in $ALGORITHMS; do
	[[ "$a" == rsa-sha256 || "$a" == ed25519-sha256 ]] || die "ALGORITHMS: unknown '$a'"
done
FIRST_ALG="${ALGORITHMS%% *}"
((EVENTS > 0)) || SKIP_EVENTS=1

# ---------------------------------------------------------------- state + cleanup
WORK=""
POSTERN_PID=""
STUB_PID=""
SINK_PID=""
DLR_PID=""
LOAD_PID=""

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

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	((rc == 0)) || log "exiting with status $rc; cleaning up"
	stop_pid "$LOAD_PID" 5
	stop_pid "$POSTERN_PID" 30
	stop_pid "$STUB_PID" 5
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

ticks_of() { # ticks_of PID: utime+stime in clock ticks
	local f
	f="$(cat "/proc/$1/stat" 2>/dev/null)" || {
		echo 0
		return
	}
	f="${f##*) }"
	# shellcheck disable=SC2086
	set -- $f
	# after "pid (comm) ": $1=state ... $12=utime $13=stime
	echo $((${12} + ${13}))
}

status_kb() { # status_kb PID FIELD -> value in kB from /proc/PID/status
	awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0
}

sink_mesg() { # last "mesg=N" counter printed by smtp-sink -c
	tr '\r' '\n' <"$WORK/smtp-sink.out" 2>/dev/null |
		awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^mesg=/) { sub("mesg=", "", $i); m = $i } } END { print m + 0 }'
}

stub_connections() { # TCP connections the stub has accepted
	curl -s -m 5 "http://$LOOP:$STUB_PORT/count.txt" 2>/dev/null | awk '$1 == "connections" { n = $2 } END { print n + 0 }' || echo 0
}
stub_sends() { # "N LAST": SendEmail calls the stub has answered, time.time() of the last one
	curl -s -m 5 "http://$LOOP:$STUB_PORT/count.txt" 2>/dev/null |
		awk '$1 == "sends" { n = $2; t = $4 } END { printf "%d %s\n", n, (t == "" ? "0" : t) }' || echo "0 0"
}

# dlr_code CODE -> "TOTAL N LAST BAD" from the notification sink (N notifications with CODE,
# LAST = time.time() of the last one)
dlr_code() {
	curl -s -m 5 "http://$LOOP:$DLR_PORT/count.txt" 2>/dev/null |
		awk -v c="$1" '$1 == "total" { t = $2 } $1 == "bad" { b = $2 }
		     $1 == "code" && $2 == c { n = $3; last = $5 }
		     END { printf "%d %d %s %d\n", t, n, (last == "" ? "0" : last), b }' || echo "0 0 0 0"
}
dlr_other_codes() { # codes seen other than $1, e.g. "7520=3 7592=1"
	curl -s -m 5 "http://$LOOP:$DLR_PORT/count.txt" 2>/dev/null |
		awk -v c="$1" '$1 == "code" && $2 != c { printf "%s%s=%s", sep, $2, $3; sep = " " }' || true
}

json_get() { # json_get FILE KEY[.KEY] -> value (or empty)
	"$PY" -c 'import json,sys
d = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    d = d.get(k) if isinstance(d, dict) else None
print("" if d is None else d)' "$1" "$2" 2>/dev/null || true
}

rate_of() { awk -v n="$1" -v t="$2" 'BEGIN { if (t > 0) printf "%.1f", n / t; else print 0 }'; }
cpu1k() { awk -v c="$1" -v hz="$HZ" -v n="$2" 'BEGIN { if (n > 0) printf "%.3f", c / hz / n * 1000; else print "-" }'; }

cpu_snapshot() { # "BUSY TOTAL" jiffies of the whole machine from /proc/stat
	awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat
}
busy_pct() { # busy_pct "B0 T0" "B1 T1" -> machine CPU busy % over the interval
	local b0 t0 b1 t1
	read -r b0 t0 <<<"$1"
	read -r b1 t1 <<<"$2"
	awk -v b="$((b1 - b0))" -v t="$((t1 - t0))" 'BEGIN { if (t > 0) printf "%.0f%%", 100 * b / t; else print "0%" }'
}
busy_now() { # whole-machine CPU busy % over the next second, as an integer
	local a
	a="$(cpu_snapshot)"
	sleep 1
	busy_pct "$a" "$(cpu_snapshot)" | tr -dc '0-9'
}

DISTURBED=""
BUILD_DISTURBED=""
IDLE_DISTURBED=""
# wait_quiet WHAT [KEY]: wait (bounded) until no other benchmark and no rustc runs and the
# machine is idle, so the figures are undisturbed (the same rules as bench/outbound.sh).
wait_quiet() {
	local what="$1" deadline=$((SECONDS + QUIET_WAIT)) said=0 b
	while pgrep -f "bench/(inbound|outbound)\.sh" >/dev/null 2>&1; do
		if ((!said)); then
			log "bench/inbound.sh or bench/outbound.sh is running; waiting up to ${QUIET_WAIT}s before measuring $what"
			said=1
		fi
		if ((SECONDS >= deadline)); then
			log "WARNING: another benchmark is still running; measuring $what anyway"
			DISTURBED="${DISTURBED:+$DISTURBED, }$what"
			break
		fi
		sleep 5
	done
	((!said)) || log "done waiting for the other benchmark"
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

# ---------------------------------------------------------------- setup
ensure_cryptography() {
	"$PY" -c 'import cryptography' 2>/dev/null && return 0
	log "installing the Python package cryptography (pip)"
	if ! "$PY" -m pip --version >/dev/null 2>&1; then
		[[ "$(id -u)" == 0 ]] || die "python3 has no pip and this is not root: install cryptography"
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y python3-pip; } \
			>"$WORK/apt-pip.log" 2>&1 || die "apt-get install python3-pip failed; see $WORK/apt-pip.log"
	fi
	"$PY" -m pip install -q cryptography >"$WORK/pip.log" 2>&1 ||
		"$PY" -m pip install -q --break-system-packages cryptography >>"$WORK/pip.log" 2>&1 ||
		die "pip install cryptography failed: $(tail -n 3 "$WORK/pip.log")"
	"$PY" -c 'import cryptography' || die "cryptography still not importable after pip install"
}

SMTP_SKIPPED_WHY=""
ensure_smtp_sink() { # smtp-sink from Debian's postfix package, installed as bench/outbound.sh does
	command -v smtp-sink >/dev/null && return 0
	if [[ "$(id -u)" != 0 ]]; then
		SMTP_SKIPPED_WHY="smtp-sink missing and not root (apt-get install postfix)"
		return 1
	fi
	log "installing postfix (for smtp-sink, the SMTP route reference)"
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	# Keep the package from starting a system-wide postfix on port 25 while it installs.
	local made_policy=0 rc=0
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		made_policy=1
	fi
	{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postfix; } >"$WORK/apt-postfix.log" 2>&1 || rc=$?
	[[ "$made_policy" == 1 ]] && rm -f /usr/sbin/policy-rc.d
	if ((rc != 0)) || ! command -v smtp-sink >/dev/null; then
		SMTP_SKIPPED_WHY="apt-get install postfix failed (see apt-postfix.log with KEEP_WORK=1)"
		return 1
	fi
	if [[ -d /run/systemd/system ]] && systemctl is-active --quiet postfix.service 2>/dev/null; then
		systemctl disable --now postfix.service >/dev/null 2>&1 || true
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

start_stub() { # a fresh SES stub (no MessageIds recorded yet)
	require_free_port "$STUB_PORT" "SES stub" STUB_PORT
	"$PY" "$HELPERS/ses_stub.py" "$STUB_PORT" >"$WORK/ses-stub.log" 2>&1 &
	STUB_PID=$!
	wait_port "$STUB_PORT" 15 "$STUB_PID" "SES stub"
}
stop_stub() {
	stop_pid "$STUB_PID" 5
	STUB_PID=""
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
	"$PY" "$OUTBOUND/dlr_sink.py" "$DLR_PORT" >"$WORK/dlr-sink.log" 2>&1 &
	DLR_PID=$!
	wait_port "$DLR_PORT" 15 "$DLR_PID" "notification sink"
}
stop_dlr_sink() {
	stop_pid "$DLR_PID" 5
	DLR_PID=""
}

# ---------------------------------------------------------------- postern
write_postern_config() { # write_postern_config DIR ROUTE ALGORITHM
	local dir="$1" route="$2" alg="$3"
	mkdir -p "$dir/data"
	cat >"$dir/postern.toml" <<EOF
# generated by bench/ses.sh
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

[ses]
topic_arns = ["$TOPIC_ARN"]
trust_url_prefixes = ["http://$LOOP:$CERT_PORT/"]

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

EOF
	if [[ "$route" == ses ]]; then
		cat >>"$dir/postern.toml" <<EOF
[asset.route]
kind = "ses"
region = "us-east-1"
access_key_id = "AKIDBENCHEXAMPLE"
secret_access_key = "bench-secret-access-key"
endpoint = "http://$LOOP:$STUB_PORT"
configuration_set = "postern-events"

EOF
	else
		cat >>"$dir/postern.toml" <<EOF
[asset.route]
kind = "smtp"
host = "$LOOP"
port = $SINK_PORT
security = "none"
auth = "none"

EOF
	fi
	cat >>"$dir/postern.toml" <<EOF
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

stop_postern() { # stop_postern DIR: stop, then keep what its log complained about
	local dir="$1" n
	stop_pid "$POSTERN_PID" 30
	POSTERN_PID=""
	# RUST_LOG=warn: every line is a warning or an error; ANSI colours stripped.
	n="$(sed 's/\x1b\[[0-9;]*m//g' "$dir/postern.log" | grep -cE 'WARN|ERROR' || true)"
	if ((n > 0)); then
		LOG_NOTES+=("$(basename "$dir"): $n WARN/ERROR lines in postern.log, e.g.: $(sed 's/\x1b\[[0-9;]*m//g' "$dir/postern.log" | grep -m1 -E 'WARN|ERROR' | cut -c1-300)")
	fi
}

run_key() { echo "$1-$([[ "$2" == rsa-sha256 ]] && echo rsa || echo ed25519)"; }
run_label() { echo "$([[ "$1" == ses ]] && echo SES || echo SMTP) $([[ "$2" == rsa-sha256 ]] && echo RSA-2048 || echo Ed25519)"; }

bench_route() { # bench_route ses|smtp ALGORITHM
	local route="$1" alg="$2" key label dir
	key="$(run_key "$route" "$alg")"
	label="$(run_label "$route" "$alg")"
	dir="$WORK/$key"
	write_postern_config "$dir" "$route" "$alg"
	if [[ "$route" == ses ]]; then start_stub; else start_sink; fi
	local recv_pid
	recv_pid="$([[ "$route" == ses ]] && echo "$STUB_PID" || echo "$SINK_PID")"
	start_dlr_sink
	log "$label: starting postern (fresh data dir $dir/data)"
	start_postern "$dir"

	wait_quiet "$label" "$key"
	local bulk="$dir/bulk.json" c0 c1 r0 r1 deadline note="" total=0 n=0 last=0 bad=0 expected="$MESSAGES"
	local load_done=0 rc=0 tfirst wall recv_t="" m0 got conn0=0
	log "$label: $REQUESTS requests x $PER_REQUEST destinations (${TEXT_CHARS}-char text), $BULK_CONCURRENCY in flight"
	[[ "$route" != ses ]] || conn0="$(stub_connections)"
	c0="$(ticks_of "$POSTERN_PID")"
	r0="$(ticks_of "$recv_pid")"
	m0="$(cpu_snapshot)"
	"$PY" "$OUTBOUND/loadgen.py" bulk --url "http://$LOOP:$POSTERN_HTTP_PORT/v2/messages" --key "$SERVICE_KEY" \
		--requests "$REQUESTS" --per-request "$PER_REQUEST" --concurrency "$BULK_CONCURRENCY" \
		--text-chars "$TEXT_CHARS" >"$bulk" 2>"$dir/bulk.err" &
	LOAD_PID=$!
	deadline=$((SECONDS + RUN_TIMEOUT))
	while :; do
		read -r total n last bad <<<"$(dlr_code 7501)"
		if [[ "$route" == smtp && -z "$recv_t" ]] && (($(sink_mesg) >= MESSAGES)); then recv_t="$(now)"; fi
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
			((n >= expected)) || note="${note:+$note; }notifications: $n x 7501, others: $(dlr_other_codes 7501)"
			break
		fi
		if ((SECONDS >= deadline)); then
			note="${note:+$note; }timeout after ${RUN_TIMEOUT}s: $n of $MESSAGES 7501s"
			last="$(now)"
			break
		fi
		sleep 0.1
	done
	c1="$(ticks_of "$POSTERN_PID")"
	r1="$(ticks_of "$recv_pid")"
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
	if [[ "$route" == ses ]]; then
		# The stub's own clock of its last SendEmail (exact, no polling).
		read -r got recv_t <<<"$(stub_sends)"
		((got >= MESSAGES)) || recv_t=""
		# minus this script's own count.txt requests (one connection each): stub_sends just
		# now and this one
		RECV_CONNS[$key]="$(($(stub_connections) - conn0 - 2))"
	else
		got="$(sink_mesg)"
	fi
	WALL[$key]="$wall"
	DONE[$key]="$n"
	RECV[$key]="$got"
	RATE[$key]="$(rate_of "$n" "$wall")"
	CPU1K[$key]="$(cpu1k $((c1 - c0)) "$n")"
	RECV_CPU1K[$key]="$(cpu1k $((r1 - r0)) "$got")"
	RSS[$key]="$(status_kb "$POSTERN_PID" VmHWM)"
	((n >= MESSAGES)) || note="${note:+$note; }$n of $MESSAGES submitted"
	((got == MESSAGES)) || note="${note:+$note; }the $([[ "$route" == ses ]] && echo "stub answered $got SendEmail calls" || echo "smtp-sink counted $got messages") for $MESSAGES messages"
	NOTE[$key]="$note"
	BULK_ACCEPT[$key]="$(fsub "$(json_get "$bulk" t_last_done)" "$tfirst")"
	if [[ -n "$recv_t" ]]; then RECV_RATE[$key]="$(rate_of "$MESSAGES" "$(fsub "$recv_t" "$tfirst")")"; fi
	log "$label: $n msgs in ${wall}s = ${RATE[$key]} msgs/s end to end, CPU ${CPU1K[$key]} s/1000 msgs, VmHWM ${RSS[$key]} kB, receiver got $got${note:+ ($note)}"

	if [[ "$route" == ses && "$alg" == "$FIRST_ALG" && "$SKIP_EVENTS" != 1 ]]; then
		bench_events "$dir" "$label"
	fi

	stop_postern "$dir"
	stop_dlr_sink
	if [[ "$route" == ses ]]; then stop_stub; else stop_sink; fi
}

# ---------------------------------------------------------------- SES events over SNS
bench_events() { # bench_events DIR LABEL: on the running daemon of the first SES run
	local dir="$1" label="$2" ids="$1/ses-ids.tsv" nids signed="$1/sign.json" out="$1/events.json"
	local c0 c1 m0 rc=0 deadline n7500=0 last7500=0 tfirst expect note="" stopped=0
	curl -s -m 30 "http://$LOOP:$STUB_PORT/ids" >"$ids" || die "could not read the MessageIds from the SES stub"
	nids="$(wc -l <"$ids")"
	EV_IDS="$nids"
	((nids == MESSAGES)) || log "SES events: the stub issued $nids MessageIds for $MESSAGES messages"
	((nids > 0)) || die "SES events: the stub issued no MessageId"
	log "SES events: signing $EVENTS SNS notifications (SignatureVersion 2, RSA-2048 test key; not timed)"
	"$PY" "$HELPERS/sns_events.py" sign --ids "$ids" --events "$EVENTS" --cert-url "$CERT_URL" \
		--topic "$TOPIC_ARN" --out "$dir/sns" >"$signed" 2>"$dir/sign.err" ||
		die "signing SNS notifications failed: $(tail -n 3 "$dir/sign.err")"
	EV_N="$(json_get "$signed" events)"
	[[ "$(json_get "$signed" capped)" != True ]] || EV_NOTE="EVENTS=$EVENTS capped at the $nids MessageIds the stub issued"
	log "SES events: signed $EV_N in $(json_get "$signed" sign_s)s (avg body $(json_get "$signed" avg_body_bytes) bytes)"
	require_free_port "$CERT_PORT" "certificate server" CERT_PORT
	# The 7500s of this phase are counted on their own code; the 7501s stay as they are.
	local base7500
	read -r _ base7500 _ _ <<<"$(dlr_code 7500)"

	wait_quiet "SES events" events
	log "SES events: POST /ses/events x $EV_N (first alone, then $CONCURRENCY keep-alive connections)"
	c0="$(ticks_of "$POSTERN_PID")"
	m0="$(cpu_snapshot)"
	"$PY" "$HELPERS/sns_events.py" post --url "http://$LOOP:$POSTERN_HTTP_PORT/ses/events" --dir "$dir/sns" \
		--cert-port "$CERT_PORT" --topic "$TOPIC_ARN" --concurrency "$CONCURRENCY" --timeout "$RUN_TIMEOUT" \
		>"$out" 2>"$dir/events.err" &
	LOAD_PID=$!
	# The poster stops by itself after RUN_TIMEOUT s (and reports); this is the backstop.
	deadline=$((SECONDS + RUN_TIMEOUT + 30))
	while kill -0 "$LOAD_PID" 2>/dev/null; do
		if ((SECONDS >= deadline)); then
			log "SES events: the poster still runs after $((RUN_TIMEOUT + 30))s; stopping it"
			stop_pid "$LOAD_PID" 5
			stopped=1
			break
		fi
		sleep 0.1
	done
	wait "$LOAD_PID" 2>/dev/null || rc=$?
	LOAD_PID=""
	if [[ ! -s "$out" ]]; then
		((stopped)) || die "SES events: the poster failed (exit $rc): $(tail -n 3 "$dir/events.err")"
		EV_NOTE="${EV_NOTE:+$EV_NOTE; }the poster hung and was stopped: no figures"
		return 0
	fi
	[[ "$(json_get "$out" timed_out)" != True ]] || note="not every notification answered within RUN_TIMEOUT=${RUN_TIMEOUT}s"
	expect="$(json_get "$out" recorded)"
	[[ "$expect" =~ ^[0-9]+$ ]] || expect=0
	log "SES events: $(json_get "$out" accepted_total) of $EV_N answered 200 ($expect recorded) at $(json_get "$out" rps)/s; waiting for $expect x 7500"
	while :; do
		read -r _ n7500 last7500 _ <<<"$(dlr_code 7500)"
		n7500=$((n7500 - base7500))
		((n7500 < expect)) || break
		if ((SECONDS >= deadline)); then
			note="${note:+$note; }timeout: $n7500 of $expect 7500s"
			last7500="$(now)"
			break
		fi
		sleep 0.1
	done
	c1="$(ticks_of "$POSTERN_PID")"
	BUSY[events]="$(busy_pct "$m0" "$(cpu_snapshot)")"
	curl -s -m 5 "http://$LOOP:$POSTERN_HTTP_PORT/metrics" >"$dir/metrics-events.txt" 2>/dev/null || true
	tfirst="$(json_get "$out" t_first_sent)"
	EV_JSON="$out"
	EV_7500="$n7500"
	EV_CPU1K="$(cpu1k $((c1 - c0)) "$n7500")"
	EV_RSS="$(status_kb "$POSTERN_PID" VmHWM)"
	if [[ -n "$tfirst" && "$last7500" != 0 ]]; then
		EV_ALL_S="$(fsub "$last7500" "$tfirst")"
		EV_ALL_RATE="$(rate_of "$n7500" "$EV_ALL_S")"
	fi
	((n7500 >= EV_N)) || note="${note:+$note; }$n7500 x 7500 for $EV_N notifications"
	[[ -z "$note" ]] || EV_NOTE="${EV_NOTE:+$EV_NOTE; }$note"
	log "SES events: all $n7500 x 7500 at the webhook ${EV_ALL_S:-?}s after the bulk's first request; postern CPU $EV_CPU1K s/1000 events${note:+ ($note)}"
}

# ---------------------------------------------------------------- the stub's own ceiling
bench_stub() {
	start_stub
	wait_quiet "SES stub ceiling" stub
	local c0 c1 out="$WORK/stubload.json" rc=0
	log "SES stub ceiling: $STUB_LOAD SendEmail calls over $STUB_CONNECTIONS keep-alive connections"
	c0="$(ticks_of "$STUB_PID")"
	"$PY" "$HELPERS/stubload.py" --port "$STUB_PORT" --requests "$STUB_LOAD" --connections "$STUB_CONNECTIONS" \
		--timeout "$RUN_TIMEOUT" >"$out" 2>"$WORK/stubload.err" || rc=$?
	c1="$(ticks_of "$STUB_PID")"
	((rc == 0)) || die "the stub's load generator failed: $(tail -n 3 "$WORK/stubload.err")"
	STUB_RPS="$(json_get "$out" rps)"
	STUB_OK="$(json_get "$out" ok)"
	STUB_CPU1K="$(cpu1k $((c1 - c0)) "$STUB_OK")"
	STUB_CORE="$(awk -v c="$STUB_CPU1K" 'BEGIN { if (c + 0 > 0) printf "%.0f", 1000 / c; else print "-" }')"
	STUB_BYTES="$(json_get "$out" request_bytes)"
	log "SES stub ceiling: $STUB_OK calls at $STUB_RPS/s (client on the same cores); stub CPU $STUB_CPU1K s/1000 = ~$STUB_CORE/s on one core"
	stop_stub
}

# ---------------------------------------------------------------- report
fmt_rate() { awk -v x="$1" 'BEGIN { if (x == "" || x == "-") print "-"; else printf "%.0f", x }'; }
mib() { awk -v k="$1" 'BEGIN { if (k == "" || k == "-") print "-"; else printf "%.1f MiB", k / 1024 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 <= 0) print "-"; else printf "%.2fx", a / b }'; }

report() {
	local cols=() labels=() c r a
	for r in ses smtp; do
		for a in $ALGORITHMS; do
			c="$(run_key "$r" "$a")"
			if [[ -n "${RATE[$c]:-}" ]]; then
				cols+=("$c")
				labels+=("$(run_label "$r" "$a")")
			fi
		done
	done
	row() { # row LABEL VALUE...
		local l="$1"
		shift
		printf '%-32s' "$l"
		for v in "$@"; do printf ' | %13s' "$v"; done
		printf '\n'
	}
	local vals
	echo
	echo "postern SES benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, loopback only"
	echo "knobs: MESSAGES=$MESSAGES PER_REQUEST=$PER_REQUEST TEXT_CHARS=$TEXT_CHARS BULK_CONCURRENCY=$BULK_CONCURRENCY" \
		"QUEUE_CONCURRENCY=$QUEUE_CONCURRENCY EVENTS=$EVENTS CONCURRENCY=$CONCURRENCY" \
		"STUB_LOAD=$STUB_LOAD STUB_CONNECTIONS=$STUB_CONNECTIONS"
	echo "load: $REQUESTS API requests x $PER_REQUEST destinations, ${TEXT_CHARS}-char text body; SES = SendEmail to" \
		"bench/ses/ses_stub.py, SMTP = smtp-sink"
	echo
	if ((${#cols[@]} > 0)); then
		row "" "${labels[@]}"
		vals=()
		for c in "${cols[@]}"; do vals+=("${DONE[$c]}"); done
		row "messages submitted (7501)" "${vals[@]}"
		vals=()
		for c in "${cols[@]}"; do vals+=("${WALL[$c]}"); done
		row "end-to-end wall s" "${vals[@]}"
		vals=()
		for c in "${cols[@]}"; do vals+=("$(fmt_rate "${RATE[$c]}")"); done
		row "msgs/s end to end" "${vals[@]}"
		vals=()
		for c in "${cols[@]}"; do
			if [[ "$c" == ses-* ]]; then vals+=("$(ratio "${RATE[$c]}" "${RATE[smtp-${c#ses-}]:-}")"); else vals+=("-"); fi
		done
		row "SES / SMTP (same DKIM)" "${vals[@]}"
		vals=()
		for c in "${cols[@]}"; do vals+=("${CPU1K[$c]}"); done
		row "postern CPU s / 1000 msgs" "${vals[@]}"
		vals=()
		for c in "${cols[@]}"; do vals+=("$(mib "${RSS[$c]}")"); done
		row "postern peak RSS (VmHWM)" "${vals[@]}"
		vals=()
		for c in "${cols[@]}"; do vals+=("${BULK_ACCEPT[$c]:--}"); done
		row "API: all requests 202, s" "${vals[@]}"
		vals=()
		for c in "${cols[@]}"; do vals+=("${RECV[$c]:--}"); done
		row "received by stub / smtp-sink" "${vals[@]}"
		vals=()
		for c in "${cols[@]}"; do vals+=("${RECV_CONNS[$c]:--}"); done
		row "SES: TCP connections to stub" "${vals[@]}"
		vals=()
		for c in "${cols[@]}"; do vals+=("$(fmt_rate "${RECV_RATE[$c]:-}")"); done
		row "msgs/s until receiver had all *" "${vals[@]}"
		vals=()
		for c in "${cols[@]}"; do vals+=("${RECV_CPU1K[$c]:--}"); done
		row "receiver CPU s / 1000 msgs" "${vals[@]}"
		vals=()
		for c in "${cols[@]}"; do vals+=("${BUSY[$c]:--}"); done
		row "machine CPU busy (all procs)" "${vals[@]}"
		vals=()
		for c in "${cols[@]}"; do vals+=("${PRE_BUSY[$c]:--}"); done
		row "  (busy in the 1 s before)" "${vals[@]}"
		echo "* first API request -> the receiver had every message: SES by the stub's clock of its last" \
			"SendEmail, SMTP by polling smtp-sink's counter (~0.1 s granularity)"
		for c in "${cols[@]}"; do
			[[ -z "${NOTE[$c]}" ]] || echo "note ($c): ${NOTE[$c]}"
		done
	fi
	[[ -z "$SMTP_SKIPPED_WHY" ]] || echo "SMTP reference skipped: $SMTP_SKIPPED_WHY"
	if [[ -n "$STUB_RPS" ]]; then
		echo "SES stub ceiling (direct load, $STUB_CONNECTIONS keep-alive connections, ${STUB_BYTES}-byte SendEmail requests," \
			"Python client on the same cores):"
		printf '  %s calls/s; stub CPU %s s / 1000 calls = ~%s calls/s on one core (busy before: %s)\n' \
			"$(fmt_rate "$STUB_RPS")" "$STUB_CPU1K" "$STUB_CORE" "${PRE_BUSY[stub]:--}"
	fi
	if [[ -n "$EV_JSON" && -s "$EV_JSON" ]]; then
		echo
		echo "SES event ingestion (signed SNS Notifications with SES Delivery events -> POST /ses/events)," \
			"after the $(run_label ses "$FIRST_ALG") run, same daemon, $EV_IDS MessageIds issued by the stub:"
		printf '  first request alone (certificate fetch + verify):  HTTP %s in %s ms; certificate fetched %s time(s) in all\n' \
			"$(json_get "$EV_JSON" first_request.status)" "$(json_get "$EV_JSON" first_request.ms)" \
			"$(json_get "$EV_JSON" cert_fetches)"
		printf '  then %s notifications over %s keep-alive connections: %s answered 200, %s errors;' \
			"$(json_get "$EV_JSON" bulk)" "$(json_get "$EV_JSON" concurrency)" "$(json_get "$EV_JSON" ok)" \
			"$(json_get "$EV_JSON" errors)"
		printf ' postern said "recorded" to %s of all %s, "ignored" to %s\n' \
			"$(json_get "$EV_JSON" recorded)" "$(json_get "$EV_JSON" events)" "$(json_get "$EV_JSON" ignored)"
		printf '  accepted (HTTP 200):              %s notifications/s  (%s s for the bulk)\n' \
			"$(fmt_rate "$(json_get "$EV_JSON" rps)")" "$(json_get "$EV_JSON" wall_s)"
		printf '  request latency:                  p50 %s ms  p99 %s ms  (p90 %s, max %s)\n' \
			"$(json_get "$EV_JSON" p50_ms)" "$(json_get "$EV_JSON" p99_ms)" "$(json_get "$EV_JSON" p90_ms)" \
			"$(json_get "$EV_JSON" max_ms)"
		printf '  every 7500 at the webhook after:  %s s from the bulk'"'"'s first request (%s x 7500 = %s events/s end to end)\n' \
			"${EV_ALL_S:--}" "$EV_7500" "$(fmt_rate "${EV_ALL_RATE:-}")"
		printf '  postern CPU s / 1000 events:      %s   peak RSS after: %s   machine CPU busy: %s (before: %s)\n' \
			"$EV_CPU1K" "$(mib "$EV_RSS")" "${BUSY[events]:--}" "${PRE_BUSY[events]:--}"
		local extra
		extra="$(json_get "$EV_JSON" first_ignored)"
		[[ -z "$extra" ]] || echo "  first ignored answer: $extra"
		extra="$(json_get "$EV_JSON" first_error)"
		[[ -z "$extra" ]] || echo "  first error: $extra"
		[[ -z "$EV_NOTE" ]] || echo "  note: $EV_NOTE"
	elif [[ -n "$EV_NOTE" ]]; then
		echo
		echo "SES event ingestion: $EV_NOTE"
	fi
	echo
	if ((${#LOG_NOTES[@]} > 0)); then
		echo "postern's logs (RUST_LOG=${RUST_LOG:-warn}):"
		for n in "${LOG_NOTES[@]}"; do echo "  $n"; done
	else
		echo "postern's logs (RUST_LOG=${RUST_LOG:-warn}): no WARN or ERROR line in any run"
	fi
	[[ -z "$DISTURBED" ]] || echo "WARNING: another benchmark was still running during: $DISTURBED"
	[[ -z "$BUILD_DISTURBED" ]] || echo "WARNING: rustc (a build) was running during: $BUILD_DISTURBED"
	[[ -z "$IDLE_DISTURBED" ]] || echo "WARNING: the machine was not idle (> ${IDLE_MAX_BUSY}%) when measuring: $IDLE_DISTURBED"
	return 0
}

# ---------------------------------------------------------------- main
declare -A RECV_CONNS RATE WALL DONE RECV CPU1K RECV_CPU1K RSS NOTE BULK_ACCEPT RECV_RATE BUSY PRE_BUSY
LOG_NOTES=()
STUB_RPS="" STUB_OK="" STUB_CPU1K="" STUB_CORE="" STUB_BYTES=""
EV_JSON="" EV_N="" EV_IDS="" EV_7500="" EV_CPU1K="" EV_RSS="" EV_ALL_S="" EV_ALL_RATE="" EV_NOTE=""
PY="$(command -v python3 || true)"
[[ -n "$PY" ]] || die "python3 not found"
command -v curl >/dev/null || die "curl not found"
HZ="$(getconf CLK_TCK)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/postern-ses-bench.XXXXXX")"
log "work directory $WORK"
[[ "$SKIP_EVENTS" == 1 ]] || ensure_cryptography
if [[ "$SKIP_SMTP" != 1 ]] && ! ensure_smtp_sink; then
	log "WARNING: SMTP reference skipped: $SMTP_SKIPPED_WHY"
	SKIP_SMTP=1
fi
build_postern
[[ -x "$POSTERN_BIN" ]] || die "no postern binary at $POSTERN_BIN"

((STUB_LOAD == 0)) || bench_stub
for a in $ALGORITHMS; do bench_route ses "$a"; done
if [[ "$SKIP_SMTP" != 1 ]]; then
	for a in $ALGORITHMS; do bench_route smtp "$a"; done
fi
report

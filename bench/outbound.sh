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

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh" # log, die, stop_pid, cleanup, the Postfix and postern helpers, ...
HELPERS="$HERE/outbound"

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

require_uints MESSAGES PER_REQUEST TEXT_CHARS SIZE SESSIONS BULK_CONCURRENCY LAT_RATE LAT_DURATION \
	QUEUE_CONCURRENCY RUN_TIMEOUT QUIET_WAIT BUILD_QUIET_WAIT IDLE_WAIT IDLE_MAX_BUSY BUILD_TRIES BUILD_RETRY_WAIT SINK_PORT POSTFIX_PORT \
	POSTERN_SMTP_PORT POSTERN_HTTP_PORT DLR_PORT REF_POSTFIX
((MESSAGES > 0 && PER_REQUEST > 0 && SESSIONS > 0)) || die "MESSAGES, PER_REQUEST and SESSIONS must be > 0"
check_bulk_knobs

# ---------------------------------------------------------------- state + cleanup
stop_processes() { # for cleanup (lib.sh), the EXIT trap
	stop_pid "$LOAD_PID" 5
	stop_pid "$POSTERN_PID" 30
	postfix_stop
	stop_pid "$SINK_PID" 5
	stop_pid "$DLR_PID" 5
}
set_traps

# wait_quiet (lib.sh) waits for a running bench/inbound.sh
OTHER_BENCH_PATTERN="bench/inbound.sh"
OTHER_BENCH_RUNNING="bench/inbound.sh is running"
OTHER_BENCH_STILL="bench/inbound.sh still running"
OTHER_BENCH_DONE="bench/inbound.sh"

# ---------------------------------------------------------------- setup
ensure_postfix_tools() {
	if ! { command -v smtp-source && command -v smtp-sink && command -v postfix; } >/dev/null; then
		install_postfix "smtp-source, smtp-sink and the Postfix reference" "${TMPDIR:-/tmp}/postern-outbound-bench-apt.log"
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

# ---------------------------------------------------------------- results
declare -A RATE WALL DONE CPU1K RSS NOTE
LAT_JSON=""

# ---------------------------------------------------------------- Postfix relay reference
postfix_setup_relay() {
	postfix_setup \
		"# Private benchmark instance generated by bench/outbound.sh: relays mail for relay.test
# from loopback to the smtp-sink on $LOOP:$SINK_PORT." \
		"relay_domains = relay.test
relayhost = [$LOOP]:$SINK_PORT" \
		"" \
		"default_destination_concurrency_limit = $SESSIONS
relay_destination_concurrency_limit = $SESSIONS
smtp_destination_concurrency_limit = $SESSIONS
default_process_limit = 100
smtp_dns_support_level = disabled"
}

postfix_queue_files() {
	find "$WORK/postfix/spool/maildrop" "$WORK/postfix/spool/incoming" "$WORK/postfix/spool/active" \
		"$WORK/postfix/spool/deferred" "$WORK/postfix/spool/hold" -type f 2>/dev/null | wc -l
}

bench_postfix() {
	require_free_port "$POSTFIX_PORT" "Postfix" POSTFIX_PORT
	postfix_setup_relay
	start_sink
	log "starting private Postfix instance ($PF_ETC): smtpd $LOOP:$POSTFIX_PORT, relayhost [$LOOP]:$SINK_PORT"
	postfix_start "Postfix smtpd"

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
alg_label() { echo "postern $(alg_name "$1")"; }

bench_postern() { # bench_postern ALGORITHM
	local alg="$1" key dir label
	key="$(alg_key "$alg")"
	label="$(alg_label "$alg")"
	dir="$WORK/postern-$key"
	write_postern_config "$dir" "$alg" "$(smtp_route_toml)"
	start_sink
	start_dlr_sink
	log "$label: starting postern (fresh data dir $dir/data)"
	start_postern "$dir"

	wait_quiet "$label" "$key"
	local rc=0 sinkn note
	bulk_run "$key" "$label" "$dir" 0.2 1
	sinkn="$(sink_mesg)"
	note="$BULK_NOTE"
	NOTE[$key]="$note"
	# Diagnostic: when the smtp-sink had all messages (polled every ~0.2 s), so a slow
	# notification path can be told apart from slow delivery.
	if [[ -n "$BULK_SINK_T" ]]; then SINK_RATE[$key]="$(rate_of "$MESSAGES" "$(fsub "$BULK_SINK_T" "$BULK_TFIRST")")"; fi
	log "$label: ${DONE[$key]} msgs in ${WALL[$key]}s = ${RATE[$key]} msgs/s end to end, CPU ${CPU1K[$key]} s/1000 msgs, VmHWM ${RSS[$key]} kB, smtp-sink counted $sinkn${note:+ ($note)}"

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
	stop_dlr_sink
	stop_sink
}

# ---------------------------------------------------------------- report
goal() { # goal RATE BASE FACTOR -> met / not met / n/a
	awk -v a="$1" -v b="$2" -v f="$3" 'BEGIN {
		if (a == "" || b == "" || b + 0 <= 0) print "n/a"
		else if (a + 0 >= f * b) print "met"
		else print "not met" }'
}

TABLE_LABEL_WIDTH=30 TABLE_VALUE_WIDTH=16 # the table rows (row, row_of in lib.sh)
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
	local vals
	echo
	echo "postern outbound benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, loopback only"
	echo "load: $MESSAGES messages; postern: $REQUESTS API requests x $PER_REQUEST destinations, ${TEXT_CHARS}-char text body;"
	echo "      Postfix: smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE -> Postfix -> relayhost smtp-sink"
	echo
	row "" "${labels[@]}"
	row_of "messages delivered to sink" DONE
	row_of "end-to-end wall s" WALL
	row_of "msgs/s end to end" RATE fmt_rate
	vals=()
	for c in "${cols[@]}"; do vals+=("$(ratio "${RATE[$c]}" "$pf")"); done
	row "ratio to Postfix (this run)" "${vals[@]}"
	vals=()
	for c in "${cols[@]}"; do vals+=("$(ratio "${RATE[$c]}" "$REF_POSTFIX")"); done
	row "ratio to Postfix ref ${REF_POSTFIX}/s" "${vals[@]}"
	row_of "CPU s / 1000 msgs" CPU1K
	row_of "peak RSS (VmHWM)" RSS mib
	row_of "API: all requests 202, s" BULK_ACCEPT
	row_of "msgs/s until sink had all" SINK_RATE fmt_rate
	row_of "machine CPU busy (all procs)" BUSY
	row_of "  (busy in the 1 s before)" PRE_BUSY
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
require_tools

ensure_postfix_tools
WORK="$(mktemp -d "${TMPDIR:-/tmp}/postern-outbound-bench.XXXXXX")"
log "work directory $WORK"

if [[ "$SKIP_POSTERN" != 1 ]]; then
	build_postern
fi
if [[ "$SKIP_POSTFIX" != 1 ]]; then
	bench_postfix
fi
if [[ "$SKIP_POSTERN" != 1 ]]; then
	for a in $ALGORITHMS; do bench_postern "$a"; done
fi
report

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

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh" # log, die, stop_pid, cleanup, the postern and bulk-load helpers, ...
HELPERS="$HERE/ses"

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

require_uints MESSAGES PER_REQUEST TEXT_CHARS BULK_CONCURRENCY QUEUE_CONCURRENCY EVENTS CONCURRENCY STUB_LOAD \
	STUB_CONNECTIONS RUN_TIMEOUT QUIET_WAIT BUILD_QUIET_WAIT IDLE_WAIT IDLE_MAX_BUSY BUILD_TRIES BUILD_RETRY_WAIT \
	POSTERN_SMTP_PORT POSTERN_HTTP_PORT DLR_PORT STUB_PORT CERT_PORT SINK_PORT
((MESSAGES > 0 && PER_REQUEST > 0 && CONCURRENCY > 0 && STUB_CONNECTIONS > 0)) ||
	die "MESSAGES, PER_REQUEST, CONCURRENCY and STUB_CONNECTIONS must be > 0"
check_bulk_knobs
[[ -n "$ALGORITHMS" ]] || die "ALGORITHMS is empty"
FIRST_ALG="${ALGORITHMS%% *}"
((EVENTS > 0)) || SKIP_EVENTS=1

# ---------------------------------------------------------------- state + cleanup
STUB_PID=""

stop_processes() { # for cleanup (lib.sh), the EXIT trap
	stop_pid "$LOAD_PID" 5
	stop_pid "$POSTERN_PID" 30
	stop_pid "$STUB_PID" 5
	stop_pid "$SINK_PID" 5
	stop_pid "$DLR_PID" 5
}
set_traps

# wait_quiet (lib.sh) waits for a running bench/inbound.sh or bench/outbound.sh
OTHER_BENCH_PATTERN="bench/(inbound|outbound)\.sh"
OTHER_BENCH_RUNNING="bench/inbound.sh or bench/outbound.sh is running"
OTHER_BENCH_STILL="another benchmark is still running"
OTHER_BENCH_DONE="the other benchmark"

# ---------------------------------------------------------------- helpers
stub_connections() { # TCP connections the stub has accepted
	curl -s -m 5 "http://$LOOP:$STUB_PORT/count.txt" 2>/dev/null | awk '$1 == "connections" { n = $2 } END { print n + 0 }' || echo 0
}
stub_sends() { # "N LAST": SendEmail calls the stub has answered, time.time() of the last one
	curl -s -m 5 "http://$LOOP:$STUB_PORT/count.txt" 2>/dev/null |
		awk '$1 == "sends" { n = $2; t = $4 } END { printf "%d %s\n", n, (t == "" ? "0" : t) }' || echo "0 0"
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
	apt_install_postfix "$WORK/apt-postfix.log"
	if ((APT_RC != 0)) || ! command -v smtp-sink >/dev/null; then
		SMTP_SKIPPED_WHY="apt-get install postfix failed (see apt-postfix.log with KEEP_WORK=1)"
		return 1
	fi
	if [[ -d /run/systemd/system ]] && systemctl is-active --quiet postfix.service 2>/dev/null; then
		systemctl disable --now postfix.service >/dev/null 2>&1 || true
	fi
}

start_stub() { # a fresh SES stub (no MessageIds recorded yet)
	start_listener STUB_PID STUB_PORT "SES stub" "$WORK/ses-stub.log" "$PY" "$HELPERS/ses_stub.py" "$STUB_PORT"
}
stop_stub() {
	stop_pid "$STUB_PID" 5
	STUB_PID=""
}

# ---------------------------------------------------------------- postern
SES_CONFIG_TOML="[ses]
topic_arns = [\"$TOPIC_ARN\"]
trust_url_prefixes = [\"http://$LOOP:$CERT_PORT/\"]"

ses_route_toml() { # the asset's route to the SES stub on STUB_PORT
	cat <<EOF
[asset.route]
kind = "ses"
region = "us-east-1"
access_key_id = "AKIDBENCHEXAMPLE"
secret_access_key = "bench-secret-access-key"
endpoint = "http://$LOOP:$STUB_PORT"
configuration_set = "postern-events"
EOF
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

run_key() { echo "$1-$(alg_key "$2")"; }
run_label() { echo "$([[ "$1" == ses ]] && echo SES || echo SMTP) $(alg_name "$2")"; }

bench_route() { # bench_route ses|smtp ALGORITHM
	local route="$1" alg="$2" key label dir
	key="$(run_key "$route" "$alg")"
	label="$(run_label "$route" "$alg")"
	dir="$WORK/$key"
	write_postern_config "$dir" "$alg" "$(if [[ "$route" == ses ]]; then ses_route_toml; else smtp_route_toml; fi)" "$SES_CONFIG_TOML"
	if [[ "$route" == ses ]]; then start_stub; else start_sink; fi
	local recv_pid
	recv_pid="$([[ "$route" == ses ]] && echo "$STUB_PID" || echo "$SINK_PID")"
	start_dlr_sink
	log "$label: starting postern (fresh data dir $dir/data)"
	start_postern "$dir"

	wait_quiet "$label" "$key"
	local note got recv_t conn0=0
	[[ "$route" != ses ]] || conn0="$(stub_connections)"
	bulk_run "$key" "$label" "$dir" 0.1 "$([[ "$route" == smtp ]] && echo 1 || echo 0)" "$recv_pid"
	if [[ "$route" == ses ]]; then
		# The stub's own clock of its last SendEmail (exact, no polling).
		read -r got recv_t <<<"$(stub_sends)"
		((got >= MESSAGES)) || recv_t=""
		# minus this script's own count.txt requests (one connection each): stub_sends just
		# now and this one
		RECV_CONNS[$key]="$(($(stub_connections) - conn0 - 2))"
	else
		got="$(sink_mesg)"
		recv_t="$BULK_SINK_T"
	fi
	RECV[$key]="$got"
	RECV_CPU1K[$key]="$(cpu1k "$BULK_RECV_TICKS" "$got")"
	note="$BULK_NOTE"
	((got == MESSAGES)) || note="${note:+$note; }the $([[ "$route" == ses ]] && echo "stub answered $got SendEmail calls" || echo "smtp-sink counted $got messages") for $MESSAGES messages"
	NOTE[$key]="$note"
	if [[ -n "$recv_t" ]]; then RECV_RATE[$key]="$(rate_of "$MESSAGES" "$(fsub "$recv_t" "$BULK_TFIRST")")"; fi
	log "$label: ${DONE[$key]} msgs in ${WALL[$key]}s = ${RATE[$key]} msgs/s end to end, CPU ${CPU1K[$key]} s/1000 msgs, VmHWM ${RSS[$key]} kB, receiver got $got${note:+ ($note)}"

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
TABLE_LABEL_WIDTH=32 TABLE_VALUE_WIDTH=13 # the table rows (row, row_of in lib.sh)
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
		row_of "messages submitted (7501)" DONE
		row_of "end-to-end wall s" WALL
		row_of "msgs/s end to end" RATE fmt_rate
		vals=()
		for c in "${cols[@]}"; do
			if [[ "$c" == ses-* ]]; then vals+=("$(ratio "${RATE[$c]}" "${RATE[smtp-${c#ses-}]:-}" x -)"); else vals+=("-"); fi
		done
		row "SES / SMTP (same DKIM)" "${vals[@]}"
		row_of "postern CPU s / 1000 msgs" CPU1K
		row_of "postern peak RSS (VmHWM)" RSS mib
		row_of "API: all requests 202, s" BULK_ACCEPT
		row_of "received by stub / smtp-sink" RECV
		row_of "SES: TCP connections to stub" RECV_CONNS
		row_of "msgs/s until receiver had all *" RECV_RATE fmt_rate
		row_of "receiver CPU s / 1000 msgs" RECV_CPU1K
		row_of "machine CPU busy (all procs)" BUSY
		row_of "  (busy in the 1 s before)" PRE_BUSY
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
require_tools

WORK="$(mktemp -d "${TMPDIR:-/tmp}/postern-ses-bench.XXXXXX")"
log "work directory $WORK"
[[ "$SKIP_EVENTS" == 1 ]] || ensure_cryptography
if [[ "$SKIP_SMTP" != 1 ]] && ! ensure_smtp_sink; then
	log "WARNING: SMTP reference skipped: $SMTP_SKIPPED_WHY"
	SKIP_SMTP=1
fi
build_postern

((STUB_LOAD == 0)) || bench_stub
for a in $ALGORITHMS; do bench_route ses "$a"; done
if [[ "$SKIP_SMTP" != 1 ]]; then
	for a in $ALGORITHMS; do bench_route smtp "$a"; done
fi
report

#!/usr/bin/env bash
# bench/inbound.sh - inbound SMTP throughput benchmark (loopback only).
#
# Drives three receivers with Postfix's smtp-source and prints a table:
#   1. smtp-sink      - accepts and discards, no disk: the machine's ceiling
#   2. Postfix        - private instance, mail for bench.test accepted into a held queue
#   3. postern        - target/release/postern serve, MO webhooks to a local HTTP sink
# Everything binds and connects to 127.0.0.1 only. See bench/README.md.
#
# Knobs (environment):
#   MESSAGES=20000  SESSIONS=20  SIZES="5120 102400"
#   SKIP_SINK=1 SKIP_POSTFIX=1 SKIP_POSTERN=1   leave a receiver out
#   SKIP_BUILD=1    do not run `cargo build --release` (use the existing binary)
#   POSTERN_BIN=... binary to run (default: <repo>/target/release/postern)
#   IDLE_CONNS=1000 idle connections for the idle-RSS measurement (0 = skip)
#   DRAIN_TIMEOUT=180 seconds to wait for postern's MO webhooks to drain after each run
#   RUN_TIMEOUT=900 seconds one smtp-source run may take
#   KEEP_WORK=1     keep the temporary directory (logs, configs) after the run
#   SINK_PORT=12600 POSTFIX_PORT=12601 POSTERN_SMTP_PORT=12525
#   POSTERN_HTTP_PORT=18080 WEBHOOK_PORT=19000
# A missed goal never makes the script fail; a broken setup does (exit 1).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh" # log, die, stop_pid, cleanup, the Postfix helpers, ...
HELPERS="$HERE/inbound"

MESSAGES="${MESSAGES:-20000}"
SESSIONS="${SESSIONS:-20}"
SIZES="${SIZES:-5120 102400}"
SKIP_SINK="${SKIP_SINK:-0}"
SKIP_POSTFIX="${SKIP_POSTFIX:-0}"
SKIP_POSTERN="${SKIP_POSTERN:-0}"
SKIP_BUILD="${SKIP_BUILD:-0}"
POSTERN_BIN="${POSTERN_BIN:-$REPO/target/release/postern}"
IDLE_CONNS="${IDLE_CONNS:-1000}"
DRAIN_TIMEOUT="${DRAIN_TIMEOUT:-180}"
RUN_TIMEOUT="${RUN_TIMEOUT:-900}"
KEEP_WORK="${KEEP_WORK:-0}"
SINK_PORT="${SINK_PORT:-12600}"
POSTFIX_PORT="${POSTFIX_PORT:-12601}"
POSTERN_SMTP_PORT="${POSTERN_SMTP_PORT:-12525}"
POSTERN_HTTP_PORT="${POSTERN_HTTP_PORT:-18080}"
WEBHOOK_PORT="${WEBHOOK_PORT:-19000}"

FROM="sender@example.org"
TO="user@bench.test"

# Reference figures measured earlier on this machine class (msgs/s).
declare -A REF=(
	[smtp-sink,5120]=11000 [smtp-sink,102400]=1900
	[postfix,5120]=1500 [postfix,102400]=760
)

require_uints MESSAGES SESSIONS IDLE_CONNS DRAIN_TIMEOUT RUN_TIMEOUT SINK_PORT POSTFIX_PORT \
	POSTERN_SMTP_PORT POSTERN_HTTP_PORT WEBHOOK_PORT
((MESSAGES > 0 && SESSIONS > 0)) || die "MESSAGES and SESSIONS must be > 0"
for s in $SIZES; do [[ "$s" =~ ^[0-9]+$ ]] || die "SIZES must be byte counts (got '$s')"; done

# ---------------------------------------------------------------- state + cleanup
WEBHOOK_PID=""
IDLE_PID=""

stop_processes() { # for cleanup (lib.sh), the EXIT trap
	stop_pid "$LOAD_PID" 5
	stop_pid "$IDLE_PID" 5
	stop_pid "$POSTERN_PID" 30
	stop_pid "$SINK_PID" 5
	stop_pid "$WEBHOOK_PID" 5
	postfix_stop
}
set_traps

# ---------------------------------------------------------------- helpers
fmt_size() { awk -v b="$1" 'BEGIN { if (b % 1024 == 0) printf "%d KB", b / 1024; else printf "%d B", b }'; }

postern_accepted() { # sum of postern_inbound_messages_total{...result="accepted"...}, or "" if absent
	curl -s -m 5 "http://$LOOP:$POSTERN_HTTP_PORT/metrics" 2>/dev/null |
		awk '/^postern_inbound_messages_total\{/ && /result="accepted"/ { s += $NF; n++ }
		     END { if (n) printf "%.0f\n", s }' || true
}

webhook_total() {
	curl -s -m 5 "http://$LOOP:$WEBHOOK_PORT/count" 2>/dev/null |
		"$PY" -c 'import json,sys; print(json.load(sys.stdin).get("total", 0))' 2>/dev/null || echo 0
}

# ---------------------------------------------------------------- setup
ensure_postfix_tools() {
	if command -v smtp-source >/dev/null && command -v smtp-sink >/dev/null && command -v postfix >/dev/null; then
		return 0
	fi
	install_postfix "smtp-source, smtp-sink and the Postfix comparison" "${TMPDIR:-/tmp}/postern-bench-apt.log"
	# "No configuration" leaves the system instance unconfigured; also make sure it never starts.
	if [[ -d /run/systemd/system ]]; then
		systemctl disable --now postfix.service >/dev/null 2>&1 || true
	fi
	if [[ -f /etc/postfix/main.cf ]] && postfix status >/dev/null 2>&1; then
		postfix stop >/dev/null 2>&1 || true
	fi
	command -v smtp-source >/dev/null || die "smtp-source still missing after installing postfix"
}

start_webhook_sink() {
	start_listener WEBHOOK_PID WEBHOOK_PORT "webhook sink" "$WORK/webhook-sink.log" \
		"$PY" "$HELPERS/webhook_sink.py" "$WEBHOOK_PORT"
}

# ---------------------------------------------------------------- one load run
# run_load RECEIVER PORT SIZE: runs smtp-source, sets LAST_WALL and LAST_RC
LAST_WALL=0
LAST_RC=0
run_load() {
	local name="$1" port="$2" size="$3" t0 t1
	local out="$WORK/smtp-source-$name-$size.log"
	log "$name: $MESSAGES messages of $(fmt_size "$size"), $SESSIONS sessions -> $LOOP:$port"
	LAST_RC=0
	t0="$(now)"
	# In the background + wait, so that a signal reaches the EXIT trap at once.
	timeout "$RUN_TIMEOUT" smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$size" \
		-f "$FROM" -t "$TO" "$LOOP:$port" >"$out" 2>&1 &
	LOAD_PID=$!
	wait "$LOAD_PID" || LAST_RC=$?
	t1="$(now)"
	LOAD_PID=""
	LAST_WALL="$(fsub "$t1" "$t0")"
	if ((LAST_RC != 0)); then
		log "$name: smtp-source exited $LAST_RC after ${LAST_WALL}s:"
		tail -n 5 "$out" >&2 || true
	fi
}

declare -A RATE WALL ACC CPU1K NOTE

record() { # record RECEIVER SIZE ACCEPTED [CPU_TICKS]
	local name="$1" size="$2" acc="$3" cpu="${4:-}"
	local key="$name,$size"
	WALL[$key]="$LAST_WALL"
	ACC[$key]="$acc"
	RATE[$key]="$(rate_of "$acc" "$LAST_WALL")"
	if [[ -n "$cpu" ]]; then
		CPU1K[$key]="$(cpu1k "$cpu" "$acc")"
	else
		CPU1K[$key]="-"
	fi
	NOTE[$key]=""
	((LAST_RC == 0)) || NOTE[$key]="smtp-source failed (rc $LAST_RC)"
	if ((acc != MESSAGES)); then
		NOTE[$key]="${NOTE[$key]:+${NOTE[$key]}; }accepted $acc of $MESSAGES"
	fi
	log "$name $(fmt_size "$size"): $acc msgs in ${LAST_WALL}s = ${RATE[$key]} msgs/s, CPU ${CPU1K[$key]} s/1000 msgs"
}

# ---------------------------------------------------------------- receivers
bench_sink() {
	start_sink "starting smtp-sink on $LOOP:$SINK_PORT"
	local size before after c0 c1
	for size in $SIZES; do
		before="$(sink_mesg)"
		c0="$(ticks_of "$SINK_PID")"
		run_load smtp-sink "$SINK_PORT" "$size"
		c1="$(ticks_of "$SINK_PID")"
		sleep 0.2 # let smtp-sink flush its counter line (bounded, not synchronisation)
		after="$(sink_mesg)"
		record smtp-sink "$size" $((after - before)) $((c1 - c0))
	done
	stop_sink
}

postfix_setup_hold() {
	postfix_setup \
		"# Private benchmark instance generated by bench/inbound.sh. Accepts mail for
# bench.test from loopback and puts it on hold: nothing is ever delivered." \
		"relay_domains = bench.test" \
		"smtpd_recipient_restrictions = check_recipient_access static:HOLD, permit" \
		"message_size_limit = 41943040"
}

postfix_held() { find "$WORK/postfix/spool/hold" -type f 2>/dev/null | wc -l; }
postfix_queued_elsewhere() {
	find "$WORK/postfix/spool/incoming" "$WORK/postfix/spool/active" \
		"$WORK/postfix/spool/deferred" -type f 2>/dev/null | wc -l
}

bench_postfix() {
	require_free_port "$POSTFIX_PORT" "Postfix" POSTFIX_PORT
	postfix_setup_hold
	log "starting private Postfix instance ($PF_ETC) on $LOOP:$POSTFIX_PORT"
	postfix_start "Postfix"
	local size held c0 c1 other
	for size in $SIZES; do
		postsuper -c "$PF_ETC" -d ALL >/dev/null 2>&1 || true
		c0="$(postfix_ticks)"
		run_load postfix "$POSTFIX_PORT" "$size"
		c1="$(postfix_ticks)"
		held="$(postfix_held)"
		other="$(postfix_queued_elsewhere)"
		((other == 0)) || log "postfix: $other queue files outside the hold queue (should be 0)"
		record postfix "$size" "$held" $((c1 - c0))
		postsuper -c "$PF_ETC" -d ALL >/dev/null 2>&1 || true
	done
	postfix_stop
}

postern_config() {
	local dir="$WORK/postern"
	mkdir -p "$dir/data"
	{
		postern_server_toml "$dir/data"
		cat <<EOF

[smtp]
listen = ["$LOOP:$POSTERN_SMTP_PORT"]
max_message_size = 41943040
max_recipients = 100
max_connections = 2000
max_connections_per_ip = 2000
command_timeout = 300
data_timeout = 600

[http]
listen = "$LOOP:$POSTERN_HTTP_PORT"

[admin]
token = "bench-admin-token"

[dns]
resolver = "off"

[[asset]]
id = "a_bench"
name = "Bench"
domains = ["bench.test"]
inbound = true
incoming_webhook = "http://$LOOP:$WEBHOOK_PORT/mo"
delivery_webhook = "http://$LOOP:$WEBHOOK_PORT/dlr"
EOF
	} >"$dir/postern.toml"
}

POSTERN_IDLE_BASE="-"
POSTERN_IDLE_RSS="-"
POSTERN_IDLE_NOTE=""
POSTERN_HWM="-"
declare -A DRAIN CPU1K_ALL SINKCPU

postern_idle() {
	((IDLE_CONNS > 0)) || return 0
	POSTERN_IDLE_BASE="$(status_kb "$POSTERN_PID" VmRSS)"
	log "postern: opening $IDLE_CONNS idle SMTP connections (RSS now $(mib "$POSTERN_IDLE_BASE"))"
	local ready="$WORK/idle.out" deadline=$((SECONDS + 120)) line="" t0
	t0="$(now)"
	"$PY" "$HELPERS/idle_conns.py" "$POSTERN_SMTP_PORT" "$IDLE_CONNS" 300 >"$ready" 2>&1 &
	IDLE_PID=$!
	while :; do
		line="$(grep -m1 '^READY' "$ready" 2>/dev/null || true)"
		[[ -z "$line" ]] || break
		kill -0 "$IDLE_PID" 2>/dev/null || break
		((SECONDS < deadline)) || break
		sleep 0.1
	done
	if [[ -n "$line" ]]; then
		POSTERN_IDLE_NOTE="${line#READY }, all open in $(fsub "$(now)" "$t0" 1)s"
		sleep 1 # let the server settle with all sessions parked (bounded, not synchronisation)
		POSTERN_IDLE_RSS="$(status_kb "$POSTERN_PID" VmRSS)"
		log "postern: $IDLE_CONNS idle connections ($POSTERN_IDLE_NOTE): RSS $(mib "$POSTERN_IDLE_RSS")"
	else
		POSTERN_IDLE_NOTE="idle-connection helper did not get ready: $(tail -n 2 "$ready" | tr '\n' ' ')"
		log "postern: $POSTERN_IDLE_NOTE"
	fi
	stop_pid "$IDLE_PID" 5
	IDLE_PID=""
	# Wait (bounded) until postern has noticed the closed connections.
	local d2=$((SECONDS + 30))
	while ((SECONDS < d2)); do
		local g
		g="$(curl -s -m 2 "http://$LOOP:$POSTERN_HTTP_PORT/metrics" 2>/dev/null |
			awk '/^postern_smtp_connections[ {]/ { print $NF; exit }' || true)"
		[[ -z "$g" || "${g%.*}" -le 0 ]] && break
		sleep 0.2
	done
}

# Not lib.sh's build_postern: one try, no BUILD_TRIES knob, its own messages and log file.
build_postern_once() { # before any measurement, so a broken build fails fast
	if [[ "$SKIP_BUILD" != 1 ]]; then
		command -v cargo >/dev/null || die "cargo not found (set SKIP_BUILD=1 and POSTERN_BIN=...)"
		log "building postern (cargo build --release in $REPO)"
		(cd "$REPO" && cargo build --release) >"$WORK/cargo-build.log" 2>&1 ||
			die "cargo build --release failed: $(tail -n 20 "$WORK/cargo-build.log")"
	fi
	[[ -x "$POSTERN_BIN" ]] || die "postern binary not found at $POSTERN_BIN"
}

bench_postern() {
	require_free_port "$POSTERN_SMTP_PORT" "postern SMTP" POSTERN_SMTP_PORT
	require_free_port "$POSTERN_HTTP_PORT" "postern HTTP" POSTERN_HTTP_PORT
	start_webhook_sink
	postern_config
	log "starting postern ($POSTERN_BIN) on $LOOP:$POSTERN_SMTP_PORT, HTTP $LOOP:$POSTERN_HTTP_PORT"
	"$POSTERN_BIN" serve --config "$WORK/postern/postern.toml" >"$WORK/postern.log" 2>&1 &
	POSTERN_PID=$!
	local deadline=$((SECONDS + 60))
	until [[ "$(http_code "http://$LOOP:$POSTERN_HTTP_PORT/readyz")" == 200 ]]; do
		kill -0 "$POSTERN_PID" 2>/dev/null ||
			die "postern exited before it was ready: $(tail -n 20 "$WORK/postern.log")"
		((SECONDS < deadline)) || die "postern /readyz not 200 after 60 s: $(tail -n 20 "$WORK/postern.log")"
		sleep 0.1
	done
	wait_port "$POSTERN_SMTP_PORT" 15 "$POSTERN_PID" "postern"
	log "postern ready (pid $POSTERN_PID)"

	postern_idle

	local size c0 c1 s0 m0 m1 acc expected=0 w0 t0 d
	w0="$(webhook_total)"
	for size in $SIZES; do
		kill -0 "$POSTERN_PID" 2>/dev/null || die "postern died: $(tail -n 20 "$WORK/postern.log")"
		m0="$(postern_accepted)"
		s0="$(ticks_of "$WEBHOOK_PID")"
		c0="$(ticks_of "$POSTERN_PID")"
		run_load postern "$POSTERN_SMTP_PORT" "$size"
		c1="$(ticks_of "$POSTERN_PID")"
		m1="$(postern_accepted)"
		if [[ -n "$m0" && -n "$m1" ]]; then
			acc=$((m1 - m0))
		else
			# No metric (yet): trust smtp-source, which aborts on any unexpected reply.
			if ((LAST_RC == 0)); then acc="$MESSAGES"; else acc=0; fi
			log "postern: no postern_inbound_messages_total{result=\"accepted\"} metric; counting from smtp-source"
		fi
		record postern "$size" "$acc" $((c1 - c0))
		# Let the MO webhooks drain before the next run (bounded), so runs do not overlap.
		expected=$((expected + acc))
		t0="$(now)"
		deadline=$((SECONDS + DRAIN_TIMEOUT))
		while (($(webhook_total) - w0 < expected)) && ((SECONDS < deadline)); do
			kill -0 "$POSTERN_PID" 2>/dev/null || break
			sleep 0.2
		done
		d="$(fsub "$(now)" "$t0" 1)"
		local got=$(($(webhook_total) - w0))
		if ((got >= expected)); then
			DRAIN[$size]="${d}s"
		else
			DRAIN[$size]="not drained after ${d}s ($got of $expected webhooks)"
		fi
		CPU1K_ALL[$size]="$(cpu1k $(($(ticks_of "$POSTERN_PID") - c0)) "$acc")"
		SINKCPU[$size]="$(awk -v c="$(($(ticks_of "$WEBHOOK_PID") - s0))" -v hz="$HZ" 'BEGIN { printf "%.1f", c / hz }')"
		log "postern $(fmt_size "$size"): webhooks drained: ${DRAIN[$size]}; CPU incl. webhooks ${CPU1K_ALL[$size]} s/1000 msgs"
	done
	POSTERN_HWM="$(status_kb "$POSTERN_PID" VmHWM)"
	stop_pid "$POSTERN_PID" 30
	POSTERN_PID=""
	stop_pid "$WEBHOOK_PID" 5
	WEBHOOK_PID=""
}

# ---------------------------------------------------------------- report
goal_line() { # goal_line LABEL A SIZE B FACTOR: is rate(A) >= FACTOR * rate(B)?
	local label="$1" a="${RATE[$2,$3]:-}" size="$3" other="$4" factor="$5" measured reference
	verdict() { awk -v a="$1" -v b="$2" -v f="$factor" 'BEGIN { print (a >= f * b) ? "met" : "NOT met" }'; }
	if [[ -z "$a" ]]; then
		echo "  $label not measured"
		return
	fi
	if [[ -n "${RATE[$other,$size]:-}" ]]; then measured="$(verdict "$a" "${RATE[$other,$size]}")"; else measured="not measured"; fi
	if [[ -n "${REF[$other,$size]:-}" ]]; then reference="$(verdict "$a" "${REF[$other,$size]}")"; else reference="n/a"; fi
	echo "  $label $measured (against the reference figure: $reference)"
}

report() {
	local size key r ref line
	echo
	echo "=== postern inbound benchmark: $MESSAGES messages per run, $SESSIONS sessions, loopback ==="
	echo "    $(nproc) CPUs, $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "    CPU busy in the second before the runs: $BUSY_BEFORE% (other work running on the machine distorts every figure)"
	echo
	printf '%-10s | %-6s | %8s | %8s | %9s | %9s | %13s | %s\n' \
		receiver size accepted "wall s" "msgs/s" reference "CPU s/1000" note
	printf '%s\n' "-----------+--------+----------+----------+-----------+-----------+---------------+------"
	for name in smtp-sink postfix postern; do
		for size in $SIZES; do
			key="$name,$size"
			[[ -n "${RATE[$key]:-}" ]] || continue
			ref="${REF[$name,$size]:-}"
			printf '%-10s | %-6s | %8s | %8s | %9s | %9s | %13s | %s\n' \
				"$name" "$(fmt_size "$size")" "${ACC[$key]}" "${WALL[$key]}" "$(fmt_rate "${RATE[$key]}")" \
				"${ref:+~$ref}" "${CPU1K[$key]}" "${NOTE[$key]}"
		done
	done
	echo
	if [[ -n "$(for s in $SIZES; do echo "${RATE[postern,$s]:-}"; done)" ]]; then
		echo "ratios (measured in this run; in brackets: against the reference figures):"
		for size in $SIZES; do
			[[ -n "${RATE[postern,$size]:-}" ]] || continue
			line="$(printf '  %-7s' "$(fmt_size "$size"):")"
			line+=" postern/Postfix = $(ratio "${RATE[postern,$size]}" "${RATE[postfix,$size]:-}")"
			line+=" [$(ratio "${RATE[postern,$size]}" "${REF[postfix,$size]:-}")]"
			line+="  postern/smtp-sink = $(ratio "${RATE[postern,$size]}" "${RATE[smtp-sink,$size]:-}" %)"
			line+=" [$(ratio "${RATE[postern,$size]}" "${REF[smtp-sink,$size]:-}" %)]"
			echo "$line"
		done
		echo
		echo "postern resources:"
		for size in $SIZES; do
			[[ -n "${RATE[postern,$size]:-}" ]] || continue
			echo "  CPU $(fmt_size "$size"): ${CPU1K[postern,$size]} s/1000 msgs during SMTP, ${CPU1K_ALL[$size]:--} s/1000 msgs incl. MO webhooks (drain: ${DRAIN[$size]:--}; the Python webhook sink used ${SINKCPU[$size]:--} CPU s)"
		done
		echo "  peak RSS (VmHWM):              $(mib "$POSTERN_HWM")"
		if ((IDLE_CONNS > 0)); then
			local per="-"
			if [[ "$POSTERN_IDLE_RSS" != - && "$POSTERN_IDLE_BASE" != - ]]; then
				per="$(awk -v a="$POSTERN_IDLE_RSS" -v b="$POSTERN_IDLE_BASE" -v n="$IDLE_CONNS" 'BEGIN { printf "%.1f KiB/conn", (a - b) / n }')"
			fi
			echo "  RSS with $IDLE_CONNS idle connections: $(mib "$POSTERN_IDLE_RSS") (before: $(mib "$POSTERN_IDLE_BASE"); ${per}; ${POSTERN_IDLE_NOTE})"
		fi
		echo
		echo "goals (informational; never change the exit status):"
		goal_line "postern >= 3x Postfix at 5 KB:        " postern 5120 postfix 3
		goal_line "postern >= 80% of smtp-sink at 100 KB:" postern 102400 smtp-sink 0.8
	fi
	echo
	echo "reference (earlier, same machine class): smtp-sink ~11,000/s at 5 KB, ~1,900/s at 100 KB;"
	echo "                                         Postfix held queue ~1,500/s at 5 KB, ~760/s at 100 KB"
}

# ---------------------------------------------------------------- main
PY="$(python3 -c 'import sys; print(sys.executable)')" || die "python3 is required"
HZ="$(getconf CLK_TCK)"
# 1,000 idle connections + 20 sessions need file descriptors in postern and the helper.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) >= IDLE_CONNS + 256)) || log "warning: ulimit -n is $(ulimit -n); the idle-connection test may fail"

ensure_postfix_tools
WORK="$(mktemp -d "${TMPDIR:-/tmp}/postern-bench.XXXXXX")"
log "work directory $WORK; MESSAGES=$MESSAGES SESSIONS=$SESSIONS SIZES=\"$SIZES\""

[[ "$SKIP_POSTERN" == 1 ]] || build_postern_once
BUSY_BEFORE="$(busy_now)"
if ((BUSY_BEFORE > 10)); then
	log "warning: the CPUs were ${BUSY_BEFORE}% busy before the runs; other processes will distort the figures"
fi
[[ "$SKIP_SINK" == 1 ]] || bench_sink
[[ "$SKIP_POSTFIX" == 1 ]] || bench_postfix
[[ "$SKIP_POSTERN" == 1 ]] || bench_postern

report

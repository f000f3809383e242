#!/usr/bin/env bash
# bench/cluster.sh - cluster mode (SPEC 13) against sled alone, loopback only.
#
# Measures, in one run, and prints side by side:
#   1. The outbound benchmark of bench/outbound.sh (the same load generator,
#      bench/outbound/loadgen.py bulk, the same smtp-sink smarthost and delivery-webhook
#      sink bench/outbound/dlr_sink.py) on ONE node, each run with a fresh data dir:
#        (a) sled only (no [cluster]);
#        (b) the same node with [cluster] on a private local PostgreSQL (a fresh
#            database for the run, node_id "a").
#      ROUNDS (2) pairs, alternating (sled, cluster, cluster, sled).
#      MESSAGES messages of ~5 KB (TEXT_CHARS-character text) as MESSAGES/PER_REQUEST
#      requests of PER_REQUEST destinations, BULK_CONCURRENCY in flight, DKIM ALGORITHM.
#      msgs/s = MESSAGES / (first API request sent -> last 7501 received).
#      CPU ms per message = utime+stime over that span / messages, for postern
#      (/proc/PID/stat) and for the PostgreSQL instance (postmaster incl. its reaped
#      children + every live child: backends, checkpointer, walwriter, autovacuum...).
#      Goal: (b) msgs/s >= 70% of (a).
#   2. THREE nodes a, b, c (own data dir and ports each, the same config, the same
#      database) with API calls sent round-robin across their HTTP ports at a fixed,
#      scheduled RR_RATE (200) requests/s for RR_DURATION (20) s, 1 destination each
#      (loadgen.py rate, open loop, several --url). Reported: API latency (request sent
#      -> 202) p50/p99/max overall and p99 per node; after the load, the wait for every
#      message's 7501; CPU ms per message of the three postern processes together and of
#      PostgreSQL over load + delivery. Goal: API p99 < 20 ms at 200 req/s.
# Goals are informational: the exit status is 0 unless the run breaks (the build, a
# daemon or PostgreSQL not coming up, a load generator crashing).
#
# Usage (root: PostgreSQL runs as the OS user postgres; postgresql and postfix (for
# smtp-sink) are apt-get installed when missing):
#   bench/cluster.sh                     # ~2-3 minutes plus the build on 2 quiet cores
#   MESSAGES=4000 RR_DURATION=10 bench/cluster.sh    # quick run
#   SKIP_BUILD=1 ROUNDS=1 bench/cluster.sh           # one sled run, one cluster run
#   bench/cluster.sh > result.txt        # progress on stderr, the report on stdout
#
# Knobs (environment):
#   MESSAGES=20000 PER_REQUEST=100 TEXT_CHARS=5000 BULK_CONCURRENCY=8   one-node load
#   ALGORITHM=ed25519-sha256   DKIM of every node (or rsa-sha256)
#   ROUNDS=2             one-node pairs, alternating: sled, cluster, cluster, sled (ABBA,
#                        so a drifting machine load hits both alike); the ratio uses the
#                        median msgs/s of each mode; ROUNDS=1 for one of each
#   SKIP_SINGLE=1 / SKIP_THREE=1   leave part 1 / part 2 out
#   NODES=3 RR_RATE=200 RR_DURATION=20 RR_WORKERS=64   part 2
#   QUEUE_CONCURRENCY=32 postern [queue] concurrency
#   PG_FSYNC=on          on: PostgreSQL's durable defaults; off: fsync,
#                        synchronous_commit, full_page_writes off (as the tests run it)
#   PG_SHARED_BUFFERS=128MB  PG_PORT=0 (0: a free port)  PG_BIN=DIR (initdb, pg_ctl,
#                        postgres; default pg_config --bindir, PATH, /usr/lib/postgresql/*/bin)
#   SKIP_BUILD=1 POSTERN_BIN=...   as in the other scripts
#   RUN_TIMEOUT=600      seconds one measurement may take (then cut short, reported)
#   QUIET_WAIT=600 BUILD_QUIET_WAIT=120 IDLE_WAIT=60 IDLE_MAX_BUSY=25   bounded waits
#                        before each measurement for another bench script, a rustc,
#                        a busy machine (see bench/outbound/README.md)
#   BUILD_TRIES=5 BUILD_RETRY_WAIT=120   KEEP_WORK=1 (keeps the temp dirs and logs)
#   SINK_PORT=12605 DLR_PORT=19005 POSTERN_SMTP_PORT=12530 POSTERN_HTTP_PORT=18085
#   (node i of part 2 uses POSTERN_SMTP_PORT+i-1 and POSTERN_HTTP_PORT+i-1; all distinct
#   from the other bench scripts' ports)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
# shellcheck source=bench/cluster/pg.sh
source "$HERE/cluster/pg.sh"

MESSAGES="${MESSAGES:-20000}"
PER_REQUEST="${PER_REQUEST:-100}"
TEXT_CHARS="${TEXT_CHARS:-5000}"
BULK_CONCURRENCY="${BULK_CONCURRENCY:-8}"
ALGORITHM="${ALGORITHM:-ed25519-sha256}"
ALGORITHMS="$ALGORITHM" # for check_bulk_knobs
ROUNDS="${ROUNDS:-2}"
SKIP_SINGLE="${SKIP_SINGLE:-0}"
SKIP_THREE="${SKIP_THREE:-0}"
NODES="${NODES:-3}"
RR_RATE="${RR_RATE:-200}"
RR_DURATION="${RR_DURATION:-20}"
RR_WORKERS="${RR_WORKERS:-64}"
QUEUE_CONCURRENCY="${QUEUE_CONCURRENCY:-32}"
PG_FSYNC="${PG_FSYNC:-on}"
PG_SHARED_BUFFERS="${PG_SHARED_BUFFERS:-128MB}"
PG_PORT="${PG_PORT:-0}"
PG_BIN="${PG_BIN:-}"
SKIP_BUILD="${SKIP_BUILD:-0}"
POSTERN_BIN="${POSTERN_BIN:-$REPO/target/release/postern}"
RUN_TIMEOUT="${RUN_TIMEOUT:-600}"
QUIET_WAIT="${QUIET_WAIT:-600}"
BUILD_QUIET_WAIT="${BUILD_QUIET_WAIT:-120}"
IDLE_WAIT="${IDLE_WAIT:-60}"
IDLE_MAX_BUSY="${IDLE_MAX_BUSY:-25}"
BUILD_TRIES="${BUILD_TRIES:-5}"
BUILD_RETRY_WAIT="${BUILD_RETRY_WAIT:-120}"
KEEP_WORK="${KEEP_WORK:-0}"
SINK_PORT="${SINK_PORT:-12605}"
DLR_PORT="${DLR_PORT:-19005}"
POSTERN_SMTP_PORT="${POSTERN_SMTP_PORT:-12530}"
POSTERN_HTTP_PORT="${POSTERN_HTTP_PORT:-18085}"
GOAL_RATIO=70 # percent of sled-only msgs/s
GOAL_P99_MS=20

SERVICE_KEY="bench-key"

require_uints MESSAGES PER_REQUEST TEXT_CHARS BULK_CONCURRENCY ROUNDS NODES RR_RATE RR_DURATION RR_WORKERS \
	QUEUE_CONCURRENCY PG_PORT RUN_TIMEOUT QUIET_WAIT BUILD_QUIET_WAIT IDLE_WAIT IDLE_MAX_BUSY BUILD_TRIES \
	BUILD_RETRY_WAIT SINK_PORT DLR_PORT POSTERN_SMTP_PORT POSTERN_HTTP_PORT
((MESSAGES > 0 && PER_REQUEST > 0 && ROUNDS > 0)) || die "MESSAGES, PER_REQUEST and ROUNDS must be > 0"
((NODES >= 1 && NODES <= 26)) || die "NODES must be 1..26"
((RR_RATE > 0 && RR_DURATION > 0 && RR_WORKERS > 0)) || die "RR_RATE, RR_DURATION and RR_WORKERS must be > 0"
check_bulk_knobs
SMTP_BASE="$POSTERN_SMTP_PORT"
HTTP_BASE="$POSTERN_HTTP_PORT"

# ---------------------------------------------------------------- state + cleanup
NODE_PIDS=()
stop_processes() { # for cleanup (lib.sh), the EXIT trap
	local p
	stop_pid "$LOAD_PID" 5
	stop_pid "$POSTERN_PID" 30
	for p in "${NODE_PIDS[@]}"; do stop_pid "$p" 30; done
	NODE_PIDS=()
	stop_pid "$SINK_PID" 5
	stop_pid "$DLR_PID" 5
	pg_stop
}
set_traps

# wait_quiet (lib.sh) waits for the other bench scripts
OTHER_BENCH_PATTERN='bench/(inbound|outbound|ses)\.sh'
OTHER_BENCH_RUNNING="another bench script (inbound/outbound/ses) is running"
OTHER_BENCH_STILL="another bench script still running"
OTHER_BENCH_DONE="the other bench script"

# ---------------------------------------------------------------- results
declare -A RATE WALL DONE CPU1K RSS NOTE BULK_ACCEPT BUSY PRE_BUSY PGCPU TOTCPU QPM QMS LOGS OTHERS
COLS=()   # result keys in run order
LABELS=() # their column titles
TOP_BUSY="" # machine busy % in the second before anything started
LOG_N=0
LOG_FIRST=""

node_letter() { printf "\\x$(printf %x $((96 + $1)))"; } # 1 -> a

# metric NAME FILE...: the sum of an unlabelled sample over metrics files (empty if none)
metric() {
	local name="$1"
	shift
	awk -v n="$name" '$1 == n { s += $2; found = 1 } END { if (found) printf "%.6f\n", s }' "$@" 2>/dev/null || true
}

# db_stats KEY N BEFORE-FILES -- AFTER-FILES: DB query units per message and mean ms
db_stats() {
	local key="$1" n="$2" before=() after=() c0 c1 s0 s1
	shift 2
	while [[ "$1" != -- ]]; do
		before+=("$1")
		shift
	done
	shift
	after=("$@")
	c1="$(metric postern_cluster_query_seconds_count "${after[@]}")"
	[[ -n "$c1" ]] || return 0
	c0="$(metric postern_cluster_query_seconds_count "${before[@]}")"
	s0="$(metric postern_cluster_query_seconds_sum "${before[@]}")"
	s1="$(metric postern_cluster_query_seconds_sum "${after[@]}")"
	QPM[$key]="$(awk -v a="${c0:-0}" -v b="$c1" -v n="$n" 'BEGIN { if (n > 0) printf "%.2f", (b - a) / n; else print "-" }')"
	QMS[$key]="$(awk -v a="${c0:-0}" -v b="$c1" -v x="${s0:-0}" -v y="$s1" 'BEGIN { if (b > a) printf "%.2f", (y - x) / (b - a) * 1000; else print "-" }')"
}

# log_problems FILE...: LOG_N = WARN/ERROR lines in postern logs, LOG_FIRST = the first
log_problems() {
	local n=0 f c
	LOG_FIRST=""
	for f in "$@"; do
		c="$(grep -cE '(^|[ "])(WARN|ERROR)([ "]|$)' "$f" 2>/dev/null || true)"
		n=$((n + ${c:-0}))
		if [[ -z "$LOG_FIRST" && "${c:-0}" != 0 ]]; then
			LOG_FIRST="$(grep -m1 -E '(^|[ "])(WARN|ERROR)([ "]|$)' "$f" | cut -c1-240)"
		fi
	done
	LOG_N="$n"
}

# ours_ticks: CPU ticks of everything this benchmark runs: the script and its reaped
# children (load generator, curl, ...), the live postern process(es), PostgreSQL and the sinks
ours_ticks() {
	local t p
	t=$(($(ticks_of $$ all) + $(pg_ticks) + $(ticks_of "$DLR_PID") + $(ticks_of "$SINK_PID")))
	[[ -z "$POSTERN_PID" ]] || t=$((t + $(ticks_of "$POSTERN_PID")))
	for p in "${NODE_PIDS[@]}"; do t=$((t + $(ticks_of "$p"))); done
	echo "$t"
}
# task_jiffies: user+nice+system time of the whole machine (/proc/stat; without irq,
# softirq and steal, which no process's utime+stime holds either)
task_jiffies() { awk '$1 == "cpu" { print $2 + $3 + $4; exit }' /proc/stat; }
# others_cores JIFFIES0 OURS0 T0: cores used since then by processes this run did not start
others_cores() {
	local j1 o1 w
	o1="$(ours_ticks)"
	j1="$(task_jiffies)"
	w="$(fsub "$(now)" "$3")"
	awk -v b="$((j1 - $1))" -v o="$((o1 - $2))" -v hz="$HZ" -v w="$w" \
		'BEGIN { x = (b - o) / hz / w; if (x < 0) x = 0; if (w > 0) printf "%.2f", x; else print "-" }'
}

cluster_toml() { # cluster_toml DB NODE-ID
	printf '[cluster]\ndatabase_url = "%s"\nnode_id = "%s"\n' "$(pg_url "$1")" "$2"
}

# ---------------------------------------------------------------- part 1: one node
bench_single() { # bench_single sled|cluster ROUND
	local mode="$1" r="$2" key label dir extra="" p0 p1 first
	key="$mode$r"
	if ((ROUNDS == 1)); then
		if [[ "$mode" == sled ]]; then label="sled only"; else label="cluster (PG)"; fi
	else
		label="$mode #$r"
	fi
	dir="$WORK/$key"
	if [[ "$mode" == cluster ]]; then
		pg_create_db "postern_$key"
		extra="$(cluster_toml "postern_$key" a)"
	fi
	POSTERN_SMTP_PORT="$SMTP_BASE" POSTERN_HTTP_PORT="$HTTP_BASE"
	write_postern_config "$dir" "$ALGORITHM" "$(smtp_route_toml)" "$extra"
	start_sink
	start_dlr_sink
	log "$label: starting postern (fresh data dir${extra:+, database postern_$key})"
	start_postern "$dir"

	wait_quiet "$label" "$key"
	curl -s -m 5 "http://$LOOP:$POSTERN_HTTP_PORT/metrics" >"$dir/metrics0.txt" 2>/dev/null || true
	local j0 o0 t0
	j0="$(task_jiffies)" o0="$(ours_ticks)" t0="$(now)"
	p0="$(pg_ticks)"
	bulk_run "$key" "$label" "$dir" 0.2 0
	p1="$(pg_ticks)"
	OTHERS[$key]="$(others_cores "$j0" "$o0" "$t0")"
	PGCPU[$key]="$(cpu1k $((p1 - p0)) "${DONE[$key]}")"
	TOTCPU[$key]="$(awk -v a="${CPU1K[$key]}" -v b="${PGCPU[$key]}" 'BEGIN { if (a == "-") print "-"; else printf "%.3f", a + b }')"
	db_stats "$key" "${DONE[$key]}" "$dir/metrics0.txt" -- "$dir/metrics.txt"
	NOTE[$key]="$BULK_NOTE"
	stop_pid "$POSTERN_PID" 30
	POSTERN_PID=""
	log_problems "$dir/postern.log"
	LOGS[$key]="$LOG_N"
	first="$LOG_FIRST"
	[[ -z "$first" ]] || NOTE[$key]="${NOTE[$key]:+${NOTE[$key]}; }first log problem: $first"
	log "$label: ${DONE[$key]} msgs in ${WALL[$key]}s = ${RATE[$key]} msgs/s, CPU ms/msg postern ${CPU1K[$key]} PostgreSQL ${PGCPU[$key]}${NOTE[$key]:+ (${NOTE[$key]})}"
	stop_dlr_sink
	stop_sink
	COLS+=("$key")
	LABELS+=("$label")
}

# ---------------------------------------------------------------- part 2: N nodes, round-robin
RR_JSON=""
RR_NOTE=""
declare -A RR_NODE_P99 RR_NODE_N
bench_three() {
	local key=three label="$NODES nodes, RR" i id dir urls=() c0=0 c1=0 p0 p1 m0 t0 rc=0 deadline
	local accepted total n last bad before=() after=() logs=() p
	RR_JSON="$WORK/rr.json"
	pg_create_db postern_nodes
	start_sink
	start_dlr_sink
	for ((i = 1; i <= NODES; i++)); do
		id="$(node_letter "$i")"
		dir="$WORK/node-$id"
		POSTERN_SMTP_PORT=$((SMTP_BASE + i - 1))
		POSTERN_HTTP_PORT=$((HTTP_BASE + i - 1))
		write_postern_config "$dir" "$ALGORITHM" "$(smtp_route_toml)" "$(cluster_toml postern_nodes "$id")"
		log "node $id: starting postern (SMTP $POSTERN_SMTP_PORT, HTTP $POSTERN_HTTP_PORT, database postern_nodes)"
		start_postern "$dir" # one after the other: the first applies the migrations
		NODE_PIDS+=("$POSTERN_PID")
		POSTERN_PID=""
		urls+=(--url "http://$LOOP:$POSTERN_HTTP_PORT/v2/messages")
	done
	POSTERN_SMTP_PORT="$SMTP_BASE" POSTERN_HTTP_PORT="$HTTP_BASE"

	wait_quiet "$label" "$key"
	for ((i = 1; i <= NODES; i++)); do
		dir="$WORK/node-$(node_letter "$i")"
		curl -s -m 5 "http://$LOOP:$((HTTP_BASE + i - 1))/metrics" >"$dir/metrics0.txt" 2>/dev/null || true
		before+=("$dir/metrics0.txt")
		after+=("$dir/metrics.txt")
		logs+=("$dir/postern.log")
	done
	log "$label: $RR_RATE requests/s x ${RR_DURATION}s, 1 destination each, round-robin over $NODES nodes"
	local o0 j0
	for p in "${NODE_PIDS[@]}"; do c0=$((c0 + $(ticks_of "$p"))); done
	p0="$(pg_ticks)"
	o0="$(ours_ticks)"
	j0="$(task_jiffies)"
	m0="$(cpu_snapshot)"
	t0="$(now)"
	"$PY" "$HERE/outbound/loadgen.py" rate "${urls[@]}" --key "$SERVICE_KEY" --rate "$RR_RATE" \
		--duration "$RR_DURATION" --workers "$RR_WORKERS" --text-chars "$TEXT_CHARS" --slow-ms "$GOAL_P99_MS" \
		>"$RR_JSON" 2>"$WORK/rr.err" &
	LOAD_PID=$!
	wait "$LOAD_PID" || rc=$?
	LOAD_PID=""
	((rc == 0)) || die "$label: load generator failed: $(tail -n 3 "$WORK/rr.err")"
	accepted="$(json_get "$RR_JSON" accepted)"
	[[ "$accepted" =~ ^[0-9]+$ ]] || accepted=0
	[[ "$(json_get "$RR_JSON" errors)" == 0 ]] ||
		RR_NOTE="$(json_get "$RR_JSON" errors) API requests failed: $(json_get "$RR_JSON" first_error)"
	log "$label: p50 $(json_get "$RR_JSON" service_p50_ms) ms, p99 $(json_get "$RR_JSON" service_p99_ms) ms; waiting for $accepted 7501s"
	deadline=$((SECONDS + RUN_TIMEOUT))
	while :; do
		read -r total n last bad <<<"$(dlr_code 7501)"
		((total < accepted)) || break
		if ((SECONDS >= deadline)); then
			RR_NOTE="${RR_NOTE:+$RR_NOTE; }timeout after ${RUN_TIMEOUT}s: $n of $accepted 7501s"
			break
		fi
		sleep 0.2
	done
	((n >= accepted)) || RR_NOTE="${RR_NOTE:+$RR_NOTE; }notifications: $n x 7501, others: $(dlr_other_codes 7501)"
	c1=0
	for p in "${NODE_PIDS[@]}"; do c1=$((c1 + $(ticks_of "$p"))); done
	p1="$(pg_ticks)"
	BUSY[$key]="$(busy_pct "$m0" "$(cpu_snapshot)")"
	OTHERS[$key]="$(others_cores "$j0" "$o0" "$t0")"
	[[ "$last" != 0 ]] || last="$(now)"
	for ((i = 1; i <= NODES; i++)); do
		dir="$WORK/node-$(node_letter "$i")"
		curl -s -m 5 "http://$LOOP:$((HTTP_BASE + i - 1))/metrics" >"$dir/metrics.txt" 2>/dev/null || true
	done
	DONE[$key]="$n"
	WALL[$key]="$(fsub "$last" "$t0")"
	CPU1K[$key]="$(cpu1k $((c1 - c0)) "$n")"
	PGCPU[$key]="$(cpu1k $((p1 - p0)) "$n")"
	TOTCPU[$key]="$(awk -v a="${CPU1K[$key]}" -v b="${PGCPU[$key]}" 'BEGIN { if (a == "-") print "-"; else printf "%.3f", a + b }')"
	RSS[$key]="$(for p in "${NODE_PIDS[@]}"; do status_kb "$p" VmHWM; done | sort -n | tail -n 1)"
	db_stats "$key" "$n" "${before[@]}" -- "${after[@]}"
	for p in "${NODE_PIDS[@]}"; do stop_pid "$p" 30; done
	NODE_PIDS=()
	log_problems "${logs[@]}"
	LOGS[$key]="$LOG_N"
	[[ -z "$LOG_FIRST" ]] || RR_NOTE="${RR_NOTE:+$RR_NOTE; }first log problem: $LOG_FIRST"
	for ((i = 0; i < NODES; i++)); do
		id="$(node_letter $((i + 1)))"
		RR_NODE_P99[$id]="$(per_url "$i" service_p99_ms)"
		RR_NODE_N[$id]="$(per_url "$i" accepted)"
	done
	NOTE[$key]="$RR_NOTE"
	log "$label: $n 7501s, ${WALL[$key]}s after the first request; CPU ms/msg postern ${CPU1K[$key]} PostgreSQL ${PGCPU[$key]}${RR_NOTE:+ ($RR_NOTE)}"
	stop_dlr_sink
	stop_sink
	COLS+=("$key")
	LABELS+=("$label")
}

per_url() { # per_url INDEX FIELD: a field of loadgen's per-URL results in RR_JSON
	"$PY" -c 'import json, sys
p = json.load(open(sys.argv[1])).get("per_url") or []
i = int(sys.argv[2])
v = p[i].get(sys.argv[3]) if i < len(p) else None
print("" if v is None else v)' "$RR_JSON" "$1" "$2" 2>/dev/null || true
}

slow_seconds() { # "3s:12 4s:1" from RR_JSON's slow_by_second ("none" when empty)
	"$PY" -c 'import json, sys
d = json.load(open(sys.argv[1])).get("slow_by_second") or {}
print(" ".join(f"{k}s:{v}" for k, v in d.items()) or "none")' "$RR_JSON" 2>/dev/null || echo "?"
}

# ---------------------------------------------------------------- report
median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{ v[n++] = $1 } END { if (!n) exit; if (n % 2) print v[(n - 1) / 2]; else print (v[n / 2 - 1] + v[n / 2]) / 2 }'; }
verdict() { # verdict OK-EXPRESSION-RESULT(1/0/empty)
	case "$1" in 1) echo met ;; 0) echo "NOT met" ;; *) echo "n/a" ;; esac
}

TABLE_LABEL_WIDTH=32 TABLE_VALUE_WIDTH=14
report() {
	local cols=("${COLS[@]}") c sled_rates="" cluster_rates="" ms mc pct ok p99 ptxt vals
	for c in "${cols[@]}"; do
		case "$c" in
		sled*) sled_rates+=" ${RATE[$c]}" ;;
		cluster*) cluster_rates+=" ${RATE[$c]}" ;;
		esac
	done
	local describe
	describe="$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown)"
	echo
	echo "postern cluster benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, loopback only"
	echo "binary: $POSTERN_BIN$([[ "$SKIP_BUILD" == 1 ]] && echo " (not built by this run)" || echo " (built from the checkout, $describe)")"
	echo "PostgreSQL $PG_VERSION: private instance on $LOOP:$PG_PORT, data in a temp dir on the same disk as the nodes' sled; $PG_SETTINGS"
	echo "machine CPU busy in the 1 s before the run started: $TOP_BUSY (other users' builds and tests share these cores)"
	if ((SKIP_SINGLE != 1)); then
		echo "one node: $MESSAGES messages = $REQUESTS API requests x $PER_REQUEST destinations, ${TEXT_CHARS}-char text, DKIM $(alg_name "$ALGORITHM"), $BULK_CONCURRENCY requests in flight; smarthost smtp-sink"
	fi
	if ((SKIP_THREE != 1)); then
		echo "$NODES nodes: one database, API calls round-robin over the nodes at $RR_RATE requests/s for ${RR_DURATION}s, 1 destination each ($RR_WORKERS client workers)"
	fi
	echo
	row "" "${LABELS[@]}"
	row_of "messages delivered (7501)" DONE
	row_of "wall s (1st request->last 7501)" WALL
	vals=()
	for c in "${cols[@]}"; do if [[ "$c" == three ]]; then vals+=("(fixed rate)"); else vals+=("$(fmt_rate "${RATE[$c]:-}")"); fi; done
	row "msgs/s end to end" "${vals[@]}"
	row_of "postern CPU ms/msg" CPU1K
	row_of "PostgreSQL CPU ms/msg" PGCPU
	row_of "postern+PostgreSQL CPU ms/msg" TOTCPU
	row_of "DB query units per msg" QPM
	row_of "mean DB query ms" QMS
	row_of "peak RSS (VmHWM; max of nodes)" RSS mib
	row_of "API: all requests 202, s" BULK_ACCEPT
	if [[ -n "$RR_JSON" && -s "$RR_JSON" ]]; then
		vals=()
		for c in "${cols[@]}"; do if [[ "$c" == three ]]; then vals+=("$(json_get "$RR_JSON" service_p50_ms)"); else vals+=("-"); fi; done
		row "API sent->202 p50 ms" "${vals[@]}"
		vals=()
		for c in "${cols[@]}"; do if [[ "$c" == three ]]; then vals+=("$(json_get "$RR_JSON" service_p99_ms)"); else vals+=("-"); fi; done
		row "API sent->202 p99 ms" "${vals[@]}"
		vals=()
		for c in "${cols[@]}"; do if [[ "$c" == three ]]; then vals+=("$(json_get "$RR_JSON" service_max_ms)"); else vals+=("-"); fi; done
		row "API sent->202 max ms" "${vals[@]}"
	fi
	row_of "postern log WARN/ERROR lines" LOGS
	row_of "machine CPU busy (all procs)" BUSY
	row_of "  (busy in the 1 s before)" PRE_BUSY
	row_of "other processes' CPU, cores" OTHERS
	echo
	for c in "${cols[@]}"; do
		[[ -z "${NOTE[$c]:-}" ]] || echo "note ($c): ${NOTE[$c]}"
	done
	if [[ -n "$RR_JSON" && -s "$RR_JSON" ]]; then
		ptxt=""
		for ((i = 1; i <= NODES; i++)); do
			id="$(node_letter "$i")"
			ptxt+="${ptxt:+, }$id ${RR_NODE_P99[$id]:-?} ms (${RR_NODE_N[$id]:-?} requests)"
		done
		echo "$NODES nodes: 202s $(json_get "$RR_JSON" accepted) of $(json_get "$RR_JSON" sent), errors $(json_get "$RR_JSON" errors), achieved $(json_get "$RR_JSON" achieved_rps) req/s, late starts $(json_get "$RR_JSON" late_starts)"
		echo "  p99 per node: $ptxt"
		echo "  requests over $GOAL_P99_MS ms: $(json_get "$RR_JSON" slow), by second of the schedule: $(slow_seconds)"
		echo "  request due -> 202 (includes client-side queueing): p50 $(json_get "$RR_JSON" schedule_p50_ms) ms, p99 $(json_get "$RR_JSON" schedule_p99_ms) ms"
		echo "  CPU per message covers the load and the delivery of every message (until its 7501), all $NODES nodes together"
	fi
	echo "PostgreSQL log: $(pg_log_problems)"
	echo "other processes' CPU = the machine's user+system time minus that of everything this run started (postern,"
	echo "  PostgreSQL, load generator, sinks; irq, softirq and steal left out), in cores of $(nproc): clearly above 0 means"
	echo "  someone else's build or tests shared the cores"
	echo
	echo "goals (informational; never change the exit status):"
	if [[ -n "$sled_rates" && -n "$cluster_rates" ]]; then
		ms="$(median <<<"$sled_rates")"
		mc="$(median <<<"$cluster_rates")"
		pct="$(ratio "$mc" "$ms" %)"
		ok="$(awk -v a="$mc" -v b="$ms" -v g="$GOAL_RATIO" 'BEGIN { if (b > 0) print (a >= g / 100 * b) ? 1 : 0 }')"
		printf '  cluster mode >= %s%% of sled only on one node:  %s (%s: %s vs %s msgs/s%s)\n' "$GOAL_RATIO" \
			"$(verdict "$ok")" "$pct" "$(fmt_rate "$mc")" "$(fmt_rate "$ms")" "$( ((ROUNDS == 1)) || echo ", medians of $ROUNDS rounds")"
	fi
	if [[ -n "$RR_JSON" && -s "$RR_JSON" ]]; then
		p99="$(json_get "$RR_JSON" service_p99_ms)"
		ok="$(awk -v p="$p99" -v g="$GOAL_P99_MS" 'BEGIN { if (p != "") print (p + 0 < g) ? 1 : 0 }')"
		printf '  API p99 < %s ms at %s req/s over %s nodes:       %s (p99 %s ms)\n' "$GOAL_P99_MS" "$RR_RATE" "$NODES" "$(verdict "$ok")" "${p99:-?}"
	fi
	[[ -z "$DISTURBED" ]] || echo "WARNING: another bench script was running during: $DISTURBED"
	[[ -z "$BUILD_DISTURBED" ]] || echo "WARNING: rustc (a build) was running during: $BUILD_DISTURBED"
	[[ -z "$IDLE_DISTURBED" ]] || echo "WARNING: the machine was not idle (> ${IDLE_MAX_BUSY}%) when measuring: $IDLE_DISTURBED"
	return 0
}

# ---------------------------------------------------------------- main
require_tools
TOP_BUSY="$(busy_now)%"
log "machine CPU busy now: $TOP_BUSY"
if ! command -v smtp-sink >/dev/null; then
	install_postfix "smtp-sink (the smarthost)" "${TMPDIR:-/tmp}/postern-cluster-bench-apt.log"
	command -v smtp-sink >/dev/null || die "smtp-sink still missing after installing postfix"
fi
if ! pg_find_bin; then
	pg_install "${TMPDIR:-/tmp}/postern-cluster-bench-apt-pg.log"
	pg_find_bin || die "no PostgreSQL server binaries after installing postgresql"
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/postern-cluster-bench.XXXXXX")"
log "work directory $WORK"
build_postern

log "starting PostgreSQL from $PG_BIN_DIR (PG_FSYNC=$PG_FSYNC)"
pg_start
log "PostgreSQL $PG_VERSION on $LOOP:$PG_PORT ($PG_SETTINGS)"

if ((SKIP_SINGLE != 1)); then
	for ((r = 1; r <= ROUNDS; r++)); do
		if ((r % 2)); then
			bench_single sled "$r"
			bench_single cluster "$r"
		else
			bench_single cluster "$r"
			bench_single sled "$r"
		fi
	done
fi
if ((SKIP_THREE != 1)); then
	bench_three
fi
report

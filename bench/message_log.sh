#!/usr/bin/env bash
# bench/message_log.sh - the message log's search (SPEC 14) at 1 million transactions,
# on sled's log_index and on PostgreSQL's indexes, loopback only.
#
# Builds and runs benches/message_log.rs (cargo bench --bench message_log): it fills a
# store with COUNT transactions (one every 600 ms: 1,000,000 span the 7-day retention;
# 200,000 distinct recipients, 20 senders, 5 assets, 1% still in retry) through the
# store's own interface, times each kind of GET /admin/messages query (25 runs, page of
# 100: p50, p95, results found), moves the same records into a private PostgreSQL with
# `cluster adopt` and times the same queries there. The reference beside them is what a
# search without an index costs: one pass over every record, decoding and filtering it.
#
# Usage (root: PostgreSQL runs as the OS user postgres; postgresql is apt-get installed
# when missing):
#   bench/message_log.sh                 # ~6-10 minutes on 2 cores (mostly the fill)
#   COUNT=100000 bench/message_log.sh    # quick run
#   SKIP_PG=1 bench/message_log.sh       # sled only
# Knobs: COUNT (1000000), SKIP_PG (0), PG_FSYNC (off: the fill is not what is measured),
#   PG_SHARED_BUFFERS (128MB), PG_PORT (0: a free port), PG_BIN, KEEP_WORK (0).
# The exit status is 0 unless the run breaks.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
# shellcheck source=bench/cluster/pg.sh
source "$HERE/cluster/pg.sh"

COUNT="${COUNT:-1000000}"
SKIP_PG="${SKIP_PG:-0}"
PG_FSYNC="${PG_FSYNC:-off}"
PG_SHARED_BUFFERS="${PG_SHARED_BUFFERS:-128MB}"
PG_PORT="${PG_PORT:-0}"
PG_BIN="${PG_BIN:-}"
KEEP_WORK="${KEEP_WORK:-0}"
require_uints COUNT PG_PORT

stop_processes() { pg_stop; }
require_tools # PY (pg.sh picks free ports with it), HZ
set_traps

WORK="$(mktemp -d /tmp/postern-bench-log.XXXXXX)"
chmod 755 "$WORK"
args=(--count "$COUNT" --dir "$WORK")
if [[ "$SKIP_PG" != 1 ]]; then
	pg_find_bin || { pg_install "$WORK/apt.log" && pg_find_bin; } || die "no PostgreSQL server binaries"
	pg_start
	pg_create_db postern_log
	args+=(--pg "$(pg_url postern_log)")
	log "PostgreSQL $PG_VERSION on $LOOP:$PG_PORT ($PG_SETTINGS)"
fi
log "building and running benches/message_log.rs with ${args[*]}"
cd "$REPO"
cargo bench -q --bench message_log -- "${args[@]}"

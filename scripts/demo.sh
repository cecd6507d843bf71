#!/usr/bin/env bash
# The CPU demo (`make demo`): ToolRec end to end on ML-100K with SmolLM2-135M served by vLLM.
#
#   1. prepare ML-100K            toolrec-local data prepare ml-100k
#   2. train the retrieval tools  toolrec-local train all --dataset ml-100k --preset fast   (SASRec + one encoder per attribute)
#   3. pull the LLM               toolrec-local models pull smollm2-135m
#   4. start a vLLM CPU server    toolrec-local serve --llm smollm2-135m --port PORT   (background, stopped at exit)
#   5. evaluate                   toolrec-local eval --dataset ml-100k --llm smollm2-135m \
#                                   --method pop,sasrec,tool:genre,toolrec,llmrank,single --users N --seeds S \
#                                   --finish both   (toolrec and toolrec/last-list from one trajectory)
#   6. report                     toolrec-local report runs/demo-smollm2
#
# Steps already done (prepared data, trained tools, pulled weights, finished users) are
# skipped or resumed, so running it again is quick. Settings (environment variables):
#   DEMO_USERS (default 10), DEMO_SEEDS (2), DEMO_OUT (runs/demo-smollm2), DEMO_PORT (8765),
#   DEMO_CONCURRENCY (auto: as many users as the server's KV cache holds; or a number),
#   TOOLREC_HOME (where data, checkpoints and models live).
# SmolLM2-135M is a weak model: the demo shows the pipeline working, not ToolRec's gains.
set -euo pipefail

USERS="${DEMO_USERS:-10}"
SEEDS="${DEMO_SEEDS:-2}"
OUT="${DEMO_OUT:-runs/demo-smollm2}"
PORT="${DEMO_PORT:-8765}"
CONCURRENCY="${DEMO_CONCURRENCY:-auto}"
LLM="smollm2-135m"
DATASET="ml-100k"
METHODS="pop,sasrec,tool:genre,toolrec,llmrank,single"
CLI="${TOOLREC_CLI:-toolrec-local}"
SERVER_PID=""
START=$(date +%s)

if [[ -t 1 ]]; then BOLD=$'\033[1m'; PLAIN=$'\033[0m'; else BOLD=""; PLAIN=""; fi
step() { printf '\n%s[%s +%ss] %s%s\n' "$BOLD" "$(date +%H:%M:%S)" "$(( $(date +%s) - START ))" "$*" "$PLAIN"; }

stop_server() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    step "stopping the vLLM server (pid $SERVER_PID)"
    # `toolrec-local serve` stops its vLLM process group on SIGTERM
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
}
healthy() {  # the server's /health answers 200 (curl if present, else Python)
  if command -v curl >/dev/null 2>&1; then
    curl -fsS "http://127.0.0.1:${PORT}/health" >/dev/null 2>&1
  else
    python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:${PORT}/health', timeout=2)" >/dev/null 2>&1
  fi
}
trap stop_server EXIT
trap 'exit 130' INT TERM

if ! command -v "$CLI" >/dev/null 2>&1; then
  echo "error: $CLI is not on PATH" >&2
  echo "fix: run 'make demo' (it installs into .venv), or activate the venv first" >&2
  exit 2
fi

pairs=$(( USERS * SEEDS ))  # (seed, user) pairs per method
# Measured (make demo from a fresh clone, 2 cores, empty pip cache, 2026-12-01) on two machines of
# the same kind, one about twice as fast as the other in vLLM's own prefill: 10 users x 2 seeds
# evaluated in 2.7 and 3.7 min with as many users at once as the server's KV cache holds
# (per pair toolrec 6.5-8.6 s with ~16-18 LLM calls, llmrank 0.6-1.0 s, single 0.8-1.4 s);
# the steps before the evaluation took 1.7-2.0 min.
eval_lo=$(( pairs * 81 / 10 )); eval_hi=$(( pairs * 112 / 10 ))
all_lo=$(( (eval_lo + 105) / 60 )); all_hi=$(( (eval_hi + 120 + 59) / 60 + 1 ))
cat <<EOF
ToolRec CPU demo: ${DATASET}, ${LLM} on a vLLM CPU server, ${USERS} users x ${SEEDS} seeds, methods ${METHODS}.
Estimated time on a 2-core CPU, first run: about ${all_lo}-${all_hi} minutes from here
  prepare data < 1 min | train tools 1-3 min | pull model < 1 min | start server < 1 min
  evaluate ${pairs} users per method: ~$(( eval_lo / 60 ))-$(( (eval_hi + 59) / 60 )) min (measured for 10 users x 2 seeds: 2.7 and 3.7 min
    on two machines; toolrec 2.2-2.9, llmrank 0.2-0.3, single 0.3-0.45; a progress line at least every 30 s)
  report < 1 min
  (measured in all, from a fresh clone: 4.5 and 5.7 min here, after a 1.4-1.5 min install)
Later runs skip the finished steps. Output: ${OUT}/report/report.md
EOF

step "1/6 prepare ${DATASET}"
if "$CLI" data info "$DATASET" --json >/dev/null 2>&1; then echo "already prepared"; else "$CLI" data prepare "$DATASET"; fi

step "2/6 train the retrieval tools (SASRec backbone, then one attribute encoder per attribute)"
CKPT="${TOOLREC_HOME:-$HOME/.cache/toolrec-local}/checkpoints/${DATASET}/sasrec"
if [[ -f "$CKPT/backbone/config.json" && -f "$CKPT/tools/genre/config.json" && -f "$CKPT/tools/release_year/config.json" ]]; then
  echo "already trained ($CKPT)"
else
  "$CLI" train all --dataset "$DATASET" --preset fast
fi

step "3/6 pull ${LLM}"
"$CLI" models pull "$LLM"

step "4/6 start the vLLM server on port ${PORT}"
if healthy; then
  echo "error: something already answers on port ${PORT}" >&2
  echo "fix: stop it, or pick another port: DEMO_PORT=8766 make demo" >&2
  exit 2
fi
mkdir -p "$OUT"
LOG="$OUT/vllm-server.log"
setsid "$CLI" serve --llm "$LLM" --port "$PORT" >"$LOG" 2>&1 &
SERVER_PID=$!
URL="http://127.0.0.1:${PORT}/v1"
for i in $(seq 1 600); do
  if healthy; then echo "server up after ${i}s: ${URL}"; break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "error: the vLLM server exited; last lines of $LOG:" >&2; tail -n 30 "$LOG" >&2; exit 1
  fi
  (( i % 15 == 0 )) && echo "  waiting for the server ... ${i}s"
  sleep 1
done
healthy || { echo "error: server not healthy after 600 s; see $LOG" >&2; exit 1; }

step "5/6 evaluate ${METHODS} on ${USERS} users x ${SEEDS} seeds"
"$CLI" eval --dataset "$DATASET" --llm "$LLM" --method "$METHODS" --users "$USERS" --seeds "$SEEDS" \
  --server "$URL" --concurrency "$CONCURRENCY" --finish both --out "$OUT"

step "6/6 report"
"$CLI" report "$OUT"
stop_server
SERVER_PID=""
step "done in $(( $(date +%s) - START ))s: ${OUT}/report/report.md"

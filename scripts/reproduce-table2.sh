#!/usr/bin/env bash
# Reproduce the paper's Table 2 (and Figures 4, 5) on a GPU machine: serve an open-weight LLM
# with vLLM, train the retrieval tools, evaluate every method on ML-1M, Amazon-Book and
# Yelp2018 (200 test users x 3 seeds, full ranking), and write one report per dataset plus a
# side-by-side one. Documented recipe; not run in CI (it needs a GPU and the raw datasets).
# The baselines run under both protocols: history excluded from the ranking (this project's
# default, every method) and history kept (`--history keep`: RecBole's sequential full ranking,
# which the paper's SASRec, BERT4Rec and P5 rows used); ToolRec's rows are the same under both.
#
#   DATA_ROOT=/data LLM=qwen2.5-7b-instruct bash scripts/reproduce-table2.sh
#
# DATA_ROOT must hold the raw files (see `toolrec-local data prepare --help`):
#   $DATA_ROOT/ml-1m/         ratings.dat, movies.dat, users.dat      (grouplens.org)
#   $DATA_ROOT/amazon-books/  RecBole atomic files (amazon-books.inter/.item), 10-core applied here
#   $DATA_ROOT/yelp2018/      RecBole atomic files (yelp2018.inter/.item), 10-core applied here
# Settings: LLM (a model card in models/, default qwen2.5-7b-instruct), MODEL_PATH (weights, if
# not where the card expects them), TP (tensor-parallel GPUs, default 1), PORT (8000),
# USERS (200), SEEDS (3), CONCURRENCY (64), RUNS (runs/table2), DATASETS (all three).
# More GPUs: raise TP for one big model, or start one server per GPU and pass each with
# --server (users are spread over them); several nodes: run each node with --shard i/n into its
# own folder and give all folders to `report` (see serving/README.md for vLLM's own options).
set -euo pipefail

DATA_ROOT="${DATA_ROOT:?set DATA_ROOT to the folder with the raw datasets}"
LLM="${LLM:-qwen2.5-7b-instruct}"
TP="${TP:-1}"
PORT="${PORT:-8000}"
USERS="${USERS:-200}"
SEEDS="${SEEDS:-3}"
CONCURRENCY="${CONCURRENCY:-64}"
RUNS="${RUNS:-runs/table2}"
DATASETS="${DATASETS:-ml-1m amazon-books yelp2018}"
# Table 2's methods present here, then the ablations of Figure 4 (w/ single, w/ multi, w/ Plan).
METHODS="pop,sasrec,bert4rec,chatrec,llmrank,toolrec,toolrec-b,single,multi,plan"
# The score methods of METHODS, evaluated again with the history kept in the ranking.
KEEP_METHODS="pop,sasrec,bert4rec"
SERVER_PID=""

stop_server() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true  # `toolrec-local serve` stops its vLLM processes on SIGTERM
    wait "$SERVER_PID" 2>/dev/null || true
  fi
}
trap stop_server EXIT

echo "== serve ${LLM} (tensor parallel ${TP}) on port ${PORT}"
serve_args=(--llm "$LLM" --port "$PORT")
[[ -n "${MODEL_PATH:-}" ]] && serve_args+=(--model-path "$MODEL_PATH")
[[ "$TP" != 1 ]] && serve_args+=(--tensor-parallel-size "$TP")
mkdir -p "$RUNS"
setsid toolrec-local serve "${serve_args[@]}" >"$RUNS/vllm-${LLM}.log" 2>&1 &
SERVER_PID=$!
until curl -fsS "http://127.0.0.1:${PORT}/health" >/dev/null 2>&1; do
  kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 30 "$RUNS/vllm-${LLM}.log" >&2; exit 1; }
  sleep 5
done
URL="http://127.0.0.1:${PORT}/v1"

folders=()
for ds in $DATASETS; do
  echo "== ${ds}: prepare, train (SASRec and BERT4Rec backbones, one tool per attribute), evaluate"
  toolrec-local data info "$ds" --json >/dev/null 2>&1 || toolrec-local data prepare "$ds" --source "$DATA_ROOT/$ds"
  # the paper's settings (default preset: length 200, hidden 64, 2 layers), both backbones
  toolrec-local train all --dataset "$ds" --backbone sasrec
  toolrec-local train all --dataset "$ds" --backbone bert4rec
  out="$RUNS/${ds}-${LLM}"
  # resumable: re-running this script continues where it stopped
  toolrec-local eval --dataset "$ds" --llm "$LLM" --method "$METHODS" --users "$USERS" --seeds "$SEEDS" \
    --server "$URL" --concurrency "$CONCURRENCY" --out "$out"
  # the same users, RecBole's protocol: a folder holds one protocol, so this one has its own
  keep="$RUNS/${ds}-history-keep"
  toolrec-local eval --dataset "$ds" --method "$KEEP_METHODS" --users "$USERS" --seeds "$SEEDS" \
    --history keep --out "$keep"
  toolrec-local report "$out" "$keep" --out "$out/report"
  folders+=("$out" "$keep")
done

echo "== all datasets side by side"
toolrec-local report "${folders[@]}" --out "$RUNS/report"
echo "Table 2 (both protocols): ${RUNS}/<dataset>-${LLM}/report/report.md; side by side: ${RUNS}/report/report.md"

#!/usr/bin/env python
"""Table 2's non-LLM rows on ML-100K, one `eval` run per protocol (history excluded, and kept as
RecBole ranks): pop, SASRec, BERT4Rec, SASRec_BERT,
BERT4Rec_BERT and P5 (all 943 test users, full ranking for the score methods, P5's top 10 by
constrained beam search), with each model's training cost.

    python scripts/bench_baselines.py                       # train what is missing, evaluate, print
    python scripts/bench_baselines.py --json --out bench_baselines.json
    python scripts/bench_baselines.py --retrain p5 --threads 2

Checkpoints are kept in --home (default .toolrec-home/bench) and reused while valid. Every
training and the evaluation run as child processes of the `toolrec-local` command, so the wall
time and peak RSS reported for each are its own (os.wait4). The load average is printed before
and after: on a shared machine times vary with it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BACKBONES = ["sasrec", "bert4rec", "sasrec-bert", "bert4rec-bert"]
METHODS = ["sasrec", "bert4rec", "sasrec-bert", "bert4rec-bert", "p5", "pop"]


def run_child(args: list[str], env: dict) -> tuple[str, dict]:
    """Run `toolrec-local ARGS`: its stdout, and its own wall time, CPU time and peak RSS
    (reaped with wait4, so the rusage is this child's alone)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "toolrec_local", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_chunks, err_chunks = [], []
    # Read both pipes to the end before reaping, so the child never blocks on a full pipe.
    t = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()))
    t.start()
    out_chunks.append(proc.stdout.read())
    t.join()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    cost = {"wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1)}
    if proc.returncode:
        sys.exit(f"toolrec-local {' '.join(args)} failed (exit {proc.returncode}):\n{err_chunks[0][-2000:]}")
    return out_chunks[0], cost


def checkpoint_config(home: Path, model: str) -> Path:
    return home / "checkpoints" / "ml-100k" / ("p5/model" if model == "p5" else f"{model}/backbone") / "config.json"


def training_record(home: Path, model: str) -> dict:
    """What the checkpoint says about its training (whenever it was trained)."""
    meta = json.loads(checkpoint_config(home, model).read_text())
    m = meta["metrics"]
    keep = ("valid", "best_epoch", "epochs_run", "seconds", "epoch_train_s", "peak_rss_mb", "parameters", "torch_threads")
    return {"config": meta["config"], **{k: m[k] for k in keep if k in m}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, default=REPO / ".toolrec-home" / "bench")
    ap.add_argument("--preset", default="fast", help="Backbone preset (SASRec, BERT4Rec and their *-bert twins alike).")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every child (1: fair on a shared machine).")
    ap.add_argument("--retrain", default="", help="Comma-separated models to train again (sasrec,...,p5), or all.")
    ap.add_argument("--p5-args", default="", help="Extra options for `train p5`, e.g. '--epochs 30 --lr 3e-3'.")
    ap.add_argument("--out", type=Path, help="Write the figures as JSON here.")
    ap.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    args = ap.parse_args()

    env = {**os.environ, "TOOLREC_HOME": str(args.home), "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "COLUMNS": "200"}
    retrain = set(BACKBONES + ["p5"]) if args.retrain == "all" else {m for m in args.retrain.split(",") if m}
    figures: dict = {"home": str(args.home), "preset": args.preset, "threads": args.threads,
                     "load_before": os.getloadavg(), "training": {}}
    if not (args.home / "datasets" / "ml-100k" / "dataset.json").is_file():
        run_child(["data", "prepare", "ml-100k"], env)
    for model in BACKBONES + ["p5"]:
        if checkpoint_config(args.home, model).is_file() and model not in retrain:
            figures["training"][model] = training_record(args.home, model)
            continue
        if model == "p5":
            cmd = ["train", "p5", "--dataset", "ml-100k", "--threads", str(args.threads), "--json", *args.p5_args.split()]
        else:
            cmd = ["train", "backbone", "--dataset", "ml-100k", "--model", model, "--preset", args.preset, "--json"]
        print(f"training {model} …", file=sys.stderr, flush=True)
        _, cost = run_child(cmd, env)
        # the child's own wall time, CPU time and peak RSS: measured here, in this run
        figures["training"][model] = {"command": "toolrec-local " + " ".join(cmd), "measured_now": cost,
                                      **training_record(args.home, model)}
    figures["eval"], figures["methods"] = {}, {}
    for history in ("exclude", "keep"):  # ours, and RecBole's sequential full ranking (Table 2's rows)
        run = args.home / "runs" / f"baselines-{history}-{int(time.time())}"
        cmd = ["eval", "--dataset", "ml-100k", "--method", ",".join(METHODS), "--all-users", "--history", history,
               "--out", str(run), "--json"]
        print(f"evaluating, history {history} …", file=sys.stderr, flush=True)
        out, cost = run_child(cmd, env)
        summary = json.loads(out)
        figures["eval"][history] = {"command": "toolrec-local " + " ".join(cmd), **cost, "run_dir": str(run)}
        figures["methods"][history] = {m: {k: round(v["mean"], 4) for k, v in s.items() if "@" in k}
                                       for m, s in summary["methods"].items()}
    figures["load_after"] = os.getloadavg()
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"ML-100K, all test users, history excluded | kept (load {figures['load_before'][0]:.1f} -> "
          f"{figures['load_after'][0]:.1f})")
    print(f"{'method':<15}{'NDCG@10':>9}{'Recall@10':>11}{'NDCG@20':>9} |{'NDCG@10':>9}{'Recall@10':>11}")
    ex, kept = figures["methods"]["exclude"], figures["methods"]["keep"]
    for m, v in ex.items():
        k = kept.get(m, {})
        print(f"{m:<15}{v['ndcg@10']:>9.4f}{v['recall@10']:>11.4f}{v['ndcg@20']:>9.4f} |"
              f"{k.get('ndcg@10', float('nan')):>9.4f}{k.get('recall@10', float('nan')):>11.4f}")
    for m, t in figures["training"].items():
        now = t.get("measured_now")
        cost = (f"{now['wall_s']:.0f} s wall, {now['cpu_s']:.0f} s CPU, peak RSS {now['peak_rss_mb']:.0f} MiB (now)" if now
                else f"{t['seconds']:.0f} s (when trained{', peak RSS %.0f MiB' % t['peak_rss_mb'] if 'peak_rss_mb' in t else ''})")
        print(f"train {m}: {cost}; best epoch {t['best_epoch']} of {t['epochs_run']}, "
              f"valid NDCG@10 {t['valid'].get('ndcg@10', 0):.4f}")
    for history, e in figures["eval"].items():
        print(f"eval (history {history}): {e['wall_s']:.0f} s, peak RSS {e['peak_rss_mb']:.0f} MiB; results in {e['run_dir']}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Figures for the retrieval tools (issue 3): quality on ML-100K, training cost at ML-1M size,
retrieval latency, and Figure 6's parameter/FLOP accounting.

    python scripts/bench_tools.py                 # everything, table on stdout
    python scripts/bench_tools.py --json --out bench_tools.json
    python scripts/bench_tools.py --only ml100k   # or ml1m, latency, accounting

ML-100K checkpoints are kept in --home (default .toolrec-home/bench) and reused while valid;
--retrain trains them again. The ML-1M-size part runs in a child process so that its peak
RSS is its own. The load average is printed: this machine is shared, so times vary with it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ML100K_METHODS = ["pop", "sasrec", "bert4rec", "tool:genre", "tool:release_year", "tool-b:genre", "tool-b:release_year"]


def ml100k(home: Path, preset: str, retrain: bool, threads: int, backbones: list[str]) -> dict:
    import numpy as np
    import torch

    from toolrec_local.data import load_dataset, prepare, prepared
    from toolrec_local.recsys import checkpoint
    from toolrec_local.recsys.evaluate import evaluate_tools
    from toolrec_local.recsys.pipeline import ensure_trained
    from toolrec_local.recsys.retrieval import RetrievalTool

    os.environ["TOOLREC_HOME"] = str(home)
    torch.set_num_threads(threads)
    if not prepared("ml-100k"):
        prepare("ml-100k")
    ds = load_dataset("ml-100k")
    if retrain:
        import shutil

        shutil.rmtree(home / "checkpoints" / "ml-100k", ignore_errors=True)
    t0 = time.perf_counter()
    for backbone in backbones:
        ensure_trained(ds, backbone, ["genre", "release_year"], preset=preset, show=True)
    train_s = time.perf_counter() - t0
    records = {}
    for backbone in backbones:
        b = json.loads((checkpoint.backbone_dir(ds.name, backbone) / checkpoint.CONFIG).read_text())
        records[backbone] = b["metrics"]
        for a in ("genre", "release_year"):
            t = json.loads((checkpoint.tool_dir(ds.name, backbone, a) / checkpoint.CONFIG).read_text())
            records[f"{backbone}+{a}"] = t["metrics"]
    wanted = {"pop"} | {m for m in ML100K_METHODS if "sasrec" in backbones and m in ("sasrec", "tool:genre", "tool:release_year")}
    wanted |= {m for m in ML100K_METHODS if "bert4rec" in backbones and (m == "bert4rec" or m.startswith("tool-b"))}
    res = evaluate_tools(ds, [m for m in ML100K_METHODS if m in wanted])
    # How different the attribute tools' lists are from SASRec's: a tool that returned SASRec's
    # list again would add nothing for the agent.
    users = ds.eval_users
    tool = RetrievalTool.load(ds, "sasrec")
    base = tool.retrieve_batch(users, None, 10)
    overlap = {a: float(np.mean([len({i for i, _ in x} & {i for i, _ in y}) / 10 for x, y in
                                 zip(base, tool.retrieve_batch(users, a, 10))])) for a in ("genre", "release_year")}
    return {"evaluation": res, "overlap@10_with_sasrec": overlap,
            "training": {k: {m: v[m] for m in ("best_epoch", "epochs_run", "seconds", "epoch_train_s", "valid")}
                         for k, v in records.items()},
            "train_seconds_this_run": round(train_s, 1), "preset": preset}


def ml1m_child(threads: int, epoch_only: bool = False) -> dict:
    """One SASRec epoch (default config) at ML-1M size; then latency of the retrieval tool."""
    import numpy as np
    import torch

    from toolrec_local.recsys.config import settings
    from toolrec_local.recsys.retrieval import RetrievalTool
    from toolrec_local.recsys.synthetic import synthetic_ml1m
    from toolrec_local.recsys.train import train_backbone, train_tool

    torch.set_num_threads(threads)
    home = Path(tempfile.mkdtemp(prefix="bench-ml1m-"))
    os.environ["TOOLREC_HOME"] = str(home)
    ds = synthetic_ml1m()
    bcfg, tcfg, _ = settings("default", "sasrec", ds.n_items, epochs=1)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model, meta = train_backbone(ds, bcfg, tcfg, show=True)
    m = meta["metrics"]
    epoch = {"users": ds.n_users, "items": ds.n_items, "interactions": ds.n_interactions,
             "config": {"max_len": bcfg.max_len, "hidden": bcfg.hidden, "layers": bcfg.layers, "heads": bcfg.heads,
                        "batch_size": tcfg.batch_size, "loss": tcfg.loss, "negatives": tcfg.negatives},
             "threads": threads, "epoch_train_s": m["history"][0]["train_s"],
             "epoch_train_cpu_s": m["history"][0]["train_cpu_s"],
             "validation_s": round(m["seconds"] - m["history"][0]["train_s"], 2),
             "peak_rss_mb_before": round(rss0 / 1024), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if epoch_only:
        return {"epoch": epoch, "latency": {}}
    train_tool(ds, "genre", model, meta, tcfg)
    return {"epoch": epoch, "latency": latency(ds, np.random.default_rng(0))}


def latency(ds, rng) -> dict:
    import torch

    from toolrec_local.recsys.retrieval import RetrievalTool

    out = {}
    t0 = time.perf_counter()
    tool = RetrievalTool.load(ds, "sasrec")
    out["load_s"] = round(time.perf_counter() - t0, 3)
    users = rng.choice(ds.eval_users, size=1000)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for attribute in (None, "genre"):
            tool.retrieve(int(users[0]), attribute, 10)  # warm-up
            single = []
            for u in users:
                t = time.perf_counter()
                tool.retrieve(int(u), attribute, 10)
                single.append(time.perf_counter() - t)
            batch = []
            for r in range(20):
                group = rng.choice(ds.eval_users, size=200, replace=False)
                t = time.perf_counter()
                tool.retrieve_batch(group, attribute, 10)
                batch.append(time.perf_counter() - t)
            key = f"{attribute or 'sasrec'}/threads={threads}"
            out[key] = {"single_median_ms": round(1000 * statistics.median(single), 3),
                        "single_p90_ms": round(1000 * sorted(single)[900], 3),
                        "batch200_median_ms": round(1000 * statistics.median(batch), 2)}
    return out


def accounting() -> dict:
    from toolrec_local.recsys.accounting import account
    from toolrec_local.recsys.synthetic import synthetic_ml1m

    return account(synthetic_ml1m(), "genre", max_len=200)


def show(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"load average: {result['load_average']}")
    if "ml100k" in result:
        r = result["ml100k"]
        t = Table(title=f"ML-100K, full ranking, {r['evaluation']['users']} test users (preset {r['preset']})")
        for col in ("method", "NDCG@10", "Recall@10", "NDCG@20", "Recall@20", "× pop NDCG@10", "vs sasrec"):
            t.add_column(col)
        ms = r["evaluation"]["methods"]
        pop, sas = ms["pop"]["ndcg@10"], ms["sasrec"]["ndcg@10"]
        for name, m in ms.items():
            ref = sas if not name.startswith("tool-b") else ms["bert4rec"]["ndcg@10"]
            t.add_row(name, f"{m['ndcg@10']:.4f}", f"{m['recall@10']:.4f}", f"{m['ndcg@20']:.4f}",
                      f"{m['recall@20']:.4f}", f"{m['ndcg@10'] / pop:.2f}",
                      f"{100 * (m['ndcg@10'] / ref - 1):+.1f}%" if name.startswith("tool") else "")
        console.print(t)
        console.print(f"top-10 overlap with SASRec: {r['overlap@10_with_sasrec']}")
        t = Table(title="ML-100K training")
        for col in ("model", "best epoch", "epochs", "s/epoch (train)", "total s", "valid NDCG@10"):
            t.add_column(col)
        for name, m in r["training"].items():
            t.add_row(name, str(m["best_epoch"]), str(m["epochs_run"]), f"{m['epoch_train_s']:.2f}",
                      f"{m['seconds']:.0f}", f"{m['valid'].get('ndcg@10', 0):.4f}")
        console.print(t)
    if "ml1m" in result:
        e = result["ml1m"]["epoch"]
        console.print(f"ML-1M size (synthetic, {e['users']} users, {e['items']} items, {e['interactions']} interactions), "
                      f"config {e['config']}, {e['threads']} threads: one SASRec epoch {e['epoch_train_s']:.1f} s wall, "
                      f"{e.get('epoch_train_cpu_s', float('nan')):.1f} CPU-s "
                      f"(+ validation {e['validation_s']:.1f} s), peak RSS {e['peak_rss_mb']} MB")
        t = Table(title="retrieve latency, 3.7k-item catalogue, K = 10")
        for col in ("tool / threads", "single call, median ms", "p90 ms", "200 users batched, median ms"):
            t.add_column(col)
        for key, v in result["ml1m"]["latency"].items():
            if isinstance(v, dict):
                t.add_row(key, f"{v['single_median_ms']:.2f}", f"{v['single_p90_ms']:.2f}", f"{v['batch200_median_ms']:.1f}")
        console.print(t)
    if "accounting" in result:
        a = result["accounting"]
        t = Table(title=f"Figure 6 (ML-1M size, {a['_setting']})")
        for col in ("model", "trainable params", "stored params", "forward MFLOPs (1 user, length 200)"):
            t.add_column(col)
        for name in ("sasrec", "frozen+a1", "full+a1"):
            v = a[name]
            t.add_row(name, f"{v['trainable_params']:,}", f"{v['stored_params']:,}", f"{v['forward_flops'] / 1e6:.1f}")
        console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["ml100k", "ml1m", "accounting"], action="append")
    ap.add_argument("--home", type=Path, default=REPO / ".toolrec-home" / "bench")
    ap.add_argument("--preset", default="fast", help="training preset for ML-100K (fast or default)")
    ap.add_argument("--retrain", action="store_true", help="train ML-100K models again even if checkpoints exist")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for ML-100K training (small batches: 1 is faster on a busy machine)")
    ap.add_argument("--ml1m-threads", type=int, default=2, help="torch threads for the ML-1M-size epoch")
    ap.add_argument("--json", action="store_true", help="write the JSON (to --out, default bench_tools.json)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--backbones", default="sasrec,bert4rec", help="ML-100K backbones to train and evaluate")
    ap.add_argument("--epoch-only", action="store_true", help="ML-1M size: time the epoch, skip the latency part")
    ap.add_argument("--child-ml1m", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_ml1m:
        sys.stdout.write(json.dumps(ml1m_child(args.ml1m_threads, args.epoch_only)) + "\n")
        return
    parts = args.only or ["ml100k", "ml1m", "accounting"]
    result: dict = {"load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}
    if "ml100k" in parts:
        result["ml100k"] = ml100k(args.home, args.preset, args.retrain, args.threads, args.backbones.split(","))
    if "ml1m" in parts:
        child = subprocess.run([sys.executable, __file__, "--child-ml1m", "--ml1m-threads", str(args.ml1m_threads)]
                               + (["--epoch-only"] if args.epoch_only else []),
                               stdout=subprocess.PIPE, check=True, text=True)
        result["ml1m"] = json.loads(child.stdout.strip().splitlines()[-1])
    if "accounting" in parts:
        result["accounting"] = accounting()
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    show(result)
    if args.json or args.out:
        out = args.out or Path("bench_tools.json")
        out.write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()

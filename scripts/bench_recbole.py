#!/usr/bin/env python
"""RecBole 1.2.1's own SASRec beside ours (issue 11), on the same ML-100K leave-one-out split.

    python scripts/bench_recbole.py --recbole-python /tmp/recbole-venv/bin/python --epochs 12 --out bench_recbole.json

RecBole runs in its own Python (scripts/recbole_sasrec.py; RecBole is never a dependency of
this project) with RecBole's SASRec settings on ML-100K (length 50, CE loss, hidden 64, 2 layers,
2 heads, inner 256, dropout 0.2, batch 1024, lr 1e-3), for --epochs epochs; our `recbole` preset,
which mirrors those settings, trains at the same time in this process with its own early stopping.
One thread each. The split is ours: RecBole reads our sequences with per-user timestamps
0, 1, 2, ... and holds out the same validation and test items.

Printed and written as JSON: per RecBole epoch its own validation NDCG@10 / MRR@10 (history
kept: RecBole does not mask it for sequential models), our evaluation of its model (valid and
test, history kept and excluded) and the epoch seconds; our model's per-epoch validation and
its final figures; most-popular on the same split; the load average at start and end (the
machine may be shared: epoch seconds vary with it).

The headline is each model's best validation NDCG@10 with the history kept: RecBole's over its
--epochs epochs, ours over its run and over its first --epochs epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from bench_tools import pop_metrics, protocol_metrics  # noqa: E402

from toolrec_local.errors import ToolrecError  # noqa: E402

CHILD = REPO / "scripts" / "recbole_sasrec.py"
INSTALL = ("python3 -m venv /tmp/recbole-venv && /tmp/recbole-venv/bin/pip install recbole==1.2.1 'numpy<2' torch, "
           "then pass --recbole-python /tmp/recbole-venv/bin/python (keep RecBole out of this project's venv)")
# RecBole's batch counts (prefix, next item) pairs; each preset's batch of windows is about this many
RECBOLE_BATCH = {"recbole": 1024, "paper": 2048}


def recbole_settings(preset: str, bcfg, tcfg) -> dict:
    """RecBole's SASRec settings that correspond to `preset`."""
    out = {"MAX_ITEM_LIST_LENGTH": bcfg.max_len, "hidden_size": bcfg.hidden, "n_layers": bcfg.layers,
           "n_heads": bcfg.heads, "inner_size": bcfg.inner or bcfg.hidden, "hidden_dropout_prob": bcfg.dropout,
           "attn_dropout_prob": bcfg.dropout, "hidden_act": "gelu", "learning_rate": tcfg.lr,
           "train_batch_size": RECBOLE_BATCH[preset], "loss_type": tcfg.loss.upper()}
    if tcfg.loss == "bpr":
        out["train_neg_sample_args"] = {"distribution": "uniform", "sample_num": tcfg.negatives}
    return out


def check_recbole(python: str | None) -> str:
    if not python:
        raise ToolrecError("no Python with RecBole given", INSTALL)
    try:
        done = subprocess.run([python, "-c", "import recbole; print(recbole.__version__)"], capture_output=True,
                              text=True, timeout=300)
    except OSError as exc:
        raise ToolrecError(f"cannot run {python}: {exc}", INSTALL) from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise ToolrecError(f"{python} cannot import recbole ({last})", INSTALL)
    version = done.stdout.strip()
    if version != "1.2.1":
        print(f"note: RecBole {version}, the reference figures are RecBole 1.2.1's")
    return version


def write_split(ds, work: Path) -> None:
    """Our sequences as a RecBole atomic file, and the evaluation histories in our item ids."""
    folder = work / "ml-100k-loo"
    folder.mkdir(parents=True)
    with open(folder / "ml-100k-loo.inter", "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u in range(ds.n_users):
            for t, item in enumerate(ds.sequence(u)):
                f.write(f"{u}\t{int(item)}\t{t}\n")
    parts = {part: [[int(i) for i in ds.split(int(u), part)[0]] for u in ds.eval_users] for part in ("valid", "test")}
    (work / "histories.json").write_text(json.dumps({"n_items": ds.n_items, "parts": parts}))


def rounded(metrics: dict) -> dict:
    return {part: {proto: {k: round(v, 4) for k, v in m.items()} for proto, m in p.items()} for part, p in metrics.items()}


def train_ours(ds, bcfg, tcfg) -> dict:
    from toolrec_local.recsys.models import histories, score_histories
    from toolrec_local.recsys.training.train import train_backbone

    started = time.perf_counter()
    model, meta = train_backbone(ds, bcfg, tcfg, save=False)
    m = meta["metrics"]
    metrics = protocol_metrics(ds, lambda users, part: score_histories(model, None, histories(ds, users, part),
                                                                        exclude_history=False))
    keys = ("ndcg@10", "mrr@10", "kept_ndcg@10", "kept_mrr@10")
    return {"best_epoch": m["best_epoch"], "epochs_run": m["epochs_run"], "selected_by": m["selected_by"],
            "seconds": round(time.perf_counter() - started, 1), "epoch_train_s": m["epoch_train_s"],
            "metrics": rounded(metrics),
            "history": [{"epoch": r["epoch"], "train_s": r["train_s"], **{k: round(r[k], 4) for k in keys}}
                        for r in m["history"]]}


def recbole_epochs(proc: subprocess.Popen, ds, work: Path):
    """Each epoch line of the RecBole child, with our evaluation of its saved scores."""
    for line in proc.stdout:
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        files = {part: work / f"scores-{rec['epoch']}-{part}.npy" for part in ("valid", "test")}
        scores = {part: np.load(path) for part, path in files.items()}
        rec["ours_eval"] = rounded(protocol_metrics(ds, lambda users, part: scores[part]))
        for path in files.values():
            path.unlink()
        yield rec


def summary(result: dict, epochs: int) -> dict:
    rb = result["recbole"]["epochs"]
    ours = result["ours"]
    best_rb = max(rb, key=lambda r: r["recbole_valid"]["mrr@10"])  # RecBole's own pick
    first = [r for r in ours["history"] if r["epoch"] <= epochs]
    pop = result["pop"]["test"]["excluded"]["ndcg@10"]
    return {
        "recbole_best_valid_kept_ndcg@10": max(r["recbole_valid"]["ndcg@10"] for r in rb),
        "recbole_valid_kept_ndcg@10_at_best_mrr": best_rb["recbole_valid"]["ndcg@10"],
        "recbole_best_epoch": best_rb["epoch"],
        "recbole_test_excluded_ndcg@10_at_best": best_rb["ours_eval"]["test"]["excluded"]["ndcg@10"],
        "ours_valid_kept_ndcg@10_at_best": ours["metrics"]["valid"]["kept"]["ndcg@10"],
        "ours_best_valid_kept_ndcg@10": max(r["kept_ndcg@10"] for r in ours["history"]),
        f"ours_best_valid_kept_ndcg@10_first_{epochs}_epochs": max(r["kept_ndcg@10"] for r in first),
        "ours_best_epoch": ours["best_epoch"],
        "ours_test_excluded_ndcg@10": ours["metrics"]["test"]["excluded"]["ndcg@10"],
        "pop_test_excluded_ndcg@10": pop,
        "ours_x_pop": round(ours["metrics"]["test"]["excluded"]["ndcg@10"] / pop, 2),
        "recbole_x_pop": round(best_rb["ours_eval"]["test"]["excluded"]["ndcg@10"] / pop, 2),
        "recbole_epoch_s": round(float(np.mean([r["train_s"] for r in rb])), 1),
        "ours_epoch_s": ours["epoch_train_s"],
    }


def show(result: dict) -> None:
    print(f"load average at start {result['load_start']}, at end {result['load_end']} ({result['cpus']} CPUs)")
    print("RecBole SASRec per epoch: RecBole's valid (kept) | our eval: valid kept / excl, test kept / excl (NDCG@10)")
    for r in result["recbole"]["epochs"]:
        o = r["ours_eval"]
        print(f"  {r['epoch']:3d}  {r['train_s']:6.1f}s  ndcg {r['recbole_valid']['ndcg@10']:.4f} mrr {r['recbole_valid']['mrr@10']:.4f}"
              f" | {o['valid']['kept']['ndcg@10']:.4f} / {o['valid']['excluded']['ndcg@10']:.4f},"
              f" {o['test']['kept']['ndcg@10']:.4f} / {o['test']['excluded']['ndcg@10']:.4f}")
    ours = result["ours"]
    print(f"ours ({result['preset']} preset): {ours['epochs_run']} epochs, best {ours['best_epoch']} by {ours['selected_by']},"
          f" {ours['epoch_train_s']}s per epoch")
    for r in ours["history"]:
        print(f"  {r['epoch']:3d}  {r['train_s']:6.1f}s  kept ndcg {r['kept_ndcg@10']:.4f} mrr {r['kept_mrr@10']:.4f}"
              f" | excl ndcg {r['ndcg@10']:.4f}")
    m = ours["metrics"]
    print(f"  at best: valid kept {m['valid']['kept']['ndcg@10']:.4f} excl {m['valid']['excluded']['ndcg@10']:.4f},"
          f" test kept {m['test']['kept']['ndcg@10']:.4f} excl {m['test']['excluded']['ndcg@10']:.4f}")
    for k, v in result["summary"].items():
        print(f"{k:48s} {v}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recbole-python", default=os.environ.get("RECBOLE_PYTHON"),
                    help="a Python that imports recbole 1.2.1 (default $RECBOLE_PYTHON)")
    ap.add_argument("--epochs", type=int, default=12, help="RecBole epochs (~4 min each on one CPU thread)")
    ap.add_argument("--preset", default="recbole", choices=sorted(RECBOLE_BATCH), help="our preset to compare")
    ap.add_argument("--out", type=Path, default=Path("bench_recbole.json"))
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        run(args)
    except ToolrecError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"fix: {exc.hint}", file=sys.stderr)
        sys.exit(exc.exit_code)


def run(args) -> None:
    version = check_recbole(args.recbole_python)
    import torch

    from toolrec_local.data import load_dataset, prepare, prepared
    from toolrec_local.recsys.config import settings

    torch.set_num_threads(1)
    if not prepared("ml-100k"):
        prepare("ml-100k")
    ds = load_dataset("ml-100k")
    bcfg, tcfg, _ = settings(args.preset, "sasrec", ds.n_items)
    result = {"preset": args.preset, "recbole_version": version, "cpus": os.cpu_count(),
              "load_start": [round(x, 2) for x in os.getloadavg()], "pop": rounded(pop_metrics(ds))}
    with tempfile.TemporaryDirectory(prefix="bench-recbole-") as tmp:
        work = Path(tmp)
        write_split(ds, work)
        rb_settings = recbole_settings(args.preset, bcfg, tcfg)
        log = open(work / "recbole.log", "w")
        proc = subprocess.Popen([args.recbole_python, str(CHILD), str(work), str(args.epochs), json.dumps(rb_settings)],
                                stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            result["ours"] = train_ours(ds, bcfg, tcfg)
            print(f"ours done: {result['ours']['epochs_run']} epochs; waiting for RecBole ({args.epochs} epochs)", flush=True)
            result["recbole"] = {"settings": rb_settings, "epochs": []}
            try:
                for rec in recbole_epochs(proc, ds, work):
                    print(f"  RecBole epoch {rec['epoch']}: {rec['train_s']}s, valid kept NDCG@10 "
                          f"{rec['recbole_valid']['ndcg@10']:.4f}", flush=True)
                    result["recbole"]["epochs"].append(rec)
            except KeyboardInterrupt:  # Ctrl-C or kill: keep the epochs RecBole finished
                result["recbole"]["stopped_after"] = len(result["recbole"]["epochs"])
                print(f"stopped: RecBole ran {len(result['recbole']['epochs'])} of {args.epochs} epochs", flush=True)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            log.close()
        if not result["recbole"]["epochs"] or (proc.returncode != 0 and "stopped_after" not in result["recbole"]):
            tail = (work / "recbole.log").read_text().strip().splitlines()[-15:]
            raise ToolrecError(f"RecBole failed (exit {proc.returncode}):\n" + "\n".join(tail),
                               "see the lines above; " + INSTALL)
    result["load_end"] = [round(x, 2) for x in os.getloadavg()]
    result["summary"] = summary(result, len(result["recbole"]["epochs"]))
    show(result)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

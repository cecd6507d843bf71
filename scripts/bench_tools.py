#!/usr/bin/env python
"""Figures for the retrieval tools (issues 3 and 11): quality on ML-100K, training cost at ML-1M
size, retrieval latency, and Figure 6's parameter/FLOP accounting.

    python scripts/bench_tools.py                 # everything, tables on stdout
    python scripts/bench_tools.py --json --out bench_tools.json
    python scripts/bench_tools.py --only presets --presets default   # one part, one preset
    python scripts/bench_tools.py --only bert4rec                   # or tools, ml1m, accounting

ML-100K parts (all 943 users, full ranking):
- presets: SASRec trained with each preset (fast, default, paper, recbole) and with fast-recbole
  (the fast preset, RecBole's embedding start, best epoch picked with the history kept),
  validation and test NDCG@10 / Recall@10 with the history excluded (as the tools are used) and
  kept (RecBole's protocol), against most-popular; the reference is RecBole 1.2.1's SASRec,
  validation NDCG@10 0.0638 with the history kept, measured once on this kind of machine
  (258 s per epoch); scripts/bench_recbole.py runs it beside the recbole preset;
- bert4rec: BERT4Rec against SASRec, same preset;
- tools: the genre and release_year tools with the fusion layer started at random (the paper)
  and as the identity on H, each tool's NDCG@10, top-10 overlap with SASRec, and the recall
  of the `multi` method's 30-candidate pool against SASRec's Recall@30.
Checkpoints are kept under --home (one folder per preset) and reused while valid; --retrain
trains them again. The load average is printed: this machine is shared, so times vary with it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESETS = ("fast", "default", "paper", "recbole", "fast-recbole")
# Bench-only variants: a preset plus overrides. fast-recbole = the fast preset with RecBole's
# embedding start, its best epoch picked with the history kept (RecBole's protocol).
VARIANTS = {"fast-recbole": ("fast", {"init": "recbole", "exclude_history": False})}
ATTRIBUTES = ("genre", "release_year")
RECBOLE_SASREC_VALID_NDCG = 0.0638  # RecBole 1.2.1 SASRec, ML-100K, history kept (shared docs)


def _home(root: Path, name: str) -> Path:
    """A TOOLREC_HOME per run under `root`, all sharing one prepared ML-100K."""
    data = root / "data"
    if not (data / "datasets" / "ml-100k").is_dir():
        os.environ["TOOLREC_HOME"] = str(data)
        from toolrec_local.data import prepare

        prepare("ml-100k")
    home = root / name
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "datasets").exists():
        (home / "datasets").symlink_to(data / "datasets", target_is_directory=True)
    os.environ["TOOLREC_HOME"] = str(home)
    return home


def _dataset():
    from toolrec_local.data import load_dataset

    return load_dataset("ml-100k")


def protocol_metrics(ds, scores_fn) -> dict:
    """{part: {"excluded": {...}, "kept": {...}}} for part in valid, test; scores_fn(users, part)
    gives full-catalogue scores with the history NOT masked."""
    import numpy as np

    from toolrec_local.metrics import metric_means, ranks_from_scores
    from toolrec_local.recsys.models import histories

    users = ds.eval_users
    out = {}
    for part in ("valid", "test"):
        hists = histories(ds, users, part)
        targets = np.array([ds.split(int(u), part)[1] for u in users])
        scores = scores_fn(users, part)
        out[part] = {"excluded": metric_means(ranks_from_scores(scores, targets, hists), (10, 30)),
                     "kept": metric_means(ranks_from_scores(scores, targets), (10, 30))}
    return out


def pop_metrics(ds) -> dict:
    import numpy as np

    pop = ds.train_popularity.astype(np.float32)
    return protocol_metrics(ds, lambda users, part: np.broadcast_to(pop, (len(users), len(pop))))


def backbone_metrics(ds, tool, attribute=None) -> dict:
    from toolrec_local.recsys.models import histories, score_histories

    model, enc = tool.model, (tool._tools[attribute] if attribute else None)
    return protocol_metrics(ds, lambda users, part: score_histories(model, enc, histories(ds, users, part),
                                                                     exclude_history=False))


def _training(meta: dict) -> dict:
    m = meta["metrics"]
    return {k: m.get(k) for k in ("best_epoch", "epochs_run", "patience_evals", "selected_by", "seconds",
                                  "epoch_train_s", "device")} | {"valid_at_best": m["valid"]}


def train_or_load(root: Path, name: str, backbone: str, preset: str, retrain: bool, attributes=(),
                  fusion_init: str = "random", copy_backbone_from: str | None = None):
    from toolrec_local.recsys import checkpoint
    from toolrec_local.recsys.training.pipeline import ensure_trained

    preset, overrides = VARIANTS.get(preset, (preset, {}))
    home = _home(root, name)
    if retrain or not _matches_preset(home, backbone, preset, overrides):
        shutil.rmtree(home / "checkpoints" / "ml-100k" / backbone, ignore_errors=True)
    if copy_backbone_from:  # the tools go on the very backbone the preset part measured
        src = root / copy_backbone_from / "checkpoints" / "ml-100k" / backbone / "backbone"
        dst = home / "checkpoints" / "ml-100k" / backbone / "backbone"
        if not dst.is_dir() or json.loads((dst / "config.json").read_text())["weights_digest"] != \
                json.loads((src / "config.json").read_text())["weights_digest"]:
            shutil.rmtree(home / "checkpoints" / "ml-100k" / backbone, ignore_errors=True)
            shutil.copytree(src, dst)
    ds = _dataset()
    t0 = time.perf_counter()
    tool = ensure_trained(ds, backbone, list(attributes), preset=preset, show=True, fusion_init=fusion_init,
                          **overrides)
    seconds = time.perf_counter() - t0
    meta = json.loads((checkpoint.backbone_dir(ds.name, backbone) / checkpoint.CONFIG).read_text())
    return ds, tool, meta, seconds


def _matches_preset(home: Path, backbone: str, preset: str, overrides: dict) -> bool:
    """A backbone checkpoint trained with other settings than the preset's (an older preset
    definition) is not reused: the figures must be the preset's."""
    from dataclasses import asdict

    from toolrec_local.errors import ToolrecError
    from toolrec_local.recsys.config import BackboneConfig, TrainConfig, from_dict, settings

    path = home / "checkpoints" / "ml-100k" / backbone / "backbone" / "config.json"
    if not path.is_file():
        return True
    meta = json.loads(path.read_text())
    bcfg, tcfg, _ = settings(preset, backbone, meta["config"]["n_items"], **overrides)
    try:  # fields an older version did not write take their defaults
        saved_b, saved_t = from_dict(BackboneConfig, meta["config"], str(path)), from_dict(TrainConfig, meta["train"], str(path))
    except ToolrecError:
        return False
    ignore = {"mask_prob": 0, "mask_last": 0} if backbone == "sasrec" else {}  # BERT4Rec-only fields
    return (asdict(saved_b) | ignore == asdict(bcfg) | ignore
            and asdict(saved_t) | {"device": ""} == asdict(tcfg) | {"device": ""})


def presets_part(root: Path, presets: list[str], retrain: bool) -> dict:
    out = {}
    for preset in presets:
        ds, tool, meta, seconds = train_or_load(root, preset, "sasrec", preset, retrain)
        out[preset] = {"metrics": backbone_metrics(ds, tool), "training": _training(meta),
                       "train_seconds_this_run": round(seconds, 1)}
    out["pop"] = {"metrics": pop_metrics(_dataset())}
    return out


def bert4rec_part(root: Path, preset: str, retrain: bool) -> dict:
    ds, b4r, meta, seconds = train_or_load(root, preset, "bert4rec", preset, retrain)
    _, sas, sas_meta, _ = train_or_load(root, preset, "sasrec", preset, False)
    return {"preset": preset, "bert4rec": {"metrics": backbone_metrics(ds, b4r), "training": _training(meta),
                                           "train_seconds_this_run": round(seconds, 1)},
            "sasrec": {"metrics": backbone_metrics(ds, sas), "training": _training(sas_meta)},
            "pop": {"metrics": pop_metrics(ds)}}


def tools_part(root: Path, preset: str, retrain: bool) -> dict:
    """Both fusion starts on the same frozen SASRec; what each gives the agent."""
    import numpy as np

    from toolrec_local.agent.baselines import multi_candidates

    _, base, _, _ = train_or_load(root, preset, "sasrec", preset, False)
    out = {"preset": preset}
    for init in ("random", "identity"):
        ds, tool, _, seconds = train_or_load(root, f"{preset}-tools-{init}", "sasrec", preset, retrain, ATTRIBUTES,
                                             fusion_init=init, copy_backbone_from=preset)
        users = ds.eval_users
        targets = np.array([ds.split(int(u), "test")[1] for u in users])
        sas10 = tool.retrieve_batch(users, None, 10)
        sas30 = tool.retrieve_batch(users, None, 30)
        row = {"train_seconds_this_run": round(seconds, 1),
               "sasrec_recall@30": float(np.mean([t in {i for i, _ in xs} for t, xs in zip(targets, sas30)]))}
        for a in ATTRIBUTES:
            meta = json.loads((Path(os.environ["TOOLREC_HOME"]) / "checkpoints" / "ml-100k" / "sasrec" / "tools" / a
                               / "config.json").read_text())
            top = tool.retrieve_batch(users, a, 10)
            row[a] = {"test": backbone_metrics(ds, tool, a)["test"]["excluded"], "training": _training(meta),
                      "encoding": meta["config"]["encoding"],
                      "overlap@10_with_sasrec": float(np.mean([len({i for i, _ in x} & {i for i, _ in y}) / 10
                                                               for x, y in zip(sas10, top)]))}
        pools = [[i for _, xs in multi_candidates(tool, int(u), list(ATTRIBUTES), "test") for i in xs] for u in users]
        row["multi_pool_recall@30"] = float(np.mean([t in set(p) for t, p in zip(targets, pools)]))
        row["multi_pool_size"] = float(np.mean([len(set(p)) for p in pools]))
        out[init] = row
    return out


def ml1m_child(threads: int, epoch_only: bool = False) -> dict:
    """One SASRec epoch (default config) at ML-1M size; then latency of the retrieval tool."""
    import numpy as np
    import torch

    from toolrec_local.recsys.config import settings
    from toolrec_local.recsys.attributes.retrieval import RetrievalTool
    from toolrec_local.data.synthetic import synthetic_ml1m
    from toolrec_local.recsys.training.train import train_backbone, train_tool

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

    from toolrec_local.recsys.attributes.retrieval import RetrievalTool

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
    from toolrec_local.recsys.attributes.accounting import account
    from toolrec_local.data.synthetic import synthetic_ml1m

    return account(synthetic_ml1m(), "genre", max_len=200)


def _f(m: dict, part: str, proto: str, metric: str) -> str:
    return f"{m[part][proto][metric]:.4f}"


def show(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    console.print(f"load average: {result['load_average']} -> {result.get('load_average_end')}  ({result['cpus']} CPUs)")
    if "presets" in result:
        r = result["presets"]
        pop = r["pop"]["metrics"]
        t = Table(title="SASRec per preset, ML-100K, all 943 users, full ranking (valid / test)")
        for col in ("model", "valid NDCG@10 excl", "valid Recall@10 excl", "valid NDCG@10 kept", "valid Recall@10 kept",
                    "test NDCG@10 excl", "test Recall@10 excl", "test NDCG@10 kept", "test Recall@10 kept",
                    "test excl × pop", "best / run epochs", "s/epoch"):
            t.add_column(col)
        for name, v in r.items():
            m = v["metrics"]
            tr = v.get("training", {})
            t.add_row(f"sasrec ({name})" if name != "pop" else "pop",
                      *(_f(m, p, pr, k) for p in ("valid", "test") for pr in ("excluded", "kept")
                        for k in ("ndcg@10", "recall@10")),
                      f"{m['test']['excluded']['ndcg@10'] / pop['test']['excluded']['ndcg@10']:.2f}",
                      f"{tr.get('best_epoch', '')} / {tr.get('epochs_run', '')}" if tr else "",
                      f"{tr['epoch_train_s']:.2f}" if tr else "")
        t.add_row("RecBole 1.2.1 SASRec (CE, len 50; shared docs; side by side: bench_recbole.py)", "", "",
                  f"{RECBOLE_SASREC_VALID_NDCG:.4f}", "", "", "", "", "", "", "best of 12", "258")
        console.print(t)
    if "bert4rec" in result:
        r = result["bert4rec"]
        t = Table(title=f"BERT4Rec vs SASRec ({r['preset']} preset), ML-100K, test, history excluded")
        for col in ("model", "NDCG@10", "Recall@10", "NDCG@10 kept", "× SASRec NDCG@10", "× pop NDCG@10",
                    "best / run epochs", "s/epoch"):
            t.add_column(col)
        sas, pop = r["sasrec"]["metrics"]["test"]["excluded"]["ndcg@10"], r["pop"]["metrics"]["test"]["excluded"]["ndcg@10"]
        for name in ("bert4rec", "sasrec", "pop"):
            m, tr = r[name]["metrics"]["test"], r[name].get("training")
            t.add_row(name, f"{m['excluded']['ndcg@10']:.4f}", f"{m['excluded']['recall@10']:.4f}",
                      f"{m['kept']['ndcg@10']:.4f}", f"{m['excluded']['ndcg@10'] / sas:.2f}",
                      f"{m['excluded']['ndcg@10'] / pop:.2f}",
                      f"{tr['best_epoch']} / {tr['epochs_run']}" if tr else "", f"{tr['epoch_train_s']:.2f}" if tr else "")
        console.print(t)
    if "tools" in result:
        r = result["tools"]
        t = Table(title=f"Attribute tools on the frozen SASRec ({r['preset']} preset), ML-100K, test, history excluded")
        for col in ("fusion start", "tool", "encoding", "NDCG@10", "Recall@10", "top-10 overlap with SASRec",
                    "best / run epochs", "multi pool Recall@30", "SASRec Recall@30"):
            t.add_column(col)
        for init in ("random", "identity"):
            row = r[init]
            for a in ATTRIBUTES:
                v = row[a]
                t.add_row(init, a, v["encoding"], f"{v['test']['ndcg@10']:.4f}", f"{v['test']['recall@10']:.4f}",
                          f"{100 * v['overlap@10_with_sasrec']:.0f}%",
                          f"{v['training']['best_epoch']} / {v['training']['epochs_run']}",
                          f"{row['multi_pool_recall@30']:.4f}", f"{row['sasrec_recall@30']:.4f}")
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
    ap.add_argument("--only", choices=["presets", "bert4rec", "tools", "ml1m", "accounting"], action="append")
    ap.add_argument("--home", type=Path, default=REPO / ".toolrec-home" / "bench")
    ap.add_argument("--presets", default=",".join(PRESETS), help="SASRec presets to train and compare")
    ap.add_argument("--preset", default="fast", help="preset of the bert4rec and tools parts")
    ap.add_argument("--retrain", action="store_true", help="train ML-100K models again even if checkpoints exist")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for ML-100K training (small batches: 1 is faster on a busy machine)")
    ap.add_argument("--ml1m-threads", type=int, default=2, help="torch threads for the ML-1M-size epoch")
    ap.add_argument("--json", action="store_true", help="write the JSON (to --out, default bench_tools.json)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--epoch-only", action="store_true", help="ML-1M size: time the epoch, skip the latency part")
    ap.add_argument("--child-ml1m", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_ml1m:
        sys.stdout.write(json.dumps(ml1m_child(args.ml1m_threads, args.epoch_only)) + "\n")
        return
    parts = args.only or ["presets", "bert4rec", "tools", "ml1m", "accounting"]
    result: dict = {"load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}
    home = args.home.resolve()
    if {"presets", "bert4rec", "tools"} & set(parts):
        import torch

        torch.set_num_threads(args.threads)
    if "presets" in parts:
        result["presets"] = presets_part(home, [p for p in args.presets.split(",") if p], args.retrain)
    if "bert4rec" in parts:
        result["bert4rec"] = bert4rec_part(home, args.preset, args.retrain)
    if "tools" in parts:
        result["tools"] = tools_part(home, args.preset, args.retrain)
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

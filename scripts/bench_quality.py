#!/usr/bin/env python
"""Recommendation quality of several LLMs side by side (the paper's Figure 8), on the same users:
for each model, `toolrec-local serve` starts it (as scripts/bench_eval.py does), `eval` runs
sasrec, toolrec, llmrank, single and multi into one run folder per model (OUT/<model>), the
server stops, and one table compares them: NDCG@10, Recall@10, LLM calls and users per minute
per method, and each method's paired difference against SASRec (mean, 95% bootstrap CI,
permutation-test p; toolrec_local/eval/stats.py).

    python scripts/bench_quality.py --llm smollm2-135m --llm qwen2.5-coder-0.5b-instruct --report
    python scripts/bench_quality.py --llm smollm2-135m --seed 3 --seed 4 --users 50
    python scripts/bench_quality.py --llm smollm2-135m --server http://127.0.0.1:8000/v1   # a running server

Users: --users per sample (default 50) and the samples by seed. Without --seed, a model takes
the first of the seeds 3, 4, 5, 6 by its size, so that one model's run takes about an hour on
a 2-core CPU machine (estimated from SmolLM2-135M's ~16 s per user for the four LLM methods at
--concurrency auto; a larger model is slower per call but makes fewer): up to 0.2B parameters
4 seeds (200 users), up to 0.6B 2 seeds (100), larger 1 seed (50). Every model thus shares seed
3's users, and the models of one size all of theirs; when the models' users differ, a second
table compares them on the (seed, user) pairs every model finished. Seeds 0-2 (eval's default
samples, the demo's 0 and 1) are left out: prompts were developed on them. --seed overrides
the choice for every model.

Resumable: re-running the same command skips the users each folder has finished (eval resumes)
and does not start the server of a model whose folder is complete. Users per minute are each
method's own (one eval per method): its users finished over the time from the first one's
start to the last one's end in each `eval` invocation (eval's start-up not counted), summed
over re-runs (OUT/<model>/bench-quality.json, with each invocation's wall time too). The load
average at start and end goes in the JSON: figures under load are provisional.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench_eval import start_demo_server, stop

METHODS = ("sasrec", "toolrec", "llmrank", "single", "multi")
REFERENCE = "sasrec"
USERS_PER_SEED = 50
SEED_POOL = (3, 4, 5, 6)
# (largest size in billions of parameters, samples of USERS_PER_SEED): about an hour per model
SEEDS_BY_SIZE = ((0.2, 4), (0.6, 2), (float("inf"), 1))
TIMING_FILE = "bench-quality.json"


def default_seeds(params_b: float | None) -> list[int]:
    """The samples a model of this size runs by default (an unknown size counts as large)."""
    size = float("inf") if params_b is None else params_b
    n = next(k for limit, k in SEEDS_BY_SIZE if size <= limit)
    return list(SEED_POOL[:n])


def finished_records(folder: Path, method: str) -> dict:
    """(seed, user) -> the record, for the pairs the folder has finished for `method`."""
    from toolrec_local.eval.results import read_jsonl

    path = folder / "results.jsonl"
    if not path.is_file():
        return {}
    return {(r["seed"], r["user"]): r for r in read_jsonl(path).records if r["method"] == method and r["status"] == "ok"}


def finished(folder: Path, method: str) -> int:
    return len(finished_records(folder, method))


def active_seconds(records: list[dict]) -> float:
    """From the first of these users' start to the last one's end (each record: its end time
    and its own wall time), so eval's start-up and a resumed run's gap are not counted."""
    from datetime import datetime

    ends = [datetime.fromisoformat(r["time"]).timestamp() for r in records]
    starts = [e - float(r.get("wall_s") or 0) for e, r in zip(ends, records)]
    return max(ends) - min(starts)


def complete(folder: Path, methods: list[str], users: int, seeds: list[int]) -> bool:
    return all(finished(folder, m) >= users * len(seeds) for m in methods)


def load_timing(folder: Path) -> dict:
    path = folder / TIMING_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def add_timing(folder: Path, method: str, users: int, active_s: float, wall_s: float) -> None:
    """Accumulate one eval invocation's finished users, the seconds they ran (first start to
    last end) and the invocation's wall time (start-up included) for `method`."""
    timing = load_timing(folder)
    t = timing.setdefault(method, {"users": 0, "active_s": 0.0, "wall_s": 0.0})
    t["users"] += users
    t["active_s"] = round(t.get("active_s", 0.0) + active_s, 1)
    t["wall_s"] = round(t["wall_s"] + wall_s, 1)
    (folder / TIMING_FILE).write_text(json.dumps(timing, indent=2) + "\n")


def eval_command(args, model: str, url: str | None, method: str, seeds: list[int], folder: Path) -> list[str]:
    """One method per invocation, so each one's wall time is its own; the reference without an LLM."""
    llm = [] if method == REFERENCE else ["--llm", model, "--server", url, "--concurrency", args.concurrency]
    return [sys.executable, "-m", "toolrec_local", "eval", "--dataset", args.dataset, "--method", method, *llm,
            "--users", str(args.users), *[a for s in seeds for a in ("--seed", str(s))], "--out", str(folder)]


def run_eval(cmd: list[str], folder: Path, method: str) -> int:
    """Run one eval; the users it finished and its wall time go into the folder's timing."""
    print(f"  {' '.join(cmd[2:])}", file=sys.stderr)
    before = finished_records(folder, method)
    t0 = time.monotonic()
    try:
        return subprocess.run(cmd).returncode
    finally:  # a run cut short still counts what it finished
        new = [r for k, r in finished_records(folder, method).items() if k not in before]
        if new and method != REFERENCE:
            add_timing(folder, method, len(new), active_seconds(new), time.monotonic() - t0)


def run_model(args, model: str, seeds: list[int], folder: Path) -> str | None:
    """Serve `model` (unless --server), then one eval per method; the error, or None."""
    methods = [m for m in args.methods if m != REFERENCE]
    if run_eval(eval_command(args, model, None, REFERENCE, seeds, folder), folder, REFERENCE):  # before serving: fails fast
        return f"eval {REFERENCE} failed"
    if complete(folder, methods, args.users, seeds):
        print(f"{model}: {folder} is complete, not served again", file=sys.stderr)
        return None
    proc, url = None, (args.server[0] if args.server else None)
    try:
        if url is None:
            folder.mkdir(parents=True, exist_ok=True)
            log = folder / "server.log"
            print(f"{model}: starting `toolrec-local serve --llm {model}` (log: {log}) ...", file=sys.stderr)
            t0 = time.monotonic()
            proc, url, _ = start_demo_server(model, args.port, log, args.serve_arg)
            print(f"  up after {time.monotonic() - t0:.0f} s", file=sys.stderr)
        for m in methods:
            rc = run_eval(eval_command(args, model, url, m, seeds, folder), folder, m)
            if rc != 0:
                return f"eval {m} exited with code {rc}"
    except RuntimeError as exc:  # the server did not come up
        return str(exc)
    finally:
        if proc is not None:
            stop(proc)
    return None


def summarize_folder(folder: Path, keep: set | None = None) -> dict:
    """The folder's summary (over the pairs in `keep` only, when given)."""
    from toolrec_local.eval.rundir import load_runs
    from toolrec_local.eval.summary import summarize

    view = load_runs([folder])[0]
    records = view.records if keep is None else [r for r in view.records if (int(r["seed"]), str(r["user"])) in keep]
    return summarize(view.config, records, None if keep is not None else view.expected, view.missing_shards)


def paired_set(folder: Path) -> set:
    from toolrec_local.eval.rundir import load_runs
    from toolrec_local.eval.summary import paired_pairs

    by_method: dict[str, list[dict]] = {}
    for r in load_runs([folder])[0].records:
        by_method.setdefault(r["method"], []).append(r)
    return paired_pairs(by_method)[1]


def rows_for(model: str, summary: dict, timing: dict) -> list[dict]:
    """One row per method of one model's summary."""
    rows = []
    for name, m in summary["methods"].items():
        if name not in summary["paired"]["methods"]:
            continue
        t = timing.get(name)
        back = (m.get("comparisons") or {}).get("backbone")
        vs = back if back and back["reference"] == REFERENCE else None
        rows.append({
            "model": model, "method": name, "pairs": summary["paired"]["users"],
            "ndcg@10": m["ndcg@10"]["mean"], "recall@10": m["recall@10"]["mean"],
            "llm_calls_per_user": (m.get("llm") or {}).get("llm_calls_per_user"),
            "users_per_min": round(60 * t["users"] / t["active_s"], 2) if t and t.get("active_s") else None,
            "vs_" + REFERENCE: None if vs is None else {k: vs[k] for k in ("ndcg@10", "recall@10")},
        })
    return rows


def build_tables(folders: dict[str, Path]) -> dict:
    """Rows per model and method from the run folders; and, when the models' paired users
    differ, the same over the pairs every model finished ("common")."""
    out: dict = {"rows": [], "common": None}
    sets = {}
    for model, folder in folders.items():
        if not (folder / "run.json").is_file():
            continue
        out["rows"] += rows_for(model, summarize_folder(folder), load_timing(folder))
        sets[model] = paired_set(folder)
    if len(sets) > 1 and len({frozenset(s) for s in sets.values()}) > 1:
        common = set.intersection(*sets.values())
        rows = [r for model in sets for r in rows_for(model, summarize_folder(folders[model], common), {})]
        out["common"] = {"pairs": len(common), "rows": rows}
    return out


def format_table(rows: list[dict]) -> str:
    from toolrec_local.eval.report import fmt_ci, fmt_p

    def diff(d: dict | None) -> str:
        if d is None:
            return "-"
        if d.get("ci") is None:
            return d.get("note", "n/a")
        return f"{d['diff']:+.4f} {fmt_ci(d['ci'])} p {fmt_p(d['p'])}"

    head = (f"{'model':<28} {'method':<8} {'pairs':>5} {'NDCG@10':>8} {'R@10':>6} {'calls/u':>7} {'users/min':>9}  "
            f"{'dNDCG@10 vs ' + REFERENCE + ' [95% CI] p':<38} {'dR@10 vs ' + REFERENCE + ' [95% CI] p'}")
    lines = [head]
    for r in rows:
        calls = "-" if r["llm_calls_per_user"] is None else f"{r['llm_calls_per_user']:.1f}"
        upm = "-" if r["users_per_min"] is None else f"{r['users_per_min']:.2f}"
        vs = r["vs_" + REFERENCE] or {}
        lines.append(f"{r['model']:<28} {r['method']:<8} {r['pairs']:>5} {r['ndcg@10']:>8.4f} {r['recall@10']:>6.3f} "
                     f"{calls:>7} {upm:>9}  {diff(vs.get('ndcg@10')):<38} {diff(vs.get('recall@10'))}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", action="append", required=True, help="a model card name (toolrec-local models list); repeat")
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--methods", default=",".join(METHODS), type=lambda s: [m for m in s.split(",") if m],
                    help=f"default {','.join(METHODS)}; {REFERENCE} is always run")
    ap.add_argument("--users", type=int, default=USERS_PER_SEED, help=f"users per sample (default {USERS_PER_SEED})")
    ap.add_argument("--seed", type=int, action="append", default=[],
                    help="a user sample for every model; repeat (default: by model size, see above)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-quality"), help="one run folder per model under it")
    ap.add_argument("--json-out", type=Path, default=None, help="default OUT/bench-quality.json")
    ap.add_argument("--report", action="store_true", help="then `toolrec-local report` on all run folders side by side")
    ap.add_argument("--server", action="append", default=[], help="a running server's base URL (one --llm only)")
    ap.add_argument("--serve-arg", action="append", default=[], help="extra argument for `toolrec-local serve`")
    ap.add_argument("--port", type=int, default=8799)
    ap.add_argument("--concurrency", default="auto")
    args = ap.parse_args()
    if REFERENCE not in args.methods:
        args.methods.insert(0, REFERENCE)
    if args.server and len(args.llm) > 1:
        ap.error("--server serves one model: pass one --llm with it")

    from toolrec_local.llm.registry import load_card
    from toolrec_local.errors import ToolrecError

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`, kill: stop the server on the way out
    load = {"start": os.getloadavg()}
    plan: dict[str, dict] = {}
    try:
        for model in args.llm:
            seeds = sorted(set(args.seed)) or default_seeds(load_card(model).params_b)
            plan[model] = {"seeds": seeds, "users": args.users * len(seeds), "folder": str(args.out / model)}
    except ToolrecError as exc:
        print(f"error: {exc.message}" + (f"\nfix: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return 2
    print(f"bench_quality: {args.dataset}, methods {','.join(args.methods)}, {args.users} users per sample", file=sys.stderr)
    for model, p in plan.items():
        print(f"  {model}: seeds {', '.join(map(str, p['seeds']))} = {p['users']} users -> {p['folder']}", file=sys.stderr)
    for model, p in plan.items():
        p["error"] = run_model(args, model, p["seeds"], Path(p["folder"]))
        if p["error"]:
            print(f"{model}: {p['error']}", file=sys.stderr)
    load["end"] = os.getloadavg()
    tables = build_tables({m: Path(p["folder"]) for m, p in plan.items()})
    out = {"dataset": args.dataset, "methods": args.methods, "users_per_seed": args.users, "models": plan,
           "cpus": os.cpu_count(), "load_avg": load, **tables}
    json_out = args.json_out or args.out / "bench-quality.json"
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(out, indent=2) + "\n")
    users = ", ".join(f"{m} {p['users']}" for m, p in plan.items())
    print(f"\nusers per model ({args.users} per sample): {users}")
    print(format_table(tables["rows"]))
    if tables["common"]:
        print(f"\non the {tables['common']['pairs']} (seed, user) pairs every model finished:")
        print(format_table(tables["common"]["rows"]))
    print(f"load average at start {load['start'][0]:.2f}, at end {load['end'][0]:.2f}; JSON: {json_out}")
    if args.report:
        folders = [p["folder"] for p in plan.values() if (Path(p["folder"]) / "run.json").is_file()]
        subprocess.run([sys.executable, "-m", "toolrec_local", "report", *folders, "--out", str(args.out / "report")],
                       check=False)
    return 1 if any(p["error"] for p in plan.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

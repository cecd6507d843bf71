"""scripts/bench_quality.py without a server: the default samples by model size, the eval it
runs per method, and the table it builds from a hand-made pair of run folders (one per model)."""

from __future__ import annotations

import importlib
import json
import math
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from toolrec_local.eval.rundir import RunConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # it imports bench_eval from there
bq = importlib.import_module("bench_quality")

NDCG_1 = 1 / math.log2(3)


def write_run(folder: Path, llm: str, ranks: dict[str, list], seeds=(3,), calls: int = 0) -> None:
    """A run folder as eval leaves it: run.json and one results line per (method, seed, user)."""
    folder.mkdir(parents=True)
    n = len(next(iter(ranks.values())))
    cfg = RunConfig.of(dataset="d", dataset_fingerprint="x", methods=list(ranks), seeds=list(seeds), users=n,
                    llm=llm, backend="vllm", uses_llm=True, expected={str(s): n for s in seeds})
    (folder / "run.json").write_text(json.dumps(cfg.to_json()))
    with open(folder / "results.jsonl", "w") as fh:
        for m, rs in ranks.items():
            for s in seeds:
                for i, r in enumerate(rs):
                    fh.write(json.dumps({"method": m, "seed": s, "user": str(i), "rank": r, "status": "ok",
                                         "llm_calls": calls if m != "sasrec" else 0}) + "\n")


def test_default_samples_by_size_share_the_first_seed():
    assert bq.default_seeds(0.135) == [3, 4, 5, 6]
    assert bq.default_seeds(0.5) == [3, 4]
    assert bq.default_seeds(1.5) == bq.default_seeds(None) == [3]


def test_one_eval_per_method_the_reference_without_an_llm(tmp_path):
    args = Namespace(dataset="ml-100k", users=50, concurrency="auto")
    cmd = bq.eval_command(args, "smollm2-135m", "http://127.0.0.1:8799/v1", "toolrec", [3, 4], tmp_path)
    assert cmd[1:] == ["-m", "toolrec_local", "eval", "--dataset", "ml-100k", "--method", "toolrec", "--llm", "smollm2-135m",
                       "--server", "http://127.0.0.1:8799/v1", "--concurrency", "auto", "--users", "50",
                       "--seed", "3", "--seed", "4", "--out", str(tmp_path)]
    ref = bq.eval_command(args, "smollm2-135m", None, "sasrec", [3], tmp_path)
    assert "--llm" not in ref and "--server" not in ref and ref[ref.index("--method") + 1] == "sasrec"


def test_table_from_two_run_folders(tmp_path):
    n = 20
    # model a: toolrec lists every target first, sasrec at rank 1: a constant gain
    write_run(tmp_path / "a", "a", {"sasrec": [1] * n, "toolrec": [0] * n}, calls=12)
    bq.add_timing(tmp_path / "a", "toolrec", 12, 120.0, 150.0)
    bq.add_timing(tmp_path / "a", "toolrec", 8, 60.0, 70.0)  # a re-run adds to it
    # model b: toolrec equals sasrec on seed 3's users, and b also ran seed 4
    write_run(tmp_path / "b", "b", {"sasrec": [1] * n, "toolrec": [1] * n}, seeds=(3, 4), calls=5)
    tables = bq.build_tables({"a": tmp_path / "a", "b": tmp_path / "b", "absent": tmp_path / "none"})
    rows = {(r["model"], r["method"]): r for r in tables["rows"]}
    assert set(rows) == {("a", "sasrec"), ("a", "toolrec"), ("b", "sasrec"), ("b", "toolrec")}
    a = rows[("a", "toolrec")]
    assert a["pairs"] == n and a["ndcg@10"] == 1.0 and a["llm_calls_per_user"] == 12
    assert a["users_per_min"] == round(60 * 20 / 180, 2)
    assert a["vs_sasrec"]["ndcg@10"]["diff"] == pytest.approx(1 - NDCG_1) and a["vs_sasrec"]["ndcg@10"]["p"] < 0.001
    assert rows[("a", "sasrec")]["vs_sasrec"] is None and rows[("a", "sasrec")]["users_per_min"] is None
    b = rows[("b", "toolrec")]
    assert b["pairs"] == 2 * n and b["vs_sasrec"]["ndcg@10"]["diff"] == 0 and b["vs_sasrec"]["ndcg@10"]["p"] == 1
    # the models' users differ: the same table over the pairs both finished (seed 3's)
    common = tables["common"]
    assert common["pairs"] == n and {r["pairs"] for r in common["rows"]} == {n}
    text = bq.format_table(tables["rows"])
    gain = 1 - NDCG_1
    line = next(x for x in text.splitlines() if x.startswith("a ") and " toolrec " in x)
    assert f"{1.0:.4f}" in line and "12.0" in line and "6.67" in line
    assert f"+{gain:.4f} [+{gain:.4f}, +{gain:.4f}] p < 0.001" in line and "+0.0000 [+0.0000, +0.0000] p 1.000" in line
    json.dumps(tables)  # goes to --json-out as is


def test_one_pair_reads_n_a(tmp_path):
    write_run(tmp_path / "a", "a", {"sasrec": [1], "toolrec": [0]})
    tables = bq.build_tables({"a": tmp_path / "a"})
    assert tables["common"] is None
    assert "n/a (too few pairs)" in bq.format_table(tables["rows"])


def test_users_per_minute_count_from_the_first_start_to_the_last_end():
    recs = [{"time": "2026-12-01T10:00:30+00:00", "wall_s": 30.0}, {"time": "2026-12-01T10:01:00+00:00", "wall_s": 45.0},
            {"time": "2026-12-01T10:00:50+00:00", "wall_s": 10.0}]
    assert bq.active_seconds(recs) == 60.0  # 10:00:00 (the first start) to 10:01:00


def test_a_complete_folder_is_not_served_again(tmp_path):
    write_run(tmp_path / "a", "a", {"sasrec": [1] * 4, "toolrec": [0] * 4, "llmrank": [2] * 4})
    assert bq.complete(tmp_path / "a", ["toolrec", "llmrank"], 4, [3])
    assert not bq.complete(tmp_path / "a", ["toolrec", "single"], 4, [3])
    assert not bq.complete(tmp_path / "a", ["toolrec"], 5, [3])

"""Paired statistics (issue 23, point 2): bootstrap CI and permutation test on records with a
known answer, their fields in summary.json, the report and the terminal table; `eval --seed`."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from rich.console import Console

from fixtures_eval import prepare_walk
from toolrec_local.eval.report import comparison_table, markdown_comparisons, markdown_table, summary_table
from toolrec_local.eval.rundir import RunConfig
from toolrec_local.eval.stats import TOO_FEW, paired_difference, paired_differences, reference_of
from toolrec_local.eval.summary import brief, summarize
from toolrec_local.metrics import MISSING

NDCG_1 = 1 / math.log2(3)  # NDCG@10 of rank 1


def rec(method, seed, user, rank, status="ok"):
    return {"method": method, "seed": seed, "user": user, "rank": rank, "status": status}


def config(methods, seeds=(0,), users=20):
    return RunConfig.of(dataset="d", dataset_fingerprint="x", methods=list(methods), seeds=list(seeds), users=users,
                     uses_llm=True, llm="m")


def rendered(table) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(table)
    return " ".join(console.export_text().split())


# ---- the statistics on known answers -----------------------------------------------------------
def test_a_zero_difference_gives_a_ci_around_0_and_p_1():
    rng = np.random.default_rng(3)
    ranks = np.where(rng.random(40) < 0.4, rng.integers(0, 10, 40), MISSING).astype(float)
    for metric in ("ndcg@10", "recall@10"):
        same = paired_difference(ranks, ranks.copy(), metric)
        assert same["diff"] == 0 and same["ci"] == [0.0, 0.0] and same["p"] == 1.0
    # not constant, mean 0: half the users won by one method, half by the other
    a = np.array([0, MISSING] * 15)
    b = np.array([MISSING, 0] * 15)
    d = paired_difference(a, b, "recall@10")
    assert d["diff"] == 0 and d["ci_method"] == "BCa"
    assert d["ci"][0] < 0 < d["ci"][1] and d["p"] == pytest.approx(1.0)


def test_a_constant_difference_gives_a_tight_ci_at_it_and_a_small_p():
    # every user: rank 0 for the method, rank 1 for the reference: NDCG@10 1 - 1/log2(3) each
    n = 30
    d = paired_difference(np.zeros(n), np.ones(n), "ndcg@10")
    assert d["diff"] == pytest.approx(1 - NDCG_1)
    assert d["ci"] == [pytest.approx(1 - NDCG_1)] * 2 and d["ci_method"] == "constant"  # BCa is NaN there
    assert d["p"] < 0.001
    # few users: the permutation test is exact, 2 of the 2^4 sign patterns are as extreme
    d = paired_difference(np.zeros(4), np.full(4, MISSING), "recall@10")
    assert d["diff"] == 1 and d["ci"] == [1.0, 1.0] and d["p"] == pytest.approx(2 / 16)
    # a loss is negative, with the same p
    d = paired_difference(np.full(4, MISSING), np.zeros(4), "recall@10")
    assert d["diff"] == -1 and d["ci"] == [-1.0, -1.0] and d["p"] == pytest.approx(2 / 16)


def test_a_constant_metric_beside_a_varying_one_in_one_call_warns_nothing():
    """Recall@10 the same for every user (both list the target), NDCG@10 not: one bootstrap over
    both rows, BCa for the varying one, the constant one its own interval, no scipy warning."""
    ranks, ref = np.zeros(12), np.array([1.0, 2.0] * 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = paired_differences(ranks, ref, ("recall@10", "ndcg@10"))
    assert out["recall@10"] == {"diff": 0.0, "ci": [0.0, 0.0], "ci_method": "constant", "p": 1.0}
    n = out["ndcg@10"]
    assert n["ci_method"] == "BCa" and n["ci"][0] > 0 and n["p"] < 0.001
    assert n == paired_difference(ranks, ref, "ndcg@10")  # alone, the same figures


def test_a_real_gain_has_a_ci_off_0_and_containing_the_mean():
    rng = np.random.default_rng(0)
    n = 120
    ref = np.where(rng.random(n) < 0.2, rng.integers(0, 10, n), MISSING).astype(float)
    better = np.where(rng.random(n) < 0.6, 0, ref)  # 60% of users get the target first
    d = paired_difference(better, ref, "ndcg@10")
    assert d["ci_method"] == "BCa" and 0 < d["ci"][0] < d["diff"] < d["ci"][1] and d["p"] < 0.001
    again = paired_difference(better, ref, "ndcg@10")
    assert again == d  # seeded: the same figures every time


def test_fewer_than_two_pairs_say_so_and_do_not_fail():
    d = paired_difference(np.zeros(1), np.ones(1), "recall@10")
    assert d["note"] == TOO_FEW and d["ci"] is None and d["p"] is None
    d = paired_difference(np.zeros(0), np.zeros(0), "ndcg@10")
    assert d["note"] == TOO_FEW and d["diff"] is None


def test_each_method_is_compared_with_its_backbone():
    assert reference_of("toolrec") == reference_of("llmrank") == reference_of("pop") == "sasrec"
    assert reference_of("toolrec/last-list") == "sasrec"
    assert reference_of("toolrec-b") == reference_of("toolrec-b/last-list") == "bert4rec"
    assert reference_of("bert4rec-bert") == "bert4rec"


# ---- in summary.json, the report and the terminal -----------------------------------------------
def run_records(n=20):
    """sasrec lists the target at rank 1 for every user; toolrec at 0 for every user (a constant
    gain); pop misses all; bert4rec at 0 for the first half; toolrec-b equals bert4rec."""
    users = [f"u{i}" for i in range(n)]
    recs = [rec("sasrec", 0, u, 1) for u in users] + [rec("toolrec", 0, u, 0) for u in users]
    recs += [rec("pop", 0, u, None) for u in users]
    recs += [rec(m, 0, u, 0 if i < n // 2 else None) for m in ("bert4rec", "toolrec-b") for i, u in enumerate(users)]
    return recs


def test_summary_has_comparisons_and_the_improvements_ci_and_p():
    cfg = config(["pop", "sasrec", "bert4rec", "toolrec", "toolrec-b"])
    s = summarize(cfg, run_records())
    m = s["methods"]
    back = m["toolrec"]["comparisons"]["backbone"]
    assert back["reference"] == "sasrec" and back["pairs"] == 20
    assert back["ndcg@10"] == {"diff": pytest.approx(1 - NDCG_1), "ci": [pytest.approx(1 - NDCG_1)] * 2,
                               "ci_method": "constant", "p": pytest.approx(back["ndcg@10"]["p"])}
    assert back["ndcg@10"]["p"] < 0.001 and back["recall@10"]["diff"] == 0 and back["recall@10"]["p"] == 1
    # toolrec-b against BERT4Rec: equal, so 0 and p 1; its best other is toolrec (the highest NDCG@10)
    tb = m["toolrec-b"]["comparisons"]
    assert tb["backbone"]["reference"] == "bert4rec" and tb["backbone"]["ndcg@10"]["diff"] == 0
    assert tb["backbone"]["ndcg@10"]["p"] == 1 and tb["best_other"]["reference"] == "toolrec"
    assert m["sasrec"]["comparisons"]["backbone"] is None  # not against itself
    assert m["sasrec"]["comparisons"]["best_other"]["reference"] == "toolrec"
    assert m["toolrec"]["comparisons"]["best_other"]["reference"] == "sasrec"  # then sasrec, above bert4rec's 0.5
    # the Improvement: toolrec over the best baseline, per metric, with its paired difference
    imp = s["improvement"]["ndcg@10"]
    assert imp["over"] == "sasrec" and imp["relative"] == pytest.approx(1 / NDCG_1 - 1)
    assert imp["paired"] == back["ndcg@10"]
    assert s["improvement"]["ndcg@20"]["over"] is None and "paired" not in s["improvement"]["ndcg@20"]
    assert "permutation" in s["statistics"]["test"] and "BCa" in s["statistics"]["ci"]
    out = brief(s)
    assert out["improvement_paired"]["ndcg@10"]["p"] == imp["paired"]["p"]
    assert out["methods"]["toolrec"]["comparisons"] == m["toolrec"]["comparisons"]
    json.dumps(s)  # summary.json is written as JSON


def test_report_and_terminal_show_the_ci_and_p():
    s = summarize(config(["pop", "sasrec", "toolrec"]), [r for r in run_records() if r["method"] in ("pop", "sasrec", "toolrec")])
    p = s["improvement"]["ndcg@10"]["paired"]["p"]
    gain = 1 - NDCG_1
    md = markdown_table(s)
    row = next(line for line in md.splitlines() if line.startswith("| Improvement"))
    assert f"(Δ +{gain:.4f} [+{gain:.4f}, +{gain:.4f}], p < 0.001)" in row and p < 0.001
    assert "(Δ +0.0000 [+0.0000, +0.0000], p 1.000)" in row  # recall@10: both hit every user
    comp = markdown_comparisons(s)
    assert f"| toolrec | sasrec (backbone, best other) | 20 | +{gain:.4f} | [+{gain:.4f}, +{gain:.4f}] | < 0.001 |" in comp
    assert "| pop | sasrec (backbone) | 20 | -" in comp and "| pop | toolrec (best other) | 20 |" in comp
    text = rendered(summary_table(s))
    assert f"gain N@10 vs sasrec: Δ +{gain:.4f}, 95% CI [+{gain:.4f}, +{gain:.4f}], p < 0.001" in text
    assert "│ p │ 1.000 │ < 0.001 │ 1.000 │ < 0.001 │" in text  # R@5 N@5 R@10 N@10: rank 1 and 0 both in the top 5
    text = rendered(comparison_table(s))
    assert f"toolrec sasrec* 20 N@10 +{gain:.3f} [+{gain:.3f}, +{gain:.3f}] < 0.001 R@10 +0.000 [+0.000, +0.000] 1.000" in text


def test_one_pair_or_none_reads_n_a_not_a_crash():
    recs = [rec("sasrec", 0, "a", 1), rec("toolrec", 0, "a", 0), rec("toolrec", 0, "b", 0)]
    s = summarize(config(["sasrec", "toolrec"]), recs)
    back = s["methods"]["toolrec"]["comparisons"]["backbone"]
    assert back["pairs"] == 1 and back["note"] == TOO_FEW and back["ndcg@10"]["ci"] is None
    assert f"({TOO_FEW})" in markdown_table(s) and TOO_FEW in markdown_comparisons(s)
    assert TOO_FEW in rendered(summary_table(s)) and TOO_FEW in rendered(comparison_table(s))
    # no pair at all: toolrec failed its only user
    s = summarize(config(["sasrec", "toolrec"]), [rec("sasrec", 0, "a", 1), rec("toolrec", 0, "a", None, "failed")])
    assert "comparisons" not in s["methods"]["toolrec"] and s["methods"]["sasrec"]["comparisons"]["best_other"] is None
    assert comparison_table(s) is None and markdown_comparisons(s) == ""


# ---- eval --seed -------------------------------------------------------------------------------
def cli(home, *args):
    env = {**os.environ, "TOOLREC_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "toolrec_local", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_eval_takes_explicit_seeds_and_refuses_them_with_seeds(tmp_home, tmp_path):
    prepare_walk(tmp_home)
    out = tmp_path / "run"
    p = cli(tmp_home, "eval", "--dataset", "walk", "--method", "pop", "--users", "5", "--seed", "4", "--seed", "3",
            "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads((out / "run.json").read_text())["seeds"] == [3, 4]
    from toolrec_local.data import load_dataset

    ds = load_dataset("walk")
    done = {(r["seed"], r["user"]) for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert done == {(s, ds.user_ids[u]) for s in (3, 4) for u in ds.sample_users(5, s)}
    # the same samples in another order continue the folder; other samples are another run
    p = cli(tmp_home, "eval", "--dataset", "walk", "--method", "pop", "--users", "5", "--seed", "3", "--seed", "4",
            "--out", str(out))
    assert p.returncode == 0, p.stderr
    p = cli(tmp_home, "eval", "--dataset", "walk", "--method", "pop", "--users", "5", "--seeds", "2", "--out", str(out))
    assert p.returncode == 2 and "seeds: [3, 4] in the folder, [0, 1] now" in p.stderr
    p = cli(tmp_home, "eval", "--dataset", "walk", "--method", "pop", "--seed", "3", "--seeds", "2",
            "--out", str(tmp_path / "other"))
    assert p.returncode == 2 and "--seed and --seeds were both given" in p.stderr and "fix:" in p.stderr
    assert not (tmp_path / "other").exists()

"""scripts/bench_quality.py without a server: the default samples by model size, the eval it
runs per method, and the table it builds from a hand-made pair of run folders (one per model)."""

from __future__ import annotations

import importlib
import json
import math
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
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


# --- ranking variants (--variant generate|score|shuffles:N) ---

def test_variant_names_flags_and_folders(tmp_path):
    assert [bq.parse_variant(v) for v in ("generate", "score", "shuffles:3", "Shuffles:12")] == \
        ["generate", "score", "shuffles3", "shuffles12"]
    for bad in ("shuffles:0", "shuffles", "rank", "score:2"):
        with pytest.raises(bq.argparse.ArgumentTypeError):
            bq.parse_variant(bad)
    assert bq.variant_flags("generate") == []
    assert bq.variant_flags("score") == ["--rank-by", "score"]
    assert bq.variant_flags("shuffles3") == ["--rank-shuffles", "3"]
    # no --variant: generate only, in OUT/<model> as before; with --variant: OUT/<model>/<variant> each
    assert bq.variant_folders(tmp_path, "m", []) == {"generate": tmp_path / "m"}
    assert bq.variant_folders(tmp_path, "m", ["generate", "score", "shuffles3", "score"]) == {
        "generate": tmp_path / "m" / "generate", "score": tmp_path / "m" / "score",
        "shuffles3": tmp_path / "m" / "shuffles3"}


def test_ranker_variant_serves_the_tuned_model_beside_the_agents_and_compares_with_score(tmp_path, monkeypatch):
    assert bq.parse_variant("ranker:smollm2-135m-ranker-ml-100k") == "ranker-smollm2-135m-ranker-ml-100k"
    with pytest.raises(bq.argparse.ArgumentTypeError):
        bq.parse_variant("ranker:")
    ran, served = [], []
    monkeypatch.setattr(bq, "run_eval", lambda cmd, folder, method: ran.append((folder.name, method, cmd)) or 0)
    monkeypatch.setattr(bq, "start_demo_server",
                        lambda llm, port, *a: served.append((llm, port)) or (llm, f"http://h:{port}/v1", ""))
    monkeypatch.setattr(bq, "stop", lambda proc: served.append(("stopped", proc)))
    args = Namespace(dataset="d", users=4, concurrency="auto", methods=["sasrec", "llmrank"], server=[], port=8811,
                     serve_arg=[])
    folders = bq.variant_folders(tmp_path, "m", ["score", "ranker-tuned"])
    assert bq.run_model(args, "m", [3], folders) is None
    # the agent's model once; the ranker on the next port for its variant only, stopped after it
    assert served == [("m", 8811), ("tuned", 8813), ("stopped", "tuned"), ("stopped", "m")]
    cmd = next(c for f, m, c in ran if f == "ranker-tuned" and m == "llmrank")
    i = cmd.index("--rank-llm")
    assert cmd[i + 1] == "tuned" and cmd[cmd.index("--rank-server") + 1] == "http://h:8813/v1"
    assert cmd[cmd.index("--rank-by") + 1] == "score" and cmd[cmd.index("--server") + 1] == "http://h:8811/v1"
    assert "--rank-llm" not in next(c for f, m, c in ran if f == "score" and m == "llmrank")
    # its rows: against score (the untuned base) on the same pairs
    n = 20
    write_run(tmp_path / "r" / "score", "m", {"sasrec": [1] * n, "llmrank": [3] * n}, calls=1)
    write_run(tmp_path / "r" / "ranker-tuned", "m", {"sasrec": [1] * n, "llmrank": [1] * n}, calls=1)
    rows = {(r["variant"], r["method"]): r for r in bq.build_tables(
        {"m": {v: tmp_path / "r" / v for v in ("score", "ranker-tuned")}})["rows"]}
    vs = rows[("ranker-tuned", "llmrank")]["vs_score"]
    assert vs["reference"] == "score" and vs["pairs"] == n
    assert vs["ndcg@10"]["diff"] == pytest.approx(NDCG_1 - 1 / math.log2(5))  # ranks are 0-based
    assert rows[("score", "llmrank")]["vs_score"] is None


def test_variant_flags_reach_every_llm_method_not_the_reference(tmp_path):
    args = Namespace(dataset="ml-100k", users=50, concurrency="auto")
    url = "http://127.0.0.1:8811/v1"
    for variant, flags in (("score", ["--rank-by", "score"]), ("shuffles3", ["--rank-shuffles", "3"])):
        for method in ("toolrec", "llmrank"):
            cmd = bq.eval_command(args, "smollm2-135m", url, method, [3], tmp_path, variant)
            i = cmd.index("--concurrency")
            assert cmd[i + 2:i + 2 + len(flags)] == flags and cmd[cmd.index("--method") + 1] == method
        ref = bq.eval_command(args, "smollm2-135m", None, "sasrec", [3], tmp_path, variant)
        assert "--rank-by" not in ref and "--rank-shuffles" not in ref
    gen = bq.eval_command(args, "smollm2-135m", url, "toolrec", [3], tmp_path, "generate")
    assert gen == bq.eval_command(args, "smollm2-135m", url, "toolrec", [3], tmp_path)  # today's command
    assert "--rank-by" not in gen and "--rank-shuffles" not in gen


def test_one_server_for_all_variants(tmp_path, monkeypatch):
    ran, served = [], []
    monkeypatch.setattr(bq, "run_eval", lambda cmd, folder, method: ran.append((folder.name, method, cmd)) or 0)
    monkeypatch.setattr(bq, "start_demo_server", lambda *a: served.append(a) or ("proc", "http://h:1/v1", ""))
    monkeypatch.setattr(bq, "stop", lambda proc: served.append("stopped"))
    args = Namespace(dataset="d", users=4, concurrency="auto", methods=["sasrec", "toolrec", "llmrank"], server=[],
                     port=8811, serve_arg=[])
    folders = bq.variant_folders(tmp_path, "m", ["generate", "score", "shuffles3"])
    assert bq.run_model(args, "m", [3], folders) is None
    assert len(served) == 2 and served[-1] == "stopped"  # started once, stopped once
    assert (tmp_path / "m").is_dir()  # its log beside the variants' folders
    # the reference first in every folder (before serving), then each variant's LLM methods with its flags
    assert [(f, m) for f, m, _ in ran[:3]] == [("generate", "sasrec"), ("score", "sasrec"), ("shuffles3", "sasrec")]
    llm = {(f, m): c for f, m, c in ran[3:]}
    assert set(llm) == {(v, m) for v in ("generate", "score", "shuffles3") for m in ("toolrec", "llmrank")}
    for (f, m), c in llm.items():
        assert c[c.index("--out") + 1] == str(tmp_path / "m" / f) and c[c.index("--server") + 1] == "http://h:1/v1"
        assert ("--rank-by" in c) == (f == "score") and ("--rank-shuffles" in c) == (f == "shuffles3")


def test_variant_against_generate_on_the_same_pairs(tmp_path):
    n = 20
    m = tmp_path / "m"
    # sasrec at rank 1 everywhere; under generate toolrec equals it, and generate also ran seed 4
    write_run(m / "generate", "m", {"sasrec": [1] * n, "toolrec": [1] * n}, seeds=(3, 4), calls=5)
    # score: toolrec lists every target first: +(1 - NDCG_1) against both sasrec and generate
    write_run(m / "score", "m", {"sasrec": [1] * n, "toolrec": [0] * n}, calls=3)
    # shuffles3: half the users first, half not listed at all (rank null); one more user failed
    write_run(m / "shuffles3", "m", {"sasrec": [1] * n, "toolrec": [0] * (n // 2) + [None] * (n // 2)}, calls=20)
    with open(m / "shuffles3" / "results.jsonl", "a") as fh:
        fh.write(json.dumps({"method": "toolrec", "seed": 4, "user": "0", "rank": None, "status": "failed"}) + "\n")
    tables = bq.build_tables({"m": {v: m / v for v in ("generate", "score", "shuffles3")}})
    rows = {(r["variant"], r["method"]): r for r in tables["rows"]}
    assert rows[("generate", "toolrec")]["vs_generate"] is None and rows[("score", "sasrec")]["vs_generate"] is None
    gain = 1 - NDCG_1
    score = rows[("score", "toolrec")]
    assert score["pairs"] == n and score["llm_calls_per_user"] == 3
    g = score["vs_generate"]
    assert g["reference"] == "generate" and g["pairs"] == n  # seed 4's users are not score's
    assert g["ndcg@10"]["diff"] == pytest.approx(gain) and g["ndcg@10"]["ci"] == pytest.approx([gain, gain])
    assert g["ndcg@10"]["p"] < 0.001 and g["recall@10"]["diff"] == 0 and g["recall@10"]["p"] == 1
    assert score["vs_sasrec"]["ndcg@10"]["diff"] == pytest.approx(gain)
    # half +gain, half -NDCG_1: mean 0.5 - NDCG_1 (about -0.131); Recall@10 half 0, half -1: -0.5
    s = rows[("shuffles3", "toolrec")]["vs_generate"]
    assert s["pairs"] == n
    assert s["ndcg@10"]["diff"] == pytest.approx(0.5 - NDCG_1) and s["recall@10"]["diff"] == pytest.approx(-0.5)
    # NDCG@10's differences (+0.37 and -0.63, half each) spread wide: the interval holds 0; Recall@10's does not
    assert s["ndcg@10"]["ci_method"] == "BCa" and s["ndcg@10"]["ci"][0] < 0.5 - NDCG_1 < 0 < s["ndcg@10"]["ci"][1]
    assert s["ndcg@10"]["p"] > 0.05 and s["recall@10"]["ci"][1] < 0 and s["recall@10"]["p"] < 0.01
    # the same as eval/stats.py gives on the 20 pairs aligned by hand, in the (seed, user) order
    # summary.paired_ranks uses (users are strings: "0", "1", "10", ...)
    from toolrec_local.eval.stats import paired_differences
    from toolrec_local.metrics import MISSING

    order = sorted(str(u) for u in range(n))
    by_hand = paired_differences(np.array([0.0 if int(u) < n // 2 else MISSING for u in order]), np.ones(n),
                                 ("ndcg@10", "recall@10"))
    assert {k: s[k] for k in by_hand} == by_hand
    # the generate folder paired 40 pairs, the others 20: the common table is over seed 3's 20
    common = tables["common"]
    assert common["pairs"] == n and {r["pairs"] for r in common["rows"]} == {n}
    cg = {(r["variant"], r["method"]): r for r in common["rows"]}[("score", "toolrec")]["vs_generate"]
    assert cg["pairs"] == n and cg["ndcg@10"]["diff"] == pytest.approx(gain)
    text = bq.format_table(tables["rows"])
    assert "vs generate" in text.splitlines()[0]
    line = next(x for x in text.splitlines() if x.split()[:3] == ["m", "score", "toolrec"])
    assert line.count(f"+{gain:.4f} [+{gain:.4f}, +{gain:.4f}] p < 0.001") == 2  # vs sasrec and vs generate
    gen_line = next(x for x in text.splitlines() if x.split()[:3] == ["m", "generate", "toolrec"])
    assert gen_line.rstrip().endswith("-")
    json.dumps(tables)


def test_main_runs_each_variant_once_resumes_and_records_commands(tmp_path, monkeypatch):
    """The whole script with eval and the server faked: the JSON holds the variants, the commit,
    the commands run; a re-run finds the folders complete and serves nothing."""
    import subprocess as sp

    real_run, served = sp.run, []
    rank_of = {"generate": 1, "score": 0, "shuffles3": 2}

    def fake_run(cmd, *a, **kw):
        if cmd[0] == "git":
            return real_run(cmd, *a, **kw)
        method, out = cmd[cmd.index("--method") + 1], Path(cmd[cmd.index("--out") + 1])
        variant = "score" if "--rank-by" in cmd else "shuffles3" if "--rank-shuffles" in cmd else "generate"
        if not (out / "run.json").is_file():
            out.mkdir(parents=True)
            cfg = RunConfig.of(dataset="d", dataset_fingerprint="x", methods=["sasrec", "toolrec"], seeds=[3], users=4,
                               llm="m", backend="vllm", uses_llm=True, expected={"3": 4})
            (out / "run.json").write_text(json.dumps(cfg.to_json()))
        with open(out / "results.jsonl", "a") as fh:
            for u in range(4):
                fh.write(json.dumps({"method": method, "seed": 3, "user": str(u), "status": "ok",
                                     "rank": 1 if method == "sasrec" else rank_of[variant],
                                     "llm_calls": 0 if method == "sasrec" else 2,
                                     "time": f"2026-12-01T10:0{u}:00+00:00", "wall_s": 30.0}) + "\n")
        return sp.CompletedProcess(cmd, 0)

    monkeypatch.setattr(bq.subprocess, "run", fake_run)
    monkeypatch.setattr(bq, "start_demo_server", lambda *a: served.append(a) or ("proc", "http://h:1/v1", ""))
    monkeypatch.setattr(bq, "stop", lambda proc: None)
    monkeypatch.setattr(bq.signal, "signal", lambda *a: None)
    argv = ["bench_quality.py", "--llm", "m", "--seed", "3", "--users", "4", "--methods", "sasrec,toolrec",
            "--variant", "generate", "--variant", "score", "--variant", "shuffles:3", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    assert bq.main() == 0
    out = json.loads((tmp_path / "bench-quality.json").read_text())
    assert out["variants"] == ["generate", "score", "shuffles3"] and len(served) == 1
    assert out["models"]["m"]["folders"]["score"] == str(tmp_path / "m" / "score")
    assert len(out["commit"]) == 40 and out["command"].endswith(" ".join(argv[1:]))
    cmds = out["eval_commands"]["m"]
    assert [("--rank-by score" in c["command"], c["rc"], c["new_users"]) for c in cmds["score"]] == \
        [(False, 0, 4), (True, 0, 4)]  # sasrec, then toolrec with the variant's flag
    assert "--rank-shuffles 3" in cmds["shuffles3"][1]["command"]
    rows = {(r["variant"], r["method"]): r for r in out["rows"]}
    assert rows[("score", "toolrec")]["vs_generate"]["ndcg@10"]["diff"] == pytest.approx(1 - NDCG_1)
    assert rows[("shuffles3", "toolrec")]["vs_generate"]["ndcg@10"]["diff"] == pytest.approx(0.5 - NDCG_1)
    assert rows[("score", "toolrec")]["users_per_min"] == round(60 * 4 / 210, 2)  # 09:59:30 to 10:03:00
    assert set(out["load_avg"]) == {"start", "end"}
    # the same command again: every folder complete, not served; the invocations accumulate
    assert bq.main() == 0
    again = json.loads((tmp_path / "bench-quality.json").read_text())
    assert len(served) == 1 and len(again["invocations"]) == 2

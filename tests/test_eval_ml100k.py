"""The no-LLM path on ML-100K with the real trained tools: every test user, and the paper's
200 users x 3 seeds, through the CLI; figures agree with the recsys area's own evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

METHODS = ["pop", "sasrec", "tool:genre"]


def cli(home, *args):
    env = {**os.environ, "TOOLREC_HOME": str(home), "PYTHONWARNINGS": "ignore"}
    p = subprocess.run([sys.executable, "-m", "toolrec_local", *args], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.mark.slow
def test_all_users_and_sampled_users_match_evaluate_tools(ml100k, ml100k_tools, session_home, tmp_path):
    from toolrec_local.recsys.evaluate import evaluate_tools

    ds = ml100k
    out = cli(session_home, "eval", "--dataset", "ml-100k", "--method", ",".join(METHODS), "--all-users",
              "--out", str(tmp_path / "all"), "--json")
    reference = evaluate_tools(ds, METHODS)
    for m in METHODS:
        got = out["methods"][m]
        assert got["users"] == {"ok": len(ds.eval_users), "failed": 0, "expected": len(ds.eval_users)}
        for k in ("recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@20", "ndcg@20"):
            assert got[k]["mean"] == pytest.approx(reference["methods"][m][k], abs=1e-9), (m, k)
            assert got[k]["std"] == 0.0  # one pass over all users

    out = cli(session_home, "eval", "--dataset", "ml-100k", "--method", ",".join(METHODS), "--users", "200",
              "--seeds", "3", "--out", str(tmp_path / "sampled"), "--json")
    summary = json.loads((tmp_path / "sampled" / "summary.json").read_text())
    for m in METHODS:
        per_seed = [evaluate_tools(ds, [m], users=ds.sample_users(200, s))["methods"][m]["recall@10"] for s in range(3)]
        assert [summary["methods"][m]["per_seed"][str(s)]["recall@10"] for s in range(3)] == pytest.approx(per_seed)
        assert out["methods"][m]["recall@10"]["mean"] == pytest.approx(np.mean(per_seed))
        assert out["methods"][m]["recall@10"]["std"] == pytest.approx(np.std(per_seed))
        assert out["methods"][m]["users"]["ok"] == 600

"""summary.json: per method, mean ± std over seeds of Recall/NDCG @5/@10/@20, the users behind
them, LLM cost per user, termination rounds (Figure 5), and ToolRec's relative improvement
over the best baseline (Table 2's last row).

Methods are compared on the same users: a method's headline figures (`recall@10`, ...,
`per_seed`) are over the (seed, user) pairs that every method with a finished user finished
(`paired`), and so is the improvement. In a complete run that is every user. Each method's
own figures over all the users it finished are kept in `all_users`; failed users are counted
apart (`users.failed`) and a method with failed or missing users is marked incomplete, so a
partial run is never mistaken for a finished one. The authors likewise scored only the users
whose lists parsed.

On the same pairs, each method's paired differences of NDCG@10 and Recall@10 against its
backbone and against the best other method (`comparisons`), and the Improvement's, with a
bootstrap CI and a paired test: eval/stats.py says which.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from toolrec_local.agent.trajectory import COUNT_FIELDS, USAGE_FIELDS
from toolrec_local.eval.catalog import BASELINES, TOOLREC, needs_llm
from toolrec_local.eval.hits import hits_block
from toolrec_local.eval.stats import DESCRIPTION, Paired
from toolrec_local.metrics import MISSING, mean_std, metric_means, relative_improvement
from toolrec_local.eval.results import OK

NS = (5, 10, 20)
METRICS = tuple(f"{m}@{n}" for n in NS for m in ("recall", "ndcg"))
COST_FIELDS = USAGE_FIELDS + ("wall_s",)  # per user; COUNT_FIELDS are summed


def _rank(rec: dict) -> float:
    return MISSING if rec.get("rank") is None else float(rec["rank"])


def _pair(rec: dict) -> tuple[int, str]:
    return int(rec["seed"]), str(rec["user"])


def metric_block(ok: list[dict]) -> dict:
    """Recall/NDCG @5/@10/@20 per seed over its users, then mean ± std over the seeds."""
    per_seed = {}
    for seed in sorted({int(r["seed"]) for r in ok}):
        ranks = np.array([_rank(r) for r in ok if int(r["seed"]) == seed])
        per_seed[str(seed)] = {**metric_means(ranks, NS), "users": int(len(ranks))}
    stats = mean_std([{k: v for k, v in m.items() if k != "users"} for m in per_seed.values()])
    out: dict = {m: stats.get(m, {"mean": 0.0, "std": 0.0}) for m in METRICS}
    out["per_seed"] = per_seed
    return out


def paired_pairs(by_method: dict[str, list[dict]]) -> tuple[list[str], set[tuple[int, str]]]:
    """(the methods compared: those with a finished user, the (seed, user) pairs all of them finished)."""
    finished = {m: {_pair(r) for r in recs if r["status"] == OK} for m, recs in by_method.items()}
    compared = [m for m, pairs in finished.items() if pairs]
    return compared, set.intersection(*(finished[m] for m in compared)) if compared else set()


def paired_ranks(by_method: dict[str, list[dict]], compared: list[str], pairs: set[tuple[int, str]],
                 top_n: int = 10) -> Paired:
    """Each compared method's ranks over the pairs, in one (seed, user) order; the metrics the
    improvement can ask for are those within top_n."""
    order = sorted(pairs)
    ranks = {}
    for m in compared:
        got = {_pair(r): _rank(r) for r in by_method[m] if r["status"] == OK}
        ranks[m] = np.array([got[p] for p in order], dtype=np.float64)
    return Paired(ranks, [m for m in METRICS if int(m.split("@")[1]) <= top_n])


def method_summary(name: str, records: list[dict], top_n: int, expected: int | None, shards_missing: bool = False,
                   pairs: set[tuple[int, str]] | None = None) -> dict:
    """`pairs`: the (seed, user) pairs the headline figures are over (None: all it finished)."""
    ok = [r for r in records if r["status"] == OK]
    failed = [r for r in records if r["status"] != OK]
    own = metric_block(ok)
    paired = own if pairs is None else metric_block([r for r in ok if _pair(r) in pairs])
    out: dict = dict(paired)
    out["all_users"] = own
    out["users"] = {"ok": len(ok), "failed": len(failed), "expected": expected}
    out["complete"] = not failed and not shards_missing and (expected is None or len(ok) >= expected)
    if failed:
        out["errors"] = dict(Counter(r.get("error") or "?" for r in failed).most_common(5))
    if needs_llm(name):
        n = max(1, len(ok))
        out["llm"] = {f"{f}_per_user": round(sum(float(r.get(f) or 0) for r in ok) / n, 4) for f in COST_FIELDS}
        out["llm"].update({f: int(sum(int(r.get(f) or 0) for r in ok)) for f in COUNT_FIELDS})
        latency = sum(float(r.get("latency_s") or 0) for r in ok)
        wall = sum(float(r.get("wall_s") or 0) for r in ok)
        # per user: output tokens per second spent waiting on the LLM (server queueing included)
        out["llm"]["tokens_out_per_llm_s"] = round(sum(int(r.get("tokens_out") or 0) for r in ok) / latency, 2) if latency else None
        out["llm"]["share_outside_llm"] = round(max(0.0, 1 - latency / wall), 4) if wall else None
        out["hits"] = hits_block([r for r in ok if pairs is None or _pair(r) in pairs])  # over the headline's users
        # every fallback that changed an answer (agent/trajectory.py FALLBACKS), summed, and
        # the users that took any
        took = [r.get("fallbacks") or {} for r in ok]
        out["fallbacks"] = {f: int(sum(int(t.get(f) or 0) for t in took)) for f in dict.fromkeys(k for t in took for k in t)}
        out["fallbacks"]["users"] = sum(1 for t in took if any(t.values()))
        rounds = [int(r.get("rounds") or 0) for r in ok]
        if any(rounds):
            hits = [int(r.get("rounds") or 0) for r in ok if _rank(r) < top_n]
            out["rounds"] = {
                "all": {str(k): v for k, v in sorted(Counter(rounds).items())},
                "hits": {str(k): v for k, v in sorted(Counter(hits).items())},
                "mean": round(float(np.mean(rounds)), 3),
            }
    return out


def improvement(methods: dict[str, dict], of: str = TOOLREC, top_n: int = 10, paired: Paired | None = None) -> dict | None:
    """ToolRec's relative gain over the best baseline present, per metric (Table 2's last row),
    from the figures in `methods` (the caller passes them over the same users).
    Only for cut-offs within ToolRec's list length N: beyond it ToolRec cannot list the target,
    and a gain against a method that ranks the whole catalogue would be an artefact.
    With `paired` (the methods' ranks over those users), each metric also gets the paired
    difference against that baseline: `diff`, `ci`, `ci_method`, `p` (eval/stats.py)."""
    base = [b for b in BASELINES if b in methods]
    if of not in methods or not base:
        return None
    out = {}
    for m in METRICS:
        if int(m.split("@")[1]) > top_n:
            out[m] = {"over": None, "reference": None, "value": methods[of][m]["mean"], "relative": None}
            continue
        best = max(base, key=lambda b: methods[b][m]["mean"])
        ref = methods[best][m]["mean"]
        out[m] = {"over": best, "reference": ref, "value": methods[of][m]["mean"],
                  "relative": relative_improvement(methods[of][m]["mean"], ref)}
        if paired is not None:
            out[m]["paired"] = paired.difference(of, best, m)
    return out


def summarize(config, records: list[dict], expected: dict | None = None, missing_shards: list[str] | None = None) -> dict:
    """`config`: the run's RunConfig; `expected`: users per seed the shards present should have;
    `missing_shards`: shards not found (their users are not in `expected`, so say so)."""
    by_method: dict[str, list[dict]] = {}
    for r in records:
        by_method.setdefault(r["method"], []).append(r)
    n_expected = sum(int(v) for v in expected.values()) if expected else None
    order = [m for m in config.methods if m in by_method] + sorted(set(by_method) - set(config.methods))
    compared, pairs = paired_pairs({m: by_method[m] for m in order})
    methods = {m: method_summary(m, by_method[m], config.top_n, n_expected, bool(missing_shards),
                                 pairs if m in compared else None) for m in order}
    stats = paired_ranks(by_method, compared, pairs, config.top_n)
    for m, block in stats.comparisons().items():
        methods[m]["comparisons"] = block
    paired = {
        "users": len(pairs),  # (seed, user) pairs
        "per_seed": {str(s): n for s, n in sorted(Counter(seed for seed, _ in pairs).items())},
        "methods": compared,
        # some method finished users outside the pairs: its headline figures differ from its own
        "partial": any(methods[m]["users"]["ok"] > len(pairs) for m in compared),
    }
    return {
        "dataset": config.dataset,
        "llm": config.llm if config.uses_llm else None,
        "backend": config.backend if config.uses_llm else None,
        "part": config.part,
        "top_n": config.top_n,
        "users": config.users if config.users is not None else "all",
        "seeds": config.seeds,
        "history": config.history,
        "answer_space": getattr(config, "answer_space", None) if config.uses_llm else None,
        "finish": getattr(config, "finish", None) if config.uses_llm else None,
        "paired": paired,
        "methods": methods,
        "improvement": improvement({m: methods[m] for m in compared}, top_n=config.top_n, paired=stats),
        "statistics": DESCRIPTION,
        "missing_shards": list(missing_shards or []),
    }


def brief(summary: dict) -> dict:
    """The --json output: metrics as {mean, std} over the paired users (and over all the users
    each method finished, `all_users`), plus LLM and round figures per method."""
    out = {"dataset": summary["dataset"], "llm": summary["llm"], "history": summary.get("history", "exclude"),
           "paired": summary.get("paired"), "methods": {}}
    for name, m in summary["methods"].items():
        entry = {k: m[k] for k in METRICS}
        entry["all_users"] = {k: m["all_users"][k] for k in METRICS}
        entry["users"] = m["users"]
        entry["complete"] = m["complete"]
        for extra in ("llm", "rounds", "fallbacks", "comparisons"):
            if extra in m:
                entry[extra] = m[extra]
        out["methods"][name] = entry
    if summary.get("improvement"):
        out["improvement"] = {k: v["relative"] for k, v in summary["improvement"].items()}
        out["improvement_paired"] = {k: v.get("paired") for k, v in summary["improvement"].items()}
    return out

"""Paired statistics for every comparison of two methods in a run (summary.json, the report).

Two methods are compared on the (seed, user) pairs both finished, the run's paired set
(summary.paired_pairs). Per pair, each method's NDCG@10 and Recall@10 come from its record's
rank by metrics.ndcg_at / recall_at; the per-pair difference (method - reference) gives, per
metric:

* `diff`: the mean difference, which is the difference of the two methods' means;
* `ci`: its 95% confidence interval by scipy.stats.bootstrap over the per-pair differences:
  a paired bootstrap (a resample draws (seed, user) pairs, each with both methods' results),
  2,000 resamples, seeded. Method BCa (bias-corrected and accelerated): the differences are
  skewed and lumpy (most pairs 0, a user both miss), where the percentile interval covers
  less than it says. When every difference is the same value the bootstrap distribution is
  that one point and BCa is undefined (scipy warns, returns NaN): the interval is then
  [value, value] and `ci_method` is "constant". Should BCa still give NaN, the percentile
  interval of the same resamples is used and `ci_method` says "percentile".
* `p`: the two-sided p-value of a paired permutation test of the mean difference
  (scipy.stats.permutation_test on the differences, permutation_type="samples": under the
  null the two results of a pair are exchangeable, so each difference keeps or flips its
  sign), 9,999 random relabellings, seeded, or all 2^n of them when that is fewer (exact).
  Chosen over Wilcoxon's signed-rank test because it tests the quantity reported (the mean,
  which NDCG@10 is), not a shift of signed ranks, and because zero differences and ties (the
  common case here) need no zero_method convention: a zero difference is the same under
  either sign. A zero mean difference gives p = 1.

Fewer than MIN_PAIRS pairs: no interval and no test, `note` says TOO_FEW. Pairs of different
seeds may hold the same user; each pair counts as one unit.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats as sps

from toolrec_local.eval.catalog import entry
from toolrec_local.metrics import ndcg_at, recall_at

METRICS = ("ndcg@10", "recall@10")
CONFIDENCE = 0.95
RESAMPLES = 2000
PERMUTATIONS = 9999
SEED = 0
BATCH = 500  # resamples per vectorised batch: memory stays ~ BATCH x metrics x pairs floats
MIN_PAIRS = 2
TOO_FEW = "n/a (too few pairs)"
DESCRIPTION = {
    "difference": "method - reference, per (seed, user) pair both finished, then averaged",
    "ci": f"{100 * CONFIDENCE:.0f}% BCa bootstrap (scipy.stats.bootstrap), {RESAMPLES} resamples of pairs, seed {SEED}",
    "test": f"two-sided paired permutation test of the mean difference (scipy.stats.permutation_test, "
            f"permutation_type='samples'), {PERMUTATIONS} resamples or exact, seed {SEED}",
    "min_pairs": MIN_PAIRS,
}


def reference_of(name: str) -> str:
    """The backbone a method is compared with: BERT4Rec for the BERT4Rec methods and the
    -b variants (and their /variants), SASRec for the rest."""
    try:
        backbone = entry(name).backbone
    except KeyError:  # a name no entry has (a record of another version)
        backbone = "sasrec"
    return "bert4rec" if backbone.startswith("bert4rec") else "sasrec"


def metric_values(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Per pair NDCG@n or Recall@n from 0-based ranks (metrics.MISSING = not listed)."""
    kind, n = metric.split("@")
    return (ndcg_at if kind == "ndcg" else recall_at)(ranks, int(n))


def paired_difference(ranks: np.ndarray, ref_ranks: np.ndarray, metric: str) -> dict:
    """{"diff", "ci", "ci_method", "p"} of `metric` for aligned per-pair ranks of a method and
    its reference; all None and a `note` with fewer than MIN_PAIRS pairs."""
    return paired_differences(ranks, ref_ranks, (metric,))[metric]


def paired_differences(ranks: np.ndarray, ref_ranks: np.ndarray, metrics) -> dict[str, dict]:
    """paired_difference for several metrics at once: one bootstrap and one permutation test
    over a row per metric (the resamples are shared, the cost is not multiplied)."""
    a = np.stack([metric_values(ranks, m) for m in metrics])
    b = np.stack([metric_values(ref_ranks, m) for m in metrics])
    d = a - b
    if d.shape[1] < MIN_PAIRS:
        return {m: {"diff": float(np.mean(d[i])) if d.shape[1] else None, "ci": None, "ci_method": None, "p": None,
                    "note": TOO_FEW} for i, m in enumerate(metrics)}
    cis, p = bootstrap_cis(d), permutation_ps(d)
    return {m: {"diff": float(np.mean(d[i])), "ci": cis[i][0], "ci_method": cis[i][1], "p": float(p[i])}
            for i, m in enumerate(metrics)}


def bootstrap_cis(d: np.ndarray) -> list[tuple[list[float], str]]:
    """Per row of per-pair differences: (its CI, how it was found)."""
    out: list = [None] * len(d)
    spread = [i for i in range(len(d)) if np.ptp(d[i]) > 0]
    for i in set(range(len(d))) - set(spread):  # one value: BCa's acceleration is 0/0; the interval is that value
        out[i] = ([float(d[i, 0])] * 2, "constant")
    if not spread:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sps.DegenerateDataWarning)
        res = sps.bootstrap((d[spread],), np.mean, axis=-1, n_resamples=RESAMPLES, confidence_level=CONFIDENCE,
                            method="BCa", batch=BATCH, rng=np.random.default_rng(SEED))
        ci = res.confidence_interval
        if not (np.all(np.isfinite(ci.low)) and np.all(np.isfinite(ci.high))):
            pct = sps.bootstrap((d[spread],), np.mean, axis=-1, n_resamples=0, confidence_level=CONFIDENCE,
                                method="percentile", bootstrap_result=res,
                                rng=np.random.default_rng(SEED)).confidence_interval
    for j, i in enumerate(spread):
        if np.isfinite(ci.low[j]) and np.isfinite(ci.high[j]):
            out[i] = ([float(ci.low[j]), float(ci.high[j])], "BCa")
        else:
            out[i] = ([float(pct.low[j]), float(pct.high[j])], "percentile")
    return out


def permutation_ps(d: np.ndarray) -> np.ndarray:
    """Two-sided p per row (metric) of the paired permutation test of the mean difference. One
    sample of differences: scipy flips each one's sign, which is swapping the pair's two results."""
    res = sps.permutation_test((d,), np.mean, permutation_type="samples", vectorized=True, axis=-1,
                               n_resamples=PERMUTATIONS, batch=BATCH, alternative="two-sided",
                               rng=np.random.default_rng(SEED))
    return np.minimum(1.0, np.atleast_1d(res.pvalue))


class Paired:
    """Aligned per-pair ranks of the methods compared (name -> array over the same pairs in
    the same order). The differences of a (method, reference) are computed once, for all
    `metrics` together."""

    def __init__(self, ranks: dict[str, np.ndarray], metrics=METRICS):
        self.ranks = ranks
        self.metrics = tuple(dict.fromkeys((*METRICS, *metrics)))
        self._done: dict[tuple[str, str], dict[str, dict]] = {}

    @property
    def pairs(self) -> int:
        return len(next(iter(self.ranks.values()))) if self.ranks else 0

    def difference(self, method: str, reference: str, metric: str) -> dict:
        key = (method, reference)
        if key not in self._done:
            self._done[key] = paired_differences(self.ranks[method], self.ranks[reference], self.metrics)
        return self._done[key][metric]

    def compare(self, method: str, reference: str, metrics=METRICS) -> dict:
        """One comparison block: {"reference", "pairs", metric: paired_difference, ...}."""
        block: dict = {"reference": reference, "pairs": self.pairs}
        for m in metrics:
            block[m] = self.difference(method, reference, m)
        if self.pairs < MIN_PAIRS:
            block["note"] = TOO_FEW
        return block

    def comparisons(self, by: str = "ndcg@10") -> dict[str, dict]:
        """Per method: "backbone", against its reference_of (None for the backbone itself or
        when the run lacks it), and "best_other", against the other method with the highest
        mean `by` (ties: the first in order; one reference for both metrics, so the two
        differences read side by side)."""
        means = {m: float(np.mean(metric_values(r, by))) if len(r) else 0.0 for m, r in self.ranks.items()}
        out: dict[str, dict] = {}
        for name in self.ranks:
            ref = reference_of(name)
            others = [m for m in self.ranks if m != name]
            best = max(others, key=lambda m: means[m]) if others else None
            out[name] = {
                "backbone": self.compare(name, ref) if ref != name and ref in self.ranks else None,
                "best_other": self.compare(name, best) if best is not None else None,
            }
        return out

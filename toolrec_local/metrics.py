"""Recall@N and NDCG@N for one held-out item per user, under full ranking.

Below both `recsys` (validation during training) and `eval` (the runner, the summary), so
neither imports the other for them.

A method either scores every item (a rank is computed over the whole catalogue, the user's
history excluded) or returns a ranked list (the rank is the target's position in it, or
"not ranked" = infinity). With one relevant item, Recall@N is 1 if rank < N and
NDCG@N = 1 / log2(rank + 2) if rank < N (IDCG = 1).
"""

from __future__ import annotations

import numpy as np

MISSING = np.inf  # the rank of a target the method did not list


def mask_history(scores: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
    """Set the padding column 0 and each user's history items to -inf (in a copy)."""
    out = np.array(scores, dtype=np.float64, copy=True)
    out[:, 0] = -np.inf
    if histories:
        rows = np.concatenate([np.full(len(h), i) for i, h in enumerate(histories)]).astype(np.int64)
        cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
        out[rows, cols] = -np.inf
    return out


def ranks_from_scores(scores: np.ndarray, targets: np.ndarray, histories: list[np.ndarray] | None = None) -> np.ndarray:
    """0-based rank of each target among all items not in the user's history.

    scores: (users, n_items + 1), column 0 = padding. Ties are counted against the target
    (pessimistic), so a model that scores everything alike gets no credit for luck.
    """
    scores = np.asarray(scores)
    targets = np.asarray(targets, dtype=np.int64)
    if histories is not None:
        scores = mask_history(scores, histories)
    else:
        scores = np.array(scores, dtype=np.float64, copy=True)
        scores[:, 0] = -np.inf
    t = scores[np.arange(len(targets)), targets][:, None]
    greater = (scores > t).sum(axis=1)
    ties = (scores == t).sum(axis=1) - 1
    return (greater + ties).astype(np.float64)


def rank_in_list(ranked: list, target) -> float:
    """Position of `target` in a ranked list, or MISSING."""
    for pos, item in enumerate(ranked):
        if item == target:
            return float(pos)
    return MISSING


def recall_at(ranks: np.ndarray, n: int) -> np.ndarray:
    return (np.asarray(ranks, dtype=np.float64) < n).astype(np.float64)


def ndcg_at(ranks: np.ndarray, n: int) -> np.ndarray:
    r = np.asarray(ranks, dtype=np.float64)
    hit = r < n
    out = np.zeros_like(r)
    out[hit] = 1.0 / np.log2(r[hit] + 2.0)
    return out


def metric_means(ranks: np.ndarray, ns: tuple[int, ...] = (5, 10, 20)) -> dict[str, float]:
    """{"recall@5": …, "ndcg@5": …, "recall@10": …} averaged over users."""
    out: dict[str, float] = {}
    for n in ns:
        out[f"recall@{n}"] = float(recall_at(ranks, n).mean()) if len(ranks) else 0.0
        out[f"ndcg@{n}"] = float(ndcg_at(ranks, n).mean()) if len(ranks) else 0.0
    return out


def mean_std(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and (population) standard deviation over seeds, per metric."""
    keys = per_seed[0].keys() if per_seed else []
    return {
        k: {"mean": float(np.mean([d[k] for d in per_seed])), "std": float(np.std([d[k] for d in per_seed]))}
        for k in keys
    }


def top_n_from_scores(scores: np.ndarray, n: int) -> list[list[int]]:
    """The n best items per row, best first, skipping -inf (padding, history). Ties are broken
    by the lower item id, so the list is deterministic."""
    scores = np.asarray(scores, dtype=np.float64)
    n = min(n, scores.shape[1])
    out: list[list[int]] = []
    for row in scores:
        # sort by score descending, then item id ascending (lexsort: last key is primary)
        cand = np.argpartition(-row, n - 1)[:n] if n < len(row) else np.arange(len(row))
        threshold = row[cand].min()
        pool = np.flatnonzero(row >= threshold)
        order = pool[np.lexsort((pool, -row[pool]))][:n]
        out.append([int(i) for i in order if np.isfinite(row[i])])
    return out


def relative_improvement(value: float, reference: float) -> float | None:
    """(value - reference) / reference, as Table 2's "Improvement" row; None when reference is 0."""
    if reference == 0:
        return None
    return (value - reference) / reference

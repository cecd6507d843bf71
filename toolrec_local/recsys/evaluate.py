"""Rank metrics of the retrieval tools on their own (no LLM): most-popular, the backbones, and
each attribute tool, all under full ranking with the user's history excluded."""

from __future__ import annotations

import numpy as np

from toolrec_local.data.dataset import Dataset
from toolrec_local.errors import ToolrecError
from toolrec_local.metrics import metric_means, ranks_from_scores

METHOD_HELP = "pop, sasrec, bert4rec, sasrec-bert, bert4rec-bert, tool:<attribute> (SASRec backbone), tool-b:<attribute> (BERT4Rec backbone)"


def method_scores(ds: Dataset, method: str, users: np.ndarray, part: str) -> np.ndarray:
    """(len(users), n_items + 1) scores of one method; history and padding -inf."""
    from toolrec_local.recsys.models import histories
    from toolrec_local.recsys.attributes.retrieval import RetrievalTool
    from toolrec_local.metrics import mask_history

    if method == "pop":
        pop = ds.train_popularity.astype(np.float32)
        return mask_history(np.broadcast_to(pop, (len(users), len(pop))), histories(ds, users, part))
    from toolrec_local.recsys.config import BACKBONES

    if method in BACKBONES:
        return RetrievalTool.load(ds, method, attributes=[]).scores(users, None, part)
    prefix, _, attribute = method.partition(":")
    if prefix in ("tool", "tool-b") and attribute:
        backbone = "sasrec" if prefix == "tool" else "bert4rec"
        return RetrievalTool.load(ds, backbone, attributes=[attribute]).scores(users, attribute, part)
    raise ToolrecError(f"unknown method {method!r}", f"use one of: {METHOD_HELP}")


def evaluate_tools(ds: Dataset, methods: list[str], users: np.ndarray | None = None, part: str = "test",
                   ns: tuple[int, ...] = (5, 10, 20), batch: int = 1024) -> dict:
    """{"users": n, "part": part, "methods": {method: {"recall@10": …, "ndcg@10": …, …}}}.
    users None = every evaluation user."""
    users = ds.eval_users if users is None else np.asarray(users, dtype=np.int64)
    targets = np.array([ds.split(int(u), part)[1] for u in users], dtype=np.int64)
    out: dict = {"dataset": ds.name, "part": part, "users": int(len(users)), "methods": {}}
    for method in methods:
        ranks = np.concatenate([
            ranks_from_scores(method_scores(ds, method, users[s:s + batch], part), targets[s:s + batch])
            for s in range(0, len(users), batch)
        ]) if len(users) else np.empty(0)
        out["methods"][method] = metric_means(ranks, ns)
    return out

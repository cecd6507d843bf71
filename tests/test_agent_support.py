"""Helpers for the agent tests (no tests here): a real, fast retrieval tool, and a backend
that ignores constraints. The loop tests replay turns with `ScriptedBackend` (llm/backends),
which checks every scripted reply against the call's constraint."""

from __future__ import annotations

import numpy as np

from toolrec_local.llm.backends.scripted import ScriptedBackend
from toolrec_local.llm.protocol import Completion


class CooccurrenceRetrieval:
    """Item-to-item co-occurrence over the training sequences: a user's score for item j is the
    number of training users who had both j and one of the user's last `window` items, plus a
    popularity prior; an attribute boosts items sharing that attribute's values with the
    user's history. Satisfies the RetrievalTool duck type (attributes, retrieve, scores)."""

    def __init__(self, ds, window: int = 5):
        self.ds, self.window = ds, window
        self.attributes = list(ds.attributes)
        n = ds.n_items + 1
        self.co = np.zeros((n, n), dtype=np.float32)
        for u in range(ds.n_users):
            items = np.unique(ds.train_sequence(u))
            self.co[np.ix_(items, items)] += 1.0
        np.fill_diagonal(self.co, 0.0)
        pop = ds.train_popularity.astype(np.float32)
        self.prior = pop / max(1.0, pop.max())

    def scores(self, users, attribute, part="test") -> np.ndarray:
        return np.stack([self._score(int(u), attribute, part) for u in users])

    def _score(self, user: int, attribute, part: str, exclude_history: bool = True) -> np.ndarray:
        history, _ = self.ds.split(user, part)
        recent = np.asarray(history[-self.window:], dtype=np.int64)
        s = self.co[recent].sum(axis=0)
        s = s / max(1.0, float(s.max())) + 0.1 * self.prior
        if attribute is not None:
            attr = self.ds.attribute(attribute)
            liked = np.zeros(len(attr.vocab), dtype=np.float32)
            for i in recent:
                liked[attr.value_ids(int(i))] += 1.0
            liked /= max(1.0, float(liked.max()))
            boost = np.array([liked[attr.value_ids(i)].max() if attr.indptr[i + 1] > attr.indptr[i] else 0.0
                              for i in range(self.ds.n_items + 1)], dtype=np.float32)
            s = s + 0.5 * boost
        s[0] = -np.inf
        if exclude_history:
            s[np.asarray(history, dtype=np.int64)] = -np.inf
        return s

    def retrieve(self, user: int, attribute, k: int, exclude=(), part="test",
                 exclude_history: bool = True) -> list[tuple[int, float]]:
        s = self._score(user, attribute, part, exclude_history)
        if len(exclude):
            s[np.asarray(list(exclude), dtype=np.int64)] = -np.inf
        top = np.argsort(-s, kind="stable")[:k]
        return [(int(i), float(s[i])) for i in top if np.isfinite(s[i])]


class ConstraintIgnoringBackend(ScriptedBackend):
    """Replays turns without checking them against the constraint: a backend that silently
    drops the grammar (as a server ignoring an unknown request field would). The agent must
    notice and count every such reply as a grammar violation."""

    async def generate(self, messages, constraint, *, max_tokens=256, temperature=0.0, seed=None) -> Completion:
        return await super().generate(messages, None, max_tokens=max_tokens, temperature=temperature, seed=seed)

"""Helpers for the agent tests (no tests here): a real, fast retrieval tool and a backend
that replays given turns. Both are genuine implementations of the interfaces the agent uses,
so the loop under test runs exactly as it does with the trained tools and a served model."""

from __future__ import annotations

import numpy as np

from toolrec_local.llm.grammar import conforms
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

    def _score(self, user: int, attribute, part: str) -> np.ndarray:
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
        s[np.asarray(history, dtype=np.int64)] = -np.inf
        return s

    def retrieve(self, user: int, attribute, k: int, exclude=(), part="test") -> list[tuple[int, float]]:
        s = self._score(user, attribute, part)
        if len(exclude):
            s[np.asarray(list(exclude), dtype=np.int64)] = -np.inf
        top = np.argsort(-s, kind="stable")[:k]
        return [(int(i), float(s[i])) for i in top if np.isfinite(s[i])]


class ReplayBackend:
    """Replays `turns` in order, one per call. With `check=True` every turn must be in the
    language of the call's constraint (as a grammar-constrained model's output always is);
    calls are recorded for assertions."""

    name = "replay"

    def __init__(self, turns, check: bool = True):
        self.turns = list(turns)
        self.check = check
        self.calls: list[tuple[list[dict], object]] = []

    async def generate(self, messages, constraint, *, max_tokens=256, temperature=0.0, seed=None) -> Completion:
        if not self.turns:
            raise AssertionError("the loop asked for more turns than the script has")
        turn = self.turns.pop(0)
        text = turn(messages, constraint) if callable(turn) else turn
        if self.check and constraint is not None and not conforms(constraint, text):
            raise AssertionError(f"scripted turn is outside the constraint: {text!r}")
        self.calls.append((messages, constraint))
        words_in = sum(len(m["content"].split()) for m in messages)
        return Completion(text=text, tokens_in=words_in, tokens_out=len(text.split()), latency_s=0.0)

    async def aclose(self) -> None:
        pass

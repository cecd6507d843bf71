"""Helpers for the eval tests: a small dataset whose next item follows a rule, retrieval tools
that know (or half know) the rule, and scripted LLM methods.

The walk dataset: user u visits items s, s+1, ..., s+L-1 (mod n_items), so the test target is
the successor of the last history item and never in the history itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from conftest import synthetic_rule_dataset
from toolrec_local.eval.methods import LLMMethod, Outcome

N_ITEMS = 60


def scripted_agent(turns: list[str]):
    """A ScriptedBackend reply function: the agent's `turns` by round (counted from the
    assistant turns so far, the last one repeated), and for any item list (Rank, the final
    ranking) the first k options."""
    from toolrec_local.llm.protocol import ActionGrammar, ItemListGrammar

    def reply(messages, constraint):
        if isinstance(constraint, ItemListGrammar):
            return "\n".join(constraint.options[: constraint.k])
        assert isinstance(constraint, ActionGrammar)
        done = sum(1 for m in messages if m["role"] == "assistant")
        return turns[min(done, len(turns) - 1)]

    return reply


def walk_dataset(folder: Path, name: str = "walk", n_users: int = 300, length: int = 12, seed: int = 0) -> Path:
    """Users walk the catalogue one item at a time: next item = item + 1 (mod N_ITEMS)."""
    return synthetic_rule_dataset(folder, name, n_users, N_ITEMS, length, seed, step=lambda item, n: (item + 1) % n)


def prepare_walk(home: Path, name: str = "walk", n_users: int = 300):
    from toolrec_local.data import prepare

    src = walk_dataset(home / "raw" / name, name, n_users=n_users)
    return prepare(name, source=src, attributes=["genre", "release_year"])


def successor(ds, item: int) -> int:
    k = int(ds.item_ids[item][1:])
    return ds.item_index[f"i{(k + 1) % N_ITEMS}"]


class RuleTool:
    """Scores like a trained tool would, from the rule: `sasrec` puts the successor first,
    `bert4rec` puts it fourth, an attribute tool puts it first among items of the last item's
    genre/year bucket only when that bucket is the successor's (so it is right ~1/4 of the time)."""

    def __init__(self, ds, backbone: str = "sasrec"):
        self.ds = self.dataset = ds
        self.backbone = backbone
        self.attributes = ["genre", "release_year"]
        self.calls = 0

    def scores(self, users, attribute, part="test", exclude_history=True):
        self.calls += 1
        ds = self.ds
        out = np.zeros((len(users), ds.n_items + 1))
        for row, u in enumerate(users):
            rng = np.random.default_rng(int(u))
            out[row] = rng.random(ds.n_items + 1)
            history, _ = ds.split(int(u), part)
            nxt = successor(ds, int(history[-1]))
            if attribute is None:
                out[row, nxt] = 10.0
                if self.backbone == "bert4rec":
                    beaters = [i for i in range(1, ds.n_items + 1) if i != nxt and i not in set(history.tolist())][:3]
                    out[row, beaters] = 20.0
            else:
                attr = ds.attributes[attribute]
                last = set(attr.of(int(history[-1])))
                same = [i for i in range(1, ds.n_items + 1) if set(attr.of(i)) & last]
                out[row, same] += 5.0
                out[row, nxt] += 1.0
            out[row, 0] = -np.inf
            if exclude_history:
                out[row, history] = -np.inf
        return out

    def retrieve(self, user, attribute, k, exclude=(), part="test", exclude_history=True):
        row = self.scores([user], attribute, part, exclude_history)[0]
        order = [int(i) for i in np.argsort(-row, kind="stable") if np.isfinite(row[i]) and i not in set(exclude)]
        return [(i, float(row[i])) for i in order[:k]]


def rule_loader(ds, backbone="sasrec"):
    return RuleTool(ds, backbone)


class ScriptedSuite:
    """LLM methods without an LLM: each returns a list built from the rule, after an optional
    delay, failing for users in `fail_users` (raw ids). Records the peak of users in flight."""

    def __init__(self, names, ds, *, delay: float = 0.0, fail_users=(), fail_all: bool = False, rounds: int = 3):
        self.ds = ds
        self.delay = delay
        self.fail_users = set(fail_users)
        self.fail_all = fail_all
        self.rounds = rounds
        self.in_flight = 0
        self.peak = 0
        self.closed = False
        self.calls = []
        self.methods = {n: LLMMethod(n, self._make(n)) for n in names}

    def _make(self, name):
        async def run(user, seed, part):
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            self.calls.append((name, seed, user))
            try:
                if self.delay:
                    await asyncio.sleep(self.delay)
                raw = self.ds.user_ids[user]
                if self.fail_all or raw in self.fail_users:
                    raise ConnectionError("server down")
                history, _ = self.ds.split(user, part)
                nxt = successor(self.ds, int(history[-1]))
                # users with an even index get the target at position 2, others do not get it
                others = [i for i in range(1, self.ds.n_items + 1) if i != nxt and i not in set(history.tolist())]
                final = others[:2] + [nxt] + others[2:9] if user % 2 == 0 else others[:10]
                r = 1 + user % self.rounds
                stats = {"llm_calls": r, "tokens_in": 100 * r, "tokens_out": 10 * r, "latency_s": 0.01 * r,
                         "retries": 0, "repairs": 1 if user % 5 == 0 else 0, "grammar_violations": 0, "rounds": r}
                return Outcome(final=final, stats=stats, trajectory={"user": raw, "rounds": [{"action": "Finish"}] * r})
            finally:
                self.in_flight -= 1

        return run

    async def aclose(self):
        self.closed = True

"""The processed dataset: catalogue, attributes, user sequences and the leave-one-out split.

Internal ids: items are 1..n_items (0 is padding, as the sequence models need it), users
0..n_users-1. The dataset's own ids (strings) are kept in `item_ids` / `user_ids`.
Sequences are stored CSR-style (one flat array + offsets) and saved as plain .npy files,
memory-mapped on reload, so ML-1M-sized data reloads in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from toolrec_local.errors import DataError, ToolrecError

FORMAT_VERSION = 1


@dataclass
class Attribute:
    """One item attribute as a CSR table: item i has values vocab[values[indptr[i]:indptr[i+1]]].
    vocab[0] is the padding value and is never assigned to an item."""

    name: str
    kind: str  # "multi" (several values per item), "single", or "bucket" (a bucketised number)
    vocab: list[str]
    indptr: np.ndarray  # int64, n_items + 1 (+1 for padding row 0)
    values: np.ndarray  # int32 indices into vocab

    def of(self, item: int) -> list[str]:
        return [self.vocab[v] for v in self.values[self.indptr[item] : self.indptr[item + 1]]]

    def value_ids(self, item: int) -> np.ndarray:
        return self.values[self.indptr[item] : self.indptr[item + 1]]


@dataclass
class Dataset:
    name: str
    domain: str  # "movies", "books" or "businesses": picks the prompt file
    item_ids: list[str]  # index 0 = padding
    item_names: list[str]
    item_years: list[str]  # "" where unknown
    user_ids: list[str]
    attributes: dict[str, Attribute]
    seq_indptr: np.ndarray  # int64, n_users + 1
    seq_items: np.ndarray  # int32, chronological per user (ties broken by file order)
    seq_times: np.ndarray  # float64
    seq_ratings: np.ndarray  # float32, NaN where the dataset has no rating
    profile: dict[str, list[str]] = field(default_factory=dict)  # field -> value per user
    meta: dict = field(default_factory=dict)  # source, filtering, raw counts

    # ---- sizes -------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_interactions(self) -> int:
        return int(self.seq_items.shape[0])

    @property
    def density(self) -> float:
        return self.n_interactions / max(1, self.n_users * self.n_items)

    # ---- lookups -----------------------------------------------------------
    @cached_property
    def item_index(self) -> dict[str, int]:
        return {raw: i for i, raw in enumerate(self.item_ids) if i > 0}

    @cached_property
    def user_index(self) -> dict[str, int]:
        return {raw: u for u, raw in enumerate(self.user_ids)}

    def user(self, raw_id: str) -> int:
        try:
            return self.user_index[str(raw_id)]
        except KeyError:
            raise ToolrecError(
                f"user {raw_id!r} is not in dataset {self.name!r}",
                f"use one of its {self.n_users} user ids, e.g. {self.user_ids[0]!r}",
            ) from None

    def item(self, raw_id: str) -> int:
        try:
            return self.item_index[str(raw_id)]
        except KeyError:
            raise ToolrecError(f"item {raw_id!r} is not in dataset {self.name!r}", "") from None

    def attribute(self, name: str) -> Attribute:
        try:
            return self.attributes[name]
        except KeyError:
            known = ", ".join(self.attributes) or "none"
            raise ToolrecError(
                f"dataset {self.name!r} has no attribute {name!r}",
                f"use one of: {known}",
            ) from None

    def sequence(self, user: int) -> np.ndarray:
        return self.seq_items[self.seq_indptr[user] : self.seq_indptr[user + 1]]

    def ratings(self, user: int) -> np.ndarray:
        return self.seq_ratings[self.seq_indptr[user] : self.seq_indptr[user + 1]]

    @cached_property
    def seq_lengths(self) -> np.ndarray:
        return np.diff(self.seq_indptr)

    # ---- leave-one-out split ---------------------------------------------
    def split(self, user: int, part: str) -> tuple[np.ndarray, int]:
        """(history, target) for `part` in {"test", "valid"}: test predicts the last item from
        all before it; valid predicts the second last from all before it. The training part of
        a sequence is everything before the validation item (see `train_sequence`)."""
        seq = self.sequence(user)
        if len(seq) < 3:
            raise ToolrecError(f"user {self.user_ids[user]!r} has {len(seq)} interactions", "leave-one-out needs at least 3")
        if part == "test":
            return seq[:-1], int(seq[-1])
        if part == "valid":
            return seq[:-2], int(seq[-2])
        raise ValueError(f"unknown split part {part!r}")

    def train_sequence(self, user: int) -> np.ndarray:
        return self.sequence(user)[:-2]

    @cached_property
    def eval_users(self) -> np.ndarray:
        """Users with at least 3 interactions (train, valid, test each non-empty)."""
        return np.flatnonzero(self.seq_lengths >= 3)

    def sample_users(self, n: int, seed: int) -> np.ndarray:
        """`n` evaluation users drawn without replacement with `seed` (sorted). The same
        (dataset, n, seed) always gives the same users."""
        pool = self.eval_users
        if n >= len(pool):
            return pool.copy()
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(pool, size=n, replace=False))

    # ---- item popularity ---------------------------------------------------
    @cached_property
    def train_popularity(self) -> np.ndarray:
        """Interaction counts per item over the training parts (index 0 = padding, 0)."""
        counts = np.zeros(self.n_items + 1, dtype=np.int64)
        lengths = self.seq_lengths
        # mask out the last two interactions of each user (valid and test)
        keep = np.ones(self.n_interactions, dtype=bool)
        ends = self.seq_indptr[1:]
        for back in (1, 2):
            idx = ends - back
            ok = lengths >= back
            keep[idx[ok]] = False
        np.add.at(counts, self.seq_items[keep], 1)
        return counts

    # ---- identity ----------------------------------------------------------
    @cached_property
    def fingerprint(self) -> str:
        """A hash of what a model trained on this data depends on: items, users, sequences."""
        h = hashlib.sha256()
        h.update(self.name.encode())
        h.update("\x1f".join(self.item_ids).encode())
        h.update("\x1f".join(self.user_ids).encode())
        h.update(np.ascontiguousarray(self.seq_indptr).tobytes())
        h.update(np.ascontiguousarray(self.seq_items).tobytes())
        return h.hexdigest()[:16]

    def info(self) -> dict:
        return {
            "dataset": self.name,
            "domain": self.domain,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "attributes": list(self.attributes),
            "density": round(self.density, 6),
            "eval_users": int(len(self.eval_users)),
            "profile_fields": list(self.profile),
            "fingerprint": self.fingerprint,
            **{k: v for k, v in self.meta.items() if k in ("raw", "min_interactions", "source")},
        }

    # ---- persistence -------------------------------------------------------
    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {
            "seq_indptr": self.seq_indptr.astype(np.int64),
            "seq_items": self.seq_items.astype(np.int32),
            "seq_times": self.seq_times.astype(np.float64),
            "seq_ratings": self.seq_ratings.astype(np.float32),
        }
        for name, attr in self.attributes.items():
            arrays[f"attr.{name}.indptr"] = attr.indptr.astype(np.int64)
            arrays[f"attr.{name}.values"] = attr.values.astype(np.int32)
        for key, arr in arrays.items():
            np.save(folder / f"{key}.npy", arr, allow_pickle=False)
        meta = {
            "format": FORMAT_VERSION,
            "name": self.name,
            "domain": self.domain,
            "item_ids": self.item_ids,
            "item_names": self.item_names,
            "item_years": self.item_years,
            "user_ids": self.user_ids,
            "profile": self.profile,
            "attributes": {n: {"kind": a.kind, "vocab": a.vocab} for n, a in self.attributes.items()},
            "meta": self.meta,
            "fingerprint": self.fingerprint,
        }
        with open(folder / "dataset.json", "w", encoding="utf-8") as fh:
            json.dump(meta, fh, ensure_ascii=False)

    @classmethod
    def load(cls, folder: Path) -> "Dataset":
        folder = Path(folder)
        meta_path = folder / "dataset.json"
        if not meta_path.is_file():
            raise DataError(
                f"dataset folder {folder} has no dataset.json",
                f"run: toolrec-local data prepare {folder.name}",
            )
        try:
            with open(meta_path, encoding="utf-8") as fh:
                meta = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{meta_path}: corrupted ({exc})", f"run: toolrec-local data prepare {folder.name}") from None
        if meta.get("format") != FORMAT_VERSION:
            raise DataError(f"{meta_path}: written by another version", f"run: toolrec-local data prepare {folder.name}")

        def arr(key: str) -> np.ndarray:
            path = folder / f"{key}.npy"
            try:
                return np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty file
                raise DataError(f"{path}: unreadable ({exc})", f"run: toolrec-local data prepare {folder.name}") from None

        attributes = {
            n: Attribute(n, a["kind"], a["vocab"], arr(f"attr.{n}.indptr"), arr(f"attr.{n}.values"))
            for n, a in meta["attributes"].items()
        }
        ds = cls(
            name=meta["name"], domain=meta["domain"], item_ids=meta["item_ids"],
            item_names=meta["item_names"], item_years=meta["item_years"], user_ids=meta["user_ids"],
            attributes=attributes, seq_indptr=arr("seq_indptr"), seq_items=arr("seq_items"),
            seq_times=arr("seq_times"), seq_ratings=arr("seq_ratings"), profile=meta["profile"],
            meta=meta["meta"],
        )
        if int(ds.seq_indptr[-1]) != ds.seq_items.shape[0] or len(ds.seq_indptr) != ds.n_users + 1:
            raise DataError(f"{folder}: arrays do not match dataset.json", f"run: toolrec-local data prepare {folder.name}")
        return ds

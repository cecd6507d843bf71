"""An ML-1M-sized synthetic dataset (6,040 users, 3,700 items, ~1M interactions) for timing
and memory checks, since ML-1M itself cannot be downloaded here. Sequences mix popularity
with a local rule (the next item is often close to the previous one), so a model has
something to learn and training behaves like on real data, not like on noise."""

from __future__ import annotations

import numpy as np

from toolrec_local.data.dataset import Attribute, Dataset

GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def synthetic_ml1m(n_users: int = 6040, n_items: int = 3700, n_interactions: int = 1_000_000,
                   seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(mean=0.0, sigma=1.0, size=n_users)
    lengths = np.maximum(20, np.round(raw / raw.sum() * n_interactions)).astype(np.int64)
    lengths[np.argmax(lengths)] -= lengths.sum() - n_interactions  # exact total
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    pop /= pop.sum()
    seqs = []
    for n in lengths:
        jumps = rng.random(n) < 0.5
        base = rng.choice(n_items, size=n, p=pop)
        step = rng.integers(1, 4, size=n)
        seq = np.empty(n, dtype=np.int64)
        seq[0] = base[0]
        for t in range(1, n):  # half the time the next item is 1-3 ids after the previous one
            seq[t] = (seq[t - 1] + step[t]) % n_items if jumps[t] else base[t]
        seqs.append(seq + 1)
    items = np.concatenate(seqs).astype(np.int32)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.arange(n_items + 1)
    genre_count = 1 + (ids % 3 == 0)
    genre_indptr = np.concatenate([[0, 0], np.cumsum(genre_count[1:])]).astype(np.int64)
    genre_values = np.concatenate([[1 + i % 18, 1 + (i * 7) % 18][:c] for i, c in zip(ids[1:], genre_count[1:])])
    years = [str(1919 + y) for y in range(82)]
    return Dataset(
        name="synthetic-ml1m", domain="movies",
        item_ids=["[PAD]"] + [str(i) for i in range(1, n_items + 1)],
        item_names=["[PAD]"] + [f"Movie {i}" for i in range(1, n_items + 1)],
        item_years=[""] + [years[i % 82] for i in range(1, n_items + 1)],
        user_ids=[str(u + 1) for u in range(n_users)],
        attributes={
            "genre": Attribute("genre", "multi", ["[PAD]"] + GENRES, genre_indptr, genre_values.astype(np.int32)),
            "release_year": Attribute("release_year", "single", ["[PAD]"] + years,
                                      np.concatenate([[0], np.arange(n_items + 1)]).astype(np.int64),
                                      np.array([1 + i % 82 for i in range(1, n_items + 1)], dtype=np.int32)),
        },
        seq_indptr=indptr, seq_items=items, seq_times=np.arange(len(items), dtype=np.float64),
        seq_ratings=np.full(len(items), np.nan, dtype=np.float32),
    )

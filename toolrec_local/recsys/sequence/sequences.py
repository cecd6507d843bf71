"""Turning item sequences into padded batches: right-aligned, padding 0 on the left, so the
last position always holds the most recent item whatever the batch's length."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def left_pad(seqs: Sequence[np.ndarray], length: int | None = None) -> np.ndarray:
    """(B, length) int64; longer sequences keep their last `length` items."""
    if length is None:
        length = max((len(s) for s in seqs), default=1) or 1
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for row, s in enumerate(seqs):
        s = s[-length:]
        if len(s):
            out[row, length - len(s):] = s
    return out


def training_windows(seqs: Sequence[np.ndarray], window: int, rng: np.random.Generator,
                     cover: bool = False) -> list[np.ndarray]:
    """One window of at most `window` items per sequence. A sequence longer than that gives a
    window at a random place each epoch, so long histories are used whole over the epochs
    instead of only their tail. With `cover`, a longer sequence gives consecutive windows from
    its end back, each sharing one item with the next, so every item after the first is a
    target exactly once."""
    out = []
    for s in seqs:
        if cover and len(s) > window:
            ends = range(len(s), 1, -(window - 1))
            out.extend(s[max(0, e - window):e] for e in ends)
            continue
        if len(s) > window:
            start = int(rng.integers(0, len(s) - window + 1))
            s = s[start:start + window]
        out.append(s)
    return out


def length_batches(windows: list[np.ndarray], batch_size: int, rng: np.random.Generator) -> Iterator[list[int]]:
    """Indices of `windows` in batches of similar length (shuffled pools sorted by length),
    so a batch is padded only to its own longest window: on ML-1M-like data this halves the
    work compared to padding everything to the maximum length."""
    order = rng.permutation(len(windows))
    pool = batch_size * 32
    batches = []
    for p in range(0, len(order), pool):
        chunk = order[p:p + pool]
        chunk = chunk[np.argsort([len(windows[i]) for i in chunk], kind="stable")]
        batches.extend(chunk[b:b + batch_size].tolist() for b in range(0, len(chunk), batch_size))
    for b in rng.permutation(len(batches)):
        yield batches[b]

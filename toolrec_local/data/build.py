"""Turn raw tables (from any loader) into a `Dataset`: k-core filtering, chronological order
with stable ties, item catalogue, attribute tables."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from toolrec_local.data.dataset import Attribute, Dataset
from toolrec_local.errors import DataError


@dataclass
class RawData:
    """What every loader produces.

    inter: columns user, item (str), time (float), rating (float, NaN if none); file order kept.
    items: indexed by item id (str); column `name`, column `year` (str, "" if unknown), and one
           column per attribute holding a list of str values per item.
    users: indexed by user id (str); one str column per profile field (may be empty).
    attribute_kinds: attribute -> "multi" | "single" | "bucket".
    """

    inter: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    attribute_kinds: dict[str, str]
    domain: str
    source: str
    warnings: list[str] = field(default_factory=list)


def k_core(inter: pd.DataFrame, k: int) -> pd.DataFrame:
    """Repeatedly drop users and items with fewer than k interactions until none is left."""
    if k <= 1:
        return inter
    while True:
        ucount = inter.groupby("user")["item"].transform("size")
        icount = inter.groupby("item")["user"].transform("size")
        keep = (ucount >= k) & (icount >= k)
        if keep.all():
            return inter
        inter = inter[keep]


def build_dataset(name: str, raw: RawData, min_interactions: int = 0) -> Dataset:
    inter = raw.inter
    if len(inter) == 0:
        raise DataError(f"{raw.source}: no interactions", "the interaction file holds no rows")
    raw_counts = {
        "users": int(inter["user"].nunique()),
        "items": int(inter["item"].nunique()),
        "interactions": int(len(inter)),
    }
    inter = inter.assign(order=np.arange(len(inter), dtype=np.int64))
    inter = k_core(inter, min_interactions)
    if len(inter) == 0:
        raise DataError(
            f"{raw.source}: nothing is left after {min_interactions}-core filtering",
            "lower --min-interactions",
        )

    # Catalogue: items that occur in interactions, in order of first appearance in the raw
    # id sort (stable and independent of the interaction order).
    item_codes, item_uniques = pd.factorize(inter["item"], sort=True)
    user_codes, user_uniques = pd.factorize(inter["user"], sort=True)
    item_codes = item_codes.astype(np.int32) + 1  # 0 = padding
    user_codes = user_codes.astype(np.int64)

    times = inter["time"].to_numpy(dtype=np.float64)
    order = inter["order"].to_numpy()
    perm = np.lexsort((order, times, user_codes))  # by user, then time, then file order
    seq_items = item_codes[perm]
    counts = np.bincount(user_codes, minlength=len(user_uniques))
    seq_indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    ratings = inter["rating"].to_numpy(dtype=np.float32)[perm] if "rating" in inter else np.full(len(perm), np.nan, np.float32)

    item_ids = ["[PAD]"] + [str(x) for x in item_uniques]
    items = raw.items
    missing = [i for i in item_ids[1:] if i not in items.index]
    warnings = list(raw.warnings)
    if missing:
        warnings.append(f"{len(missing)} interacted items have no row in the item file (e.g. {missing[0]!r}); they get no name or attributes")
    items = items.reindex(item_ids[1:])
    names = items["name"].fillna("").astype(str).tolist() if "name" in items else [""] * len(missing)
    item_names = ["[PAD]"] + [n if n else f"item {iid}" for n, iid in zip(names, item_ids[1:])]
    years = items["year"].fillna("").astype(str).tolist() if "year" in items else [""] * (len(item_ids) - 1)
    item_years = [""] + years

    attributes = {}
    for attr, kind in raw.attribute_kinds.items():
        attributes[attr] = _attribute_table(attr, kind, items[attr].tolist())

    user_ids = [str(u) for u in user_uniques]
    profile: dict[str, list[str]] = {}
    if raw.users is not None and len(raw.users.columns):
        users = raw.users.reindex(user_ids)
        for col in users.columns:
            profile[col] = users[col].fillna("").astype(str).tolist()

    return Dataset(
        name=name, domain=raw.domain, item_ids=item_ids, item_names=item_names,
        item_years=item_years, user_ids=user_ids, attributes=attributes,
        seq_indptr=seq_indptr, seq_items=seq_items, seq_times=times[perm], seq_ratings=ratings,
        profile=profile,
        meta={"source": raw.source, "min_interactions": min_interactions, "raw": raw_counts, "warnings": warnings},
    )


def _attribute_table(name: str, kind: str, per_item: list) -> Attribute:
    vocab: dict[str, int] = {"[PAD]": 0}
    indptr = [0, 0]  # row 0 = padding item, no values
    values: list[int] = []
    for vals in per_item:
        if isinstance(vals, (list, tuple)):
            seen = []
            for v in vals:
                if v and v not in seen:
                    seen.append(v)
            for v in seen:
                values.append(vocab.setdefault(v, len(vocab)))
        indptr.append(len(values))
    return Attribute(
        name=name, kind=kind, vocab=list(vocab),
        indptr=np.asarray(indptr, dtype=np.int64), values=np.asarray(values, dtype=np.int32),
    )


def bucketise(values: pd.Series, n_buckets: int = 10, unit: str = "") -> pd.Series:
    """Quantile buckets for a numeric attribute (price, sales rank, stars), labelled by range,
    e.g. "12.99-19.95". Missing values stay missing (empty list)."""
    numeric = pd.to_numeric(values, errors="coerce")
    present = numeric.dropna()
    if present.nunique() <= n_buckets:
        labels = numeric.map(lambda x: [] if pd.isna(x) else [f"{unit}{x:g}"])
        return labels
    edges = np.unique(np.quantile(present.to_numpy(), np.linspace(0, 1, n_buckets + 1)))
    idx = np.clip(np.searchsorted(edges, numeric.fillna(edges[0]).to_numpy(), side="right") - 1, 0, len(edges) - 2)
    label = [f"{unit}{edges[i]:g}-{unit}{edges[i + 1]:g}" for i in range(len(edges) - 1)]
    return pd.Series(
        [[] if pd.isna(x) else [label[i]] for x, i in zip(numeric, idx)], index=values.index
    )

"""Datasets: prepare once from the raw files, then load (memory-mapped) everywhere else."""

from __future__ import annotations

from pathlib import Path

from toolrec_local import paths
from toolrec_local.data.build import build_dataset
from toolrec_local.data.dataset import Attribute, Dataset
from toolrec_local.data.sources import KNOWN, fetch_ml100k, is_ml1m_dat, load_atomic, load_ml1m_dat, spec_for
from toolrec_local.errors import DataError

__all__ = ["Attribute", "Dataset", "KNOWN", "prepare", "load_dataset", "prepared"]

_CACHE: dict[tuple[str, str], Dataset] = {}


def prepare(
    name: str,
    source: str | Path | None = None,
    attributes: list[str] | None = None,
    min_interactions: int | None = None,
) -> Dataset:
    """Read a dataset's raw files, filter, order, and save it under TOOLREC_HOME/datasets/NAME.
    The folder appears only once it is complete (written to a temporary folder, then renamed)."""
    src = Path(source).expanduser() if source else None
    spec = spec_for(name, attributes, src)
    if src is None:
        if name != "ml-100k":
            raise DataError(
                f"dataset {name!r} cannot be obtained automatically",
                f"download it and pass --source DIR (RecBole atomic files{' or ML-1M .dat files' if name == 'ml-1m' else ''})",
            )
        src = fetch_ml100k(paths.home() / "raw" / "ml-100k")
    raw = load_ml1m_dat(src, spec) if is_ml1m_dat(src) else load_atomic(src, spec)
    k = spec.min_interactions if min_interactions is None else min_interactions
    ds = build_dataset(name, raw, min_interactions=k)
    with paths.atomic_dir(paths.dataset_dir(name)) as tmp:
        ds.save(tmp)
    _CACHE.pop((str(paths.home()), name), None)
    return ds


def prepared(name: str) -> bool:
    return (paths.dataset_dir(name) / "dataset.json").is_file()


def load_dataset(name: str) -> Dataset:
    """The prepared dataset, loaded once per process."""
    key = (str(paths.home()), name)
    if key not in _CACHE:
        folder = paths.dataset_dir(name)
        if not folder.is_dir():
            hint = f"run: toolrec-local data prepare {name}" + ("" if name == "ml-100k" else " --source DIR")
            raise DataError(f"dataset {name!r} is not prepared (looked in {folder})", hint)
        _CACHE[key] = Dataset.load(folder)
    return _CACHE[key]

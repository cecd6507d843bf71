"""`toolrec-local train p5`: train the P5 generative recommender (see p5/model.py)."""

from __future__ import annotations

from typing import Optional

import typer

from toolrec_local.console import console, err_console, print_json


def p5_cmd(
    dataset: str = typer.Option(..., "--dataset", help="A prepared dataset (toolrec-local data list)."),
    index: str = typer.Option("sequential", "--index", help="Item ids: sequential (numbered in the order users first consumed them; shared prefixes = co-consumed) or random."),
    levels: int = typer.Option(2, "--levels", min=1, max=8, help="Tokens per item id."),
    max_history: int = typer.Option(20, "--max-history", min=1, help="Most recent items shown in the prompt."),
    d_model: int = typer.Option(128, "--d-model", min=8),
    d_ff: int = typer.Option(512, "--d-ff", min=8),
    layers: int = typer.Option(2, "--layers", min=1, help="Encoder layers (and as many decoder layers)."),
    heads: int = typer.Option(4, "--heads", min=1),
    dropout: float = typer.Option(0.1, "--dropout", min=0.0, max=0.9),
    epochs: int = typer.Option(60, "--epochs", min=1, help="Most epochs (early stopping on validation NDCG@10 may stop sooner)."),
    samples_per_user: int = typer.Option(10, "--samples-per-user", min=1, help="Training targets drawn per user and epoch."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    lr: float = typer.Option(1e-3, "--lr", min=0.0),
    patience: int = typer.Option(10, "--patience", min=1, help="Epochs without a better validation NDCG@10 before stopping."),
    beams: int = typer.Option(20, "--beams", min=1, help="Beam width of the constrained search (at least the list length)."),
    seed: int = typer.Option(0, "--seed"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch threads (default: torch's)."),
    device: str = typer.Option("auto", "--device", help="auto (a CUDA GPU when torch sees one, else cpu), cpu or cuda[:N]."),
    json_out: bool = typer.Option(False, "--json", help="Print the training record as JSON."),
):
    """Train P5 from scratch: a small T5 generating the next item's id; keeps the best validation NDCG@10."""
    import torch

    from toolrec_local.data import load_dataset
    from toolrec_local.recsys.p5.model import P5Config
    from toolrec_local.recsys.p5.train import P5Train, p5_dir, train_p5

    if threads:
        torch.set_num_threads(threads)
    ds = load_dataset(dataset)
    cfg = P5Config(n_items=ds.n_items, index=index, levels=levels, max_history=max_history, d_model=d_model,
                   d_ff=d_ff, layers=layers, heads=heads, dropout=dropout)
    train = P5Train(epochs=epochs, batch_size=batch_size, lr=lr, samples_per_user=samples_per_user,
                    patience=patience, beams=beams, seed=seed, device=device)
    _, meta = train_p5(ds, cfg, train, show=not json_out)
    m = meta["metrics"]
    if json_out:
        print_json({"p5": {"metrics": {k: v for k, v in m.items() if k != "history"}, "config": meta["config"],
                           "train": meta["train"]}})
        return
    console.print(f"p5 on {ds.name}: best epoch {m['best_epoch']} of {m['epochs_run']}, valid NDCG@10 "
                  f"{m['valid'].get('ndcg@10', 0):.4f}, Recall@10 {m['valid'].get('recall@10', 0):.4f}; "
                  f"{m['seconds']:.0f} s, {m['epoch_train_s']:.1f} s/epoch, peak memory {m['peak_rss_mb']:.0f} MiB")
    err_console.print(f"checkpoint in {p5_dir(ds.name)}")


def register(train_app: typer.Typer) -> None:
    train_app.command("p5")(p5_cmd)

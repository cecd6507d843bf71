"""Training: the backbone first (eq. 4, BPR by default), then, with the backbone frozen, one
attribute tool at a time. Both use the same loop: Adam, validation under full ranking after
each epoch (history excluded and kept, NDCG@10 / Recall@10 / MRR@10), early stopping on a
plateau (stopping.py), the best weights kept. On the GPU when there is one (recsys/device.py).
Seeded: the same seed, data and thread count give bitwise the same weights on CPU."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolrec_local.data.dataset import Dataset
from toolrec_local.metrics import metric_means, ranks_from_scores
from toolrec_local.recsys import checkpoint
from toolrec_local.recsys.attributes.attribute import AttributeEncoder
from toolrec_local.recsys.config import (BACKBONES, LOSSES, VALID_METRICS, BackboneConfig, ToolConfig, TrainConfig,
                                         as_dict, check_choice)
from toolrec_local.recsys.device import resolve_device
from toolrec_local.recsys.models import build_backbone, histories, score_histories
from toolrec_local.recsys.sequence.sequences import length_batches, training_windows
from toolrec_local.recsys.training.progress import EpochProgress
from toolrec_local.recsys.training.stopping import EarlyStopping, scaled_patience


def train_backbone(ds: Dataset, config: BackboneConfig, train: TrainConfig, show: bool = False,
                   save: bool = True) -> tuple[nn.Module, dict]:
    check_choice(config.model, BACKBONES, "backbone")
    check_choice(train.loss, LOSSES, "loss")
    from toolrec_local.recsys.sequence.text_items import with_text_features

    device = resolve_device(train.device)
    config, text = with_text_features(ds, config)  # (config, None) unless a *-bert backbone
    torch.manual_seed(train.seed)
    model = build_backbone(config, text).to(device)

    def loss_fn(inputs, targets, gen):
        return batch_loss(model.hidden_states(inputs), targets, model.items.weight, train, gen)

    result = fit(ds, model, model, loss_fn, lambda: validate(ds, model, None), train, f"{ds.name} {config.model}",
                 show, device)
    model.to("cpu").eval().requires_grad_(False)
    result["device"] = str(device)
    meta = {"kind": "backbone", "model": config.model, "dataset": ds.name, "fingerprint": ds.fingerprint,
            "config": as_dict(config), "train": as_dict(train), "metrics": result}
    if save:
        meta["weights_digest"] = checkpoint.save(checkpoint.backbone_dir(ds.name, config.model), model.state_dict(), meta)
    return model, meta


def train_tool(ds: Dataset, attribute: str, backbone: nn.Module, backbone_meta: dict, train: TrainConfig,
               layers: int = 1, heads: int = 2, dropout: float | None = None, word_vectors: str | None = None,
               fusion_init: str = "random", show: bool = False, save: bool = True) -> tuple[AttributeEncoder, dict]:
    """Train f_attr + Dense for `attribute` on top of the frozen `backbone`. Numeric attributes
    are embedded as numbers; text attributes with `word_vectors` (a GloVe text file or
    "glove-50d"), or with learned value embeddings when it is None or "none"."""
    from toolrec_local.recsys.attributes.attribute import FUSION_INITS, numeric_values
    from toolrec_local.recsys.attributes.word_vectors import value_vectors

    check_choice(train.loss, LOSSES, "loss")
    check_choice(fusion_init, FUSION_INITS, "fusion init")
    attr = ds.attribute(attribute)
    vectors = None
    if numeric_values(attr.vocab) is not None:
        encoding = "numeric"
    elif word_vectors in (None, "", "none", "learned"):
        encoding, word_vectors = "learned", None
    else:
        encoding, vectors = "words", value_vectors(attr.vocab, word_vectors)[0]
    bcfg = backbone.cfg
    cfg = ToolConfig(attribute=attribute, n_values=len(attr.vocab), hidden=bcfg.hidden, layers=layers, heads=heads,
                     dropout=bcfg.dropout if dropout is None else dropout,
                     word_dim=0 if vectors is None else int(vectors.shape[1]), encoding=encoding,
                     fusion_init=fusion_init)
    device = resolve_device(train.device)
    torch.manual_seed(train.seed)
    tool = AttributeEncoder(cfg, attr, bcfg.hidden, bcfg.max_len, backbone.causal, vectors).to(device)
    backbone.eval().requires_grad_(False)  # β stays fixed: no dropout, no gradients
    # On a GPU, a copy: the caller's backbone (e.g. a loaded RetrievalTool's) stays on the CPU.
    frozen = backbone if device.type == "cpu" else copy.deepcopy(backbone).to(device)
    weights = frozen.items.weight

    def loss_fn(inputs, targets, gen):
        with torch.no_grad():
            hidden = frozen.hidden_states(inputs)
        return batch_loss(tool(inputs, hidden), targets, weights, train, gen)

    result = fit(ds, frozen, tool, loss_fn, lambda: validate(ds, frozen, tool), train,
                 f"{ds.name} {bcfg.model}+{attribute}", show, device)
    tool.to("cpu").eval().requires_grad_(False)
    result["device"] = str(device)
    meta = {"kind": "attribute-tool", "attribute": attribute, "backbone": bcfg.model, "dataset": ds.name,
            "fingerprint": ds.fingerprint, "backbone_digest": backbone_meta["weights_digest"],
            "vocab": attr.vocab, "word_vectors": word_vectors if encoding == "words" else None,
            "config": as_dict(cfg), "train": as_dict(train), "metrics": result}
    if save:
        checkpoint.save(checkpoint.tool_dir(ds.name, bcfg.model, attribute), tool.state_dict(), meta)
    return tool, meta


def batch_loss(states: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, train: TrainConfig,
               gen: torch.Generator) -> torch.Tensor:
    """states (B, L, d) and targets (B, L), 0 = no target. BPR (eq. 4) against `negatives`
    items sampled uniformly per batch (or per positive), or cross-entropy over the whole catalogue."""
    sel = targets > 0
    h, t = states[sel], targets[sel]
    if train.loss == "ce":
        logits = h @ weights.T
        logits[:, 0] = float("-inf")
        return F.cross_entropy(logits, t)
    pos = (h * weights[t]).sum(-1, keepdim=True)
    if train.shared_negatives:
        # One set of negatives shared by the batch: a (N, d) x (d, k) product instead of gathering
        # N x k embeddings, which at ML-1M size (N ~ 30k positions, k = 128) costs ~2 GB per batch.
        neg = torch.randint(1, weights.shape[0], (train.negatives,), generator=gen).to(h.device)
        negs = h @ weights[neg].T
    else:  # RecBole's sampling: each positive draws its own negatives
        neg = torch.randint(1, weights.shape[0], (len(t), train.negatives), generator=gen).to(h.device)
        negs = (h.unsqueeze(1) * weights[neg]).sum(-1)
    return -F.logsigmoid(pos - negs).mean()


def validate(ds: Dataset, backbone: nn.Module, tool: nn.Module | None) -> dict[str, float]:
    """Predict seq[-2] from seq[:-2] for every evaluation user, ranking all items: metrics with
    the history excluded (as the tools are used), and `kept_*` with it kept (RecBole's protocol)."""
    users = ds.eval_users
    hists = histories(ds, users, "valid")
    targets = np.array([ds.split(int(u), "valid")[1] for u in users])
    backbone.eval()
    if tool is not None:
        tool.eval()
    scores = score_histories(backbone, tool, hists, exclude_history=False)
    out = {}
    for prefix, ranks in (("", ranks_from_scores(scores, targets, hists)), ("kept_", ranks_from_scores(scores, targets))):
        metrics = metric_means(ranks, (10,))
        metrics["mrr@10"] = float(np.where(ranks < 10, 1.0 / (ranks + 1.0), 0.0).mean()) if len(ranks) else 0.0
        out.update({prefix + k: v for k, v in metrics.items()})
    return out


def selection_key(train: TrainConfig) -> str:
    """The validation figure that picks the best epoch and drives early stopping."""
    check_choice(train.valid_metric, VALID_METRICS, "validation metric")
    return train.valid_metric if train.exclude_history else f"kept_{train.valid_metric}"


def epoch_batches(ds: Dataset, backbone: nn.Module, seqs: list[np.ndarray], batch_size: int,
                  rng: np.random.Generator, samples: str = "window") -> list[tuple[torch.Tensor, torch.Tensor]]:
    windows = training_windows(seqs, backbone.window, rng, cover=samples == "all")
    out = []
    for idx in length_batches(windows, batch_size, rng):
        inputs, targets = backbone.train_batch([windows[i] for i in idx], rng)
        out.append((torch.from_numpy(inputs), torch.from_numpy(targets)))
    return out


def fit(ds: Dataset, backbone: nn.Module, trainable: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor],
        evaluate: Callable[[], dict[str, float]], train: TrainConfig, label: str, show: bool,
        device: torch.device | None = None) -> dict:
    """Train `trainable`'s parameters; returns the metrics record and leaves the best weights loaded."""
    device = device or torch.device("cpu")
    seqs = [s for s in (ds.train_sequence(int(u)) for u in range(ds.n_users)) if len(s) >= 2]
    rng = np.random.default_rng(train.seed)
    gen = torch.Generator().manual_seed(train.seed)  # on the CPU: the same draws on any device
    params = [p for p in trainable.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)
    key = selection_key(train)
    patience = scaled_patience(train.patience, train.epochs, train.eval_every)
    stopper = EarlyStopping(patience)
    best, best_epoch, best_state, history = -1.0, 0, None, []
    started = time.perf_counter()
    # Bitwise-repeatable runs: CPU index_put/embedding backward accumulate in thread order otherwise.
    # CUDA has no deterministic kernel for some of these ops: there it only warns.
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    try:
        with EpochProgress(label, train.epochs, show) as progress:
            for epoch in range(1, train.epochs + 1):
                t0, cpu0 = time.perf_counter(), time.process_time()
                trainable.train()
                batches = epoch_batches(ds, backbone, seqs, train.batch_size, rng, train.samples)
                total = 0.0
                progress.start(epoch, len(batches))
                for step, (inputs, targets) in enumerate(batches, start=1):
                    loss = loss_fn(inputs.to(device), targets.to(device), gen)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += loss.item()
                    progress.update(loss=total / step)
                train_s = time.perf_counter() - t0
                # CPU seconds of all threads: on a shared machine, wall time says more about the load
                record = {"epoch": epoch, "loss": total / max(1, len(batches)), "train_s": round(train_s, 3),
                          "train_cpu_s": round(time.process_time() - cpu0, 3)}
                stop = False
                if epoch % train.eval_every == 0 or epoch == train.epochs:
                    metrics = evaluate()
                    record.update(metrics)
                    score = metrics[key]
                    if score > best:
                        best, best_epoch = score, epoch
                        best_state = {k: v.detach().clone() for k, v in trainable.state_dict().items()}
                    stop = stopper.update(score)
                    progress.done({k: metrics[k] for k in dict.fromkeys((key, "ndcg@10"))}, best)
                history.append(record)
                if stop:
                    break
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    if best_state is not None:
        trainable.load_state_dict(best_state)
    best_record = next(r for r in history if r["epoch"] == best_epoch) if best_epoch else {}
    return {
        "valid": {k: v for k, v in best_record.items() if "@" in k},
        "selected_by": key,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "patience_evals": patience,
        "seconds": round(time.perf_counter() - started, 2),
        "epoch_train_s": round(float(np.mean([r["train_s"] for r in history])), 3) if history else 0.0,
        "history": history,
    }

"""Training P5 (see model.py), its checkpoint, and the loaded recommender `eval` asks for lists.

An epoch draws `samples_per_user` targets from each user's training part (a random position,
the items before it as history): an encoder-decoder needs one encoder pass per target, unlike
SASRec, which learns every position of a sequence in one causal pass, so all ~100k positions
of ML-100K per epoch would cost an hour on two cores. Validation after each epoch ranks by the
constrained beam search, as `eval` does; early stopping on validation NDCG@10 keeps the best
weights. Checkpoint: TOOLREC_HOME/checkpoints/<dataset>/p5/model/{model.safetensors,config.json}.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from toolrec_local import paths
from toolrec_local.data.dataset import Dataset
from toolrec_local.errors import ToolrecError
from toolrec_local.metrics import metric_means, rank_in_list
from toolrec_local.recsys import checkpoint
from toolrec_local.recsys.config import as_dict, from_dict
from toolrec_local.recsys.p5.model import P5, INDEXES, ItemIndex, P5Config, Prompt, index_numbers, prompt_template
from toolrec_local.recsys.training.progress import EpochProgress

_CACHE: dict[tuple[str, str], "P5Recommender"] = {}


@dataclass(frozen=True)
class P5Train:
    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    samples_per_user: int = 10
    patience: int = 10  # validations without a better NDCG@10 before stopping (it is noisy: ±0.005)
    eval_every: int = 1
    beams: int = 20
    seed: int = 0
    exclude_history: bool = True  # validation ranks items outside the history (False: data that repeats items)
    device: str = "auto"  # auto (a CUDA GPU when torch sees one), cpu or cuda[:N]; see recsys/device.py


def p5_dir(dataset: str) -> Path:
    return paths.checkpoints_dir(dataset) / "p5" / "model"


def train_hint(dataset: str) -> str:
    return f"run: toolrec-local train p5 --dataset {dataset}"


class P5Recommender:
    """A trained P5 with its prompt and id trie; `lists` is one batched constrained beam search."""

    def __init__(self, ds: Dataset, model: P5, prompt: Prompt, meta: dict, beams: int = 20):
        self.dataset, self.model, self.prompt, self.meta, self.beams = ds, model, prompt, meta, beams
        cfg = model.cfg
        self.index = ItemIndex(model.item_numbers.numpy(), cfg.levels, cfg.base)
        self._stamp: tuple = ()

    def inputs(self, users: list[int], histories: list[np.ndarray]) -> torch.Tensor:
        h = self.model.cfg.max_history
        return self.prompt.batch(users, [self.index.digits(np.asarray(x[-h:], dtype=np.int64)) for x in histories])

    def lists(self, users, part: str = "test", k: int = 10, exclude_history: bool = True,
              batch_size: int = 128) -> list[list[int]]:
        """Top-k distinct items per user, best first (fewer only if the catalogue runs out)."""
        ds = self.dataset
        out: list[list[int]] = []
        self.model.eval()
        users = [int(u) for u in users]
        for s in range(0, len(users), batch_size):
            chunk = users[s:s + batch_size]
            hists = [ds.split(u, part)[0] for u in chunk]
            excluded = hists if exclude_history else [np.empty(0, dtype=np.int64)] * len(chunk)
            out.extend(self.model.beam_search(self.inputs(chunk, hists), self.index.available(excluded),
                                              self.prompt.level_ids, self.index.item_of, k, max(k, self.beams)))
        return out

    @classmethod
    def load(cls, ds: Dataset) -> "P5Recommender":
        """The saved model of `ds`, loaded once per process (reloaded if retrained on disk)."""
        folder = p5_dir(ds.name)
        key = (str(paths.home()), ds.fingerprint)
        stamp = checkpoint.stamp(folder)
        inst = _CACHE.get(key)
        if inst is not None and inst._stamp == stamp and stamp:
            return inst
        hint = train_hint(ds.name)
        tensors, meta = checkpoint.read(folder, ds, hint)
        if meta.get("kind") != "p5":
            raise ToolrecError(f"{folder}: not a P5 checkpoint", hint)
        cfg = from_dict(P5Config, meta.get("config"), str(folder / checkpoint.CONFIG))
        prompt = Prompt(str(meta.get("template")), ds.user_ids, cfg.levels, cfg.base)
        if cfg.n_items != ds.n_items or prompt.tokens != meta.get("tokens"):
            raise ToolrecError(f"{folder}: trained on another catalogue or user list than {ds.name!r} has now", hint)
        model = P5(cfg, len(prompt.tokens))
        checkpoint.load_into(model, tensors, folder, hint)
        inst = cls(ds, model.eval().requires_grad_(False), prompt, meta, beams=int(meta.get("train", {}).get("beams", 20)))
        inst._stamp = stamp
        _CACHE[key] = inst
        return inst


def train_p5(ds: Dataset, cfg: P5Config, train: P5Train, show: bool = False,
             save: bool = True) -> tuple[P5Recommender, dict]:
    if cfg.index not in INDEXES:
        raise ToolrecError(f"unknown P5 item indexing {cfg.index!r}", f"use one of: {', '.join(INDEXES)}")
    if cfg.d_model % cfg.heads:
        raise ToolrecError(f"P5: d_model {cfg.d_model} is not divisible by {cfg.heads} heads", "pick --d-model as a multiple of --heads")
    from toolrec_local.recsys.device import resolve_device

    device = resolve_device(train.device)
    started = time.perf_counter()
    torch.manual_seed(train.seed)
    template = prompt_template()
    prompt = Prompt(template, ds.user_ids, cfg.levels, cfg.base)
    model = P5(cfg, len(prompt.tokens))
    with torch.no_grad():
        model.item_numbers.copy_(torch.from_numpy(index_numbers(ds, cfg.index, train.seed)))
    rec = P5Recommender(ds, model, prompt, {}, beams=train.beams)  # reads the numbering on CPU
    model.to(device)
    seqs = {u: ds.train_sequence(u) for u in range(ds.n_users) if len(ds.train_sequence(u)) >= 2}
    rng = np.random.default_rng(train.seed)
    opt = torch.optim.Adam(model.parameters(), lr=train.lr)
    users = ds.eval_users
    valid_targets = [ds.split(int(u), "valid")[1] for u in users]
    best, best_epoch, best_state, history, since = -1.0, 0, None, [], 0
    with EpochProgress(f"{ds.name} p5", train.epochs, show) as progress:
        for epoch in range(1, train.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            batches = epoch_batches(rec, seqs, train, rng)
            progress.start(epoch, len(batches))
            total = 0.0
            for step, (inputs, labels) in enumerate(batches, start=1):
                loss = model.loss(inputs.to(device), labels.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item()
                progress.update(loss=total / step)
            record = {"epoch": epoch, "loss": total / max(1, len(batches)), "train_s": round(time.perf_counter() - t0, 3)}
            if epoch % train.eval_every == 0 or epoch == train.epochs:
                lists = rec.lists(users, "valid", k=10, exclude_history=train.exclude_history)
                metrics = metric_means(np.array([rank_in_list(lst, t) for lst, t in zip(lists, valid_targets)]), (10,))
                record.update(metrics)
                if metrics["ndcg@10"] > best:
                    best, best_epoch, since = metrics["ndcg@10"], epoch, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    since += train.eval_every
                progress.done(metrics, best)
            history.append(record)
            if since >= train.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to("cpu").eval().requires_grad_(False)  # saved and served from CPU tensors
    best_record = next((r for r in history if r["epoch"] == best_epoch), {})
    metrics = {
        "valid": {k: v for k, v in best_record.items() if "@" in k},
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "seconds": round(time.perf_counter() - started, 2),
        "epoch_train_s": round(float(np.mean([r["train_s"] for r in history])), 3) if history else 0.0,
        # The process's peak resident memory so far (dataset and Python included), in MiB.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "parameters": sum(p.numel() for p in model.t5.parameters()),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "history": history,
    }
    meta = {"kind": "p5", "model": "p5", "dataset": ds.name, "fingerprint": ds.fingerprint, "config": as_dict(cfg),
            "train": as_dict(train), "template": template, "tokens": prompt.tokens, "metrics": metrics}
    rec.meta = meta
    if save:
        meta["weights_digest"] = checkpoint.save(p5_dir(ds.name), model.state_dict(), meta)
    return rec, meta


def epoch_batches(rec: P5Recommender, seqs: dict[int, np.ndarray], train: P5Train,
                  rng: np.random.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(prompt ids, target id tokens) batches of one epoch's samples, shuffled."""
    samples = []
    for u, s in seqs.items():
        positions = np.arange(1, len(s))
        for t in rng.choice(positions, size=min(train.samples_per_user, len(positions)), replace=False):
            samples.append((u, int(t)))
    order = rng.permutation(len(samples))
    level_ids = rec.prompt.level_ids.numpy()
    levels = np.arange(level_ids.shape[0])
    out = []
    for b in range(0, len(order), train.batch_size):
        chunk = [samples[i] for i in order[b:b + train.batch_size]]
        users = [u for u, _ in chunk]
        inputs = rec.inputs(users, [seqs[u][:t] for u, t in chunk])
        targets = rec.index.digits(np.array([seqs[u][t] for u, t in chunk]))
        out.append((inputs, torch.from_numpy(level_ids[levels, targets])))
    return out


def clear_cache() -> None:
    _CACHE.clear()

"""One `toolrec-local tune`: samples (tune/samples.py), LoRA training (tune/train.py), then the
merged model saved as a safetensors folder with its own card, servable by `toolrec-local serve`.

Where things go (NAME = `<base>-ranker-<dataset>` unless `--name`):
  TOOLREC_HOME/tune/NAME/     samples.jsonl, checkpoint/, best/, tune.json (the work; resumable)
  TOOLREC_HOME/models/NAME/   the merged model (written atomically at the end)
  TOOLREC_HOME/cards/NAME.yaml its card (llm/registry.py reads this folder too)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import yaml

from toolrec_local import paths
from toolrec_local.errors import ToolrecError
from toolrec_local.provenance import git_state
from toolrec_local.tune.samples import KINDS, Sample, agent_context, build_samples
from toolrec_local.tune.train import Trainer, TuneSettings, encode, pick_device, shown_order, split_users

SAMPLES_FORMAT = 1


def default_name(base: str, dataset: str) -> str:
    return f"{base}-ranker-{dataset}"


def load_or_build_samples(work: Path, ds, tool, tokenizer, context, backbone: str, log,
                          users: int | None = None) -> tuple[list[Sample], dict]:
    """WORK/samples.jsonl if it was made for this dataset, backbone and users, else built (and
    saved). `users`: the first N evaluation users only (None: all)."""
    meta_path, path = work / "samples.json", work / "samples.jsonl"
    users = ds.eval_users if users is None else ds.eval_users[:users]
    want = {"format": SAMPLES_FORMAT, "dataset": ds.name, "fingerprint": ds.fingerprint, "backbone": backbone,
            "kinds": list(KINDS), "context": context, "users": len(users)}
    if meta_path.is_file() and path.is_file():
        meta = json.loads(meta_path.read_text())
        if all(meta.get(k) == v for k, v in want.items()):
            samples = [Sample(**json.loads(line)) for line in path.read_text().splitlines() if line]
            log(f"samples: {len(samples)} from {path} (made earlier)")
            return samples, meta
    t0, last = time.monotonic(), [time.monotonic()]

    def tick(done: int) -> None:
        if time.monotonic() - last[0] > 10 or done == len(users):
            last[0] = time.monotonic()
            log(f"samples: {done}/{len(users)} users rendered ({time.monotonic() - t0:.0f} s)")

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one user's retrieval at a time: a second thread only waits
    try:
        samples, missed = build_samples(agent_context(ds, tool, tokenizer, context), users, on_user=tick)
    finally:
        torch.set_num_threads(threads)
    meta = dict(want, samples=len(samples), left_out_target_not_among_candidates=missed,
                by_kind={k: sum(s.kind == k for s in samples) for k in KINDS})
    work.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(s.to_dict()) + "\n" for s in samples))
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return samples, meta


def write_card(name: str, base, settings: TuneSettings, dataset: str, backbone: str, command: str) -> Path:
    """The tuned model's card: the base's serving settings, its provenance, the command."""
    card = {
        "name": name, "kind": "open-weight", "hub_id": None, "source": "tuned", "built_like": base.name,
        "chat_template": base.chat_template, "context_length": base.context_length, "dtype": base.dtype,
        "params_b": base.params_b, "vllm_args": list(base.vllm_args), "served_name": name, "license": base.license,
        "notes": (f"{base.name} with LoRA adapters (r={settings.lora_r}, alpha={settings.lora_alpha}, every linear "
                  f"layer) tuned as the score ranker (--rank-by score) on {dataset}'s validation items, candidates "
                  f"from its {backbone} tools, merged into the weights. Made by: {command}"),
    }
    from toolrec_local.llm.registry import user_cards_dir

    folder = user_cards_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return path


def tune(base_name: str, dataset: str, *, backbone: str = "sasrec", name: str | None = None, users: int | None = None,
         settings: TuneSettings = TuneSettings(), device: str = "auto", threads: int | None = None,
         fresh: bool = False, log=print, progress=None, command: str = "", model_path: str | None = None) -> dict:
    """Tune `base_name` into NAME (see the module's doc); returns the run's record (tune.json)."""
    import shutil

    from transformers import AutoTokenizer

    from toolrec_local.data import load_dataset
    from toolrec_local.llm.registry import load_card, models_dir
    from toolrec_local.recsys.attributes.retrieval import RetrievalTool

    import torch

    settings.check()
    dev = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    base = load_card(base_name)
    weights = base.require_weights(model_path)
    name = name or default_name(base.name, dataset)
    if (models_dir() / f"{name}.yaml").is_file():
        raise ToolrecError(f"--name {name!r} is a card the package ships", "pick another --name")
    ds = load_dataset(dataset)
    tool = RetrievalTool.load(ds, backbone=backbone)
    if not tool.attributes:
        log(f"note: {dataset} has no trained attribute tools; the final-step samples rank the backbone's list alone")
    work = paths.home() / "tune" / name
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
    record_path = work / "tune.json"
    if record_path.is_file():
        old = json.loads(record_path.read_text())
        if old.get("settings") != settings.identity() or old.get("base") != base.name:
            raise ToolrecError(f"{work} holds a tune run with other settings ({old.get('base')}, {old.get('settings')})",
                               "repeat that run's options to resume it, or pass --fresh to start over")
    tokenizer = AutoTokenizer.from_pretrained(weights)
    context = base.context_for("vllm")
    samples, meta = load_or_build_samples(work, ds, tool, tokenizer, context, backbone, log, users)
    encoded, too_long = encode(tokenizer, samples, settings.max_tokens)
    if not encoded:
        raise ToolrecError(f"no tuning samples: none of {dataset}'s validation items is among its candidates "
                           f"(or every prompt is over --max-tokens {settings.max_tokens})",
                           "train the retrieval tools first (toolrec-local train all), or raise --max-tokens")
    train, held = split_users(encoded, settings.held_out, settings.seed)
    per_epoch = min(len(train), settings.max_samples or len(train))
    lengths = sorted(len(e["ids"]) for e in train)
    record = {"name": name, "base": base.name, "dataset": dataset, "backbone": backbone, "device": str(dev),
              "settings": settings.identity(), "samples": meta, "too_long": too_long, "train_samples": len(train),
              "per_epoch": per_epoch, "held_out_samples": len(held), "held_out_shown_order": shown_order(held),
              "held_out_users": len({e["user"] for e in held}), "median_tokens": lengths[len(lengths) // 2],
              "max_tokens_seen": lengths[-1], "command": command, **git_state(), "cpus": os.cpu_count()}
    work.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    log(f"tune {base.name} -> {name}: {len(train)} training samples ({per_epoch} per epoch x {settings.epochs}), "
        f"{len(held)} held-out from {record['held_out_users']} users; {too_long} over {settings.max_tokens} tokens "
        f"left out; median prompt {record['median_tokens']} tokens; device {dev}")
    trainer = Trainer(weights, work, settings, dev, log)
    log(f"autocast: {trainer.dtype or 'float32 (none)'}")
    state = trainer.run(train, held, progress or _NoProgress())
    out = paths.models_dir() / name
    with paths.atomic_dir(out) as tmp:
        merged = trainer.merged()
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "toolrec_source.json").write_text(json.dumps({k: record[k] for k in ("base", "dataset", "backbone",
                                                             "settings", "command", "commit")}, indent=1) + "\n")
    card = write_card(name, base, settings, dataset, backbone, command)
    record.update(state={k: state.get(k) for k in ("step", "seen", "elapsed_s", "evals", "best", "train_probe")},
                  train_losses=state["train_losses"], model=str(out), card=str(card))
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return record


class _NoProgress:
    def start(self, total: int, done: int) -> None:
        pass

    def advance(self, n: int, loss: float, rate: float) -> None:
        pass


def argv_command() -> str:
    return " ".join(["toolrec-local", *sys.argv[1:]])

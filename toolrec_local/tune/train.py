"""LoRA tuning of a causal LM as the `score` ranker (LlamaRec's recipe), with `peft`.

The loss of a sample is the cross-entropy of the validation item's label among the labels its
prompt shows, read from the logits of the answer's first token, the position where the score
ranker reads its log-probabilities (a server's choice constraint masks every other token, so
these labels' softmax is exactly the ranking it will serve). Only LoRA adapters on every linear
layer train; the base stays frozen.

Resumable: after every optimizer step the adapter, the optimizer and scheduler states and the
position in the epoch go to WORK/checkpoint (safetensors, and tensors read back with
`weights_only=True`); the held-out users' loss is measured at the start and every
`eval_every` samples, and the best adapter so far is kept in WORK/best, which is what gets
merged into the model at the end.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from toolrec_local.errors import ToolrecError


@dataclass(frozen=True)
class TuneSettings:
    epochs: int = 1
    max_samples: int | None = 400  # training samples per epoch (None: all); ~6 s each for SmolLM2-135M on 2 CPU cores
    held_out: float = 0.1  # share of the users whose samples only measure (early stopping)
    lr: float = 2e-4
    batch: int = 8  # samples per optimizer step (gradient accumulation, one sample at a time)
    warmup: int = 5  # optimizer steps of linear warm-up
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    eval_every: int = 200  # training samples between held-out measurements
    max_tokens: int = 3072  # longer prompts are left out (counted)
    seed: int = 0

    def check(self) -> None:
        bad = {"epochs": self.epochs >= 1, "max_samples": self.max_samples is None or self.max_samples >= 1,
               "held_out": 0 < self.held_out < 1, "lr": self.lr > 0, "batch": self.batch >= 1,
               "warmup": self.warmup >= 0, "lora_r": self.lora_r >= 1, "eval_every": self.eval_every >= 1,
               "max_tokens": self.max_tokens >= 64}
        wrong = [k for k, ok in bad.items() if not ok]
        if wrong:
            raise ToolrecError(f"tune settings out of range: {', '.join(f'{k}={getattr(self, k)!r}' for k in wrong)}",
                               "see toolrec-local tune --help for the allowed values")

    def identity(self) -> dict:
        """What a resumed run must share with the one it continues."""
        return asdict(self)


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ToolrecError("--device cuda: no CUDA device is visible to torch",
                           "use --device cpu (or auto), or install torch with CUDA on a GPU machine")
    return torch.device(device)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the hardware computes it natively (CUDA with bf16; CPUs with AMX or
    AVX512-BF16, where it runs about 1.5x faster than float32 here); else float32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return None
    return torch.bfloat16 if {"amx_bf16", "avx512_bf16"} & set(flags) else None


def label_token_ids(tokenizer, labels) -> dict[str, int]:
    """Each label's token id where the answer starts (after the chat template's generation
    prompt), as the server scores it; refused unless every label is one token there."""
    from toolrec_local.llm.labels import answer_tokens

    tokens = answer_tokens(tokenizer, labels)
    split = [x for x in labels if len(tokens[x]) != 1]
    if split:
        raise ToolrecError(f"the labels {split[:8]} are not single tokens for this tokenizer",
                           "tune a model whose tokenizer encodes each ASCII letter as one token")
    return {x: tokens[x][0] for x in labels}


def encode(tokenizer, samples, max_tokens: int) -> tuple[list[dict], int]:
    """(input ids, label token ids, answer index) per sample; and how many were too long."""
    from toolrec_local.llm.labels import LABELS

    ids_of = label_token_ids(tokenizer, LABELS)
    out, too_long = [], 0
    for s in samples:
        text = tokenizer.apply_chat_template(s.messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_tokens:
            too_long += 1
            continue
        out.append({"ids": ids, "labels": [ids_of[x] for x in s.labels], "answer": s.labels.index(s.answer),
                    "user": s.user, "kind": s.kind})
    return out, too_long


def split_users(encoded: list[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(training, held-out) samples: `share` of the users (seeded) only measure."""
    users = sorted({e["user"] for e in encoded})
    held = set(random.Random(seed).sample(users, max(1, round(share * len(users)))))
    return [e for e in encoded if e["user"] not in held], [e for e in encoded if e["user"] in held]


def sample_loss(model, e: dict, device, dtype) -> tuple[torch.Tensor, int]:
    """The sample's loss and the answer's rank (1 = first) among its labels."""
    ids = torch.tensor([e["ids"]], device=device)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits = model(input_ids=ids, logits_to_keep=1).logits[0, -1]
    scores = logits.float()[torch.tensor(e["labels"], device=device)]
    loss = torch.nn.functional.cross_entropy(scores[None], torch.tensor([e["answer"]], device=device))
    rank = int((scores > scores[e["answer"]]).sum()) + 1
    return loss, rank


def rank_metrics(ranks: list[int]) -> dict:
    """Accuracy@1, MRR and NDCG@10 of answers at these ranks (1 = first)."""
    n = max(1, len(ranks))
    return {"samples": len(ranks), "acc@1": round(sum(r == 1 for r in ranks) / n, 4),
            "mrr": round(sum(1 / r for r in ranks) / n, 4),
            "ndcg@10": round(sum(1 / math.log2(r + 1) for r in ranks if r <= 10) / n, 4)}


def shown_order(held: list[dict]) -> dict:
    """The peer every measurement is read against: the candidates in the order shown (the
    backbone's, for the backbone's list), i.e. a ranker that keeps the retrieval order."""
    return rank_metrics([e["answer"] + 1 for e in held])


@torch.no_grad()
def measure(model, held: list[dict], device, dtype) -> dict:
    """Held-out loss, and the answer's accuracy@1, MRR and NDCG@10 among each prompt's candidates."""
    model.eval()
    losses, ranks = [], []
    for e in held:
        loss, rank = sample_loss(model, e, device, dtype)
        losses.append(float(loss))
        ranks.append(rank)
    model.train()
    return {"loss": round(sum(losses) / max(1, len(losses)), 4), **rank_metrics(ranks)}


def order(train: list[dict], epoch: int, settings: TuneSettings) -> list[int]:
    """The epoch's sample order (seeded by the run's seed and the epoch), cut to max_samples."""
    at = list(range(len(train)))
    random.Random(settings.seed * 1000 + epoch).shuffle(at)
    return at[: settings.max_samples] if settings.max_samples else at


class Trainer:
    """The LoRA training of one tune run in WORK (see the module's doc)."""

    def __init__(self, base_dir: Path, work: Path, settings: TuneSettings, device: torch.device, log):
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        self.work, self.settings, self.device, self.log = work, settings, device, log
        self.dtype = autocast_dtype(device)
        torch.manual_seed(settings.seed)
        # on a GPU the frozen base in bf16 (a 7B card fits one GPU); peft keeps the adapters in float32
        weights = torch.bfloat16 if self.dtype is torch.bfloat16 and device.type == "cuda" else torch.float32
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=weights).to(device)
        config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                            target_modules="all-linear", task_type="CAUSAL_LM")
        self.model = get_peft_model(base, config)
        self.model.train()
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=settings.lr)
        self.state = {"epoch": 0, "done": 0, "step": 0, "seen": 0, "best": None, "evals": [], "elapsed_s": 0.0,
                      "train_losses": [], "train_probe": []}

    # ---- checkpoints --------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Written beside `folder`, then swapped in by renames: a kill at any moment leaves
        `folder` or its `.old` copy whole (`saved` finds it)."""
        tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp)  # adapter_model.safetensors + adapter_config.json
        torch.save({"opt": self.opt.state_dict(), "sched": self.sched.state_dict()}, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(self.state, indent=1) + "\n")
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def saved(folder: Path) -> Path | None:
        """The last whole checkpoint: `folder`, or `.old` when a kill came between the renames."""
        for f in (folder, folder.with_name(folder.name + ".old")):
            if (f / "state.json").is_file():
                return f
        return None

    def load(self, folder: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.model, load_file(folder / "adapter_model.safetensors", device=str(self.device)))
        saved = torch.load(folder / "optimizer.pt", weights_only=True, map_location=self.device)
        self.opt.load_state_dict(saved["opt"])
        self.sched.load_state_dict(saved["sched"])
        self.state = {"train_probe": [], **json.loads((folder / "state.json").read_text())}

    # ---- the loop -----------------------------------------------------------------------
    def run(self, train: list[dict], held: list[dict], progress) -> dict:
        from transformers import get_linear_schedule_with_warmup

        s = self.settings
        per_epoch = len(order(train, 0, s))
        steps = math.ceil(per_epoch / s.batch) * s.epochs
        self.sched = get_linear_schedule_with_warmup(self.opt, min(s.warmup, steps), steps)
        checkpoint = self.work / "checkpoint"
        last = self.saved(checkpoint)
        if last is not None:
            self.load(last)
            self.log(f"resumed at epoch {self.state['epoch'] + 1}, sample {self.state['done']} of {per_epoch} "
                     f"(optimizer step {self.state['step']} of {steps})")
        # a fixed few training samples, measured before and after: does the training fit them?
        probe = [train[j] for j in order(train, 0, s)[: min(16, s.batch * 2)]]
        if not self.state["evals"]:
            self._measure(held, "base model")
            self.state["train_probe"] = [measure(self.model, probe, self.device, self.dtype)]
        total = per_epoch * s.epochs
        progress.start(total, self.state["epoch"] * per_epoch + self.state["done"])
        while self.state["epoch"] < s.epochs:
            at = order(train, self.state["epoch"], s)
            while self.state["done"] < len(at):
                t0 = time.perf_counter()
                chunk = at[self.state["done"]: self.state["done"] + s.batch]
                losses = []
                for j in chunk:
                    loss, _ = sample_loss(self.model, train[j], self.device, self.dtype)
                    (loss / len(chunk)).backward()
                    losses.append(loss.item())
                self.opt.step()
                self.sched.step()
                self.opt.zero_grad(set_to_none=True)
                self.state["done"] += len(chunk)
                self.state["step"] += 1
                self.state["seen"] += len(chunk)
                self.state["elapsed_s"] = round(self.state["elapsed_s"] + time.perf_counter() - t0, 2)
                self.state["train_losses"].append(round(sum(losses) / len(losses), 4))
                if self.state["seen"] % s.eval_every < len(chunk) or self.state["done"] >= len(at):
                    self._measure(held, f"epoch {self.state['epoch'] + 1}, sample {self.state['done']}")
                self.save(checkpoint)
                progress.advance(len(chunk), self.state["train_losses"][-1], self.state["seen"] / self.state["elapsed_s"])
            self.state["epoch"] += 1
            self.state["done"] = 0
            self.save(checkpoint)
        if len(self.state["train_probe"]) == 1:
            self.state["train_probe"].append(measure(self.model, probe, self.device, self.dtype))
            self.save(checkpoint)
        return self.state

    def _measure(self, held: list[dict], when: str) -> None:
        t0 = time.perf_counter()
        m = measure(self.model, held, self.device, self.dtype)
        m.update(when=when, seen=self.state["seen"], measure_s=round(time.perf_counter() - t0, 1))
        self.state["evals"].append(m)
        best = self.state["best"]
        if self.state["seen"] > 0 and (best is None or m["loss"] < best["loss"]):
            self.state["best"] = m
            self.model.save_pretrained(self.work / "best")
        self.log(f"held-out ({when}): loss {m['loss']:.4f}, acc@1 {m['acc@1']:.3f}, MRR {m['mrr']:.3f}, "
                 f"NDCG@10 {m['ndcg@10']:.3f} over {m['samples']} samples ({m['measure_s']:.0f} s)")

    def merged(self):
        """The base with the best adapter (the last one if none was measured better) merged in."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        best = self.work / "best" / "adapter_model.safetensors"
        if best.is_file():
            set_peft_model_state_dict(self.model, load_file(best, device=str(self.device)))
        return self.model.merge_and_unload()

"""`toolrec-local tune`: a local model LoRA-tuned as the `score` ranker."""

from __future__ import annotations

import time
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from toolrec_local.console import err_console, print_json
from toolrec_local.tune.train import TuneSettings

DEFAULTS = TuneSettings()


class TuneProgress:
    """A progress bar (samples, loss, samples/s) on a terminal; elsewhere (a log file) a plain
    line at least every 30 s, so a background run's log moves."""

    def __init__(self):
        self.live = err_console.is_terminal
        self.bar = Progress(TextColumn("tune"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TimeRemainingColumn(), TextColumn("loss {task.fields[loss]:.4f}  {task.fields[rate]:.2f} samples/s"),
                            console=err_console, disable=not self.live)
        self.task, self.done, self.total, self.last = None, 0, 0, 0.0

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def start(self, total: int, done: int) -> None:
        self.total, self.done, self.last = total, done, time.monotonic()
        self.task = self.bar.add_task("tune", total=total, completed=done, loss=0.0, rate=0.0)

    def advance(self, n: int, loss: float, rate: float) -> None:
        self.done += n
        self.bar.update(self.task, advance=n, loss=loss, rate=rate)
        if not self.live and (time.monotonic() - self.last > 30 or self.done >= self.total):
            self.last = time.monotonic()
            err_console.print(f"tune: {self.done}/{self.total} samples, loss {loss:.4f}, {rate:.2f} samples/s")


def tune_cmd(
    llm: str = typer.Option(..., "--llm", help="The base model's card (toolrec-local models list), its weights pulled (or --model-path)."),
    model_path: Optional[str] = typer.Option(None, "--model-path", help="The base model's weights folder, if not where its card says (models pull puts them there)."),
    dataset: str = typer.Option(..., "--dataset", help="A prepared dataset whose retrieval tools are trained."),
    backbone: str = typer.Option("sasrec", "--backbone", help="The retrieval tools the candidates come from: sasrec or bert4rec."),
    name: Optional[str] = typer.Option(None, "--name", help="The tuned model's card name; default <llm>-ranker-<dataset>."),
    users: Optional[int] = typer.Option(None, "--users", min=1, help="Make samples from the first N users only (default: every user with a validation item)."),
    epochs: int = typer.Option(DEFAULTS.epochs, "--epochs", min=1),
    max_samples: Optional[int] = typer.Option(DEFAULTS.max_samples, "--max-samples", min=1, help="Training samples per epoch (a seeded shuffle's first N). The default is sized for SmolLM2-135M on 2 CPU cores: prompts of about 1,900 tokens at about 6 s each, under an hour with the held-out measurements; on a GPU pass --all-samples or more epochs."),
    all_samples: bool = typer.Option(False, "--all-samples", help="Every training sample in each epoch (no --max-samples cap)."),
    held_out: float = typer.Option(DEFAULTS.held_out, "--held-out", help="Share of the users whose samples only measure the held-out loss (the best adapter by it is kept)."),
    lr: float = typer.Option(DEFAULTS.lr, "--lr"),
    batch: int = typer.Option(DEFAULTS.batch, "--batch", min=1, help="Samples per optimizer step (gradient accumulation)."),
    lora_r: int = typer.Option(DEFAULTS.lora_r, "--lora-r", min=1, help="LoRA rank (alpha is twice it unless --lora-alpha)."),
    lora_alpha: Optional[int] = typer.Option(None, "--lora-alpha", min=1),
    eval_every: int = typer.Option(DEFAULTS.eval_every, "--eval-every", min=1, help="Training samples between held-out measurements."),
    max_tokens: int = typer.Option(DEFAULTS.max_tokens, "--max-tokens", min=64, help="Longer prompts are left out (counted)."),
    seed: int = typer.Option(DEFAULTS.seed, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when torch sees a GPU, else cpu), cpu or cuda."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for torch (default: torch's, one per core). On a machine busy with a vLLM server, 1 is faster than fighting it for the cores."),
    fresh: bool = typer.Option(False, "--fresh", help="Discard an earlier run's samples and checkpoints for this name and start over."),
    json_out: bool = typer.Option(False, "--json", help="Print the run's record (tune.json) as JSON."),
):
    """LoRA-tune a local model as the score ranker (--rank-by score), LlamaRec's recipe.

    Each user's validation item labels the prompts the score ranker sends: the backbone's top 30
    (as llmrank ranks them) and every tool's lists (as ToolRec's final step ranks them), kept
    when the item is among the candidates. The tools never train on the validation item, so
    these candidates are as hard as the test's; the test item is never used. A share of the
    users is held out; the adapter with the lowest held-out loss is merged into the weights and
    saved as TOOLREC_HOME/models/NAME with the card TOOLREC_HOME/cards/NAME.yaml, so
    `toolrec-local serve --llm NAME` serves it and `eval --rank-llm NAME --rank-by score` ranks
    with it. Re-running the same command resumes from the last optimizer step.
    """
    from toolrec_local.tune.run import argv_command, tune

    settings = TuneSettings(epochs=epochs, max_samples=None if all_samples else max_samples, held_out=held_out, lr=lr,
                            batch=batch, lora_r=lora_r, lora_alpha=lora_alpha or 2 * lora_r, eval_every=eval_every,
                            max_tokens=max_tokens, seed=seed)
    log = lambda text: err_console.print(text, highlight=False, soft_wrap=True)  # noqa: E731
    with TuneProgress() as progress:
        record = tune(llm, dataset, backbone=backbone, name=name, users=users, settings=settings, device=device, threads=threads, fresh=fresh,
                      log=log, progress=progress, command=argv_command(), model_path=model_path)
    best = record["state"]["best"] or {}
    base = record["state"]["evals"][0]
    kept = record["held_out_shown_order"]
    log(f"held-out NDCG@10 of the answer among the candidates: base {base['ndcg@10']:.3f} -> tuned "
        f"{best.get('ndcg@10', float('nan')):.3f} (acc@1 {base['acc@1']:.3f} -> {best.get('acc@1', float('nan')):.3f}); "
        f"the candidates in retrieval order: {kept['ndcg@10']:.3f} (acc@1 {kept['acc@1']:.3f})")
    log(f"saved {record['model']} and its card {record['card']}; serve it: toolrec-local serve --llm {record['name']}")
    if json_out:
        print_json(record)


def register(app: typer.Typer) -> None:
    app.command("tune")(tune_cmd)

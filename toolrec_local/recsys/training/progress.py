"""One Rich progress line per epoch: batches done, running loss, then validation NDCG@10."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from toolrec_local.console import err_console


class EpochProgress:
    def __init__(self, label: str, epochs: int, show: bool):
        self.label, self.epochs, self.show = label, epochs, show
        self.task = None
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[valid]}"),
            console=err_console, disable=not show,
        )

    def __enter__(self) -> "EpochProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def start(self, epoch: int, batches: int) -> None:
        self.task = self.progress.add_task(f"{self.label} epoch {epoch}/{self.epochs}", total=batches,
                                           loss=0.0, valid="")

    def update(self, loss: float) -> None:
        self.progress.update(self.task, advance=1, loss=loss)

    def done(self, metrics: dict[str, float], best: float) -> None:
        text = "  ".join(f"valid {k} {v:.4f}" for k, v in metrics.items()) + f"  (best {best:.4f})"
        self.progress.update(self.task, valid=text)

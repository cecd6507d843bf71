"""results.jsonl and trajectories.jsonl: append-only, one JSON object per line, flushed per line.

A line is the record of one (method, seed, user). A process killed mid-write leaves at most one
torn line at the end of a file; `repair_tail` cuts it off before anything is appended, so the
next line never glues onto it, and readers skip it. A key may have several lines when earlier
attempts failed: the reader keeps the `ok` line if there is one, else the last failure. A run
whose rows come from one trajectory (`--finish both`) and was interrupted between them is
redone whole: its new rows carry `"replaces": true` and supersede the earlier `ok` line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from toolrec_local.errors import ToolrecError

Key = tuple[str, int, str]  # (method, seed, user raw id)

OK = "ok"
FAILED = "failed"


def key_of(record: dict) -> Key:
    return (record["method"], int(record["seed"]), str(record["user"]))


def repair_tail(path: Path) -> int:
    """Truncate `path` after its last newline; return how many bytes were dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as fh:
        # read backwards in blocks until a newline is found
        pos = size
        block = 1 << 16
        while pos > 0:
            start = max(0, pos - block)
            fh.seek(start)
            chunk = fh.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        else:
            keep = 0
        if keep < size:
            fh.truncate(keep)
    return size - keep


@dataclass
class ReadResult:
    records: list[dict] = field(default_factory=list)
    bad_lines: int = 0  # lines that are not JSON objects (a torn line counts here)


def read_jsonl(path: Path) -> ReadResult:
    out = ReadResult()
    path = Path(path)
    if not path.exists():
        return out
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                out.bad_lines += 1  # torn last line of a killed writer
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                out.bad_lines += 1
                continue
            if isinstance(obj, dict) and {"method", "seed", "user", "status"} <= obj.keys():
                out.records.append(obj)
            else:
                out.bad_lines += 1
    return out


def latest_by_key(records: list[dict]) -> dict[Key, dict]:
    """One record per key: the first `ok` line (or a later `ok` line that replaces it), else
    the last failure."""
    best: dict[Key, dict] = {}
    for rec in records:
        k = key_of(rec)
        prev = best.get(k)
        if prev is not None and prev["status"] == OK and not (rec["status"] == OK and rec.get("replaces")):
            continue
        best[k] = rec
    return best


class ResultsWriter:
    """Appends records (and trajectories) to one run folder's files, flushing every line."""

    def __init__(self, results_path: Path, trajectories_path: Path):
        self.results_path = Path(results_path)
        self.trajectories_path = Path(trajectories_path)
        self.dropped_bytes = repair_tail(self.results_path) + repair_tail(self.trajectories_path)
        existing = read_jsonl(self.results_path)
        self.index = latest_by_key(existing.records)
        # Unbuffered: a line is in the file once write() returns, and a failed write leaves no
        # bytes in a buffer that a later flush or close would append after the cut.
        self._results = open(self.results_path, "ab", buffering=0)
        self._trajectories = open(self.trajectories_path, "ab", buffering=0)

    def done(self) -> set[Key]:
        return {k for k, r in self.index.items() if r["status"] == OK}

    def write(self, record: dict, trajectory: dict | None = None) -> None:
        """Append one record; a trajectory goes to trajectories.jsonl first and the record
        points at it by byte offset, so a reader can seek straight to it."""
        if trajectory is not None:
            line = json.dumps({"method": record["method"], "seed": record["seed"], "user": record["user"],
                               "trajectory": trajectory}, ensure_ascii=False).encode("utf-8") + b"\n"
            offset = self._append(self._trajectories, self.trajectories_path, line)
            record = {**record, "trajectory": {"file": self.trajectories_path.name, "offset": offset}}
        self._append(self._results, self.results_path, json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
        k = key_of(record)
        if not (k in self.index and self.index[k]["status"] == OK) or (record["status"] == OK and record.get("replaces")):
            self.index[k] = record

    @staticmethod
    def _append(fh, path: Path, data: bytes) -> int:
        """Write one whole line at the end of `fh`; return its offset. A write that fails
        (disk full, file size limit) is cut back off, so the file still ends with a whole line."""
        start = os.fstat(fh.fileno()).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[fh.write(view):]
        except OSError as exc:
            try:
                os.ftruncate(fh.fileno(), start)
            except OSError:
                pass  # a torn line stays; the next run's repair_tail cuts it
            raise ToolrecError(f"cannot write to {path}: {exc.strerror or exc}; the run stopped",
                               "free disk space (or raise the file size limit), then re-run the same command: "
                               "finished users are kept") from None
        return start

    def close(self) -> None:
        for fh in (self._results, self._trajectories):
            try:
                fh.flush()
                os.fsync(fh.fileno())
            except (OSError, ValueError):
                pass
            fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_trajectory(folder: Path, pointer: dict | None) -> dict | None:
    """The trajectory a record points at ({"file", "offset"}), or an inline one."""
    if not pointer:
        return None
    if "file" not in pointer:
        return pointer
    with open(Path(folder) / pointer["file"], "rb") as fh:
        fh.seek(int(pointer["offset"]))
        return json.loads(fh.readline())["trajectory"]

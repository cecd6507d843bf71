"""The run folder: its configuration (run.json), its files, the writer's lock, and shards.

Layout of one folder:
    run.json, results.jsonl, trajectories.jsonl                      (an unsharded run)
    run.shard-2-of-4.json, results.shard-2-of-4.jsonl, ...           (shard 2 of 4)
A folder holds either one unsharded run or shards of one run (same configuration, same n);
shards may also live in separate folders (one per node) and `report` merges them.

Re-running into a folder: everything that changes the results by design (dataset and its
fingerprint, the user sample, the seeds, the shard, and the run's settings that are identity
(`RunSettings`): split part, top-N and the history protocol always; the LLM, backend, grammar
mode, temperature, repeated-list mode and the prompt file's fingerprint once an LLM method is
in the run; the finish mode, the answer space and the agent's round cap, demonstrations and
observed items once an agent method is) must match run.json, or the command is refused.
run.json is flat: the settings' fields stand beside the run's own, null where the run has none.
What may differ: the methods (new ones are added to the run), --concurrency and --server.
Those two are not neutral: a server computes a request's logits in
a batch with whatever else is in flight, and on CPU (and on GPU without batch-invariant
kernels) the batch changes the floating-point sums, so a greedy answer can change with the
concurrency level or the replica, and the trajectory and its metrics with it (measured on
vLLM's CPU build: the trajectories of one ToolRec run at concurrency 1/4/16/auto differ,
15.2-17.2 LLM calls per user). They change which greedy trajectory a user gets, not the
protocol; a resumed run may mix users made at different levels, and figures that must be
reproduced answer for answer need the same --concurrency and --server.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path

from toolrec_local.errors import ToolrecError
from toolrec_local.eval.results import latest_by_key, read_jsonl
from toolrec_local.settings import (RunSettings, from_json_value, legacy_value, setting_fields, split_settings,
                                   to_json_value)

IDENTITY = ("dataset", "dataset_fingerprint", "users", "seeds") + setting_fields("run", identity=True)
LLM_IDENTITY = setting_fields("llm", identity=True)
# The agent methods' (toolrec, toolrec-b, plan) own: absent (None) in a run without one, which matches any.
AGENT_IDENTITY = setting_fields("agent", identity=True)


@dataclass
class RunConfig:
    dataset: str
    dataset_fingerprint: str
    methods: list[str]
    seeds: list[int]
    users: int | None  # None = every evaluation user
    # What the results are made with; its fields read as the config's own (cfg.llm), None for
    # those in `absent`: the LLM part when no LLM method ran, the agent part when no agent did.
    settings: RunSettings = field(default_factory=RunSettings)
    absent: frozenset[str] = frozenset()
    shard: tuple[int, int] | None = None  # (i, n), 1-based i
    servers: list[str] = field(default_factory=list)
    concurrency: int = 1
    command: list[str] = field(default_factory=list)
    uses_llm: bool = False
    expected: dict[str, int] = field(default_factory=dict)  # seed -> users this run (shard) evaluates

    @classmethod
    def of(cls, **fields_and_settings) -> "RunConfig":
        """The config's fields and its settings' as one set of keywords: RunConfig.of(dataset=..., llm=...)."""
        settings, own = split_settings(fields_and_settings)
        return cls(**own, settings=RunSettings(**settings))

    def __getattr__(self, name: str):
        if name in RunSettings.__dataclass_fields__:  # only called for names the config itself lacks
            return None if name in self.absent else getattr(self.settings, name)
        raise AttributeError(name)

    def recorded(self, name: str):
        """A field as run.json holds it (a settings field: null when absent, "all" for a whole list)."""
        if name not in RunSettings.__dataclass_fields__ or name in self.absent:
            return getattr(self, name)
        return to_json_value(name, getattr(self.settings, name))

    def to_json(self) -> dict:
        """Flat: the settings' fields in place of `settings` (null: absent from this run)."""
        d: dict = {}
        for f in fields(self):
            if f.name == "settings":
                d.update({k: None if k in self.absent else to_json_value(k, getattr(self.settings, k))
                          for k in setting_fields()})
            elif f.name != "absent":
                d[f.name] = getattr(self, f.name)
        d["shard"] = list(self.shard) if self.shard else None
        d["servers"], d["command"], d["methods"] = list(self.servers), list(self.command), list(self.methods)
        return d

    @classmethod
    def from_json(cls, d: dict, where: str) -> "RunConfig":
        """A settings field the file records as null is absent from the run; one it does not
        record reads as the value such a folder was made with (`settings.legacy_value`)."""
        own = {f.name for f in fields(cls)} - {"settings", "absent"}
        values = {k: from_json_value(k, d[k]) if k in d else legacy_value(k) for k in setting_fields()}
        absent = frozenset(k for k in setting_fields("llm") + setting_fields("agent")
                           if (d[k] if k in d else legacy_value(k)) is None)
        defaults = RunSettings()
        try:
            settings = RunSettings(**{k: getattr(defaults, k) if k in absent else v for k, v in values.items()})
            cfg = cls(**{k: v for k, v in d.items() if k in own}, settings=settings, absent=absent)
        except (TypeError, ToolrecError) as exc:
            raise ToolrecError(f"{where}: not a run configuration ({exc})", "use another --out folder") from None
        if cfg.shard:
            cfg.shard = (int(cfg.shard[0]), int(cfg.shard[1]))
        return cfg


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ToolrecError(f"bad --shard {text!r}", "write i/n with 1 <= i <= n, e.g. --shard 1/4")
    i, n = int(m.group(1)), int(m.group(2))
    return None if n == 1 else (i, n)


def suffix(shard: tuple[int, int] | None) -> str:
    return f".shard-{shard[0]}-of-{shard[1]}" if shard else ""


def file_paths(folder: Path, shard: tuple[int, int] | None) -> dict[str, Path]:
    s = suffix(shard)
    return {
        "run": folder / f"run{s}.json",
        "results": folder / f"results{s}.jsonl",
        "trajectories": folder / f"trajectories{s}.jsonl",
        "lock": folder / f".lock{s}",
    }


_RUN_FILE = re.compile(r"^run(?:\.shard-(\d+)-of-(\d+))?\.json$")


def run_files(folder: Path) -> list[tuple[tuple[int, int] | None, Path]]:
    out = []
    if Path(folder).is_dir():
        for p in sorted(Path(folder).iterdir()):
            m = _RUN_FILE.match(p.name)
            if m:
                out.append(((int(m.group(1)), int(m.group(2))) if m.group(1) else None, p))
    return out


def read_config(path: Path) -> RunConfig:
    try:
        return RunConfig.from_json(json.loads(Path(path).read_text(encoding="utf-8")), str(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ToolrecError(f"{path}: unreadable run configuration ({exc})", "restore it or use another --out folder") from None


def _mismatch(old: RunConfig, new: RunConfig, fields: tuple[str, ...]) -> list[str]:
    return [f"{f}: {old.recorded(f)!r} in the folder, {new.recorded(f)!r} now" for f in fields
            if getattr(old, f) != getattr(new, f) or old.recorded(f) != new.recorded(f)]


def check_compatible(old: RunConfig, new: RunConfig, where: Path) -> None:
    diffs = _mismatch(old, new, IDENTITY)
    if old.uses_llm and new.uses_llm:
        diffs += _mismatch(old, new, LLM_IDENTITY)
        diffs += _mismatch(old, new, tuple(f for f in AGENT_IDENTITY if f not in old.absent | new.absent))
    if diffs:
        fix = "re-run with the same options (only methods may be added), or pass another --out folder"
        if any(d.startswith(("finish:", "answer_space:")) for d in diffs):
            fix = ("one folder holds one --finish mode and one --answer-space (each makes its own trajectories; "
                   "--finish both writes its two rows from one): pass the folder's values, or another --out folder")
        if any(d.startswith("prompts:") for d in diffs):
            fix = ("the prompt file (prompts/<domain>.yaml, or $TOOLREC_PROMPTS) is not the one this folder's "
                   "LLM results were made with: pass another --out folder, or restore that file")
        raise ToolrecError(f"{where} holds a run with another configuration ({'; '.join(diffs)})", fix)


def merge_config(old: RunConfig, new: RunConfig) -> RunConfig:
    """The folder's configuration after `new` ran into it: methods added, LLM set once used."""
    merged = replace(new, methods=list(dict.fromkeys(old.methods + new.methods)))
    keep: set[str] = set()
    if old.uses_llm and not new.uses_llm:  # the LLM part of the run stays the folder's
        keep = set(setting_fields("llm") + setting_fields("agent"))
        merged.uses_llm = True
    keep |= {f for f in setting_fields("agent") if f in new.absent and f not in old.absent}  # set once an agent ran
    merged.settings = new.settings.with_(**{f: getattr(old.settings, f) for f in keep})
    merged.absent = frozenset((new.absent - keep) | (old.absent & keep))
    return merged


class RunFolder:
    """An open run folder for writing: configuration checked and saved, writer lock held."""

    def __init__(self, folder: Path, config: RunConfig):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.paths = file_paths(self.folder, config.shard)
        self._lock = open(self.paths["lock"], "a")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise ToolrecError(f"another eval is writing to {self.folder}{' (' + suffix(config.shard)[1:] + ')' if config.shard else ''}",
                               "wait for it to finish, or stop it first") from None
        try:
            self._check_siblings(config)
            if self.paths["run"].exists():
                old = read_config(self.paths["run"])
                check_compatible(old, config, self.folder)
                config = merge_config(old, config)
            self.config = config
            self.save_config()
        except BaseException:
            self.close()  # refused: the lock goes now, not whenever the object is collected
            raise

    def _check_siblings(self, config: RunConfig) -> None:
        for shard, path in run_files(self.folder):
            if shard == config.shard:
                continue
            if (shard is None) != (config.shard is None) or (shard and config.shard and shard[1] != config.shard[1]):
                raise ToolrecError(
                    f"{self.folder} already holds {'an unsharded run' if shard is None else f'shards of {shard[1]}'}",
                    "use the same --shard split as before, or another --out folder",
                )
            check_compatible(read_config(path), config, self.folder)

    def save_config(self) -> None:
        data = self.config.to_json()
        data["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        tmp = self.paths["run"].with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, self.paths["run"])

    def close(self) -> None:
        fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
        self._lock.close()


@dataclass
class RunView:
    """A finished or partial run read back: merged over its shards (in one or more folders)."""

    config: RunConfig  # shard = None; methods = union
    folders: list[Path]
    records: list[dict]  # one per (method, seed, user)
    shards_present: list[tuple[int, int]]
    bad_lines: int = 0
    expected: dict[str, int] = field(default_factory=dict)  # seed -> users, summed over shards

    @property
    def missing_shards(self) -> list[str]:
        if not self.shards_present:
            return []
        n = self.shards_present[0][1]
        have = {i for i, _ in self.shards_present}
        return [f"{i}/{n}" for i in range(1, n + 1) if i not in have]

    @property
    def label(self) -> str:
        cfg = self.config
        keep = " · history kept" if cfg.history == "keep" else ""  # the default protocol goes unnamed here
        if not cfg.uses_llm:
            return f"{cfg.dataset} · no LLM{keep}"
        space = " · catalogue answers" if cfg.answer_space == "catalogue" else ""  # so is the default space
        return f"{cfg.dataset} · {cfg.llm}" + ("" if cfg.grammar else " (free text)") + \
            (f" (T={cfg.temperature:g})" if cfg.temperature else "") + keep + space


def _group_key(cfg: RunConfig) -> tuple:
    return tuple(getattr(cfg, f) if not isinstance(getattr(cfg, f), list) else tuple(getattr(cfg, f)) for f in IDENTITY) + (
        tuple(getattr(cfg, f) for f in (*LLM_IDENTITY, *AGENT_IDENTITY)) if cfg.uses_llm
        else (None,) * (len(LLM_IDENTITY) + len(AGENT_IDENTITY)),
    )  # shards made under other prompts (or list modes, finish modes, answer spaces) are other runs


def load_runs(folders: list[Path]) -> list[RunView]:
    """Read run folders; shards of the same run (same configuration) are merged into one view,
    in the order the folders were given."""
    groups: dict[tuple, dict] = {}
    for folder in folders:
        folder = Path(folder)
        found = run_files(folder)
        if not found:
            raise ToolrecError(f"{folder} is not a run folder (no run.json)", "pass a folder written by `toolrec-local eval --out`")
        for shard, path in found:
            cfg = read_config(path)
            g = groups.setdefault(_group_key(cfg), {"cfg": cfg, "folders": [], "records": [], "shards": [], "bad": 0,
                                                    "expected": {}})
            g["expected"][shard] = cfg.expected
            if folder not in g["folders"]:
                g["folders"].append(folder)
            g["cfg"] = merge_config(g["cfg"], cfg) if g["cfg"] is not cfg else cfg
            if shard:
                if g["shards"] and g["shards"][0][1] != shard[1]:
                    raise ToolrecError(f"{folder}: shards of {shard[1]} mixed with shards of {g['shards'][0][1]} of the same run",
                                       "report one split at a time")
                if shard not in g["shards"]:
                    g["shards"].append(shard)
            res = read_jsonl(file_paths(folder, shard)["results"])
            for r in res.records:
                r["_folder"] = str(folder)  # trajectories are found relative to it
            g["records"].extend(res.records)
            g["bad"] += res.bad_lines
    views = []
    for g in groups.values():
        cfg = g["cfg"]
        cfg.shard = None
        expected: dict[str, int] = {}
        for per_seed in g["expected"].values():
            for seed, n in per_seed.items():
                expected[seed] = expected.get(seed, 0) + int(n)
        views.append(RunView(cfg, g["folders"], list(latest_by_key(g["records"]).values()), sorted(g["shards"]), g["bad"],
                             expected))
    return views


def command_line() -> list[str]:
    return ["toolrec-local", *sys.argv[1:]]

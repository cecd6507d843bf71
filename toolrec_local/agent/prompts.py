"""Prompt templates as data (`prompts/<domain>.yaml`, Jinja2), and the renderer that fills
them from a dataset. All prompt text lives in the YAML files; this module only gathers the
variables (item names, attribute values, ratings, scores) and calls the templates."""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2
import yaml

from toolrec_local.agent.actions import Finish, ParseFailure, Rank, format_turn, parse_turn
from toolrec_local.agent.memory import ToolList
from toolrec_local.errors import ToolrecError

TEMPLATE_KEYS = (
    "system", "profile", "history_line", "head", "task", "item_line", "ranked_line", "observation",
    "observation_short", "invalid_action", "rank_system", "rank_user",
    "candidate_line", "problem", "rank_nothing", "plan_note", "plan_step",
)
# Needed only by some runs: the prompts of the Chat-REC and LLMRank baselines (a run of that
# method needs them: Renderer.require_style), the note for a repeated list
# (repeated_lists "refer" needs it) and the score ranker's prompt (--rank-by score). A run that needs one the file lacks is refused.
OPTIONAL_KEYS = ("chatrec_system", "chatrec_user", "llmrank_system", "llmrank_user", "observation_same",
                 "score_system", "score_user")
FIX_FILE = "fix the file (prompts/movies.yaml shows every key)"


def prompts_dir() -> Path:
    """$TOOLREC_PROMPTS, else the package's `prompts/` (a wheel's package data, or the
    repository's folder in a source checkout: toolrec_local.resources)."""
    from toolrec_local.resources import data_dir

    env = os.environ.get("TOOLREC_PROMPTS")
    return Path(env).expanduser() if env else data_dir("prompts")


@dataclass(frozen=True)
class PromptSet:
    domain: str
    path: Path
    item: str
    items: str
    history_attributes: tuple[str, ...]
    demos: tuple[dict, ...]
    templates: dict
    fingerprint: str = ""  # sha256 of the file's bytes (12 hex digits): part of an LLM run's identity

    def render(self, key: str, **variables) -> str:
        try:
            return self.templates[key].render(**variables)
        except jinja2.UndefinedError as exc:
            raise ToolrecError(f"{self.path}: template {key!r}: {exc.message}", "fix the template's variables") from None


@lru_cache(maxsize=16)
def load_prompts(domain: str, folder: str | None = None) -> PromptSet:
    path = Path(folder or prompts_dir()) / f"{domain}.yaml"
    if not path.is_file():
        raise ToolrecError(f"no prompts for domain {domain!r} (looked for {path})",
                           "add a prompts/<domain>.yaml or set TOOLREC_PROMPTS to a folder that has one")
    try:
        raw = path.read_bytes()
        data = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ToolrecError(f"{path}: not valid YAML ({exc})", "fix the file") from None
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}, not a mapping of template names to templates"
        raise ToolrecError(f"{path}: {what}", "restore the file, or start from a copy of prompts/movies.yaml")
    missing = [k for k in TEMPLATE_KEYS if k not in data]
    if missing:
        raise ToolrecError(f"{path}: missing templates {', '.join(missing)}", "add them (see prompts/movies.yaml)")
    not_text = [k for k in TEMPLATE_KEYS + OPTIONAL_KEYS if k in data and not isinstance(data[k], str)]
    if not_text:
        raise ToolrecError(f"{path}: templates {', '.join(not_text)} are not text", FIX_FILE)
    demos = tuple(_checked_demos(path, data.get("demos") or []))
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)
    try:
        templates = {k: env.from_string(data[k]) for k in TEMPLATE_KEYS + OPTIONAL_KEYS if k in data}
    except jinja2.TemplateSyntaxError as exc:
        raise ToolrecError(f"{path}: template syntax error line {exc.lineno}: {exc.message}", "fix the template") from None
    return PromptSet(domain, path, data.get("item", "item"), data.get("items", "items"),
                     tuple(data.get("history_attributes", ())), demos, templates,
                     hashlib.sha256(raw).hexdigest()[:12])


def _checked_demos(path: Path, demos) -> list[dict]:
    """The demonstrations, their shape checked once at load: a malformed one is an error that
    names the file and the key (whether each step's action is valid for the dataset's
    attributes is the renderer's check, `Renderer.demo`)."""
    if not isinstance(demos, list):
        raise ToolrecError(f"{path}: demos is not a list of demonstrations", FIX_FILE)
    for d, demo in enumerate(demos):
        where = f"{path}: demos[{d}]"
        if not isinstance(demo, dict):
            raise ToolrecError(f"{where} is not a mapping (profile, history, steps)", FIX_FILE)
        for key in ("history", "steps"):
            if not isinstance(demo.get(key), list) or not demo[key]:
                raise ToolrecError(f"{where} has no {key!r} list", FIX_FILE)
        if not isinstance(demo.get("profile") or {}, dict):
            raise ToolrecError(f"{where}.profile is not a mapping", FIX_FILE)
        n = demo.get("n")
        if n is not None and not (isinstance(n, int) and n >= 1):
            raise ToolrecError(f"{where}.n is {n!r}, not the task's list length", "write a positive number, e.g. n: 4")
        for h, row in enumerate(demo["history"]):
            if not (isinstance(row, list) and len(row) == 5 and isinstance(row[3], dict)
                    and (row[4] is None or isinstance(row[4], (int, float)))):
                raise ToolrecError(f"{where}.history[{h}] is {row!r}, not "
                                   "[id, name, year, {attribute: [values]}, rating]", FIX_FILE)
        for t, step in enumerate(demo["steps"]):
            if not isinstance(step, dict) or not all(isinstance(step.get(k), str) for k in ("thought", "action")):
                raise ToolrecError(f"{where}.steps[{t}] needs a 'thought' and an 'action' (text)", FIX_FILE)
    return demos


@lru_cache(maxsize=64)
def _warn(message: str) -> None:
    """Printed once per process (every concurrent context renders the same prompts)."""
    from rich.markup import escape

    from toolrec_local.console import err_console

    err_console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def _rating(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(int(value)) if float(value).is_integer() else f"{float(value):g}"


class Renderer:
    """Fills one dataset's templates. Built once per AgentContext; the system message (with
    its demonstrations) is rendered once and reused."""

    def __init__(self, dataset, prompts: PromptSet, attributes: tuple[str, ...], *, top_n: int,
                 max_k: int, history_len: int, n_demos: int, show_items: int | None, finish: str = "llm",
                 repeated_lists: str = "refer"):
        self.ds, self.p = dataset, prompts
        self.attributes = attributes
        self.finish = finish
        # a list identical to an earlier one is named, not listed again (AgentConfig.repeated_lists)
        self.refer = repeated_lists == "refer"
        if self.refer and "observation_same" not in prompts.templates:
            raise ToolrecError(f"{prompts.path}: no observation_same template (a repeated list's note)",
                               "add it (see prompts/movies.yaml), or pass --repeated-lists full")
        self.top_n, self.max_k, self.history_len, self.show_items = top_n, max_k, history_len, show_items
        self.history_attributes = tuple(a for a in prompts.history_attributes if a in dataset.attributes)
        self._systems: dict[int, str] = {}
        # every demonstration rendered once ("" when one of its actions is not valid here)
        self._demos = [self.demo(demo, d) for d, demo in enumerate(prompts.demos)]
        self.n_demos = n_demos
        self.demos_left_out: int | None = None  # counted when the agent's system message is first made

    @property
    def system(self) -> str:
        """The agent's system message with the configured demonstrations (the baselines that
        only rank never make it, so a dataset whose attributes no demonstration fits can still
        run them)."""
        return self.system_with(self.n_demos)

    # ---- the user ----------------------------------------------------------------------
    def profile(self, user: int) -> str:
        return self.p.render("profile", profile={k: v[user] for k, v in self.ds.profile.items()})

    def history_lines(self, user: int, history) -> list[str]:
        ratings = self.ds.ratings(user)
        n = len(history)
        start = max(0, n - self.history_len)
        return [
            self.p.render("history_line", id=self.ds.item_ids[i], name=self.ds.item_names[i],
                          year=self.ds.item_years[i], rating=_rating(float(ratings[pos])),
                          attrs={a: self.ds.attributes[a].of(int(i)) for a in self.history_attributes})
            for pos, i in zip(range(start, n), history[start:])
        ]

    def head(self, user: int, history, with_profile: bool = True) -> str:
        profile = self.profile(user) if with_profile else ""
        return self.p.render("head", profile=profile, history=self.history_lines(user, history))

    def task(self, head: str) -> str:
        return self.p.render("task", head=head, n=self.top_n)

    # ---- observations --------------------------------------------------------------------
    def list_lines(self, lst: ToolList, template: str, upto: int | None = None) -> list[str]:
        """A list's first `upto` lines (None: all): a retrieval list as `template` lines with
        its scores; a list the LLM ranked as `ranked_line` lines, in its order with its rank
        positions and no score (it has none: a retrieval score there would not be the LLM's)."""
        ids, names = self.ds.item_ids, self.ds.item_names
        items = lst.items if upto is None else lst.items[:upto]
        if lst.ranked:
            return [self.p.render("ranked_line", pos=pos, id=ids[i], name=names[i]) for i, pos in zip(items, lst.ranks)]
        return [self.p.render(template, id=ids[i], name=names[i], score=float(s)) for i, s in zip(items, lst.scores)]

    def observation(self, lst: ToolList, note: str = "", same_as: ToolList | None = None) -> str:
        """The tool's list as the agent sees it: whole, or its first `show_items`; a list
        identical to the earlier `same_as` names that one instead (repeated_lists "refer")."""
        if same_as is not None and self.refer:
            return self.p.render("observation_same", mark=lst.mark, k=len(lst.items), earlier=same_as.mark, note=note)
        shown = len(lst.items) if self.show_items is None else self.show_items
        return self.p.render(
            "observation", tool=type(lst.action).__name__, attribute=lst.action.attribute, k=len(lst.items),
            mark=lst.mark, lines=self.list_lines(lst, "item_line", shown),
            hidden=max(0, len(lst.items) - shown), note=note,
        )

    def observation_short(self, lst: ToolList) -> str:
        return self.p.render("observation_short", mark=lst.mark, k=len(lst.items))

    def invalid(self, message: str) -> str:
        return self.p.render("invalid_action", message=message)

    # ---- the Rank tool and the final step ------------------------------------------------------
    def rank_messages(self, head: str, lists: list[ToolList], attribute: str | None, k: int, with_names: bool,
                      problems: list[str], *, style: str = "rank", final: bool = False, history=(),
                      recent: str = "", labelled: list[tuple[str, str]] | None = None) -> list[dict]:
        """The prompt of Rank (`final=False`) or of the final step (`final=True`): a system
        message that is the same for every call (every rule the calls share), then the user
        (head), every list under its tool mark with its scores in the order gathered, and the
        call's own short instruction last (the candidates' number, the attribute, K), so that
        calls of one user share their leading bytes and each computes few new tokens. A list
        identical to an earlier one carries that one's mark as `same_as` (the templates then name
        it instead of listing it again; None with repeated_lists "full"). `style`
        "chatrec"/"llmrank" picks a baseline's own templates when the domain has them (same
        answer format); those also get the user's history lines (`history`, oldest first) and
        the most recent item's name (`recent`). With `labelled` ((label, option) pairs) it is the
        score ranker's prompt (`score_system`, `score_user`, for every style): the same head and
        lists, then those candidates under their labels, the answer one label."""
        if labelled is not None:
            style = "score"
        self.require_style(style)
        groups, first_mark = [], {}
        for lst in lists:
            if lst.items:
                key = (tuple(lst.items), None if lst.ranked else tuple(lst.scores))
                groups.append(dict(self._group(lst), same_as=first_mark.get(key) if self.refer else None))
                first_mark.setdefault(key, lst.mark)
        user = self.p.render(f"{style}_user", head=head, groups=groups, attribute=attribute, k=k,
                             with_names=with_names, problems=problems, final=final,
                             n_candidates=len({i for lst in lists for i in lst.items}),
                             history=list(history), recent=recent,
                             labelled=[{"label": a, "option": o} for a, o in labelled or ()])
        system = self.p.render(f"{style}_system", with_names=with_names)
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def require_style(self, style: str) -> None:
        """A method's own prompt (`<style>_system`, `<style>_user`) is in the file, or the run
        is refused: another method's prompt in its place would silently be another method."""
        missing = [k for k in (f"{style}_system", f"{style}_user") if k not in self.p.templates]
        if missing:
            raise ToolrecError(f"{self.p.path}: no {' or '.join(missing)} template (the prompt of {style})",
                               "add it (see prompts/movies.yaml), or leave that method out of --method")

    def _group(self, lst: ToolList) -> dict:
        ids, names = self.ds.item_ids, self.ds.item_names
        return {
            "mark": lst.mark, "tool": type(lst.action).__name__, "attribute": lst.action.attribute,
            "k": lst.action.k, "shown": len(lst.items), "ranked": lst.ranked,
            "lines": self.list_lines(lst, "candidate_line"),
            "plain": [self.p.render("candidate_line", id=ids[i], name=names[i], score=None) for i in lst.items],
        }

    def problem(self, kind: str, label: str, n: int = 0, k: int = 0) -> str:
        """One thing wrong with a Rank answer, as the re-run prompt names it."""
        return self.p.render("problem", kind=kind, label=label, n=n, k=k)

    def rank_nothing(self) -> str:
        return self.p.render("rank_nothing")

    def plan_note(self) -> str:
        return self.p.render("plan_note")

    def plan_step(self) -> str:
        return self.p.render("plan_step")

    # ---- system message and demonstrations --------------------------------------------------
    def system_with(self, n_demos: int) -> str:
        """The system message with the first `n_demos` demonstrations (rendered once each)."""
        if n_demos not in self._systems:
            if n_demos == self.n_demos:
                self.demos_left_out = self._check_demo_count(n_demos)
            self._systems[n_demos] = self._system([text for text in self._demos[:n_demos] if text])
        return self._systems[n_demos]

    def _system(self, rendered: list[str]) -> str:
        attributes = [{"name": a} for a in self.attributes]
        text = "\n\n".join(f"Example {n}:\n{t}" for n, t in enumerate(rendered, 1))
        return self.p.render("system", attributes=attributes, max_k=self.max_k, n=self.top_n, demos=text,
                             finish=self.finish)

    def _check_demo_count(self, n_demos: int) -> int:
        """How many of the first `n_demos` demonstrations are left out (an action not valid for
        this tool's attributes), said in a warning; none left is an error."""
        chosen = self._demos[:n_demos]
        left_out = sum(1 for text in chosen if not text)
        attrs = ", ".join(self.attributes) or "none"
        if chosen and left_out == len(chosen):
            raise ToolrecError(f"{self.p.path}: none of the {len(chosen)} demonstrations asked for fits this "
                               f"dataset's retrieval attributes ({attrs}): each has an action not valid for them",
                               "write demonstrations whose Retrieval attributes are the dataset's (or None), "
                               "or pass --demos 0")
        if left_out:
            _warn(f"{self.p.path}: {left_out} of {len(chosen)} demonstrations left out: an action in each is not "
                  f"valid for this dataset's retrieval attributes ({attrs})")
        if n_demos > len(self._demos):
            _warn(f"{self.p.path} has {len(self._demos)} demonstrations; {n_demos} were asked for (--demos)")
        return left_out

    def demo(self, demo: dict, index: int = 0) -> str:
        """A whole demonstration trajectory (`index`: its place in the file), rendered with
        the same templates as a live run; "" when one of its actions is not valid for this
        tool's attributes (then it is left out, and counted: `demos_left_out`). A Retrieval
        step's items are [id, name, score] rows, a Rank step's [id, name] rows, best first."""
        history = [
            self.p.render("history_line", id=row[0], name=row[1], year=row[2], rating=_rating(row[4]),
                          attrs={a: row[3][a] for a in self.history_attributes if a in row[3]})
            for row in demo["history"]
        ]
        head = self.p.render("head", profile=self.p.render("profile", profile=demo.get("profile") or {}), history=history)
        parts = [self.p.render("task", head=head, n=demo.get("n", self.top_n))]
        for t, step in enumerate(demo["steps"]):
            text = f"Thought: {step['thought']}\nAction: {step['action']}"
            _, action = parse_turn(text, self.attributes, strict=True)
            if isinstance(action, ParseFailure):
                return ""
            parts.append(format_turn(step["thought"], action))
            if isinstance(action, Finish):
                break
            rank = isinstance(action, Rank)
            rows, k = self._demo_rows(step, rank, f"{self.p.path}: demos[{index}].steps[{t}] ({step['action']})")
            if rank:
                lines = [self.p.render("ranked_line", pos=pos, id=r[0], name=r[1]) for pos, r in enumerate(rows, 1)]
            else:
                lines = [self.p.render("item_line", id=r[0], name=r[1], score=float(r[2])) for r in rows]
            parts.append(self.p.render(
                "observation", tool="Rank" if rank else "Retrieval", attribute=action.attribute,
                k=k, mark=step["action"], lines=lines, hidden=max(0, k - len(rows)), note="",
            ))
        return "\n".join(parts)

    @staticmethod
    def _demo_rows(step: dict, rank: bool, where: str) -> tuple[list, int]:
        """A demonstration step's observed rows and K, or an error naming the step."""
        rows, k = step.get("items"), step.get("k")
        shape = "[id, name]" if rank else "[id, name, score]"
        if not isinstance(rows, list) or not rows:
            raise ToolrecError(f"{where} has no 'items' (the observed {shape} rows)", FIX_FILE)
        for r in rows:
            if not (isinstance(r, list) and len(r) >= 2 and (rank or (len(r) >= 3 and isinstance(r[2], (int, float))))):
                raise ToolrecError(f"{where}: item {r!r} is not {shape}", FIX_FILE)
        if not isinstance(k, int) or k < len(rows):
            raise ToolrecError(f"{where}: 'k' is {k!r}, not the number of items the tool returned (at least the "
                               f"{len(rows)} listed)", FIX_FILE)
        return rows, k

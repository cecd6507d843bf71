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
    "system", "profile", "history_line", "head", "task", "item_line", "observation",
    "observation_short", "invalid_action", "rank_system", "rank_user",
    "candidate_line", "problem", "rank_nothing", "plan_note", "plan_step",
)
# Optional: prompt styles of the Chat-REC and LLMRank baselines; a domain without them uses the
# Rank prompt.
OPTIONAL_KEYS = ("chatrec_system", "chatrec_user", "llmrank_system", "llmrank_user", "observation_same")


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
    missing = [k for k in TEMPLATE_KEYS if k not in data]
    if missing:
        raise ToolrecError(f"{path}: missing templates {', '.join(missing)}", "add them (see prompts/movies.yaml)")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)
    try:
        templates = {k: env.from_string(data[k]) for k in TEMPLATE_KEYS + OPTIONAL_KEYS if k in data}
    except jinja2.TemplateSyntaxError as exc:
        raise ToolrecError(f"{path}: template syntax error line {exc.lineno}: {exc.message}", "fix the template") from None
    return PromptSet(domain, path, data.get("item", "item"), data.get("items", "items"),
                     tuple(data.get("history_attributes", ())), tuple(data.get("demos") or ()), templates,
                     hashlib.sha256(raw).hexdigest()[:12])


def _rating(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(int(value)) if float(value).is_integer() else f"{float(value):g}"


class Renderer:
    """Fills one dataset's templates. Built once per AgentContext; the system message (with
    its demonstrations) is rendered once and reused."""

    def __init__(self, dataset, prompts: PromptSet, attributes: tuple[str, ...], *, top_n: int,
                 max_k: int, history_len: int, n_demos: int, show_items: int, finish: str = "llm",
                 repeated_lists: str = "refer"):
        self.ds, self.p = dataset, prompts
        self.attributes = attributes
        self.finish = finish
        # a list identical to an earlier one is named, not listed again (AgentConfig.repeated_lists)
        self.refer = repeated_lists == "refer"
        self.top_n, self.max_k, self.history_len, self.show_items = top_n, max_k, history_len, show_items
        self.history_attributes = tuple(a for a in prompts.history_attributes if a in dataset.attributes)
        self._systems: dict[int, str] = {}
        self.system = self.system_with(n_demos)

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
    def item_lines(self, items, scores) -> list[str]:
        return [self.p.render("item_line", id=self.ds.item_ids[i], name=self.ds.item_names[i], score=float(s))
                for i, s in zip(items, scores)]

    def observation(self, lst: ToolList, note: str = "", same_as: ToolList | None = None) -> str:
        """The tool's list as the agent sees it; a list identical to the earlier `same_as`
        names that one instead (template `observation_same`, when the domain has it)."""
        if same_as is not None and self.refer and "observation_same" in self.p.templates:
            return self.p.render("observation_same", mark=lst.mark, k=len(lst.items), earlier=same_as.mark, note=note)
        shown = self.show_items
        return self.p.render(
            "observation", tool=type(lst.action).__name__, attribute=lst.action.attribute, k=len(lst.items),
            mark=lst.mark, lines=self.item_lines(lst.items[:shown], lst.scores[:shown]),
            hidden=max(0, len(lst.items) - shown), note=note,
        )

    def observation_short(self, lst: ToolList) -> str:
        return self.p.render("observation_short", mark=lst.mark, k=len(lst.items))

    def invalid(self, message: str) -> str:
        return self.p.render("invalid_action", message=message)

    # ---- the Rank tool and the final step ------------------------------------------------------
    def rank_messages(self, head: str, lists: list[ToolList], attribute: str | None, k: int, with_names: bool,
                      problems: list[str], *, style: str = "rank", final: bool = False, history=(),
                      recent: str = "") -> list[dict]:
        """The prompt of Rank (`final=False`) or of the final step (`final=True`): a system
        message that is the same for every call (every rule the calls share), then the user
        (head), every list under its tool mark with its scores in the order gathered, and the
        call's own short instruction last (the candidates' number, the attribute, K), so that
        calls of one user share their leading bytes and each computes few new tokens. A list
        identical to an earlier one carries that one's mark as `same_as` (the templates then name
        it instead of listing it again; None with repeated_lists "full"). `style`
        "chatrec"/"llmrank" picks a baseline's own templates when the domain has them (same
        answer format); those also get the user's history lines (`history`, oldest first) and
        the most recent item's name (`recent`)."""
        if style != "rank" and f"{style}_user" not in self.p.templates:
            style = "rank"
        groups, first_mark = [], {}
        for lst in lists:
            if lst.items:
                key = (tuple(lst.items), tuple(lst.scores))
                groups.append(dict(self._group(lst), same_as=first_mark.get(key) if self.refer else None))
                first_mark.setdefault(key, lst.mark)
        user = self.p.render(f"{style}_user", head=head, groups=groups, attribute=attribute, k=k,
                             with_names=with_names, problems=problems, final=final,
                             n_candidates=len({i for lst in lists for i in lst.items}),
                             history=list(history), recent=recent)
        system = self.p.render(f"{style}_system", with_names=with_names)
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def _group(self, lst: ToolList) -> dict:
        ids, names = self.ds.item_ids, self.ds.item_names
        return {
            "mark": lst.mark, "tool": type(lst.action).__name__, "attribute": lst.action.attribute,
            "k": lst.action.k, "shown": len(lst.items),
            "lines": [self.p.render("candidate_line", id=ids[i], name=names[i], score=float(s))
                      for i, s in zip(lst.items, lst.scores)],
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
            self._systems[n_demos] = self._system(self.p.demos[:n_demos])
        return self._systems[n_demos]

    def _system(self, demos) -> str:
        attributes = [{"name": a} for a in self.attributes]
        rendered = [text for text in map(self.demo, demos) if text]
        text = "\n\n".join(f"Example {n}:\n{t}" for n, t in enumerate(rendered, 1))
        return self.p.render("system", attributes=attributes, max_k=self.max_k, n=self.top_n, demos=text,
                             finish=self.finish)

    def demo(self, demo: dict) -> str:
        """A whole demonstration trajectory, rendered with the same templates as a live run;
        "" when one of its actions is not valid for this tool's attributes (then it is left out)."""
        history = [
            self.p.render("history_line", id=row[0], name=row[1], year=row[2], rating=_rating(row[4]),
                          attrs={a: row[3][a] for a in self.history_attributes if a in row[3]})
            for row in demo["history"]
        ]
        head = self.p.render("head", profile=self.p.render("profile", profile=demo.get("profile") or {}), history=history)
        parts = [self.task(head)]
        for step in demo["steps"]:
            text = f"Thought: {step['thought']}\nAction: {step['action']}"
            _, action = parse_turn(text, self.attributes, strict=True)
            if isinstance(action, ParseFailure):
                return ""
            parts.append(format_turn(step["thought"], action))
            if isinstance(action, Finish):
                break
            rows = step["items"]
            lines = [self.p.render("item_line", id=r[0], name=r[1], score=float(r[2])) for r in rows]
            parts.append(self.p.render(
                "observation", tool="Rank" if isinstance(action, Rank) else "Retrieval", attribute=action.attribute,
                k=step["k"], mark=step["action"], lines=lines, hidden=max(0, step["k"] - len(rows)), note="",
            ))
        return "\n".join(parts)

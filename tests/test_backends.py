"""Backends without a vLLM server: scripted, OpenAI against a fake local API, the vLLM
client's error handling against a fake server, and the factory."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
from fake_openai import FakeAPI, chat_response

from toolrec_local.errors import ToolrecError
from toolrec_local.llm.backends import ScriptedBackend, ScriptError
from toolrec_local.llm.grammar import conforms
from toolrec_local.llm.protocol import ActionGrammar, Backend, ChoiceGrammar, ItemListGrammar

ACTION = ActionGrammar(("genre", "release_year"), max_k=20)
OPTIONS = ("1, Toy Story (1995)", "12, Heat (1995)", "13, Heathers (1989)", "7, Á köldum klaka (Cold Fever) (1994)")
MSGS = [{"role": "user", "content": "Recommend a movie."}]


def run(coro):
    return asyncio.run(coro)


# --- scripted ----------------------------------------------------------------------------

def test_scripted_replays_validates_and_records():
    seen = []

    def second(messages, constraint):
        seen.append((messages[-1]["content"], constraint))
        return "\n".join(constraint.options[:constraint.k])

    b = ScriptedBackend(["Thought: look by genre\nAction: Retrieval[genre, 5]", second])
    assert isinstance(b, Backend)
    c1 = run(b.generate(MSGS, ACTION, temperature=0.5, seed=3))
    c2 = run(b.generate(MSGS, ItemListGrammar(OPTIONS, 2)))
    assert c1.text.endswith("Retrieval[genre, 5]") and c2.text == "1, Toy Story (1995)\n12, Heat (1995)"
    assert [c.constraint for c in b.calls] == [ACTION, ItemListGrammar(OPTIONS, 2)]
    assert b.calls[0].temperature == 0.5 and b.calls[0].seed == 3 and seen[0][0] == "Recommend a movie."
    assert b.remaining == 0
    with pytest.raises(ScriptError, match="exhausted"):
        run(b.generate(MSGS, None))


def test_scripted_rejects_a_wrong_script():
    with pytest.raises(ScriptError, match="does not conform"):
        run(ScriptedBackend(["Action: Finish"]).generate(MSGS, ACTION))
    with pytest.raises(ScriptError, match="does not conform"):  # duplicates are not a list
        run(ScriptedBackend(["12, Heat (1995)\n12, Heat (1995)"]).generate(MSGS, ItemListGrammar(OPTIONS, 2)))
    assert run(ScriptedBackend(["free text"]).generate(MSGS, None)).text == "free text"


# --- OpenAI backend against a fake API ---------------------------------------------------

def _strict_schema(body):
    rf = body["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True
    return rf["json_schema"]["schema"]


def openai_backend(api, **kw):
    from toolrec_local.llm.backends.openai_api import OpenAIBackend

    return OpenAIBackend("gpt-fake", api_key="sk-test", base_url=api.base_url, backoff_s=0.01, **kw)


def test_openai_sends_strict_schema_and_renders_canonical_text():
    def handler(body):
        if "response_format" not in body:
            return chat_response("free text")
        schema = _strict_schema(body)
        if "thought" in schema["properties"]:
            attrs = schema["properties"]["action"]["anyOf"][0]["properties"]["attribute"]["enum"]
            assert attrs == ["genre", "release_year", "None"]
            return chat_response(json.dumps({"thought": "genre\nfits", "action":
                                             {"tool": "Retrieval", "attribute": "genre", "k": 20}}))
        assert "choice" in schema["properties"]
        return chat_response(json.dumps({"choice": schema["properties"]["choice"]["enum"][3]}))

    with FakeAPI(handler) as api:
        b = openai_backend(api)
        c = run(b.generate(MSGS, ACTION, max_tokens=99, seed=5))
        assert c.text == "Thought: genre fits\nAction: Retrieval[genre, 20]" and conforms(ACTION, c.text)
        assert (c.tokens_in, c.tokens_out, c.calls) == (11, 7, 1)
        assert run(b.generate(MSGS, ChoiceGrammar(OPTIONS))).text == OPTIONS[3]
        assert run(b.generate(MSGS, None)).text == "free text"
        first = api.requests[0]
        assert first["model"] == "gpt-fake" and first["seed"] == 5 and first["max_completion_tokens"] == 99
        assert first["_auth"] == "Bearer sk-test" and "response_format" not in api.requests[2]
        run(b.aclose())


def test_openai_repairs_duplicate_items_by_asking_again():
    def handler(body):
        enum = _strict_schema(body)["properties"]["items"]["items"]["enum"]
        n = _strict_schema(body)["properties"]["items"]["minItems"]
        return chat_response(json.dumps({"items": [enum[0]] * n}))  # always repeats the first

    with FakeAPI(handler) as api:
        c = run(openai_backend(api).generate(MSGS, ItemListGrammar(OPTIONS, 3)))
    assert conforms(ItemListGrammar(OPTIONS, 3), c.text) and c.calls == 3
    assert c.text.split("\n") == list(OPTIONS[:3])
    # each repair asks only for the options not chosen yet
    assert len(_strict_schema(api.requests[1])["properties"]["items"]["items"]["enum"]) == 3


def test_openai_errors_are_toolrec_errors():
    calls = {"n": 0}

    def outside(body):
        return chat_response(json.dumps({"thought": "t", "action": {"tool": "Retrieval", "attribute": "genre", "k": 99}}))

    def flaky(body):
        calls["n"] += 1
        return (503, {"error": {"message": "busy"}}) if calls["n"] < 3 else chat_response("ok")

    def bad_request(body):
        calls["n"] += 1
        return 400, {"error": {"message": "schema too large"}}

    with FakeAPI(outside) as api:
        with pytest.raises(ToolrecError, match="outside the requested schema"):
            run(openai_backend(api).generate(MSGS, ACTION))
    with FakeAPI(flaky) as api:
        assert run(openai_backend(api).generate(MSGS, None)).text == "ok" and calls["n"] == 3
    calls["n"] = 0
    with FakeAPI(bad_request) as api:
        with pytest.raises(ToolrecError, match="HTTP 400"):
            run(openai_backend(api).generate(MSGS, ACTION))
    assert calls["n"] == 1  # no retry on 4xx


def test_openai_needs_a_key(monkeypatch):
    from toolrec_local.llm.backends.openai_api import OpenAIBackend

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ToolrecError, match="API key"):
        OpenAIBackend("gpt-4o")


# --- vLLM client against a fake server ---------------------------------------------------

def vllm_backend(url, model="fake", **kw):
    from toolrec_local.llm.backends.vllm import VLLMBackend

    kw.setdefault("backoff_s", 0.01)
    return VLLMBackend(url, model, **kw)


def obeying(body):
    """Answers like a server that applies `structured_outputs` regexes of literal tokens."""
    regex = body.get("structured_outputs", {}).get("regex")
    return chat_response(regex if regex and "zq" in regex else "Hello there!")


def test_vllm_unreachable_server_fails_fast():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(ToolrecError, match="cannot reach"):
        run(vllm_backend(f"http://127.0.0.1:{port}/v1", backoff_s=0.5).connect())
    assert time.perf_counter() - t0 < 30


def test_vllm_probe_and_model_check_against_fake_server():
    with FakeAPI(lambda body: chat_response("Hello there!"), models=["fake"]) as api:
        with pytest.raises(ToolrecError, match="ignores structured outputs"):
            run(vllm_backend(api.base_url).connect())
        assert "structured_outputs" in api.requests[-1]
    with FakeAPI(obeying, models=["a-model", "b-model"]) as api:
        with pytest.raises(ToolrecError, match="a-model, b-model"):
            run(vllm_backend(api.base_url, model="missing").connect())
        run(vllm_backend(api.base_url, model="b-model").connect())  # probe passes


def test_vllm_retries_5xx_but_not_4xx():
    calls = {"n": 0}

    def flaky(body):
        calls["n"] += 1
        return (500, {"error": {"message": "boom"}}) if calls["n"] < 3 else obeying(body)

    with FakeAPI(flaky) as api:
        run(vllm_backend(api.base_url).connect())
    assert calls["n"] == 3
    calls["n"] = 0

    def too_long(body):
        calls["n"] += 1
        return 400, {"error": {"message": "prompt longer than max-model-len"}}

    with FakeAPI(too_long) as api:
        with pytest.raises(ToolrecError, match="HTTP 400.*max-model-len"):
            run(vllm_backend(api.base_url).connect())
    assert calls["n"] == 1
    with FakeAPI(lambda body: (500, {"error": {"message": "always"}})) as api:
        with pytest.raises(ToolrecError, match="failed 3 times"):
            run(vllm_backend(api.base_url, retries=2).connect())


def test_vllm_refuses_text_outside_the_grammar():
    """A server that passes the probe but then answers free text is caught per answer."""
    with FakeAPI(obeying) as api:
        b = vllm_backend(api.base_url)
        with pytest.raises(ToolrecError, match="outside the grammar"):
            run(b.generate(MSGS, ChoiceGrammar(OPTIONS)))


# --- factory ------------------------------------------------------------------------------

def test_factory_builds_each_backend_and_explains_mistakes(monkeypatch):
    from toolrec_local.llm.factory import make_backend

    b = make_backend("tiny-random", "vllm", base_url=["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"])
    assert b.name == "vllm:tiny-random" and len(b._servers) == 2
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    assert make_backend("gpt-4o", "openai").model == "gpt-4o"
    with pytest.raises(ToolrecError, match="unknown backend"):
        make_backend("tiny-random", "llamacpp")
    with pytest.raises(ToolrecError, match="API model"):
        make_backend("gpt-4o", "vllm")
    with pytest.raises(ToolrecError, match="open-weight"):
        make_backend("tiny-random", "openai")
    with pytest.raises(ToolrecError, match="structured-output backend"):
        make_backend("tiny-random", "vllm", structured_backend="lmformatenforcer")
    with pytest.raises(ToolrecError, match="not found"):
        make_backend("tiny-random", "local", model_path="/nonexistent/dir")


# --- the stepwise driver, with a fake step ---------------------------------------------------

class FakeSteps:
    """A StepwiseBackend whose steps are scripted; each answer is checked against the regex."""

    def __new__(cls, answers, list_mode):
        import re

        from toolrec_local.llm.backends.stepwise import Step, StepwiseBackend

        class Fake(StepwiseBackend):
            name = "fake"

            async def _step(self, messages, prefix, regex, *, max_tokens, temperature, seed, stop_when=None):
                text, stopped, *ignores_regex = answers.pop(0)
                assert ignores_regex or regex is None or re.fullmatch(regex, text) or not stopped, (regex, text)
                self.seen.append((prefix, regex, max_tokens, seed))
                return Step(text, 10, len(text), stopped)

        b = Fake()
        b.seen, b.list_mode = [], list_mode
        return b


def test_optimistic_list_keeps_the_lines_before_a_repeat_then_goes_line_by_line():
    opts = ("A", "B", "C", "D")
    b = FakeSteps([("A\nB\nA", True), ("\nD", True)], "optimistic")
    c = run(b.generate(MSGS, ItemListGrammar(opts, 3), seed=10))
    assert c.text == "A\nB\nD" and c.calls == 2 and c.tokens_in == 20
    (p0, r0, _, s0), (p1, r1, _, s1) = b.seen
    assert p0 == "" and r0.count("\\n") == 2  # the whole-list regex first
    assert p1 == "A\nB" and r1 == "\\n(C|D)" and (s0, s1) == (10, 12)  # only unchosen options


def test_optimistic_list_goes_on_in_whole_steps_after_a_repeat():
    """After a repeat, the rest of the list is asked for in one step again (over the options not
    chosen yet), not one line per request: two repeats here cost three requests, not six."""
    opts = ("A", "B", "C", "D", "E", "F")
    b = FakeSteps([("A\nB\nA", False), ("\nC\nD\nC", False), ("\nE\nF", True)], "optimistic")
    c = run(b.generate(MSGS, ItemListGrammar(opts, 6), seed=10))
    assert c.text == "A\nB\nC\nD\nE\nF" and c.calls == 3
    (p0, r0, _, s0), (p1, r1, _, s1), (p2, r2, _, s2) = b.seen
    assert (p1, p2) == ("A\nB", "A\nB\nC\nD") and (s0, s1, s2) == (10, 12, 14)
    assert r1 == "\\n(C|D|E|F)" * 4 and r2 == "\\n(E|F)" * 2  # four lines, then two, each over what is left
    # a step whose only line is cut by its token limit goes on with one line, then whole steps
    b = FakeSteps([("A\nB\nA", False), ("\nC", False), ("\nC", True), ("\nD\nE", True)], "optimistic")
    assert run(b.generate(MSGS, ItemListGrammar(opts, 5))).text == "A\nB\nC\nD\nE"
    assert [r.count("\\n") for _, r, _, _ in b.seen] == [4, 3, 1, 2]
    # the last line, with one option left, needs no request (the grammar allows nothing else)
    b = FakeSteps([("A\nB\nA", False)], "optimistic")
    c = run(b.generate(MSGS, ItemListGrammar(("A", "B", "C"), 3)))
    assert c.text == "A\nB\nC" and c.calls == 1
    b = FakeSteps([("B", True), ("\nC", True)], "stepwise")
    c = run(b.generate(MSGS, ItemListGrammar(("A", "B", "C"), 3)))
    assert c.text == "B\nC\nA" and c.calls == 2


def test_stepwise_list_and_overlong_thought():
    b = FakeSteps([("B", True), ("\nA", True)], "stepwise")
    assert run(b.generate(MSGS, ItemListGrammar(("A", "B", "C"), 2))).text == "B\nA"
    assert [s[0] for s in b.seen] == ["", "B"]
    # a thought cut by max_tokens: its first line is kept and the action forced after it
    b = FakeSteps([("Thought: very long thought that never ends ", False), ("\nAction: Rank[None, 3]", True)],
                  "stepwise")
    c = run(b.generate(MSGS, ACTION))
    assert c.text == "Thought: very long thought that never ends\nAction: Rank[None, 3]" and c.calls == 2
    assert b.seen[1][0] == "Thought: very long thought that never ends"
    assert b.seen[1][1].startswith("\\nAction: ")
    # a backend whose step ignores the regex is caught
    b = FakeSteps([("Sure! Here you go.", True, "ignores the regex")], "stepwise")
    with pytest.raises(ToolrecError, match="outside"):
        run(b.generate(MSGS, ChoiceGrammar(("A", "B"))))


def test_a_step_cut_by_its_token_limit_is_reported_as_truncation_not_as_an_ignored_grammar():
    # a list line cut short (finish_reason "length": the context left too few tokens)
    b = FakeSteps([("Toy St", False)], "stepwise")
    with pytest.raises(ToolrecError, match="cut at its token limit") as err:
        run(b.generate(MSGS, ItemListGrammar(("Toy Story (1995)", "Heat (1995)"), 1)))
    assert "structured outputs" not in str(err.value) and "--max-model-len" in err.value.hint
    # a choice cut short
    b = FakeSteps([("He", False)], "stepwise")
    with pytest.raises(ToolrecError, match="cut at its token limit"):
        run(b.generate(MSGS, ChoiceGrammar(("Heat (1995)", "Toy Story (1995)"))))
    # a finished line outside the options is still the server ignoring the grammar
    b = FakeSteps([("Sure", True, "ignores the regex")], "stepwise")
    with pytest.raises(ToolrecError, match="outside the remaining options"):
        run(b.generate(MSGS, ItemListGrammar(("A", "B"), 1)))


def test_openai_refuses_enums_beyond_the_api_limit():
    big = ItemListGrammar(tuple(f"{i}, A rather long movie title number {i} (1999)" for i in range(400)), 10)
    with FakeAPI(lambda body: chat_response("{}")) as api:
        with pytest.raises(ToolrecError, match="exceed the OpenAI strict schema limit"):
            run(openai_backend(api).generate(MSGS, big))
        assert api.requests == []


def test_factory_local_backend_uses_llguidance_only():
    from toolrec_local.llm.factory import make_backend

    with pytest.raises(ToolrecError, match="llguidance"):
        make_backend("tiny-random", "local", structured_backend="xgrammar")


def test_vllm_backend_survives_several_event_loops():
    """The agent and the tests call one backend from several asyncio.run calls: in each new
    loop it reconnects and answers (an HTTP client bound to a closed loop would raise)."""
    with FakeAPI(obeying) as api:
        b = vllm_backend(api.base_url)
        answers = []

        async def connect_and_ask():
            await b.connect()
            return (await b.generate(MSGS, None, max_tokens=8)).text

        for _ in range(3):
            answers.append(run(connect_and_ask()))
            b._servers[0].ready = False  # probe again, in the new loop
        run(b.aclose())
    assert answers == ["Hello there!"] * 3
    # each loop: the connection probe's request, then ours
    assert sum(r.get("messages") == MSGS for r in api.requests) == 3


def test_repeats_a_line_looks_at_finished_lines_only():
    from toolrec_local.llm.backends.stepwise import repeats_a_line

    assert not repeats_a_line("A\nB\nA")  # the last "A" may still grow into "Aliens"
    assert repeats_a_line("A\nB\nA\n")
    assert not repeats_a_line("A\nAliens\n")


# --- OpenAI backend on the client's own retries -------------------------------------------

QUOTA = {"error": {"message": "You exceeded your current quota, please check your plan and billing details.",
                   "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}


def test_openai_retries_429_and_5xx_honouring_retry_after():
    """The client's backoff: a 429 asking `Retry-After` is waited out (0.7 s here, where the
    configured backoff is 0.01 s), a 500 is retried after the short backoff, then it answers."""
    replies = [(429, {"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}},
                {"retry-after-ms": "700"}),
               (500, {"error": {"message": "boom"}}),
               chat_response("ok")]

    with FakeAPI(lambda body: replies[len(api.requests) - 1]) as api:
        assert run(openai_backend(api, retries=3).generate(MSGS, None)).text == "ok"
    first, second = api.times[1] - api.times[0], api.times[2] - api.times[1]
    assert len(api.requests) == 3 and first >= 0.7 and second < 0.5, (first, second)


def test_openai_quota_error_is_fatal_at_once():
    with FakeAPI(lambda body: (429, QUOTA)) as api:
        t0 = time.perf_counter()
        with pytest.raises(ToolrecError) as exc:
            run(openai_backend(api, retries=5).generate(MSGS, ACTION))
    assert len(api.requests) == 1 and time.perf_counter() - t0 < 5  # no retry: it cannot succeed
    assert "quota" in exc.value.message and "OPENAI_API_KEY" in exc.value.hint


def test_openai_rate_limit_that_persists_ends_after_the_retries():
    with FakeAPI(lambda body: (429, {"error": {"message": "slow down", "code": "rate_limit_exceeded"}})) as api:
        with pytest.raises(ToolrecError, match="rate limited after 2 retries"):
            run(openai_backend(api, retries=2).generate(MSGS, None))
    assert len(api.requests) == 3


def test_openai_reply_cut_at_the_token_budget_is_reported_as_truncated():
    cut = chat_response('{"thought": "I will look at the genre of the films the user', finish_reason="length")
    with FakeAPI(lambda body: cut) as api:
        with pytest.raises(ToolrecError) as exc:
            run(openai_backend(api).generate(MSGS, ACTION, max_tokens=16))
    assert "truncated at max_completion_tokens=16" in exc.value.message
    assert "outside the requested schema" not in exc.value.message and len(api.requests) == 1


# --- one API-key variable ---------------------------------------------------------------------

def test_one_key_variable_for_vllm_and_openai_uses_its_own(monkeypatch):
    """`serve` and the vLLM clients share TOOLREC_API_KEY; --backend openai sends OPENAI_API_KEY
    (never the vLLM key) unless --api-key is given."""
    import typer

    from toolrec_local.cli import app
    from toolrec_local.llm.factory import make_backend

    monkeypatch.setenv("TOOLREC_API_KEY", "vllm-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    commands = typer.main.get_command(app).commands
    envvar = {name: next(p.envvar for p in commands[name].params if p.name == "api_key")
              for name in ("serve", "eval", "recommend", "doctor")}
    assert envvar == {"serve": "TOOLREC_API_KEY", "doctor": "TOOLREC_API_KEY", "eval": None, "recommend": None}
    with FakeAPI(lambda body: chat_response("ok")) as api:
        run(make_backend("gpt-4o", "openai", base_url=api.base_url).generate(MSGS, None))
        run(make_backend("gpt-4o", "openai", base_url=api.base_url, api_key="sk-given").generate(MSGS, None))
    assert [r["_auth"] for r in api.requests] == ["Bearer sk-openai", "Bearer sk-given"]
    with FakeAPI(obeying, models=["tiny-random"]) as api:
        run(make_backend("tiny-random", "vllm", base_url=api.base_url).connect())
    assert {r["_auth"] for r in api.requests} == {"Bearer vllm-secret"}


# --- the context comes from the server ------------------------------------------------------

def test_context_is_what_the_vllm_server_reports(monkeypatch):
    """A server started with another --max-model-len than the card's (2048 for tiny-random):
    the agent fits its prompts to what /v1/models reports."""
    from toolrec_local.llm.factory import make_backend

    monkeypatch.setenv("TOOLREC_API_KEY", "k")
    with FakeAPI(obeying, models=[{"id": "tiny-random", "max_model_len": 700}]) as api:
        assert make_backend("tiny-random", "vllm", base_url=api.base_url).context_tokens() == 700
        assert api.model_auth == ["Bearer k"]
    with FakeAPI(obeying, models=[{"id": "tiny-random", "max_model_len": 700}]) as a, \
            FakeAPI(obeying, models=[{"id": "tiny-random", "max_model_len": 600}]) as b:
        assert make_backend("tiny-random", "vllm", base_url=[a.base_url, b.base_url]).context_tokens() == 600
    with FakeAPI(obeying, models=["tiny-random"]) as api:  # a server that does not say: the card
        assert make_backend("tiny-random", "vllm", base_url=api.base_url).context_tokens() == 2048


def test_vllm_step_budget_never_exceeds_the_served_context():
    """An optimistic list asks for k lines at every-byte-a-token each (25 long titles: ~2.3k
    tokens); vLLM refuses max_tokens above its max_model_len with HTTP 400, so the client
    lowers the bound to what the server says it enforces (vLLM lowers it further to what the
    prompt leaves, and a reply cut there comes back as finish "length")."""
    def like_vllm(body):
        if body["max_tokens"] > 1024:
            return 400, {"error": {"message": f"max_tokens={body['max_tokens']} cannot be greater than max_model_len=1024"}}
        regex = body.get("structured_outputs", {}).get("regex", "")
        return chat_response(regex if "zq" in regex else "A\nB", finish_reason="length")

    async def go(b):
        await b.connect()
        return await b._step(MSGS, "", "(A|B)(\\n(A|B))*", max_tokens=2250, temperature=0.0, seed=None)

    with FakeAPI(like_vllm, models=[{"id": "fake", "max_model_len": 1024}]) as api:
        step = run(go(vllm_backend(api.base_url)))
    assert (step.text, step.stopped, api.requests[-1]["max_tokens"]) == ("A\nB", False, 1024)
    with FakeAPI(like_vllm, models=["fake"]) as api:  # a server that does not say: sent as asked
        with pytest.raises(ToolrecError, match="HTTP 400.*max_model_len"):
            run(go(vllm_backend(api.base_url)))

"""Structured output (``structured/``): a completion held to a JSON schema or any JSON object, token by token, in
the generation verb and in the server's batched loop (``response_format``), with errors naming the field."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from test_cli import assert_user_error, run_main  # noqa: F401  (fixture)

from prompttune.core.errors import DataError
from prompttune.core.generate import GenerationConfig, Generator
from prompttune.serve import ServeConfig, build_table, create_app
from prompttune.serve.runner import ThreadedServer
from prompttune.structured import MAX_SCHEMA_CHARS, Constraint, grammar_for

LABELS = ["positive", "negative", "neutral"]
SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": LABELS}, "sure": {"type": "boolean"}},
    "required": ["label", "sure"],
    "additionalProperties": False,
}


def as_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


def check(text: str) -> dict:
    value = json.loads(text)  # the whole text is the JSON: nothing before or after it
    assert set(value) == {"label", "sure"} and value["label"] in LABELS and isinstance(value["sure"], bool)
    return value


def test_a_random_model_writes_json_valid_under_the_schema(tiny_backbone):
    gen, grammar = Generator(tiny_backbone), grammar_for(as_format(SCHEMA))
    ids = tiny_backbone.tokenize("the film was long and loud")
    free = gen.generate(ids, config=GenerationConfig(max_new_tokens=24))
    with pytest.raises(json.JSONDecodeError):
        json.loads(free)  # without the grammar the random model writes no JSON
    seen = set()
    for seed in range(8):
        config = GenerationConfig(max_new_tokens=40, temperature=1.0, seed=seed, grammar=grammar)
        seen.add(check(gen.generate(ids, config=config))["label"])
    assert len(seen) > 1  # sampled: the model chooses among what the grammar allows
    greedy = GenerationConfig(max_new_tokens=40, grammar=grammar)
    assert gen.generate(ids, config=greedy) == gen.generate(ids, config=greedy)


def test_the_completion_ends_when_the_grammar_is_complete(tiny_backbone):
    gen = Generator(tiny_backbone)
    config = GenerationConfig(max_new_tokens=200, grammar=grammar_for(as_format(SCHEMA)))
    text = gen.generate(tiny_backbone.tokenize("hello"), config=config)
    check(text)
    assert text.endswith("}") and len(tiny_backbone.tokenize(text)) < 60  # stopped at the brace, not at 200


def test_json_object_and_text(tiny_backbone):
    gen, ids = Generator(tiny_backbone), tiny_backbone.tokenize("hello")
    assert grammar_for({"type": "text"}) is None and grammar_for(None) is None
    # any object; a bounded schema keeps the random model's text short enough to close
    small = {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]}
    small["additionalProperties"] = False
    assert json.loads(gen.generate(ids, config=GenerationConfig(grammar=grammar_for(as_format(small))))) in (
        {"a": True},
        {"a": False},
    )
    text = gen.generate(ids, config=GenerationConfig(max_new_tokens=12, grammar=grammar_for({"type": "json_object"})))
    assert text.startswith("{")


def test_the_grammar_wins_over_repetition_bans(tiny_backbone):
    """No repeated 1-gram bans every token used once; the schema needs the same item four times."""
    schema = {"type": "array", "items": {"const": "yes"}, "minItems": 4, "maxItems": 4}
    config = GenerationConfig(max_new_tokens=40, no_repeat_ngram_size=1, grammar=grammar_for(as_format(schema)))
    text = Generator(tiny_backbone).generate(tiny_backbone.tokenize("hello"), config=config)
    assert json.loads(text) == ["yes"] * 4


def test_bad_formats_name_the_field():
    with pytest.raises(DataError, match="'type' is one of text, json_object, json_schema"):
        grammar_for({"type": "xml"})
    with pytest.raises(DataError, match=r"response_format.json_schema.schema: give the JSON schema"):
        grammar_for({"type": "json_schema", "json_schema": {"name": "a"}})
    with pytest.raises(DataError, match=f"at most {MAX_SCHEMA_CHARS:,}"):
        grammar_for(as_format({"type": "string", "description": "x" * MAX_SCHEMA_CHARS}))
    with pytest.raises(DataError, match=r"response_format.json_schema.schema"):
        grammar_for(as_format({"type": "no-such-type"}))
    with pytest.raises(DataError, match="draft_tokens"):
        GenerationConfig(draft_tokens=2, grammar=grammar_for(as_format(SCHEMA)))


@pytest.mark.parametrize("text", ["the film was long and loud", "a joy", "what a waste of time"])
def test_beam_search_under_a_grammar_writes_valid_json(tiny_backbone, text):
    """Each beam holds its own grammar state (copied where beams branch): the best beam is valid JSON under the
    schema, where the same beams without the grammar are not JSON at all."""
    gen, grammar = Generator(tiny_backbone), grammar_for(as_format(SCHEMA))
    ids = tiny_backbone.tokenize(text)
    check(gen.generate(ids, config=GenerationConfig(max_new_tokens=60, grammar=grammar, num_beams=4)))
    free = gen.generate(ids, config=GenerationConfig(max_new_tokens=60, num_beams=4))
    with pytest.raises(ValueError):
        json.loads(free)


def test_a_constraint_refuses_a_token_outside_the_grammar(tiny_backbone):
    c = Constraint(tiny_backbone, grammar_for(as_format(SCHEMA)))
    allowed = c.allowed(len(tiny_backbone.tokenizer))
    refused = int((~allowed).nonzero()[0, 0])
    with pytest.raises(DataError, match="broke the grammar"):
        c.advance(refused)


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    template = tmp_path_factory.mktemp("structured") / "pass.yaml"
    template.write_text('user: "{{ text }}"\n')
    table = build_table(ServeConfig(model=str(tiny_model_dir)), [f"lm={template}"], {})
    with ThreadedServer(create_app(ServeConfig(max_wait_ms=200), table)) as server:
        yield server, table.get("lm")


def chat(server, text: str, **kw) -> httpx.Response:
    body = {"model": "lm", "messages": [{"role": "user", "content": text}], "max_tokens": 48, **kw}
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)


def test_the_server_holds_chat_and_completions_to_the_schema(served):
    server, _ = served
    got = chat(server, "is this good?", response_format=as_format(SCHEMA))
    assert got.status_code == 200, got.text
    check(got.json()["choices"][0]["message"]["content"])
    assert got.json()["choices"][0]["finish_reason"] == "stop"
    body = {"model": "lm", "prompt": "is this good?", "max_tokens": 48, "response_format": as_format(SCHEMA)}
    done = httpx.post(server.url + "/v1/completions", json=body, timeout=120)
    assert done.status_code == 200, done.text
    check(done.json()["choices"][0]["text"])


def test_a_held_row_leaves_its_batch_mates_as_they_were(served):
    """Requests decoded in one batch: the free-text one gets what it gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    server, _ = served
    alone = chat(server, "tell me more").json()["choices"][0]["message"]["content"]
    with ThreadPoolExecutor(4) as pool:
        held = [pool.submit(chat, server, f"question {i}", response_format=as_format(SCHEMA)) for i in range(3)]
        free = pool.submit(chat, server, "tell me more")
        assert free.result().json()["choices"][0]["message"]["content"] == alone
        for f in held:
            check(f.result().json()["choices"][0]["message"]["content"])


def test_bad_response_formats_are_422s_naming_the_field_and_beams_are_held(served):
    server, _ = served
    bad = chat(server, "x", response_format={"type": "json_schema", "json_schema": {"name": "a"}})
    assert bad.status_code == 422 and "response_format.json_schema.schema" in bad.text
    odd = chat(server, "x", response_format="json")
    assert odd.status_code == 422 and "response_format" in odd.text
    beams = chat(server, "x", response_format=as_format(SCHEMA), num_beams=2)
    assert beams.status_code == 200, beams.text  # beam search holds every beam to the grammar
    check(beams.json()["choices"][0]["message"]["content"])
    chosen = chat(server, "pick", guided_choice=["alpha beta", "gamma"], num_beams=3)
    assert chosen.json()["choices"][0]["message"]["content"] in ("alpha beta", "gamma")


def test_generate_cli_json_schema(run_main, tiny_model_dir, tmp_path):  # noqa: F811
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    done = run_main("generate", "hi", "--model", tiny_model_dir, "--max-new-tokens", "40", "--json-schema", schema)
    assert done.code == 0, done.err
    check(done.out.strip())  # printed as it is: brackets and braces are not taken for markup
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps({"type": "array", "items": {"const": "x"}, "minItems": 2, "maxItems": 2}))
    done = run_main("generate", "hi", "--model", tiny_model_dir, "--json-schema", listed)
    assert done.code == 0 and json.loads(done.out) == ["x", "x"]
    broken = tmp_path / "broken.json"
    broken.write_text('{"type": "object",\n "properties": }')
    bad = run_main("generate", "hi", "--model", tiny_model_dir, "--json-schema", broken)
    assert_user_error(bad, f"--json-schema {broken} line 2")
    missing = run_main("generate", "hi", "--model", tiny_model_dir, "--json-schema", tmp_path / "none.json")
    assert_user_error(missing, "no such file")
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"type": "no-such-type"}')
    assert_user_error(run_main("generate", "hi", "--model", tiny_model_dir, "--json-schema", wrong), "--json-schema")


def test_the_openai_clients_parse_and_stream_read_the_held_json(served):
    """The official client: ``chat.completions.parse`` with a pydantic model (it sends a strict json_schema and
    validates the reply), and a streamed completion whose pieces add up to the held JSON."""
    import typing

    import openai
    import pydantic

    class Answer(pydantic.BaseModel):
        label: typing.Literal["positive", "negative", "neutral"]
        sure: bool

    server, _ = served
    api = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "is this good?"}]
    parsed = api.chat.completions.parse(model="lm", messages=messages, response_format=Answer, max_tokens=48)
    answer = parsed.choices[0].message.parsed
    assert isinstance(answer, Answer) and answer.label in LABELS
    whole = api.chat.completions.create(model="lm", messages=messages, max_tokens=48,
                                        response_format=as_format(SCHEMA)).choices[0].message.content  # fmt: skip
    pieces = api.chat.completions.create(
        model="lm", messages=messages, max_tokens=48, response_format=as_format(SCHEMA), stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
    assert streamed == whole and check(streamed)


def test_vllm_guided_fields(served):
    server, _ = served
    choice = chat(server, "pick one", guided_choice=["alpha beta", "gamma", "delta"])
    assert choice.status_code == 200, choice.text
    assert choice.json()["choices"][0]["message"]["content"] in ("alpha beta", "gamma", "delta")
    digits = chat(server, "a number", guided_regex="[0-9]{2,4}-[a-c]")
    assert digits.status_code == 200, digits.text
    assert re.fullmatch("[0-9]{2,4}-[a-c]", digits.json()["choices"][0]["message"]["content"])
    held = chat(server, "json", guided_json=SCHEMA)
    check(held.json()["choices"][0]["message"]["content"])
    both = chat(server, "x", guided_choice=["a"], response_format=as_format(SCHEMA))
    assert both.status_code == 422 and "at most one way" in both.text
    for bad, field in (({"guided_choice": []}, "guided_choice"), ({"guided_regex": "("}, "guided_regex"),
                       ({"guided_json": "x"}, "guided_json")):  # fmt: skip
        got = chat(server, "x", **bad)
        assert got.status_code == 422 and field in got.text, got.text


def test_vllm_guided_grammar(served):
    server, _ = served
    lark = 'start: "n=" NUM ("," NUM)?\nNUM: /[0-9]{1,3}/\n'
    got = chat(server, "numbers", guided_grammar=lark)
    assert got.status_code == 200, got.text
    assert re.fullmatch(r"n=[0-9]{1,3}(,[0-9]{1,3})?", got.json()["choices"][0]["message"]["content"])
    for bad in ("start: (", "", "x" * 40_000, 3):
        got = chat(server, "x", guided_grammar=bad)
        assert got.status_code == 422 and "guided_grammar" in got.text, got.text


@pytest.fixture(scope="module")
def served_long(tmp_path_factory, long_model_dir):
    """The pass-through task on the tiny decoder with a 4,096-token context (a step's system text is long in its
    tokens, and the chat route sends it)."""
    template = tmp_path_factory.mktemp("structured-long") / "pass.yaml"
    template.write_text('user: "{{ text }}"\n')
    table = build_table(ServeConfig(model=str(long_model_dir)), [f"lm={template}"], {})
    with ThreadedServer(create_app(ServeConfig(max_wait_ms=50), table)) as server:
        yield server


@pytest.mark.parametrize(("mode", "guided"), [("completions", "grammar"), ("chat", "grammar"), ("chat", "json"),
                                              ("completions", "json")])  # fmt: skip
def test_a_program_on_the_server_gets_replies_that_parse_when_guided(served_long, mode, guided):
    """A program's typed step run against ``prompttune serve``: guided, its reply form travels as ``guided_grammar``
    or as ``response_format`` (a JSON schema), and the random model's replies parse on the first try; without it
    they do not."""
    from prompttune.programs import OutputParseError, Predict, Signature, using
    from prompttune.programs.lm_http import OpenAILM

    server = served_long
    typed = Signature.parse("question -> count: number, verdict: one of yes, no")
    step = Predict(typed, max_retries=0, max_tokens=90)
    with using(OpenAILM(server.url + "/v1", "lm", mode=mode, guided=guided, timeout=120)):
        for question in ("how many cats?", "is it raining"):
            out = step(question=question)
            assert isinstance(out.count, int | float) and out.verdict in ("yes", "no")
    with using(OpenAILM(server.url + "/v1", "lm", mode=mode, timeout=120)), pytest.raises(OutputParseError):
        step(question="how many cats?")


def test_guided_needs_a_server(run_main, tiny_model_dir, tmp_path):  # noqa: F811
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"question": "how many?"}\n')
    got = run_main("run", "question -> count: number", str(rows), "--model", str(tiny_model_dir), "--guided", "json")
    assert_user_error(got, "--guided", "--base-url")
    got = run_main("run", "question -> count: number", str(rows), "--model", str(tiny_model_dir), "--guided", "regex")
    assert_user_error(got, "--guided regex", "grammar, json")


def test_a_completion_cut_by_the_context_says_length(served):
    """The tiny decoder holds 256 positions: a prompt that leaves less room than max_tokens, and a grammar that
    cannot end before 300 letters, run the reply to the context's end: finish_reason is "length" (a client's cue
    that the text is cut, as DSPy reads it), streamed or not, and usage counts the tokens the model saw."""
    server, _ = served
    text, endless = "go on " * 30, "[a-z]{300,400}"
    got = chat(server, text, max_tokens=240, guided_regex=endless)
    assert got.status_code == 200, got.text
    choice, usage = got.json()["choices"][0], got.json()["usage"]
    assert choice["finish_reason"] == "length"
    assert usage["prompt_tokens"] + usage["completion_tokens"] == 256 and usage["completion_tokens"] < 240
    assert usage["prompt_tokens"] > len(text.split())  # the rendered prompt, not the client's words alone
    body = {"model": "lm", "messages": [{"role": "user", "content": text}], "max_tokens": 240, "stream": True,
            "guided_regex": endless}  # fmt: skip
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=120) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    ok = chat(server, "pick one", guided_choice=["alpha", "beta"], max_tokens=30).json()
    assert ok["choices"][0]["finish_reason"] == "stop" and ok["usage"]["completion_tokens"] < 30

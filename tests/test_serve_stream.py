"""Streaming completions token by token: more than one SSE chunk for a multi-token completion, the pieces
adding up to the text without ``stream`` (greedy), through the official ``openai`` client and raw httpx."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from prompttune.serve import ServeConfig, build_table, create_app
from prompttune.serve.runner import ThreadedServer
from prompttune.serve.streaming import TextDeltas


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    table = build_table(ServeConfig(model=str(tiny_model_dir)), ["gen=qa", "zs=classify"], {"zs": "negative,positive"})
    with ThreadedServer(create_app(ServeConfig(max_wait_ms=1), table)) as s:
        yield s


def sse_events(response: httpx.Response) -> list:
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            out.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
    return out


@pytest.mark.parametrize("model", ["gen", "zs"])  # a generation template; a label-word task's own prompt
def test_openai_client_streams_token_by_token(server, model):
    import openai

    api = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    settings = {"max_tokens": 12, "temperature": 0}
    whole = api.completions.create(model=model, prompt="the cat sat on", **settings).choices[0].text
    assert len(whole) > 0
    chunks = list(api.completions.create(model=model, prompt="the cat sat on", stream=True, **settings))
    pieces = [c.choices[0].text for c in chunks if c.choices[0].text]
    assert len(pieces) > 1, pieces  # not one chunk: sent as the tokens came
    assert "".join(pieces) == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")

    messages = [{"role": "user", "content": "the cat sat on"}]
    said = api.chat.completions.create(model=model, messages=messages, **settings).choices[0].message.content
    chunks = list(api.chat.completions.create(model=model, messages=messages, stream=True, **settings))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == said


def test_sse_wire_format_one_event_per_piece_then_done(server):
    body = {"model": "gen", "prompt": "the cat", "max_tokens": 24, "stream": True}
    with httpx.Client(base_url=server.url, timeout=60) as c, c.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    content = [e for e in events[:-1] if e["choices"][0]["text"]]
    assert len(content) > 1
    assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length")


def test_stream_with_a_stop_string_equals_the_whole_text(server):
    import openai

    api = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    whole = api.completions.create(model="gen", prompt="the cat", max_tokens=16).choices[0].text
    stop = whole.strip()[3:6] or "e"  # a stop string inside the greedy text: cut there
    want = api.completions.create(model="gen", prompt="the cat", max_tokens=16, stop=stop).choices[0].text
    got = "".join(
        c.choices[0].text for c in api.completions.create(model="gen", prompt="the cat", max_tokens=16, stop=stop,
                                                          stream=True)
    )  # fmt: skip
    assert got == want and stop not in got


def test_stream_errors_before_it_starts_are_http_errors(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/v1/completions", json={"model": "nope", "prompt": "x", "stream": True})
        assert r.status_code == 404
        r = c.post("/v1/completions", json={"model": "gen", "prompt": "x", "stream": "yes"})
        assert r.status_code == 422 and "'stream'" in r.json()["error"]["message"]


def test_text_deltas_hold_back_what_may_change():
    words = {1: "Hello", 2: " wor", 3: "ld", 4: " E", 5: "ND", 6: " more"}
    deltas = TextDeltas(lambda ids: "".join(words[i] for i in ids), stop=("END",))
    assert deltas.update([1]) == "Hello"
    assert deltas.update([1, 2]) == " wor"
    assert deltas.update([1, 2, 3, 4]) == "ld"  # " E" may start the stop string "END": held back
    assert deltas.update([1, 2, 3, 4, 5]) == " "  # the stop string: the text before it is final, none of it sent
    assert deltas.finish("Hello world ") == ""
    partial = TextDeltas(lambda ids: "caf\ufffd" if len(ids) == 1 else "café", ())
    assert partial.update([1]) == "caf" and partial.update([1, 2]) == "é"


class SlowPick:
    """``Generator._pick`` taking 20 ms and always picking one ordinary token (never an end token): a decoding
    that runs to max_tokens unless something stops it. Counts its calls."""

    def __init__(self, token: int):
        self.token, self.calls = token, 0

    def __call__(self, logits, config, rng) -> int:
        self.calls += 1
        threading.Event().wait(0.02)
        return self.token


def test_a_client_that_leaves_stops_its_decoding(tiny_model_dir, monkeypatch):
    from prompttune.core.generate import Generator

    table = build_table(ServeConfig(model=str(tiny_model_dir)), ["gen=qa"])
    slow = SlowPick(table.get("gen").backbone.tokenize("cat")[0])
    monkeypatch.setattr(Generator, "_pick", staticmethod(slow))
    with ThreadedServer(create_app(ServeConfig(max_wait_ms=1), table)) as s:
        body = {"model": "gen", "prompt": "the cat", "max_tokens": 200, "stream": True}
        with httpx.Client(base_url=s.url, timeout=60) as c, c.stream("POST", "/v1/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
                    break  # the first piece of text: leave
        last = -1
        for _ in range(120):  # bounded: until the decoding picks no more tokens for 0.5 s
            threading.Event().wait(0.5)
            if slow.calls == last:
                break
            last = slow.calls
        assert slow.calls < 150  # stopped at a token soon after the client left, not at max_tokens (200)
        with httpx.Client(base_url=s.url, timeout=60) as c:  # the worker is free again
            r = c.post("/v1/completions", json={"model": "gen", "prompt": "x", "max_tokens": 2})
            assert r.status_code == 200 and c.get("/healthz").json()["queue_rows"] == 0

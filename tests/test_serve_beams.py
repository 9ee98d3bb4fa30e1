"""Beam search through the server's completions endpoints (``num_beams``, ``length_penalty``: fields outside
OpenAI's schema, sent by the ``openai`` client with ``extra_body``): the same text as the library's beam search
for a generation template, a label-word task's own prompt and a soft prompt; streamed, the whole text in one
piece; bad values refused with a 422 naming the field."""

from __future__ import annotations

import json

import httpx
import pytest

from prompttune.core.generate import GenerationConfig, Generator
from prompttune.serve import ServeConfig, build_table, create_app
from prompttune.serve.runner import ThreadedServer

PROMPT = "the cat sat on the mat"


@pytest.fixture(scope="module")
def server(tiny_model_dir, tiny_backbone, tmp_path_factory):
    from prompttune.prompt_task import PromptTask

    folder = tmp_path_factory.mktemp("beams")
    PromptTask.create(tiny_backbone, ["negative", "positive"], "prefix-tuning", {"num_virtual_tokens": 4}, seed=2).save(
        folder / "pre"
    )
    table = build_table(
        ServeConfig(model=str(tiny_model_dir)), ["gen=qa", "zs=classify", f"pre={folder / 'pre'}"],
        {"zs": "negative,positive"},
    )  # fmt: skip
    with ThreadedServer(create_app(ServeConfig(max_wait_ms=1), table)) as s:
        yield s, table


def library_answer(table, name: str, config: GenerationConfig) -> str:
    served = table.get(name)
    if served.kind == "generation":
        return Generator(served.backbone).complete(served.template, {"question": PROMPT}, config)
    return served.task.generate(PROMPT, config)


@pytest.mark.parametrize("name", ["gen", "zs", "pre"])
def test_beam_search_over_http_equals_the_library(server, name, monkeypatch):
    import openai

    from prompttune.core import beam

    s, table = server
    widths, real = [], beam.beam_search
    monkeypatch.setattr(beam, "beam_search", lambda *a, **k: widths.append(a[-1].num_beams) or real(*a, **k))
    api = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
    extra = {"num_beams": 3, "length_penalty": 0.5}
    got = api.completions.create(model=name, prompt=PROMPT, max_tokens=8, extra_body=extra).choices[0].text
    assert widths == [3]  # the request reached the beam search, with its width
    want = library_answer(table, name, GenerationConfig(max_new_tokens=8, num_beams=3, length_penalty=0.5))
    assert got == want
    chat = api.chat.completions.create(
        model=name, messages=[{"role": "user", "content": PROMPT}], max_tokens=8, extra_body=extra
    )
    assert chat.choices[0].message.content == want

    chunks = list(api.completions.create(model=name, prompt=PROMPT, max_tokens=8, stream=True, extra_body=extra))
    pieces = [c.choices[0].text for c in chunks if c.choices[0].text]
    assert "".join(pieces) == want and len(pieces) <= 1  # any beam may win until the end: one piece
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"num_beams": 0}, "num_beams"),
        ({"num_beams": 10_000}, "num_beams"),
        ({"num_beams": "3"}, "num_beams"),
        ({"num_beams": True}, "num_beams"),
        ({"num_beams": 2, "temperature": 0.7}, "num_beams"),
        ({"num_beams": 2, "length_penalty": "long"}, "length_penalty"),
    ],
)
def test_bad_beam_settings_are_422_naming_the_field(server, extra, named):
    s, _ = server
    with httpx.Client(base_url=s.url, timeout=60) as c:
        for stream in (False, True):
            r = c.post("/v1/completions", json={"model": "gen", "prompt": PROMPT, "max_tokens": 4, "stream": stream,
                                                **extra})  # fmt: skip
            assert r.status_code == 422, r.text
            assert named in json.dumps(r.json())

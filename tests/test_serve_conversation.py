"""`prompttune serve`'s chat completions read the whole conversation for a generation task: the system messages
and earlier turns (how DSPy and other OpenAI clients send instructions and demos) stand in the prompt before the
last user message, as literal text; the conversation is bounded by --max-input-chars; a bad role is a 422."""

from __future__ import annotations

import httpx
import pytest

from prompttune.core.generate import GenerationConfig, Generator
from prompttune.core.template import Template
from prompttune.serve import ServeConfig, build_table, create_app
from prompttune.serve.runner import ThreadedServer

SYSTEM = "Answer with one word. Literal braces stay: {{ text }} {% if x %}"
DEMO = [("user", "a great movie"), ("assistant", "positive")]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    template = tmp_path_factory.mktemp("conv") / "pass.yaml"
    template.write_text('user: "{{ text }}"\n')
    table = build_table(ServeConfig(model=str(tiny_model_dir)), [f"lm={template}"], {})
    with ThreadedServer(create_app(ServeConfig(max_input_chars=400), table)) as server:
        yield server, table.get("lm")


def chat(server, messages, **kw) -> httpx.Response:
    body = {"model": "lm", "messages": messages, "max_tokens": 8, **kw}
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)


def test_system_and_earlier_turns_reach_the_prompt_as_literal_text(served):
    server, task = served
    messages = [{"role": "system", "content": SYSTEM}] + [{"role": r, "content": c} for r, c in DEMO]
    messages.append({"role": "user", "content": "boring and bad"})
    got = chat(server, messages)
    assert got.status_code == 200, got.text
    gen, config = Generator(task.backbone), GenerationConfig(max_new_tokens=8)
    raw = "{% raw %}" + SYSTEM + "{% endraw %}"
    whole = Template(
        user="{{ text }}", system=raw, messages=tuple((r, "{% raw %}" + c + "{% endraw %}") for r, c in DEMO)
    )
    want = gen.complete(whole, {"text": "boring and bad"}, config)
    alone = gen.complete(Template(user="{{ text }}"), {"text": "boring and bad"}, config)
    assert SYSTEM in whole.render({"text": "x"}, task.backbone.tokenizer)  # the braces are text, not syntax
    assert got.json()["choices"][0]["message"]["content"] == want != alone
    only_user = chat(server, [{"role": "user", "content": "boring and bad"}])
    assert only_user.json()["choices"][0]["message"]["content"] == alone  # a lone user message is as before


def test_the_conversation_is_bounded_and_roles_are_checked(served):
    server, _ = served
    long = [{"role": "system", "content": "x" * 390}, {"role": "user", "content": "hello there"}]
    too_long = chat(server, long)
    assert too_long.status_code == 413 and "--max-input-chars" in too_long.text
    odd = chat(server, [{"role": "tool", "content": "42"}, {"role": "user", "content": "hi"}])
    assert odd.status_code == 422 and "role 'tool'" in odd.text
    raw = chat(server, [{"role": "system", "content": "{% endraw %}"}, {"role": "user", "content": "hi"}])
    assert raw.status_code == 422 and "endraw" in raw.text

"""The template sandbox: a template cannot reach Python objects, files or the environment, nor build
huge values (template_sandbox.py), through the per-row path (compile) and the hard-prompt path (render)."""

from __future__ import annotations

import jinja2
import pytest

from prompttune.core.errors import TemplateError
from prompttune.core.template import Template


def compile_(template: Template, tokenizer, n: int = 5):
    return template.compile(tokenizer, ["negative", "positive"], n)


def prefix_text(compiled) -> str:
    return "".join(p for p in compiled.prefix if isinstance(p, str))


ESCAPES = [
    "{{ text.__class__.__mro__ }}",
    "{{ ''.__class__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ text.__class__ }}",
    "{{ (text | attr('__class__')).__mro__ }}",
    "{{ labels.append('x') }}{{ text }}",
    "{{ joiner.__init__.__globals__['os'] }}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_sandbox_blocks_python_objects(tiny_backbone, source):
    t = Template(user="[soft]" + source + " {{ text }}")
    refused = (jinja2.exceptions.SecurityError, jinja2.exceptions.UndefinedError, TemplateError)
    with pytest.raises(refused) as e:
        c = compile_(t, tiny_backbone.tokenizer)
        c.render_row({"text": "x", "cycler": "x", "joiner": "x"})
    assert "unsafe" in str(e.value) or "undefined" in str(e.value)
    assert "<class" not in str(e.value) and "<function" not in str(e.value)


@pytest.mark.parametrize("name", ["lipsum", "range", "dict", "self", "namespace"])
def test_sandbox_does_not_render_python_object_reprs(tiny_backbone, name):
    t = Template(user="{{ " + name + " }} {{ text }}", chat=False)
    try:
        c = compile_(t, tiny_backbone.tokenizer)
        rendered = prefix_text(c) + c.render_row({"text": "x", name: "value"})
    except (jinja2.exceptions.SecurityError, jinja2.exceptions.UndefinedError, TemplateError):
        return  # refusing the template is fine too
    assert "<" not in rendered and "0x" not in rendered, rendered


HARD_ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.environ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ self.__init__.__globals__ }}",
    "{{ config.items() }}",
    "{{ request.application.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{% include '/etc/passwd' %}",
    "{% import '/etc/passwd' as p %}",
    "{% extends '/etc/hostname' %}",
    "{{ 'x' * 1000000000 }}",
    "{{ 2 ** 1000000000 }}",
    "{{ range(10) }}",
    "{{ q.format_map }}",
]


@pytest.mark.parametrize("source", HARD_ESCAPES)
def test_sandbox_refuses_escapes_when_rendering(source):
    t = Template(user=source + " {{ q }}", chat=False)
    with pytest.raises(TemplateError) as e:
        t.render({"q": "x"})
    assert "<class" not in str(e.value) and "root:" not in str(e.value)


def test_sandbox_never_reads_files_or_environment(monkeypatch):
    monkeypatch.setenv("PROMPTTUNE_SECRET", "s3cret")
    for source in ("{{ environ }}", "{{ os }}", "{% include 'secret.txt' %}", "{{ open('/etc/passwd') }}"):
        with pytest.raises(TemplateError) as e:
            Template(user=source + "{{ q }}", chat=False).render({"q": "x"})
        assert "s3cret" not in str(e.value)

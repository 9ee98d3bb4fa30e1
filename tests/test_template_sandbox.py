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


# --- bounds on rendering (template_limits.py): each case ends with an error naming its limit ---------------
S = "{% set s = q * 1000000 %}"  # a 1,000,000-character text, the most a template may build

LIMITS = {
    "nested loops over a huge text": (
        S + "{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
        "MAX_LOOP_ITERATIONS",
    ),
    "a tower of powers": ("{{ ((((10**64)**64)**64)**64)**64 }}{{ q }}", "MAX_INT_DIGITS"),
    "a chain of products": ("{% set a = 10**60 %}{{ a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a }}{{ q }}", "MAX_INT_DIGITS"),
    "round to 10**18 digits": ("{{ 1|round(-10**18, 'floor') }}{{ q }}", "MAX_INT_DIGITS"),
    "center filter": ("{{ q|center(10**10) }}", "MAX_OUTPUT_CHARS"),
    "join of a repeated list": ("{{ ([q*1000000]*1000000)|join }}", "MAX_OUTPUT_CHARS"),
    "format filter with a * width": ("{{ '%*s'|format(10**10, q) }}", "MAX_OUTPUT_CHARS"),
    "% operator with a * width": ("{{ '%*s' % (10**10, q) }}", "MAX_OUTPUT_CHARS"),
    "% operator with a written width": ("{{ '%10000000000s' % q }}", "MAX_OUTPUT_CHARS"),
    "str.format width": ("{{ '{:>10000000000}'.format(q) }}", "MAX_OUTPUT_CHARS"),
    "str.format_map width": ("{{ '{a:>10000000000}'.format_map({'a': q}) }}", "MAX_OUTPUT_CHARS"),
    "replace filter": (S + "{{ s|replace('', s) }}", "MAX_OUTPUT_CHARS"),
    "replace method": (S + "{{ s.replace('', s) }}", "MAX_OUTPUT_CHARS"),
    "center method": ("{{ q.center(10**10) }}", "MAX_OUTPUT_CHARS"),
    "ljust method": ("{{ q.ljust(10**10) }}", "MAX_OUTPUT_CHARS"),
    "to_bytes method": ("{{ (1).to_bytes(10**10, 'big') }}{{ q }}", "MAX_OUTPUT_CHARS"),
    "expandtabs method": ("{% set s = '\t' * 1000000 %}{{ s.expandtabs(100000) }}{{ q }}", "MAX_OUTPUT_CHARS"),
    "translate method": (S + "{{ s.translate({120: s}) }}", "MAX_OUTPUT_CHARS"),
    "join method": (S + "{{ s.join(s) }}", "MAX_OUTPUT_CHARS"),
    "indent filter": ("{% set s = '\n' * 1000000 %}{{ s|indent(100000) }}{{ q }}", "MAX_OUTPUT_CHARS"),
    "wordwrap filter": ("{% set s = 'a ' * 500000 %}{{ s|wordwrap(1, wrapstring=s) }}{{ q }}", "MAX_OUTPUT_CHARS"),
    "batch filter padding": ("{{ [q]|batch(10**10, 'x')|list|length }}", "MAX_OUTPUT_CHARS"),
    "slice filter": ("{{ [q]|slice(10**10)|list|length }}", "MAX_OUTPUT_CHARS"),
    "~ doubling": (S + "{{ s ~ s }}", "MAX_OUTPUT_CHARS"),
    "+ doubling": (S + "{{ s + s }}", "MAX_OUTPUT_CHARS"),
    "a list of references doubled 60 times": (
        "{% set a = [q] %}" + "{% set a = [a, a] %}" * 60 + "{{ a|string|length }}",
        "MAX_OUTPUT_CHARS",
    ),
    "a macro body built in a loop": (
        "{% set s = q * 100000 %}{% macro f() %}{% for a in 'abcdefghijkl' %}{{ s }}{% endfor %}{% endmacro %}"
        "{{ f()|length }}",
        "MAX_OUTPUT_CHARS",
    ),
    "a {% set %} block built in a loop": (
        "{% set s = q * 100000 %}{% set x %}{% for a in 'abcdefghijkl' %}{{ s }}{% endfor %}{% endset %}{{ x|length }}",
        "MAX_OUTPUT_CHARS",
    ),
    "the rendered text itself": (S + "{% for a in 'ab' %}{{ s }}{% endfor %}", "MAX_OUTPUT_CHARS"),
    "a recursive macro": ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}{{ q }}", "MAX_CALL_DEPTH"),
    "a recursive loop": ("{% for a in [1] recursive %}{{ loop([1]) }}{% endfor %}{{ q }}", "MAX_CALL_DEPTH"),
    "3,000 nested parentheses": ("{{ " + "(" * 3000 + "q" + ")" * 3000 + " }}", "MAX_NESTING"),
    "300 nested ifs": ("{% if 1 %}" * 300 + "{{ q }}" + "{% endif %}" * 300, "MAX_NESTING"),
    "25 nested loops": ("{% for a in 'ab' %}" * 25 + "{{ q }}" + "{% endfor %}" * 25, "MAX_NESTING"),
    "a 2 MB template": ("{{ q }}" + "x" * 2_000_000, "MAX_TEMPLATE_CHARS"),
}


@pytest.mark.parametrize("case", list(LIMITS))
def test_rendering_stops_at_a_named_limit(case):
    source, limit = LIMITS[case]
    with pytest.raises(TemplateError, match=limit):
        Template(user=source, chat=False).render({"q": "x"})


def test_calls_count_against_the_loop_budget(monkeypatch):
    from prompttune.core import template_limits

    monkeypatch.setattr(template_limits, "MAX_LOOP_ITERATIONS", 1000)
    source = "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}{{ q }}"
    with pytest.raises(TemplateError, match="MAX_LOOP_ITERATIONS"):  # 2**40 calls, none of them deep
        Template(user=source, chat=False).render({"q": "x"})


def test_rendering_stops_at_its_deadline(monkeypatch):
    from prompttune.core import template_limits

    monkeypatch.setattr(template_limits, "MAX_RENDER_SECONDS", -1.0)  # already past: the first step stops
    with pytest.raises(TemplateError, match="MAX_RENDER_SECONDS"):
        Template(user="{% for a in 'ab' %}{{ a }}{% endfor %}{{ q }}", chat=False).render({"q": "x"})


def test_limits_hold_on_the_per_row_path_too(tiny_backbone):
    with pytest.raises(TemplateError, match="MAX_OUTPUT_CHARS"):  # when compiled (placeholder values) or per row
        c = compile_(Template(user="[soft] {{ text }} {{ text|center(10**10) }}"), tiny_backbone.tokenizer)
        c.render_row({"text": "x"})


def test_a_template_too_large_or_deep_is_refused_when_made():
    from prompttune.core.template_sandbox import render_string

    with pytest.raises(TemplateError, match="MAX_TEMPLATE_CHARS"):
        render_string("x" * 2_000_000, {})
    with pytest.raises(TemplateError, match="nested"):  # a chain Python cannot compile: an error, not a crash
        Template(user="{{ q" + "+q" * 1000 + " }}")


@pytest.mark.parametrize(
    "source", ["{{ 1/0 }}", "{{ 10.0**400 }}", "{{ 1" + "0" * 5000 + " }}", "{{ [1, 'a']|sort }}", "{{ 1|no_such }}"]
)
def test_arithmetic_type_and_name_errors_are_template_errors(source):
    with pytest.raises(TemplateError, match="template"):
        Template(user=source + "{{ q }}", chat=False).render({"q": "x"})


# --- no object reprs: every path that turns a value into text refuses methods, macros and loops -----------
LEAKS = [
    "{{ q.upper|string }}",
    "{{ q.upper ~ '' }}",
    "{{ [q.upper]|join }}",
    "{{ '%s'|format(q.upper) }}",
    "{{ {'a': q.upper}|dictsort|string }}",
    "{{ [q]|join(attribute='upper') }}",
    "{{ [q]|map(attribute='upper')|join }}",
    "{{ q.upper|pprint }}",
    "{{ q.upper|e }}",
    "{{ [q.upper]|list|string }}",
    "{{ [q.upper]|first }}",
    "{{ '%s' % q.upper }}",
    "{{ '%r' % (q.upper,) }}",
    "{{ '{}'.format(q.upper) }}",
    "{{ '{!r}'.format(q.upper) }}",
    "{{ '{0.upper}'.format(q) }}",
    "{{ q.format|string }}",
    "{% macro f() %}{% endmacro %}{{ f|string }}{{ q }}",
    "{% for a in [1] %}{{ loop|string }}{% endfor %}{{ q }}",
    "{{ self|string }}{{ q }}",
]


@pytest.mark.parametrize("source", LEAKS)
def test_no_object_repr_reaches_the_text(source):
    with pytest.raises(TemplateError, match="cannot turn a (method|macro|loop object|self) into text") as e:
        Template(user=source, chat=False).render({"q": "x"})
    assert "0x" not in str(e.value) and "<" not in str(e.value)


def test_iterators_print_as_lists_not_reprs():
    t = Template(user="{{ labels|map('upper')|string }} {{ [1, 2]|reverse|string }} {{ q }}", chat=False)
    assert t.render({"q": "x"}, labels=["a", "b"]) == "['A', 'B'] [2, 1] x"


def test_everyday_templates_render_as_before():
    source = (
        "{% for l in labels %}{{ loop.index }}. {{ l|upper }}\n{% endfor %}{{ labels|map('upper')|join(', ') }} "
        "{{ q|truncate(5) }} {{ '%s!'|format(q) }} {{ '{}?'.format(q) }} {{ q ~ '.' }} {{ q * 2 }} {{ 2**10 }} "
        "{{ q|center(14) }}|{{ q|replace('g', 'G') }} {{ q.split()|join('/') }} {{ {'a': 1}|dictsort|first|join('=') }}"
    )
    text = Template(user=source, chat=False).render({"q": "great movie!"}, labels=["neg", "pos"])
    assert text == (
        "1. NEG\n2. POS\nNEG, POS gr... great movie!! great movie!? great movie!. great movie!great movie! 1024 "
        " great movie! |Great movie! great/movie! a=1"
    )


def test_cli_reports_a_limit_as_one_line(tmp_path, monkeypatch, capsys):
    import sys

    from prompttune import cli

    (tmp_path / "wide.yaml").write_text('user: "{{ q|center(10**10) }}"\nchat: false\n')
    monkeypatch.setattr(sys, "argv", ["prompttune", "templates", "render", str(tmp_path / "wide.yaml"), "--var", "q=x"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "MAX_OUTPUT_CHARS" in err and "Traceback" not in err

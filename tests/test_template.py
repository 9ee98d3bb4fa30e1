"""Templates: parsing specs, the constant prefix, per-row text, soft slots and the Jinja sandbox."""

from __future__ import annotations

import json

import pytest
from tiny import make_tokenizer

from prompttune.core.errors import TemplateError
from prompttune.core.template import BUILTIN, SoftSlot, Template

LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def plain_tokenizer():
    """A tokenizer with no chat template."""
    tok = make_tokenizer(chat=False)
    assert not getattr(tok, "chat_template", None)
    return tok


def compile_(template: Template, tokenizer, n: int = 5, labels=LABELS):
    return template.compile(tokenizer, list(labels), n)


def prefix_text(compiled) -> str:
    return "".join(p for p in compiled.prefix if isinstance(p, str))


def slots(compiled) -> list[SoftSlot]:
    return [p for p in compiled.prefix if isinstance(p, SoftSlot)]


# --- from_spec -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_names(name):
    t = Template.from_spec(name)
    assert t.user == BUILTIN[name]["user"] and t.system == BUILTIN[name]["system"]
    assert t.chat is True


def test_default_follows_the_data_shape():
    assert Template.from_spec(None) == Template.from_spec("classify")
    assert Template.from_spec(None, ("text_a", "text_b")) == Template.from_spec("classify-pair")
    assert Template.from_spec("classify-pair").variables == {"text_a", "text_b"}
    assert Template.from_spec("classify").variables == {"text"}  # 'labels' is not a row field


def test_from_dict():
    t = Template.from_spec({"system": "Be brief.", "user": "[soft]Q: {{ question }}", "answer": "A:", "chat": False})
    assert t == Template(user="[soft]Q: {{ question }}", system="Be brief.", answer="A:", chat=False)
    assert t.variables == {"question"}
    assert Template.from_spec(t) is t
    assert Template.from_spec(t.to_dict()) == t


@pytest.mark.parametrize("spec", [{"system": "no user"}, {"user": "{{ text }}", "colour": "red"}])
def test_from_dict_bad_keys(spec):
    with pytest.raises(TemplateError, match="expected keys user"):
        Template.from_spec(spec)


def test_from_json_file(tmp_path):
    path = tmp_path / "tmpl.json"
    path.write_text(json.dumps({"user": "[soft]{{ text }}", "system": "S"}))
    assert Template.from_spec(str(path)) == Template(user="[soft]{{ text }}", system="S")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(TemplateError, match="not valid JSON") as e:
        Template.from_spec(str(bad))
    assert str(bad) in str(e.value)


def test_one_string_template_with_label():
    t = Template.from_spec("Review: {{ text }}\nSentiment: [label]")
    assert t == Template(user="Review: {{ text }}\nSentiment: ", chat=False)
    # trailing whitespace after [label] is allowed
    assert Template.from_spec("{{ text }} => [label]  \n").user == "{{ text }} => "


def test_not_builtin_and_no_label_marker():
    with pytest.raises(TemplateError) as e:
        Template.from_spec("Review: {{ text }}")
    msg = str(e.value)
    assert "not a built-in name" in msg and "[label]" in msg
    assert "classify" in msg  # lists the built-ins


def test_text_after_label_marker():
    with pytest.raises(TemplateError, match="text after \\[label\\]") as e:
        Template.from_spec("{{ text }} is [label] sentiment")
    assert "'sentiment'" in str(e.value)


def test_jinja_syntax_error_is_a_template_error():
    with pytest.raises(TemplateError, match="line 1"):
        _ = Template(user="{{ text ").variables


# --- compiled: prefix and row ---------------------------------------------------------------------


def test_builtin_prefix_has_system_text_and_soft_slot(tiny_backbone):
    c = compile_(Template.from_spec("classify"), tiny_backbone.tokenizer, n=7)
    text = prefix_text(c)
    assert "Classify the text." in text
    assert "<|im_start|>system" in text  # the backbone's own chat template was applied
    assert "Possible labels: negative, positive." in text
    assert slots(c) == [SoftSlot(0, 7)]
    assert c.soft_token_count == 7 + 4  # + [soft:4] right before the answer
    assert c.row_slots == [SoftSlot(1, 4)]
    assert isinstance(c.prefix[-1], SoftSlot)  # [soft] stands right before {{ text }}
    row = c.render_row({"text": "a great movie", "label": "positive"})
    assert row.startswith("a great movie")
    assert "Classify" not in row  # the constant part is not repeated per row
    assert c.split_row(row)[-2].endswith("<|im_start|>assistant\n")  # then the answer's soft tokens
    assert c.split_row(row)[-1] == SoftSlot(1, 4)


def test_pair_template_prefix_and_row(tiny_backbone):
    c = compile_(Template.from_spec("classify-pair"), tiny_backbone.tokenizer, n=3)
    assert slots(c) == [SoftSlot(0, 3)]
    assert c.prefix[-1] == "Text A:"
    row = c.render_row({"text_a": "a cat", "text_b": "an animal"})
    assert "a cat\nText B: an animal" in row
    assert "Text A" not in row


def test_explicit_soft_size(tiny_backbone):
    t = Template(system="sys [soft:2]", user="[soft:3]Q: {{ text }}")
    c = compile_(t, tiny_backbone.tokenizer, n=20)
    assert slots(c) == [SoftSlot(0, 2), SoftSlot(1, 3)]
    assert c.soft_token_count == 5


def test_default_soft_size_comes_from_the_method(tiny_backbone):
    c = compile_(Template(user="[soft]{{ text }}"), tiny_backbone.tokenizer, n=11)
    assert slots(c) == [SoftSlot(0, 11)]


def test_zero_soft_size_is_an_error(tiny_backbone):
    with pytest.raises(TemplateError, match="positive size"):
        compile_(Template(user="[soft:0]{{ text }}"), tiny_backbone.tokenizer)


@pytest.mark.parametrize(
    "user", ["{{ text }} [soft]", "[soft]{{ text }} and [soft:2]", "{{ text_a }} [soft] {{ text_b }}"]
)
def test_soft_slot_after_first_field_is_part_of_the_row(tiny_backbone, user):
    c = compile_(Template(user=user), tiny_backbone.tokenizer)
    assert c.row_slots
    row = c.render_row({"text": "hi", "text_a": "a", "text_b": "b"})
    assert any(isinstance(p, SoftSlot) for p in c.split_row(row))


def test_soft_slot_in_answer_after_field(tiny_backbone):
    c = compile_(Template(user="{{ text }}", answer="[soft:3]"), tiny_backbone.tokenizer)
    parts = c.split_row(c.render_row({"text": "hi"}))
    assert isinstance(parts[-1], SoftSlot) and parts[-1].size == 3  # right before the label


def test_template_without_fields(tiny_backbone):
    with pytest.raises(TemplateError, match="uses no row field"):
        compile_(Template(user="[soft] hello"), tiny_backbone.tokenizer)


def test_labels_variable_renders_label_words(tiny_backbone):
    t = Template(system="Options: {{ labels | join(', ') }}.", user="{{ text }}")
    c = compile_(t, tiny_backbone.tokenizer, labels=["great", "terrible", "so-so"])
    assert "Options: great, terrible, so-so." in prefix_text(c)
    assert t.variables == {"text"}


def test_braces_and_json_are_literal(tiny_backbone):
    system = 'Reply as JSON like {"label": "positive", "extra": {"score": [1, 2]}} and {braces}.'
    t = Template(system=system, user="Input {x}: {{ text }}", chat=False)
    c = compile_(t, tiny_backbone.tokenizer)
    assert prefix_text(c) == system + "\n\nInput {x}:"
    assert c.render_row({"text": '{"k": {"v": 1}}'}).endswith('{"k": {"v": 1}}')


def test_row_values_are_not_evaluated(tiny_backbone):
    c = compile_(Template(user="Q: {{ text }}", chat=False), tiny_backbone.tokenizer)
    row = c.render_row({"text": "{{ 7 * 7 }} {% if true %}x{% endif %}"})
    assert row.strip() == "{{ 7 * 7 }} {% if true %}x{% endif %}"


def test_row_value_with_soft_marker_is_not_a_slot(tiny_backbone):
    c = compile_(Template(user="[soft:2]Q: {{ text }}", chat=False), tiny_backbone.tokenizer)
    row = c.render_row({"text": "see [soft] and [soft:9] \ue000 0\ue001"})
    assert "[soft] and [soft:9]" in row
    assert "\ue000" not in row and "\ue001" not in row  # private sentinels are stripped from data
    assert c.soft_token_count == 2
    assert slots(c) == [SoftSlot(0, 2)]


def test_trailing_space_before_field_leaves_the_prefix(tiny_backbone):
    c = compile_(Template(user="Review: {{ text }}", chat=False), tiny_backbone.tokenizer)
    assert c.prefix == ["Review:"]  # the space goes with the row, so ' great' keeps its space
    assert c.render_row({"text": "great"}).startswith(" ")


def test_prefix_plus_row_is_the_rendered_text(tiny_backbone):
    c = compile_(Template(user="Review: {{ text }}", chat=False), tiny_backbone.tokenizer)
    assert prefix_text(c) + c.render_row({"text": "great"}) == "Review: great"


def test_label_space_follows_the_one_string_template(tiny_backbone):
    c = compile_(Template.from_spec("Review: {{ text }}\nSentiment: [label]"), tiny_backbone.tokenizer)
    assert c.label_text("positive") == " positive"
    assert c.render_row({"text": "great"}).endswith("\nSentiment:")


def test_prefix_that_changes_per_row_is_an_error(tiny_backbone):
    t = Template(user="{% if text == 'x' %}X {% endif %}Q: {{ text }}", chat=False)
    c = compile_(t, tiny_backbone.tokenizer)
    with pytest.raises(TemplateError, match="changes from row to row"):
        c.render_row({"text": "x"})


def test_missing_field_in_row_is_an_error(tiny_backbone):
    c = compile_(Template(user="{{ a }} / {{ b }}", chat=False), tiny_backbone.tokenizer)
    with pytest.raises(KeyError):
        c.render_row({"a": "only a"})


# --- backbones without a chat template --------------------------------------------------------------


def test_no_chat_template_plain_layout(plain_tokenizer):
    t = Template(system="Be brief.", user="[soft]Q: {{ text }}", answer="A:", chat=False)
    c = compile_(t, plain_tokenizer, n=2)
    assert c.prefix == ["Be brief.\n\n", SoftSlot(0, 2), "Q:"]
    assert c.render_row({"text": "hi"}).endswith("hi" + "A:")


def test_chat_requested_without_chat_template_falls_back(plain_tokenizer):
    c = compile_(Template.from_spec("classify"), plain_tokenizer, n=2)
    text = prefix_text(c)
    assert "<|im_start|>" not in text
    assert text.startswith("Classify the text.")
    assert c.split_row(c.render_row({"text": "hi"})) == ["hi\nAnswer: ", SoftSlot(1, 4)]
    assert c.label_text("positive") == "positive"  # right after the soft tokens


def test_chat_false_ignores_the_chat_template(tiny_backbone):
    c = compile_(Template(user="[soft]Q: {{ text }}", chat=False), tiny_backbone.tokenizer, n=2)
    assert "<|im_start|>" not in prefix_text(c) + c.render_row({"text": "hi"})


def test_chatless_backbone_predicts(tmp_path_factory):
    from tiny import make_decoder

    from prompttune import Backbone, PromptTask

    folder = make_decoder(tmp_path_factory.mktemp("plain") / "decoder", chat=False)
    backbone = Backbone.load(str(folder))
    assert not getattr(backbone.tokenizer, "chat_template", None)
    for spec in ("classify", "[soft]Review: {{ text }}\nSentiment: [label]"):
        task = PromptTask.create(backbone, LABELS, method_config={"num_virtual_tokens": 2}, template=spec)
        assert "<|im_start|>" not in prefix_text(task.model.compiled)
        preds = task.predict(["a great movie", "boring and bad"])
        assert len(preds) == 2 and all(p.label in LABELS for p in preds)
        assert all(abs(sum(p.scores.values()) - 1) < 1e-5 for p in preds)


def test_demos_are_earlier_turns_in_the_constant_prefix(tiny_backbone):
    t = Template.from_spec("classify").with_demos(
        [{"text": "I loved it", "label": "positive"}, {"text": "boring", "label": "negative"}]
    )
    c = t.compile(tiny_backbone.tokenizer, ["bad", "good"], 4, {"positive": "good", "negative": "bad"})
    assert "I loved it<|im_end|>\n<|im_start|>assistant\ngood<|im_end|>" in c.prefix_text
    assert "boring<|im_end|>\n<|im_start|>assistant\nbad<|im_end|>" in c.prefix_text
    assert c.render_row({"text": "what a joy"}).startswith("what a joy")
    assert "loved" not in c.render_row({"text": "what a joy"})
    assert Template.from_spec(t.to_dict()).demos == t.demos  # survives the manifest


# --- hard prompts: named variables, partials, roles, rendering ---------------------------------------------


def test_declared_variable_the_text_never_uses_is_an_error():
    with pytest.raises(TemplateError, match="variable 'context' is declared but the text never uses it"):
        Template.from_spec({"variables": {"question": "q", "context": "c"}, "user": "{{ question }}"})


def test_used_variable_that_is_not_declared_is_an_error(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("variables: [question]\nuser: '{{ question }} {{ context }}'\n")
    with pytest.raises(TemplateError, match="variable 'context' is used but not declared") as e:
        Template.from_spec(str(path))
    assert str(path) in str(e.value)


def test_defaults_make_a_variable_optional():
    t = Template.from_spec("summarize")
    assert t.variables == {"text"} and t.used_variables == {"text", "sentences"}
    assert "at most 3 sentences" in t.render({"text": "x"})
    assert "at most 1 sentences" in t.render({"text": "x", "sentences": 1})


def test_missing_and_unused_values_are_errors_naming_the_variable():
    t = Template.from_spec("rag")
    with pytest.raises(TemplateError, match="row 7: missing variable 'context'"):
        t.check_values({"question": "q"}, "row 7")
    with pytest.raises(TemplateError, match="--var: variable 'contxt' is not used by the template"):
        t.check_values({"question": "q", "context": "c", "contxt": "typo"})


def test_partial_binds_some_variables():
    t = Template.from_spec("rag").partial(context="[1] Paris is in France.")
    assert t.variables == {"question"}
    assert "[1] Paris is in France." in t.render({"question": "Where is Paris?"})
    assert Template.from_spec(t.to_dict()) == t  # a partial survives the registry / manifest
    with pytest.raises(TemplateError, match="partial: variable 'nope' is not used"):
        t.partial(nope="x")


def test_roles_go_through_the_backbones_chat_template(tiny_backbone):
    t = Template.from_spec(
        {
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "Hi {{ name }}"}, {"role": "assistant", "content": "Hello!"}],
            "user": "{{ question }}",
            "assistant": "Sure:",
        }
    )
    text = t.render({"name": "Ada", "question": "2+2?"}, tiny_backbone.tokenizer)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi Ada<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\nSure:"
    )
    plain = t.render({"name": "Ada", "question": "2+2?"}, None)
    assert plain == "Be brief.\n\nHi Ada\nAnswer: Hello!\n\n2+2?\nSure:"


def test_bad_role_is_an_error():
    with pytest.raises(TemplateError, match="role: user\\|assistant"):
        Template.from_spec({"messages": [{"role": "tool", "content": "x"}], "user": "{{ q }}"})


def test_demos_render_as_earlier_turns_in_a_hard_prompt():
    t = Template.from_spec("classify").with_demos([{"text": "I loved it", "label": "positive"}])
    messages, answer = t.render_messages({"text": "boring"}, ["negative", "positive"])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == "positive" and messages[3]["content"] == "boring" and answer == ""
    assert "[soft" not in json.dumps(messages)  # hard rendering leaves soft slots out


def test_braces_and_json_are_literal_in_a_rendered_prompt():
    t = Template(user='Return JSON like {"answer": "..."} for {{ q }}; {x} and { {y} } stay.', chat=False)
    assert t.render({"q": "{{ 7 * 7 }}"}) == 'Return JSON like {"answer": "..."} for {{ 7 * 7 }}; {x} and { {y} } stay.'


def test_soft_slots_use_the_same_syntax_as_p_tuning(tiny_backbone):
    t = Template(user="[soft:2]Review: {{ text }}[soft:3] Sentiment:", chat=False)
    c = compile_(t, tiny_backbone.tokenizer)
    assert slots(c) == [SoftSlot(0, 2)] and c.row_slots == [SoftSlot(1, 3)]
    assert t.hard().render({"text": "fun"}) == "Review: fun Sentiment:"


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("user: [unclosed\n")
    with pytest.raises(TemplateError, match="not valid YAML") as e:
        Template.from_spec(str(path))
    assert str(path) in str(e.value)


@pytest.mark.parametrize("name", ["react", "rag", "qa", "qa-extractive", "summarize", "cot"])
def test_generation_builtins_render(name):
    t = Template.from_spec(name)
    text = t.render({v: f"<{v}>" for v in t.variables})
    assert all(f"<{v}>" in text for v in t.variables)


def test_react_template_has_the_react_format():
    t = Template.from_spec("react")
    assert t.variables == {"question", "tools"}
    text = t.render({"question": "2+3?", "tools": "calculator: arithmetic"})
    for word in ("Thought:", "Action:", "Action Input:", "Observation:", "Final Answer:", "calculator: arithmetic"):
        assert word in text
    later = t.render({"question": "q", "tools": "t", "scratchpad": "Thought: add\nAction: calculator\n"})
    assert later.endswith("Thought: add\nAction: calculator\nThought:")

"""Programs: signatures, reply parsing with retries, modules on a fake LM, the in-process and HTTP LMs,
saving and loading (issue 15, item 1)."""

import json

import httpx
import pytest

from prompttune.core.errors import DataError, ModelError
from prompttune.programs import (
    BackboneLM,
    ChainOfThought,
    FakeLM,
    InputField,
    OutputField,
    OutputParseError,
    Pipeline,
    Predict,
    Program,
    Prompt,
    Signature,
    SignatureError,
    load_program,
    save_program,
    tracing,
    using,
)
from prompttune.programs.lm_http import OpenAILM
from prompttune.programs.parse import parse_reply

SENTIMENT = "review -> sentiment: one of positive, negative"


# --- signatures -----------------------------------------------------------------------------------
def test_a_signature_string_names_inputs_outputs_and_a_label_set():
    sig = Signature.parse(SENTIMENT)
    assert sig.input_names == ["review"] and sig.output_names == ["sentiment"]
    assert sig.outputs[0].kind == "label" and sig.outputs[0].options == ("positive", "negative")
    qa = Signature.parse("context, question -> answer")
    assert qa.input_names == ["context", "question"] and qa.outputs[0].kind == "text"
    mixed = Signature.parse("q -> n: number, data: json, why: the reason; mood: one of calm, angry")
    kinds = [(f.name, f.kind) for f in mixed.outputs]
    assert kinds == [("n", "number"), ("data", "json"), ("why", "text"), ("mood", "label")]
    assert mixed.outputs[2].description == "the reason"


def test_a_signature_class_declares_typed_fields_and_its_docstring_is_the_instruction():
    class Sentiment(Signature):
        """Classify the sentiment of a movie review."""

        review = InputField("a movie review")
        sentiment = OutputField("its sentiment", one_of=["positive", "negative"])

    sig = Sentiment()
    assert sig.instruction == "Classify the sentiment of a movie review."
    assert sig.inputs[0].description == "a movie review"
    assert sig.outputs[0].options == ("positive", "negative")
    assert Predict(Sentiment).signature == sig


@pytest.mark.parametrize(
    "spec, says",
    [
        ("review sentiment", "one '->'"),
        ("a -> b -> c", "one '->'"),
        (" -> label", "no inputs"),
        ("text -> ", "no outputs"),
        ("text, text -> label", "named twice"),
        ("text -> 2label", "not a plain identifier"),
        ("text: number -> label", "types are for outputs"),
        ("text -> label: one of", "without options"),
        ("text -> label: one of a, a", "listed twice"),
        ("text, , x -> label", "empty input"),
    ],
)
def test_bad_signatures_say_what_to_write(spec, says):
    with pytest.raises(SignatureError, match=says):
        Signature.parse(spec)


# --- parsing replies ------------------------------------------------------------------------------
def outs(spec: str):
    return Signature.parse(spec).outputs


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("sentiment: Positive.", "positive"),
        ("sentiment: negative, clearly", "negative"),
        ("sentiment: I think it is positive", "positive"),
        ("NEGATIVE", "negative"),
    ],
)
def test_a_label_is_read_from_the_reply(reply, expected):
    assert parse_reply(outs(SENTIMENT), reply) == {"sentiment": expected}


def test_numbers_json_and_several_fields_are_read_by_kind():
    assert parse_reply(outs("q -> n: number"), "n: The total is 1,234.") == {"n": 1234}
    assert parse_reply(outs("q -> n: number"), "n: -0.5") == {"n": -0.5}
    got = parse_reply(outs("q -> data: json"), 'data: here you go {"a": [1, 2]} done')
    assert got == {"data": {"a": [1, 2]}}
    two = parse_reply(outs("q -> reasoning, answer: number"), "reasoning: 2 and 2\nmake 4\nanswer: 4")
    assert two == {"reasoning": "2 and 2\nmake 4", "answer": 4}


@pytest.mark.parametrize(
    "spec, reply, says",
    [
        (SENTIMENT, "sentiment: positive and negative", "one of positive, negative"),
        (SENTIMENT, "sentiment: meh", "one of positive, negative"),
        ("q -> n: number", "n: many", "a number"),
        ("q -> data: json", "data: {oops", "a JSON value"),
        ("q -> a, b", "a: 1", "a line 'b: ...'"),
    ],
)
def test_a_reply_that_does_not_parse_names_the_field_and_what_was_expected(spec, reply, says):
    with pytest.raises(OutputParseError, match=says) as e:
        parse_reply(outs(spec), reply)
    assert "the model replied" in str(e.value)


# --- modules on the fake LM -----------------------------------------------------------------------
def test_predict_asks_again_with_the_parse_error_and_reads_the_second_reply():
    seen = []

    def respond(prompt: Prompt) -> str:
        seen.append(prompt.user)
        return "positive" if "could not be read" in prompt.user else "maybe?"

    lm = FakeLM(respond)
    with using(lm):
        assert Predict(SENTIMENT)(review="fine film").sentiment == "positive"
    assert lm.calls == 2 and "expected one of positive, negative" in seen[1]
    with using(FakeLM(lambda p: "maybe?")), pytest.raises(OutputParseError, match="after 1 tries"):
        Predict(SENTIMENT, max_retries=0)(review="fine film")


def test_predict_needs_its_inputs_and_an_lm():
    with pytest.raises(DataError, match="using"):
        Predict(SENTIMENT)(review="x")
    with using(FakeLM(lambda p: "positive")), pytest.raises(DataError, match=r"\['review'\] not given"):
        Predict(SENTIMENT)(text="x")
    with pytest.raises(DataError, match="max_retries"):
        Predict(SENTIMENT, max_retries=99)


def test_the_prompt_holds_instruction_fields_and_demos_in_order():
    step = Predict(SENTIMENT, instruction="Judge the review.")
    step.demos = [{"review": "loved it", "sentiment": "positive"}]
    prompt = step.prompt({"review": "hated it"})
    assert prompt.system.startswith("Judge the review.") and "one of: positive, negative" in prompt.system
    assert prompt.demos == (("review: loved it", "sentiment: positive"),)
    assert prompt.user == "review: hated it" and prompt.answer == "sentiment:"


def test_chain_of_thought_reads_reasoning_before_the_answer_and_chooses_by_score_when_it_can():
    cot = ChainOfThought(SENTIMENT)
    with using(FakeLM(lambda p: "reasoning: the reviewer smiled\nsentiment: positive")):
        assert cot(review="x") == {"reasoning": "the reviewer smiled", "sentiment": "positive"}

    def choose(prompt, options):
        assert prompt.answer == "reasoning: it was dull\nsentiment:"  # the label is chosen after the reasoning
        return "negative"

    lm = FakeLM(lambda p: "it was dull", choose=choose)
    with using(lm):
        assert cot(review="x") == {"reasoning": "it was dull", "sentiment": "negative"}
    assert "sentiment: negative" not in cot.system_text()  # and nothing leaked into the module


class TwoSteps(Program):
    def __init__(self):
        self.summarize = Predict("review -> gist")
        self.judge = Predict("gist -> sentiment: one of positive, negative")

    def forward(self, review):
        gist = self.summarize(review=review).gist
        return self.judge(gist=gist)


def test_a_program_class_composes_modules_and_traces_each_call():
    program = TwoSteps()
    assert [n for n, _ in program.named_predictors()] == ["summarize", "judge"]
    lm = FakeLM(lambda p: "good stuff" if p.answer == "gist:" else "positive")
    with using(lm), tracing() as trace:
        assert program(review="wow").sentiment == "positive"
    assert [(values, outputs) for _, values, outputs in trace] == [
        ({"review": "wow"}, {"gist": "good stuff"}),
        ({"gist": "good stuff"}, {"sentiment": "positive"}),
    ]
    state = program.state()
    other = TwoSteps()
    program.judge.demos = [{"gist": "g", "sentiment": "positive"}]
    other.load_state(program.state())
    assert other.state() == program.state() != state


# --- files ----------------------------------------------------------------------------------------
def test_a_yaml_program_runs_its_steps_over_one_namespace(tmp_path):
    path = tmp_path / "prog.yaml"
    path.write_text(
        "steps:\n"
        "  - name: gist\n    signature: 'review -> gist'\n"
        "  - name: judge\n    signature: 'gist -> sentiment: one of positive, negative'\n"
        "    module: chain_of_thought\n    instruction: Decide.\n"
    )
    program, record = load_program(path)
    assert record == {} and program.step_names == ["gist", "judge"]
    assert isinstance(program.steps[1], ChainOfThought) and program.steps[1].instruction == "Decide."
    lm = FakeLM(lambda p: "short" if p.answer == "gist:" else "reasoning: ok\nsentiment: negative")
    with using(lm):
        assert program(review="meh") == {"gist": "short", "reasoning": "ok", "sentiment": "negative"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - signature: 'a -> b'\n    modul: predict\n")
    with pytest.raises(DataError, match=r"bad.yaml, step 1: unknown key\(s\) \['modul'\]"):
        load_program(bad)


def test_a_saved_program_is_json_and_reloads_to_the_same_prompts_and_answers(tmp_path):
    program, _ = load_program(SENTIMENT)
    program.steps[0].demos = [{"review": "a {{ brace }} endless joy", "sentiment": "positive"}]
    program.steps[0].signature = program.steps[0].signature.with_instruction("Judge.")
    save_program(program, tmp_path / "out", best_val_score=0.75)
    raw = json.loads((tmp_path / "out" / "program.json").read_text())
    assert raw["format"] == "prompttune-program" and raw["best_val_score"] == 0.75
    again, record = load_program(tmp_path / "out")
    assert again.to_dict() == program.to_dict() and record["best_val_score"] == 0.75
    assert again.steps[0].prompt({"review": "x"}) == program.steps[0].prompt({"review": "x"})
    lm = FakeLM(lambda p: "positive" if p.demos else "negative")
    with using(lm):
        assert again(review="x") == program(review="x") == {"sentiment": "positive"}


# --- the in-process backbone ----------------------------------------------------------------------
def test_the_backbone_lm_generates_and_chooses_over_a_cached_prefix(tiny_backbone):
    import torch

    lm = BackboneLM(tiny_backbone)
    step = Predict(SENTIMENT)
    step.demos = [{"review": "a {{ joy }}", "sentiment": "positive"}]  # braces are shown as they are
    prompt = step.prompt({"review": "a terrible film"})
    reply = lm.complete(prompt, 5)
    assert reply.startswith("sentiment:")
    scores = lm.option_scores(prompt, ["positive", "negative"])
    # the same scores from the whole prompt run at once, without the cached prefix
    bb = tiny_backbone
    text = (
        bb.tokenizer.apply_chat_template(
            [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.demos[0][0]},
                {"role": "assistant", "content": prompt.demos[0][1]},
                {"role": "user", "content": prompt.user},
            ],
            tokenize=False,
            add_generation_prompt=True,
        )
        + prompt.answer
    )
    for option, got in zip(["positive", "negative"], scores, strict=True):
        ids = bb.tokenize(text)
        opt = bb.tokenize(" " + option)
        with torch.no_grad():
            logits = bb.model(torch.tensor([bb.bos_ids + ids + opt])).logits[0].float()
        logp = torch.log_softmax(logits[-len(opt) - 1 : -1], -1)
        want = float(logp[torch.arange(len(opt)), torch.tensor(opt)].sum())
        assert got == pytest.approx(want, abs=1e-3)
    with using(lm):
        assert step(review="a terrible film").sentiment in ("positive", "negative")


# --- an OpenAI-compatible server ------------------------------------------------------------------
def test_the_openai_lm_sends_system_demos_and_the_row_as_chat_turns():
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append((request.url.path, json.loads(request.content), request.headers.get("authorization")))
        if request.url.path.endswith("/chat/completions"):
            return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": "negative"}}]})
        return httpx.Response(200, json={"choices": [{"text": " positive\n"}]})

    step = Predict(SENTIMENT)
    step.demos = [{"review": "fun", "sentiment": "positive"}]
    lm = OpenAILM("http://llm.test/v1", "m", api_key="k", transport=httpx.MockTransport(handler))
    with using(lm):
        assert step(review="dull").sentiment == "negative"
    path, body, auth = bodies[0]
    assert path == "/v1/chat/completions" and auth == "Bearer k" and body["temperature"] == 0
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][2]["content"] == "sentiment: positive" and body["messages"][3]["content"] == "review: dull"
    plain = OpenAILM("http://llm.test/v1", "m", mode="completions", transport=httpx.MockTransport(handler))
    with using(plain):
        assert step(review="dull").sentiment == "positive"
    assert bodies[1][0] == "/v1/completions" and bodies[1][1]["prompt"].endswith("review: dull\nsentiment:")


def test_the_openai_lm_turns_http_errors_into_a_model_error_naming_the_url():
    def handler(request):
        return httpx.Response(503, text="overloaded")

    lm = OpenAILM("http://llm.test/v1", "m", transport=httpx.MockTransport(handler))
    with using(lm), pytest.raises(ModelError, match=r"http://llm.test/v1/chat/completions: HTTP 503: overloaded"):
        Predict(SENTIMENT)(review="x")
    with pytest.raises(DataError, match="http"):
        OpenAILM("llm.test", "m")

    def strict(request):  # OpenAI's own API refuses fields it does not know
        return httpx.Response(
            400, json={"error": {"message": "Unrecognized request argument supplied: guided_grammar"}}
        )

    typed = Predict(Signature.parse("review -> stars: number"))
    lm = OpenAILM("http://llm.test/v1", "m", guided=True, transport=httpx.MockTransport(strict))
    with using(lm), pytest.raises(ModelError, match=r"HTTP 400: .*guided_grammar.*leave it out"):
        typed(review="x")


def test_guided_json_sends_the_reply_form_as_response_format_and_reads_the_object_back():
    sent = []

    def server(request):  # a server that holds replies to response_format, as OpenAI's does
        body = json.loads(request.content)
        sent.append(body)
        if "response_format" not in body:
            return httpx.Response(200, json={"choices": [{"message": {"content": "stars: lots"}}]})
        return httpx.Response(200, json={"choices": [{"message": {"content": '{"stars": "4.5", "tags": ["a", 1]}'}}]})

    typed = Predict(Signature.parse("review -> stars: number, tags: json"), max_retries=0)
    with using(OpenAILM("http://llm.test/v1", "m", guided="json", transport=httpx.MockTransport(server))):
        out = typed(review="x")
    assert out.stars == 4.5 and out.tags == ["a", 1]
    fmt = sent[0]["response_format"]
    assert fmt["type"] == "json_schema" and "guided_grammar" not in sent[0]
    assert fmt["json_schema"]["schema"] == {
        "type": "object",
        "properties": {"stars": {"type": "string", "pattern": r"^-?[0-9]{1,18}(\.[0-9]{1,12})?$"}, "tags": {}},
        "required": ["stars", "tags"],
        "additionalProperties": False,
    }
    with using(OpenAILM("http://llm.test/v1", "m", transport=httpx.MockTransport(server))):
        with pytest.raises(OutputParseError):  # not guided: the free reply does not parse
            typed(review="x")
    labels = Predict(Signature.parse("review -> verdict: one of yes, no"), max_retries=0)
    with using(OpenAILM("http://llm.test/v1", "m", guided="json", transport=httpx.MockTransport(server))):
        with pytest.raises(OutputParseError):  # an object without the field is read as text, and fails to parse
            labels(review="x")
    assert sent[-1]["response_format"]["json_schema"]["schema"]["properties"] == {
        "verdict": {"type": "string", "enum": ["yes", "no"]}
    }
    with pytest.raises(DataError, match="guided 'regex'"):
        OpenAILM("http://llm.test/v1", "m", guided="regex")


def test_a_pipeline_needs_steps_whose_inputs_exist():
    program = Pipeline([("a", Predict("question -> answer"))])
    with using(FakeLM(lambda p: "x")), pytest.raises(DataError, match=r"reads \['question'\]"):
        program(text="hi")

"""Programs scored many rows at a time: ``BackboneLM.choose_many`` gives each row the scores it gets alone
(checked against the whole prompt run through the model without a cache), ``Pipeline.batch`` stops a row
whose reply did not parse, the metered LM counts a batch as its rows, and the journal replays batches."""

import pytest

from prompttune.programs import BackboneLM, FakeLM, Predict, Prompt, SearchConfig, load_program
from prompttune.programs.files import Pipeline
from prompttune.programs.journal import JournaledLM
from prompttune.programs.metrics import make_metric
from prompttune.programs.modules import using
from prompttune.programs.search import BudgetExhausted, MeteredLM, score

OPTIONS = ["positive", "negative", "not entailment", "so-so at best"]  # one-token and several-token options
REVIEWS = ["a joy", "a terrible, long and tiresome film that never ends", "fine", "so-so acting, great music"]


def reference_scores(bb, prompt: Prompt, options) -> list[float]:
    """Each option's summed log-probability from the whole prompt run at once, without a cached prefix."""
    import torch

    messages = [{"role": "system", "content": prompt.system}]
    for user, assistant in prompt.demos:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": prompt.user})
    text = bb.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prompt.answer
    out = []
    for option in options:
        ids, opt = bb.tokenize(text), bb.tokenize(" " + option)
        with torch.no_grad():
            logits = bb.model(torch.tensor([bb.bos_ids + ids + opt])).logits[0].float()
        logp = torch.log_softmax(logits[-len(opt) - 1 : -1], -1)
        out.append(float(logp[torch.arange(len(opt)), torch.tensor(opt)].sum()))
    return out


def test_choose_many_scores_each_row_as_if_alone(tiny_backbone):
    lm = BackboneLM(tiny_backbone)
    lm.BATCH_TOKENS = 48  # several batches of rows of different lengths, left-padded
    lm.KV_TOKENS = 300  # and batches bounded by the keys/values they hold (and keep for the longer options)
    step = Predict("review -> sentiment: one of " + ", ".join(OPTIONS))
    step.demos = [{"review": "lovely", "sentiment": "positive"}]
    prompts = [step.prompt({"review": r}) for r in REVIEWS]
    assert [len(tiny_backbone.tokenize(" " + o)) > 1 for o in OPTIONS[2:]] == [True, True]
    got = lm.option_scores_many(prompts, OPTIONS)
    for prompt, row in zip(prompts, got, strict=True):
        assert row == pytest.approx(reference_scores(tiny_backbone, prompt, OPTIONS), abs=1e-3)
    # the batched choice is each row's own choice, calibrated or not
    baseline = step.prompt({"review": "N/A"})
    for base in (None, baseline):
        assert lm.choose_many(prompts, OPTIONS, base) == [lm.choose(p, OPTIONS, base) for p in prompts]


def test_a_program_scored_in_batches_agrees_with_row_by_row(tiny_backbone):
    program, _ = load_program("review -> sentiment: one of positive, negative")
    rows = [{"review": r, "sentiment": s} for r, s in zip(REVIEWS, ["positive", "negative"] * 2, strict=True)]
    lm = BackboneLM(tiny_backbone)
    with using(lm):
        one_by_one = [program(review=r["review"]) for r in rows]
        assert program.batch([{"review": r["review"]} for r in rows]) == one_by_one
    acc = make_metric("accuracy", ["sentiment"])
    want = sum(p.sentiment == r["sentiment"] for p, r in zip(one_by_one, rows, strict=True)) / len(rows)
    assert score(program, rows, acc, lm) == want


def test_a_pipeline_batch_stops_rows_whose_reply_does_not_parse():
    first = Predict("text -> topic, mood")  # two outputs: a reply must name both
    program = Pipeline([("topic", first), ("judge", Predict("text, topic -> label: one of yes, no"))])
    chosen = []

    def reply(prompt: Prompt) -> str:
        return "???" if "bad" in prompt.user else "topic: films\nmood: calm"

    def choose(prompt: Prompt, options) -> str:
        chosen.append(prompt.user)
        return "yes"

    lm = FakeLM(reply, choose)
    with using(lm):
        out = program.batch([{"text": "good one"}, {"text": "bad one"}, {"text": "fine one"}])
    assert out[1] is None  # its first step never parsed (after the retry): the second step did not run for it
    assert out[0] == out[2] == {"topic": "films", "mood": "calm", "label": "yes"}
    assert len(chosen) == 2 and all("bad" not in u for u in chosen)


def test_the_metered_lm_counts_a_batch_as_its_rows_and_refuses_one_past_the_limit():
    lm = MeteredLM(FakeLM(lambda p: "x", lambda p, o: o[0]), SearchConfig(max_model_calls=5))
    prompts = [Prompt("", (), str(i)) for i in range(3)]
    assert lm.choose_many(prompts, ["a", "b"]) == ["a"] * 3 and lm.calls == 3
    with pytest.raises(BudgetExhausted, match="max_model_calls"):
        lm.choose_many(prompts, ["a", "b"])
    assert lm.calls == 3  # a refused batch costs nothing


def test_the_journal_replays_a_batch_and_asks_only_what_it_lacks(tmp_path):
    asked = []
    inner = FakeLM(lambda p: "x", lambda p, o: asked.append(p.user) or o[int(p.user) % 2])
    path = tmp_path / "search.jsonl"
    prompts = [Prompt("", (), str(i)) for i in range(4)]
    first = JournaledLM(inner, path, "s").choose_many(prompts[:3], ["a", "b"])
    again = JournaledLM(inner, path, "s")
    assert again.choose_many(prompts, ["a", "b"]) == [*first, "b"] == ["a", "b", "a", "b"]
    assert asked == ["0", "1", "2", "3"] and again.replayed == 3

"""Rows over a constant prefix held once (``shared_prefix/``), outside the server: programs' option scoring runs its
rows packed over one copy of the prompt's demos and system text, with the scores the copied layout gives; a decoder
on eager attention is switched to the cascade attention and keeps its outputs; one on the grouped attention is not
switched at all (training's one-pass steps and decoding's fast steps ask for it)."""

from __future__ import annotations

import pytest
import torch

from prompttune import shared_prefix
from prompttune.programs import BackboneLM, Predict

OPTIONS = ["positive", "negative", "not entailment", "so-so at best"]  # one-token and several-token options
REVIEWS = ["a joy", "a terrible, long and tiresome film", "fine", "so-so acting, great music", "ok"]


def _prompts():
    step = Predict("review -> sentiment: one of " + ", ".join(OPTIONS))
    step.demos = [{"review": "lovely", "sentiment": "positive"}]
    return [step.prompt({"review": r}) for r in REVIEWS]


def _scores(backbone, monkeypatch, held_once: bool) -> tuple[list[list[float]], int]:
    calls = []
    real = shared_prefix.run_rows
    with monkeypatch.context() as m:
        m.setattr(shared_prefix, "run_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
        if not held_once:
            m.setattr(shared_prefix.cascade, "ENABLED", False)
        lm = BackboneLM(backbone)
        lm.BATCH_TOKENS = 40  # several batches of rows of different lengths
        return lm.option_scores_many(_prompts(), OPTIONS), len(calls)


def test_option_scores_hold_the_prompt_once(tiny_backbone, monkeypatch):
    assert all(len(tiny_backbone.tokenize(" " + o)) > 1 for o in OPTIONS[2:])
    copied, calls = _scores(tiny_backbone, monkeypatch, held_once=False)
    assert calls == 0
    held, calls = _scores(tiny_backbone, monkeypatch, held_once=True)
    assert calls >= 4  # each batch's rows, then their several-token options over the rows' own keys/values
    for a, b in zip(held, copied, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    assert tiny_backbone.takes_one_pass  # the grouped attention took the plan itself: the model was not switched


def test_an_eager_decoder_is_switched_and_keeps_its_outputs(tiny_model_dir, monkeypatch):
    from prompttune import Backbone
    from prompttune.shared_prefix.cascade import CASCADE

    bb = Backbone.load(str(tiny_model_dir))
    bb.model.config._attn_implementation = "eager"  # as a decoder of another family loads
    assert shared_prefix.applies(bb)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.no_grad():
        before = bb.model(input_ids=ids).logits
    copied, _ = _scores(bb, monkeypatch, held_once=False)
    held, _ = _scores(bb, monkeypatch, held_once=True)
    assert bb.model.config._attn_implementation == CASCADE
    for a, b in zip(held, copied, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    with torch.no_grad():
        after = bb.model(input_ids=ids).logits  # no plan passed: the model's own eager attention
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_other_attention_is_refused(tiny_model_dir):
    from prompttune import Backbone
    from prompttune.shared_prefix.cascade import use_cascade

    bb = Backbone.load(str(tiny_model_dir))
    bb.model.config._attn_implementation = "sdpa"
    assert not shared_prefix.applies(bb)
    with pytest.raises(ValueError, match="eager attention only"):
        use_cascade(bb.model)


@pytest.mark.parametrize("words", [("no", "yes"), ("negative", "positive")])  # one token each; several (inline)
def test_label_words_are_scored_over_one_copy_of_a_long_prefix(tiny_backbone, sentiment_rows, monkeypatch, words):
    """At inference and in validation, rows attend one copy of the task's cached prefix (soft tokens in the rows
    too; several-token label words after each row under their tree, packed with it): the scores and validation
    accuracy of the copied layout, and the keys/values bound does not split the passes, since no row holds the
    prefix."""
    from prompttune import scorer
    from prompttune.core.data import from_records
    from prompttune.label_words import verbalizer_objective as vo
    from prompttune.prompt_task import PromptTask

    system = "Read the guidelines. " + " ".join(f"Rule {i}: weigh it." for i in range(8))
    spec = {"system": system, "user": "{{ text }} [soft]"}
    task = PromptTask.create(tiny_backbone, list(words), "prompt-tuning", {"num_virtual_tokens": 2}, spec)
    label = dict(zip(("negative", "positive"), words, strict=True))
    pm, ds = task.model, from_records([{**r, "label": label[r["label"]]} for r in sentiment_rows])
    assert (pm.max_form_len == 1) == (words[0] == "no") and pm.compiled.row_slots
    assert pm.max_form_len == 1 or pm._inline_chunk() is not None
    enc = pm.encode(ds)
    with monkeypatch.context() as m:
        m.setattr(shared_prefix.cascade, "ENABLED", False)
        want, want_acc = pm.score(enc), vo.VerbalizerObjective(pm, ds, ds).validate()
    lead, n = scorer.prefix_length(pm.cached_prefix()), len(enc.ids)
    budget = max(map(len, enc.ids)) * n  # the rows' own keys/values fit, not with a copy of the prefix each
    assert lead > 40 and (lead + max(map(len, enc.ids))) * n > budget
    monkeypatch.setattr(scorer, "KV_TOKEN_BUDGET", budget)
    calls = []
    real = shared_prefix.run_rows
    monkeypatch.setattr(shared_prefix.one_prefix, "run_rows", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    monkeypatch.setattr(vo, "VAL_KV_TOKENS", budget)
    got = pm.score(enc, batch_size=n)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert calls == [n]  # all the rows in one pass
    calls.clear()
    objective = vo.VerbalizerObjective(pm, ds, ds)
    objective._text_is_constant = lambda: False  # the rows' text is not kept: validation's passes hold the prefix once
    assert objective.validate() == want_acc
    assert calls == [n]


@pytest.mark.parametrize("draft_tokens", [0, 2])
def test_generation_decodes_over_one_copy_of_the_prefix(tiny_model_dir, monkeypatch, draft_tokens):
    """Greedy batched decoding (continuous batching, rows joining rows still writing; drafted tokens too) keeps
    the rows' own keys/values only and merges in the prefix held once: token for token what the copied layout
    writes, every cache shorter by exactly the prefix."""
    from prompttune import Backbone
    from prompttune.core.data import from_records
    from prompttune.core.generate import GenerationConfig
    from prompttune.generation import decode
    from prompttune.generation.task import GenerationTask

    backbone = Backbone.load(str(tiny_model_dir))
    torch.manual_seed(0)
    with torch.no_grad():  # weights wide enough that the tiny model writes varied text (its own repeats one token)
        for name, w in backbone.model.named_parameters():
            if "norm" not in name:
                w.normal_(0, 0.3)
    monkeypatch.setattr("prompttune.generation.task.DECODE_BATCH", 3)
    monkeypatch.setattr(decode, "HELD_PREFIX_TOKENS", 16)  # the tiny model's prefix is short (41 tokens)
    template = "Answer in one short line about the text. Be brief. [soft] Input: {{ input }} Output: [label]"
    task = GenerationTask.create(backbone, "prefix-tuning", {"num_virtual_tokens": 4}, template, seed=1)
    words = ["a great movie", "the cat sat", "I loved it", "boring and bad", "a joy to watch", "what a waste", "no"]
    rows = from_records([{"input": w} for w in words]).rows
    config = GenerationConfig(max_new_tokens=9, repetition_penalty=1.0, no_repeat_ngram_size=0,
                              draft_tokens=draft_tokens)  # fmt: skip
    sizes: list[int] = []  # the rows' cache at every decoding step
    run = backbone.run

    def recording(ids, attention, positions, cache, *a, **k):
        if isinstance(cache, decode.GrowingCache):
            sizes.append(cache.get_seq_length())
        return run(ids, attention, positions, cache, *a, **k)

    monkeypatch.setattr(backbone, "run", recording)
    held = task.write(rows, config)
    held_sizes, sizes[:] = list(sizes), []
    with monkeypatch.context() as m:
        m.setattr(shared_prefix.cascade, "ENABLED", False)
        copied = task.write(rows, config)
    p = task.model.prefix_length
    assert held == copied and len(set(held)) == len(held)  # every row its own text
    steps = [c for c in sizes if c != p]  # the copied layout's prompt passes run over a cache of the prefix alone
    assert p > 20 and len(steps) == len(held_sizes) > 5
    assert [c - h for h, c in zip(held_sizes, steps, strict=True)] == [p] * len(steps)
    # a prefix under the threshold is copied as before
    sizes[:] = []
    monkeypatch.setattr(decode, "HELD_PREFIX_TOKENS", p + 1)
    assert task.write(rows, config) == copied and [c for c in sizes if c != p] == steps

"""The generation verb: greedy equals transformers' generate, stop strings and end tokens end it,
repetition control changes a looping output, and the settings check themselves."""

from __future__ import annotations

import math

import pytest
import torch

from prompttune.core.errors import DataError
from prompttune.core.generate import (
    MAX_NEW_TOKENS,
    SENTENCE_GRACE_TOKENS,
    GenerationConfig,
    Generator,
    _cut_to_sentence,
    _ends_sentence,
)

PLAIN = GenerationConfig(max_new_tokens=12, repetition_penalty=1.0, no_repeat_ngram_size=0)
TEMPLATE = "Q: {{ text }}\nA: [label]"


@pytest.fixture(scope="module")
def gen(tiny_backbone):
    return Generator(tiny_backbone)


def _prompt_ids(backbone, text: str) -> list[int]:
    return backbone.bos_ids + backbone.tokenize(text)


def test_greedy_equals_transformers_generate(gen, tiny_backbone):
    ids = _prompt_ids(tiny_backbone, "the cat sat on")
    ours = gen.generate(ids, config=PLAIN.replace(max_new_tokens=10))
    hf = tiny_backbone.model.generate(
        torch.tensor([ids]), max_new_tokens=10, do_sample=False, eos_token_id=sorted(tiny_backbone.end_token_ids)
    )
    want = tiny_backbone.tokenizer.decode(hf[0, len(ids) :], skip_special_tokens=True)
    assert ours == want and len(ours) > 0


def test_a_cached_prefix_gives_the_same_text(gen, tiny_backbone):
    ids = _prompt_ids(tiny_backbone, "the cat sat on the mat")
    prefix = tiny_backbone.prefix_kv(tiny_backbone.embed(torch.tensor(ids[:4]))[None])
    assert gen.generate(ids[4:], prefix=prefix, config=PLAIN) == gen.generate(ids, config=PLAIN)


def test_complete_renders_as_the_zero_shot_read_out(gen, tiny_backbone):
    """The template's constant text (after bos) is one prefix and the row's text is tokenized on its own,
    as the zero-shot PromptModel tokenizes it; greedy output equals transformers' on those ids."""
    from prompttune.core.template import Template

    compiled = Template.from_spec(TEMPLATE).hard().compile(tiny_backbone.tokenizer, [], 1)
    ids = _prompt_ids(tiny_backbone, compiled.prefix_text) + tiny_backbone.tokenize(
        compiled.render_row({"text": "cat"})
    )
    hf = tiny_backbone.model.generate(
        torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=sorted(tiny_backbone.end_token_ids)
    )
    want = tiny_backbone.tokenizer.decode(hf[0, len(ids) :], skip_special_tokens=True)
    assert gen.complete(TEMPLATE, {"text": "cat"}, PLAIN) == want
    sampled = PLAIN.replace(temperature=0.9, seed=4)
    assert gen.complete(TEMPLATE, {"text": "cat"}, sampled) == gen.generate(ids, config=sampled)
    with pytest.raises(DataError, match=r"the template needs field\(s\) \['text'\]"):
        gen.complete(TEMPLATE, {}, PLAIN)


def test_the_embed_hook_feeds_the_first_step(gen, tiny_backbone):
    ids = _prompt_ids(tiny_backbone, "the cat sat")
    calls = []

    def embed(row):
        calls.append(row.shape)
        return None, tiny_backbone.embed(row)

    assert gen.generate(ids, embed=embed, config=PLAIN) == gen.generate(ids, config=PLAIN)
    assert calls == [(1, len(ids))]


def test_stop_strings_cut_before_the_first(gen):
    free = gen.complete(TEMPLATE, {"text": "the cat"}, PLAIN)
    assert len(free) > 4
    stop = free[3:5]
    assert gen.complete(TEMPLATE, {"text": "the cat"}, PLAIN.replace(stop=("never", stop))) == free[: free.find(stop)]


def test_end_tokens_stop_generation(gen, tiny_backbone):
    """Both eos and the chat template's end-of-turn token (<|im_end|> here) end the text; found, not hard-coded."""
    tok = tiny_backbone.tokenizer
    assert set(tok.convert_ids_to_tokens(sorted(tiny_backbone.end_token_ids))) == {"<|endoftext|>", "<|im_end|>"}
    ids = _prompt_ids(tiny_backbone, "the cat")
    words = tiny_backbone.tokenize(" the cat sat")
    for end in ("<|im_end|>", "<|endoftext|>"):
        scripted = _scripted(tiny_backbone, len(ids), [*words, tok.convert_tokens_to_ids(end), *words])
        assert scripted.generate(ids, config=PLAIN) == " the cat sat"


def test_finish_sentence_ends_the_sentence_or_cuts_back(tiny_backbone):
    ids = _prompt_ids(tiny_backbone, "the cat")
    first, second = tiny_backbone.tokenize(" the cat sat."), tiny_backbone.tokenize(" the mat")
    limit = len(first) + len(second)  # the limit falls mid-sentence
    config = PLAIN.replace(max_new_tokens=limit, finish_sentence=True)
    rest = tiny_backbone.tokenize(" sat on the mat.")
    assert _scripted(tiny_backbone, len(ids), first + second).generate(
        ids, config=config.replace(finish_sentence=False)
    )
    ended = _scripted(tiny_backbone, len(ids), first + second + rest).generate(ids, config=config)
    assert ended == " the cat sat. the mat sat on the mat."  # past the limit, to the sentence's end
    never = first + second + tiny_backbone.tokenize(" mat") * (SENTENCE_GRACE_TOKENS + 5)
    assert _scripted(tiny_backbone, len(ids), never).generate(ids, config=config) == " the cat sat."
    assert _cut_to_sentence("no end at all") == "no end at all"
    assert _ends_sentence('He said "yes."\n') and not _ends_sentence("the value 3.14")


def _scripted(backbone, prompt_len: int, tokens: list[int]) -> Generator:
    """A Generator whose LM head picks ``tokens`` in turn (then the model's own choice)."""

    class Head(torch.nn.Module):
        def forward(self, hidden):
            logits = backbone.model.get_output_embeddings()(hidden)
            step = state["width"] - prompt_len
            if step < len(tokens):
                logits[..., tokens[step]] = 1e4
            return logits

    class Model:
        def get_output_embeddings(self):
            return Head()

    class Scripted:
        def __getattr__(self, name):
            return getattr(backbone, name)

        model = Model()

        def run(self, input_ids, attention_mask, *args, **kwargs):
            state["width"] = attention_mask.shape[1]
            return backbone.run(input_ids, attention_mask, *args, **kwargs)

    state: dict = {}
    gen = Generator(backbone)
    gen.backbone = Scripted()
    return gen


def test_repetition_control_changes_a_looping_output(gen):
    """The tiny model repeats one token greedily; the penalty and the n-gram block break the loop."""
    plain = gen.complete(TEMPLATE, {"text": "the cat"}, PLAIN)
    assert len(set(plain)) == 1  # one character over and over
    penalized = gen.complete(TEMPLATE, {"text": "the cat"}, PLAIN.replace(repetition_penalty=20.0))
    assert penalized != plain
    blocked = gen.complete(TEMPLATE, {"text": "the cat"}, PLAIN.replace(no_repeat_ngram_size=2))
    assert blocked != plain and ":::" not in blocked  # the pair (":", ":") may occur once


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("max_new_tokens", -3, r"max_new_tokens \(--max-new-tokens\) is -3: give a whole number from 1 to"),
        ("max_new_tokens", 0, "max_new_tokens"),
        ("max_new_tokens", MAX_NEW_TOKENS + 1, f"from 1 to {MAX_NEW_TOKENS:,}"),
        ("temperature", -0.5, r"temperature \(--temperature\) is -0.5: give 0 \(greedy\) or more"),
        ("temperature", math.nan, r"temperature \(--temperature\) is nan"),
        ("top_p", 0.0, r"top_p \(--top-p\) is 0.0: give a number in \(0, 1\]"),
        ("top_p", 1.5, "top_p"),
        ("top_p", math.nan, "top_p"),
        ("repetition_penalty", 0.0, "repetition_penalty"),
        ("repetition_penalty", math.inf, "repetition_penalty"),
        ("no_repeat_ngram_size", -1, "no_repeat_ngram_size"),
        ("stop", ("",), "stop"),
    ],
)
def test_bad_settings_are_clear_errors(setting, value, message):
    with pytest.raises(DataError, match=message):
        GenerationConfig(**{setting: value})


def test_a_prompt_longer_than_the_context_is_an_error_and_output_stops_at_its_end(gen, tiny_backbone):
    n = tiny_backbone.max_length
    with pytest.raises(DataError, match=f"the model's context holds {n}"):
        gen.generate([5] * n, config=PLAIN)
    out = gen.generate([5] * (n - 2), config=PLAIN.replace(max_new_tokens=50))
    assert len(tiny_backbone.tokenize(out)) <= 2
    with pytest.raises(DataError, match="no prompt tokens"):
        gen.generate([], config=PLAIN)


def test_an_encoder_cannot_generate(tmp_path):
    from tiny import make_encoder

    from prompttune import Backbone
    from prompttune.core.errors import ModelError

    with pytest.raises(ModelError, match="an encoder cannot generate"):
        Generator(Backbone.load(str(make_encoder(tmp_path / "enc"))))


def test_top_p_keeps_only_the_likeliest_tokens(gen, tiny_backbone):
    ids = _prompt_ids(tiny_backbone, "the cat sat on")
    greedy = gen.generate(ids, config=PLAIN)
    assert gen.generate(ids, config=PLAIN.replace(temperature=1.0, top_p=1e-6, seed=1)) == greedy
    samples = {gen.generate(ids, config=PLAIN.replace(temperature=5.0, seed=s)) for s in range(3)}
    assert len(samples) > 1  # a high temperature without top-p does sample

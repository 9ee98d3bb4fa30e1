"""Beam search (issue 14): on a rigged bigram model it returns the sequence of highest total log-prob where greedy
does not; one beam is greedy token for token; stop strings and max_new_tokens hold; rows batched together give
what each gives alone; a generation task predicts with --num-beams through the CLI."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from prompttune.core.backbone import Backbone
from prompttune.core.beam import beam_search
from prompttune.core.data import from_records
from prompttune.core.errors import DataError
from prompttune.core.generate import GenerationConfig, Generator
from prompttune.generation.decode import greedy_batch
from prompttune.generation.task import GenerationTask

PLAIN = GenerationConfig(max_new_tokens=3, repetition_penalty=1.0, no_repeat_ngram_size=0, length_penalty=0.0)
WORDS = ["a great movie", "the cat sat", "I loved it", "boring and bad", "a joy to watch", "what a waste"]
BASE = 20.0  # logit of the rigged tokens above every other token's 0


def plain(ids):
    return ids, None


@pytest.fixture(scope="module")
def rigged(tiny_model_dir):
    """The tiny decoder made a bigram model over 5 tokens S, A, B, C, D (every layer adds nothing, so a
    position's logits depend on its own token only). From S: A 0.5, B 0.4, C and D 0.05; from A: all four near
    0.25; B -> C, C -> D, D -> A with 0.97. Greedy writes A A A (log-prob -3.2); the best 3 tokens are B C D (-1.0)."""
    bb = Backbone.load(str(tiny_model_dir))  # its own copy: the session's backbone stays as it is
    model = bb.model
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight.data.zero_()
        layer.mlp.down_proj.weight.data.zero_()
    words = [bb.tokenize(w) for w in (" cat", " sat", " mat", " movie", " bad")]
    toks = [w[0] for w in words]
    assert all(len(w) == 1 for w in words) and len(set(toks)) == 5
    s, a, b, c, d = toks
    width = model.config.hidden_size
    emb = model.get_input_embeddings().weight.data
    head = torch.zeros_like(emb)
    model.model.norm.weight.data.fill_(1.0)
    scale = math.sqrt(width)  # RMSNorm of a unit basis vector
    table = {
        s: {a: 0.5, b: 0.4, c: 0.05, d: 0.05},
        a: {a: 0.28, b: 0.26, c: 0.24, d: 0.22},
        b: {c: 0.97, a: 0.01, b: 0.01, d: 0.01},
        c: {d: 0.97, a: 0.01, b: 0.01, c: 0.01},
        d: {a: 0.97, b: 0.01, c: 0.01, d: 0.01},
    }
    for j, (cur, nxt) in enumerate(table.items()):
        emb[cur] = 0.0
        emb[cur, j] = 1.0
        for t, prob in nxt.items():
            head[t, j] = (BASE + math.log(prob)) / scale
    model.lm_head.weight = torch.nn.Parameter(head, requires_grad=False)  # untied from the input embeddings
    return bb, toks


def seq_logprob(bb: Backbone, start: int, seq: list[int]) -> float:
    """Total log-prob of ``seq`` after ``start``, from one uncached forward pass."""
    logits = bb.model(torch.tensor([[start, *seq]])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return float(sum(logp[i, t] for i, t in enumerate(seq)))


def test_beam_search_finds_the_likeliest_sequence_where_greedy_does_not(rigged):
    bb, (s, a, b, c, d) = rigged
    tok = bb.tokenizer
    every = list(itertools.product([a, b, c, d], repeat=3))
    best = max(every, key=lambda q: seq_logprob(bb, s, list(q)))
    assert list(best) == [b, c, d]
    greedy = greedy_batch(bb, [[s]], None, plain, PLAIN)[0]
    assert greedy == tok.decode([a, a, a])
    assert seq_logprob(bb, s, [a, a, a]) < seq_logprob(bb, s, [b, c, d]) - 2
    for n in (2, 4):
        config = PLAIN.replace(num_beams=n)
        assert beam_search(bb, [[s]], None, plain, config) == [tok.decode(list(best))]
        assert Generator(bb).generate([s], config=config) == tok.decode(list(best))
    # length penalty 1 ranks by the mean log-prob: every candidate here has 3 tokens, so the same winner
    assert beam_search(bb, [[s]], None, plain, PLAIN.replace(num_beams=2, length_penalty=1.0)) == [tok.decode(best)]
    # beams of one row do not leak into another: a row that starts at D goes D -> A -> (A's best continuation)
    two = beam_search(bb, [[s], [a, d]], None, plain, PLAIN.replace(num_beams=2))
    assert (
        two[0] == tok.decode(list(best))
        and two[1] == beam_search(bb, [[a, d]], None, plain, PLAIN.replace(num_beams=2))[0]
    )


def test_beam_search_respects_stop_strings_and_max_new_tokens(rigged):
    bb, (s, a, b, c, d) = rigged
    tok = bb.tokenizer
    config = PLAIN.replace(num_beams=3)
    assert beam_search(bb, [[s]], None, plain, config.replace(max_new_tokens=2)) == [tok.decode([b, c])]
    assert beam_search(bb, [[s]], None, plain, config.replace(max_new_tokens=1)) == [tok.decode([a])]
    stop = tok.decode([c])  # " mat": B C reaches it; the text is cut before it
    assert beam_search(bb, [[s]], None, plain, config.replace(stop=(stop,))) == [tok.decode([b])]
    out = beam_search(bb, [[s]], None, plain, config.replace(max_new_tokens=8))[0]
    assert len(bb.tokenize(out)) <= 8


def test_an_end_token_finishes_a_hypothesis(rigged):
    """Make eos the likeliest token after C: the best beam is B C <eos>, written as B C."""
    bb, (s, a, b, c, d) = rigged
    tok = bb.tokenizer
    eos = tok.eos_token_id
    head = bb.model.lm_head.weight.data
    saved = head[eos].clone()
    try:
        col = 3  # C's basis dimension (S, A, B, C, D: 0..4)
        head[eos, col] = (BASE + math.log(5.0)) / math.sqrt(bb.model.config.hidden_size)
        out = beam_search(bb, [[s]], None, plain, PLAIN.replace(num_beams=3, max_new_tokens=6))
        assert out == [tok.decode([b, c])]
    finally:
        head[eos] = saved


def make(backbone, method="prefix-tuning"):
    return GenerationTask.create(backbone, method, {"num_virtual_tokens": 4}, {"user": "[soft]{{ input }}"}, seed=1)


@pytest.mark.parametrize("settings", [{}, {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0}, {"stop": (" t",)}])
def test_one_beam_is_greedy_token_for_token(tiny_backbone, settings):
    task = make(tiny_backbone)
    rows = from_records([{"input": w} for w in [*WORDS, "a great movie , truly wonderful and fun"]]).rows
    ids = [x.ids for x in task.model.encode(rows, targets=False)]
    prefix = task.model.cached_prefix() or None
    config = GenerationConfig(max_new_tokens=12, **settings)
    greedy = greedy_batch(tiny_backbone, ids, prefix, task.model.row_inputs, config)
    assert beam_search(tiny_backbone, ids, prefix, task.model.row_inputs, config) == greedy
    assert any(greedy)


@pytest.mark.parametrize("method", ["prompt-tuning", "prefix-tuning"])
def test_batched_beams_equal_one_row_at_a_time(tiny_backbone, method):
    """write() decodes rows of different lengths together over the cached prefix; each equals its beams alone."""
    task = make(tiny_backbone, method)
    config = GenerationConfig(max_new_tokens=10, num_beams=3)
    rows = from_records([{"input": w} for w in WORDS]).rows
    batched = task.write(rows, config)
    alone = [task.model.generate(x.ids, config).strip() for x in task.model.encode(rows, targets=False)]
    assert batched == alone
    assert task.predict(WORDS[:2], config=config) == batched[:2]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_beams": 0}, "num_beams (--num-beams) is 0"),
        ({"num_beams": 17}, "to 16"),
        ({"num_beams": 2, "temperature": 0.7}, "deterministic"),
        ({"length_penalty": float("nan")}, "length_penalty"),
    ],
)
def test_bad_beam_settings_are_clear_errors(changes, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GenerationConfig(**changes)

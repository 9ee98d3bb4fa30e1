"""Sentence embeddings: mean pooling over the mask, L2-normalised, order kept, batching-invariant."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    from tiny import make_word_encoder

    from prompttune import Backbone

    return Backbone.load(str(make_word_encoder(tmp_path_factory.mktemp("enc") / "encoder")))


def test_embeddings_are_the_masked_mean_normalised(tiny_encoder):
    from prompttune.core.embeddings import embed_texts

    texts = ["the cat sat on the mat", "rain", "the dog ran in the park today"]
    got = embed_texts(texts, model=tiny_encoder, batch_size=2)
    assert got.shape == (3, 16) and got.dtype == np.float32
    for text, row in zip(texts, got, strict=True):
        enc = tiny_encoder.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = tiny_encoder.model(**enc).last_hidden_state[0]  # one text alone: no padding at all
        want = hidden.mean(0)
        want = (want / want.norm()).numpy()
        np.testing.assert_allclose(row, want, atol=1e-5)
        assert abs(np.linalg.norm(row) - 1) < 1e-5


def test_batch_size_and_padding_do_not_change_the_result(tiny_encoder):
    from prompttune.core.embeddings import embed_texts

    texts = ["the cat sat on the mat", "rain", "stock market fell today", "dog"]
    one = embed_texts(texts, model=tiny_encoder, batch_size=1)
    many = embed_texts(texts, model=tiny_encoder, batch_size=4)
    np.testing.assert_allclose(one, many, atol=1e-5)


def test_progress_counts_every_text_and_empty_input(tiny_encoder):
    from prompttune.core.embeddings import embed_texts

    seen = []
    embed_texts(["rain"] * 5, model=tiny_encoder, batch_size=2, progress=seen.append)
    assert seen == [2, 2, 1]
    assert embed_texts([], model=tiny_encoder).shape == (0, 16)


def test_a_decoder_is_refused(tiny_backbone):
    from prompttune.core.embeddings import embed_texts
    from prompttune.core.errors import ModelError

    with pytest.raises(ModelError, match="encoder"):
        embed_texts(["x"], model=tiny_backbone)


@pytest.mark.real_model
def test_default_encoder_ranks_a_paraphrase_above_an_unrelated_sentence():
    from prompttune.core.embeddings import embed_texts

    e = embed_texts(
        ["A man is playing a guitar.", "Someone plays an acoustic guitar.", "The stock market fell sharply today."]
    )
    assert e.shape == (3, 384)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.3


def test_embedding_leaves_the_backbones_attention_setting_alone(tiny_encoder):
    from prompttune.core.embeddings import embed_texts

    before = tiny_encoder.model.config._attn_implementation
    embed_texts(["the cat sat"], model=tiny_encoder)
    assert tiny_encoder.model.config._attn_implementation == before

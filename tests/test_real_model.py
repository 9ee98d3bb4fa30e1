"""The real default model (SmolLM2-135M-Instruct): loading, and that prompt tuning really improves quality.

Selected with ``-m real_model`` (and skipped with ``-m 'not real_model'``). The first run dequantizes the
GGUF file once (~30 s) into the cache.
"""

import time

import pytest

from prompttune import Backbone, load
from prompttune.api import PromptTask
from prompttune.core.data import Dataset, load_rows, shipped_data
from prompttune.train import TrainConfig

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def backbone():
    return Backbone.load(None, dtype="auto")


def test_default_decoder_loads_frozen_from_the_cache(backbone):
    assert backbone.kind == "decoder"
    assert backbone.model_id == "smollm2-135m-instruct"
    assert not backbone.model.training
    assert not any(p.requires_grad for p in backbone.model.parameters())
    cfg = backbone.text_config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.num_hidden_layers) == (9, 3, 30)
    t0 = time.perf_counter()
    again = Backbone.load(None, dtype="auto")
    assert time.perf_counter() - t0 < 30  # reported, not a speed target: the cache is used, no dequantizing
    assert again.fingerprint() == backbone.fingerprint()


def test_fingerprint_does_not_depend_on_dtype(backbone):
    assert Backbone.load(None, dtype="float32").fingerprint() == backbone.fingerprint()


def test_prompt_tuning_beats_the_hard_prompt_on_held_out_rows(backbone, tmp_path):
    rows = load_rows(shipped_data())
    train, test = rows.split(0.25, seed=0)
    zero = PromptTask.create(backbone, ["negative", "positive"], "zero-shot", {})
    zero_acc = zero.evaluate(test)["accuracy"]

    task = PromptTask.create(backbone, ["negative", "positive"], "prompt-tuning", {"num_virtual_tokens": 20})
    val = Dataset(test.rows[:40], test.source)
    task.fit(train, val, TrainConfig(max_steps=40, batch_size=16, lr=0.01, eval_every=20, time_budget_s=None))
    tuned = task.evaluate(test)
    print(f"zero-shot {zero_acc:.3f} -> prompt tuning {tuned['accuracy']:.3f} on {len(test)} held-out rows")
    assert tuned["accuracy"] >= 0.85
    assert tuned["accuracy"] >= zero_acc + 0.05

    task.save(tmp_path / "sentiment")
    again = load(tmp_path / "sentiment", backbone)
    preds = again.predict(["An absolute delight from start to finish.", "Broken on arrival, a total waste of money."])
    assert [p.label for p in preds] == ["positive", "negative"]
    assert abs(again.evaluate(test)["accuracy"] - tuned["accuracy"]) < 1e-9


def test_generation_produces_text(backbone):
    from prompttune.api import generate
    from prompttune.core.generate import GenerationConfig

    text = generate(
        "What is the capital of France? Answer in one word.", None, "You are a helpful assistant.",
        GenerationConfig(max_new_tokens=8),
    )  # fmt: skip
    assert "Paris" in text

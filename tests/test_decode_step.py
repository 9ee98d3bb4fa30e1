"""core.decode_step: a decoding step without transformers' per-call glue equals transformers' forward to float
rounding (the attention runs in PyTorch's fused kernel; float32 and bfloat16, left padding, a short prompt, one and
several new tokens per row, after a crop), is what ``Backbone.run`` takes for decoding steps only, and leaves greedy
decoding's text unchanged."""

from __future__ import annotations

import pytest
import torch

from prompttune.core import decode_step
from prompttune.core.backbone import Backbone
from prompttune.core.data import from_records
from prompttune.core.generate import GenerationConfig
from prompttune.core.kv_cache import GrowingCache
from prompttune.generation.task import GenerationTask


def _prefilled(backbone: Backbone, seed: int = 0):
    """A cache of 3 rows over a prompt of 7 tokens, the first row left-padded by 3 and the second by 1."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, len(backbone.tokenizer), (3, 7), generator=g)
    attention = torch.ones(3, 7, dtype=torch.long)
    attention[0, :3] = 0
    attention[1, :1] = 0
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    cache = GrowingCache(None, 3, backbone.model.config)
    with torch.no_grad():
        backbone.run(ids, attention, positions, cache)
    return cache, attention, positions[:, -1:]


def _steps(backbone: Backbone, widths: list[int], crop_after: int | None = None) -> list[torch.Tensor]:
    """Hidden states of decoding steps of the given widths (tokens per row) over ``_prefilled``'s cache."""
    cache, attention, last = _prefilled(backbone)
    g = torch.Generator().manual_seed(1)
    outs = []
    with torch.no_grad():
        for n, width in enumerate(widths):
            ids = torch.randint(5, len(backbone.tokenizer), (3, width), generator=g)
            attention = torch.cat([attention, torch.ones(3, width, dtype=torch.long)], dim=1)
            positions = last + torch.arange(1, width + 1)
            outs.append(backbone.run(ids, attention, positions, cache))
            last = positions[:, -1:]
            if n == crop_after and width > 1:  # the step's last tokens dropped, as drafted tokens no row kept
                cache.crop(-(width - 1))
                attention, last = attention[:, : cache.get_seq_length()], last - (width - 1)
    return outs


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_steps_equal_transformers_forward(tiny_model_dir, dtype, monkeypatch):
    backbone = Backbone.load(str(tiny_model_dir), dtype=dtype)
    assert backbone.fast_steps
    calls = []
    real = decode_step.step
    monkeypatch.setattr(decode_step, "step", lambda *a: calls.append(a[1].shape) or real(*a))
    widths = [1, 3, 1, 2, 1]
    fast = _steps(backbone, widths, crop_after=1)
    assert calls == [(3, 7)] + [(3, w) for w in widths]  # the prompt (7 tokens) and every step: the direct path
    backbone.fast_steps = False  # transformers' forward
    slow = _steps(backbone, widths, crop_after=1)
    assert len(calls) == 1 + len(widths)
    tol = 1e-5 if dtype == "float32" else 3e-2
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol)


def test_mask_is_causal_among_new_tokens_and_keeps_padding_closed():
    attention = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    mask = decode_step.additive_mask(attention, 3, torch.float32)
    assert mask.shape == (2, 1, 2, 5)
    closed = mask < 0
    assert closed[0, 0, :, 0].all()  # padding stays closed
    assert closed[:, 0, 0, 4].all()  # the first new token does not see the second
    assert not closed[:, 0, 0, 1:4].any() and not closed[:, 0, 1, 1:].any()


def test_not_taken_with_gradients_or_other_architectures(tiny_backbone, monkeypatch):
    cache, attention, last = _prefilled(tiny_backbone)
    monkeypatch.setattr(decode_step, "step", lambda *a: pytest.fail("the direct step ran"))
    ids = torch.tensor([[7], [8], [9]])
    attention = torch.cat([attention, torch.ones(3, 1, dtype=torch.long)], dim=1)
    with torch.enable_grad():
        tiny_backbone.run(ids, attention, last + 1, cache)  # gradients asked for: transformers' forward
    config = tiny_backbone.model.config
    monkeypatch.setattr(config, "model_type", "qwen3")
    assert not decode_step.supports(tiny_backbone.model)


def test_greedy_text_unchanged(tiny_model_dir):
    backbone = Backbone.load(str(tiny_model_dir))
    task = GenerationTask.create(backbone, "prefix-tuning", {"num_virtual_tokens": 4}, None, seed=2)
    config = GenerationConfig(max_new_tokens=12, repetition_penalty=1.0, no_repeat_ngram_size=0, draft_tokens=2)
    rows = from_records([{"input": w} for w in ["a great movie", "no", "the cat sat on the mat", "bad"]]).rows
    fast = task.write(rows, config)
    backbone.fast_steps = False
    assert task.write(rows, config) == fast


def _storage_bytes(model) -> int:
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    return sum(storages.values())


def test_joined_products_hold_the_weights_once(tiny_model_dir):
    backbone = Backbone.load(str(tiny_model_dir), dtype="bfloat16")  # float32 keeps its products apart
    attn = backbone.model.get_decoder().layers[0].self_attn
    before = {n: getattr(attn, n).weight.detach().clone() for n in ("q_proj", "k_proj", "v_proj")}
    total = _storage_bytes(backbone.model)
    _steps(backbone, [1])
    stack = decode_step.joined(attn, ("q_proj", "k_proj", "v_proj"))
    assert stack is not None and stack.sizes == tuple(w.shape[0] for w in before.values())
    for n, w in before.items():  # each layer's weight is a view of the stack, with its own values
        assert getattr(attn, n).weight.untyped_storage().data_ptr() == stack.weight.untyped_storage().data_ptr()
        torch.testing.assert_close(getattr(attn, n).weight, w, rtol=0, atol=0)
    assert _storage_bytes(backbone.model) == total  # stacked, not copied
    assert decode_step.joined(attn, ("q_proj", "k_proj", "v_proj")) is stack  # kept while the weights are
    new = torch.nn.Parameter(before["k_proj"] * 2, requires_grad=False)
    attn.k_proj.weight = new  # a replaced weight (model.to(...), a load) is stacked again, with its values
    again = decode_step.joined(attn, ("q_proj", "k_proj", "v_proj"))
    assert again is not stack
    torch.testing.assert_close(again.weight[stack.sizes[0] : sum(stack.sizes[:2])], before["k_proj"] * 2)
    attn.q_proj.weight.data = before["q_proj"] * 3  # new data under the same parameter (what model.to does)
    third = decode_step.joined(attn, ("q_proj", "k_proj", "v_proj"))
    assert third is not again
    torch.testing.assert_close(third.weight[: stack.sizes[0]], before["q_proj"] * 3)


class _Wrapped(torch.nn.Linear):
    """A linear layer of another type (as LoRA's are): it must run as itself."""

    def forward(self, x):
        return super().forward(x) + 1.0


def test_layers_that_are_not_plain_run_as_themselves(tiny_model_dir):
    backbone = Backbone.load(str(tiny_model_dir), dtype="bfloat16")
    layer = backbone.model.get_decoder().layers[1]
    for module, name in ((layer.self_attn, "v_proj"), (layer.mlp, "up_proj")):
        old = getattr(module, name)
        new = _Wrapped(old.in_features, old.out_features, bias=False)
        new.weight = old.weight
        setattr(module, name, new)
    layer.self_attn.q_proj.weight.requires_grad_(True)  # a weight being trained is not stacked either
    assert decode_step.joined(layer.self_attn, ("q_proj", "k_proj", "v_proj")) is None
    assert decode_step.joined(layer.mlp, ("gate_proj", "up_proj")) is None
    fast = _steps(backbone, [1, 2])
    backbone.fast_steps = False
    slow = _steps(backbone, [1, 2])
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=3e-2, atol=3e-2)


def test_dense_gives_row_major_strides():
    odd = torch.randn(6, 4).T.view(4, 1, 6)  # a product's transpose, as the step's products leave it
    assert odd.stride() != (6, 6, 1)
    dense = decode_step._dense(odd)
    assert dense.stride() == (6, 6, 1)
    torch.testing.assert_close(dense, odd, rtol=0, atol=0)
    plain = torch.randn(2, 3)
    assert decode_step._dense(plain) is plain


def test_a_model_converted_after_stacking_steps_on_its_new_weights(tiny_model_dir):
    backbone = Backbone.load(str(tiny_model_dir), dtype="bfloat16")
    _steps(backbone, [1])  # stacks the bfloat16 weights
    backbone.model.to(torch.float32)  # swaps every parameter's .data: the stacks are stale now
    fast = _steps(backbone, [1, 2])
    backbone.fast_steps = False
    slow = _steps(backbone, [1, 2])
    for a, b in zip(fast, slow, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

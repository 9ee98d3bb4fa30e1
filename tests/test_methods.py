"""Every registered method x the tiny decoder: forward, training, save/load, cached == uncached, resume.

The matrix is built from the registry, so a new method gets these tests by registering itself.
"""

import pytest
import torch
import torch.nn.functional as F
from reference import reference_scores
from safetensors.torch import load_file

import prompttune
from prompttune.api import PromptTask
from prompttune.core.data import from_records
from prompttune.core.errors import PromptTuneError, TemplateError
from prompttune.core.template import SoftSlot, Template
from prompttune.label_words.verbalizer_objective import VerbalizerObjective
from prompttune.methods import METHODS, build_method
from prompttune.methods.options import parse_method_options
from prompttune.train import Callback, TrainConfig, Trainer

ALL = sorted(METHODS)
TRAINABLE = [m for m in ALL if m != "zero-shot"]
# soft tokens in the cached prefix, in the row (after the first field) and right before the answer
TEMPLATE = {"system": "Classify.", "user": "[soft:2]Review: {{ text }}[soft:1] .", "answer": "[soft:2]"}
OPTIONS = {"p-tuning": {"encoder": "lstm", "encoder_hidden": 8}, "prefix-tuning": {"prefix_hidden": 16}}
ROWS = from_records(["a great movie", "a terrible film , boring and bad , what a waste", "the cat", "I loved it"])


def make(backbone, method, seed=0, **over):
    config = {"num_virtual_tokens": 3, **OPTIONS.get(method, {}), **over}
    return PromptTask.create(backbone, ["negative", "positive"], method, config, TEMPLATE, seed=seed)


def perturb(task, seed=1):
    """Move every parameter off its init (zero-initialized output layers would hide mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in task.model.method.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    task.model.clear_cache()


@pytest.mark.parametrize("method", ALL)
def test_forward_gives_label_probabilities(tiny_backbone, method):
    task = make(tiny_backbone, method)
    probs = task.model.score(task.model.encode(ROWS), calibrate=False).exp()
    assert probs.shape == (len(ROWS.rows), 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(ROWS.rows)))


@pytest.mark.parametrize("method", ALL)
@torch.no_grad()
def test_cached_batched_equals_uncached_single_pass(tiny_backbone, method):
    task = make(tiny_backbone, method)
    perturb(task)
    pm = task.model
    fast = pm.score(pm.encode(ROWS), batch_size=3, calibrate=False)
    torch.testing.assert_close(fast, reference_scores(pm, ROWS.rows), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", TRAINABLE)
def test_training_path_equals_inference_path(tiny_backbone, method):
    task = make(tiny_backbone, method)
    perturb(task)
    pm = task.model
    enc = pm.encode(ROWS)
    train_scores = F.log_softmax(pm.label_scores(enc.ids, pm.prefix_kv()), -1)
    assert train_scores.requires_grad
    torch.testing.assert_close(train_scores.detach(), pm.score(enc, calibrate=False), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", TRAINABLE)
def test_a_few_steps_lower_the_loss_and_only_the_method_trains(tiny_backbone, sentiment_rows, method):
    task = make(tiny_backbone, method)
    pm = task.model
    ds = from_records(sentiment_rows)
    enc, y = pm.encode(ds), pm.label_indices(ds)
    frozen = {k: v.clone() for k, v in tiny_backbone.model.state_dict().items()}
    params = [p for p in pm.method.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.05)
    losses = []
    for _ in range(12):
        loss = F.cross_entropy(pm.label_scores(enc.ids, pm.prefix_kv()), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05
    assert all(torch.equal(frozen[k], v) for k, v in tiny_backbone.model.state_dict().items())


@pytest.mark.parametrize("method", ALL)
def test_save_load_gives_the_same_outputs(tiny_backbone, method, tmp_path):
    task = make(tiny_backbone, method)
    perturb(task)
    before = task.model.score(task.model.encode(ROWS), calibrate=False)
    task.save(tmp_path / "art")
    loaded = prompttune.load(tmp_path / "art", model=tiny_backbone)
    assert loaded.method_name == method
    after = loaded.model.score(loaded.model.encode(ROWS), calibrate=False)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("method", [m for m in TRAINABLE if hasattr(METHODS[m], "encode_table")])
def test_encoder_methods_save_the_collapsed_table_and_infer_from_it(tiny_backbone, method, tmp_path, monkeypatch):
    task = make(tiny_backbone, method)
    perturb(task)
    task.save(tmp_path / "art")
    weights = load_file(tmp_path / "art" / "weights.safetensors")
    torch.testing.assert_close(weights["table"], task.model.method.table())
    assert len(weights) > 1  # the encoder too, for --resume
    loaded = prompttune.load(tmp_path / "art", model=tiny_backbone)
    method_obj = loaded.model.method
    calls = []
    original = method_obj.encode_table
    monkeypatch.setattr(method_obj, "encode_table", lambda: calls.append(1) or original())
    enc = loaded.model.encode(ROWS)
    loaded.model.score(enc, batch_size=1, calibrate=False)
    loaded.model.score(enc, batch_size=2, calibrate=False)
    assert len(calls) <= 1  # the encoder runs at most once; every batch reads the collapsed table


@pytest.mark.parametrize("method", TRAINABLE)
def test_killed_run_resumes_to_the_same_state(tiny_backbone, sentiment_rows, tmp_path, method):
    cfg = TrainConfig(max_steps=8, batch_size=8, lr=0.02, eval_every=3, patience=100, seed=2, ema=0.5)
    ds = from_records(sentiment_rows)
    task = make(tiny_backbone, method, seed=2)
    enc = task.model.encode(ds)
    task.fit(ds, ds, cfg, checkpoint_dir=tmp_path / "full")
    full_scores = task.model.score(enc, calibrate=False)

    def kill_at_step_5(ev):
        if ev.get("step") == 5:
            raise KeyboardInterrupt

    task = make(tiny_backbone, method, seed=2)
    with pytest.raises(KeyboardInterrupt):
        task.fit(ds, ds, cfg, checkpoint_dir=tmp_path / "killed", callbacks=[Callback(on_step=kill_at_step_5)])
    task = make(tiny_backbone, method, seed=99)  # another init: everything must come from the checkpoint
    result = task.fit(ds, ds, cfg, checkpoint_dir=tmp_path / "killed", resume=True)
    assert result.steps == 8
    full = load_file(tmp_path / "full" / "state.safetensors")
    resumed = load_file(tmp_path / "killed" / "state.safetensors")
    assert full.keys() == resumed.keys() and any(k.startswith("opt.") for k in full)
    for k in full:
        torch.testing.assert_close(full[k], resumed[k], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(task.model.score(enc, calibrate=False), full_scores, rtol=1e-5, atol=1e-6)


def test_prefix_methods_follow_the_backbone_kv_layout(tiny_backbone):
    layers, kv_heads, head_dim = tiny_backbone.kv_layout
    assert (layers, kv_heads, head_dim) == (2, 2, 8)  # tiny decoder: 4 query heads share 2 KV heads
    for method in ("prefix-tuning", "p-tuning-v2"):
        kv = make(tiny_backbone, method).model.method.kv()
        assert len(kv) == layers
        assert all(k.shape == v.shape == (1, kv_heads, 3, head_dim) for k, v in kv)


def test_prefix_methods_give_soft_slots_no_tokens(tiny_backbone):
    pm = make(tiny_backbone, "prefix-tuning").model
    assert pm._row_soft == []  # the row reads as written; the KV prefix stands in for every soft slot
    assert pm.prefix_kv()[0][0].shape[2] == 3 + sum(len(s) for s in pm.segments if not isinstance(s, SoftSlot))


def test_p_tuning_puts_soft_tokens_between_hard_text(tiny_backbone):
    pm = make(tiny_backbone, "p-tuning").model
    assert pm.method.embeddings.shape[0] == 2 + 1 + 2
    ids = pm.encode(ROWS).ids[0]
    soft = [i for i, t in enumerate(ids) if t < 0]
    assert len(soft) == 3 and soft[0] > 0 and soft[-1] == len(ids) - 1  # one mid-row, two before the answer


# --- bad input ---------------------------------------------------------------------------------
def test_unknown_method(tiny_backbone):
    with pytest.raises(PromptTuneError, match="--method nope: unknown method; choose one of .*prefix-tuning"):
        build_method("nope", {}, tiny_backbone, [], {})
    with pytest.raises(PromptTuneError, match="--method nope"):
        parse_method_options("nope", [])


def test_method_options_are_typed_and_checked():
    assert parse_method_options("prefix-tuning", ["prefix_hidden=64", "init=vocab"]) == {
        "prefix_hidden": 64,
        "init": "vocab",
    }
    assert parse_method_options("p-tuning", ["encoder=lstm", "residual=false", "init-text=none"]) == {
        "encoder": "lstm",
        "residual": False,
        "init_text": None,
    }
    with pytest.raises(
        PromptTuneError, match=r"--method-option hiden: not a setting of method prefix-tuning; known:.*"
    ):
        parse_method_options("prefix-tuning", ["hiden=3"])
    with pytest.raises(PromptTuneError, match=r"prefix_hidden"):
        parse_method_options("prefix-tuning", ["hiden=3"])
    with pytest.raises(PromptTuneError, match=r"--method-option prefix_hidden=big: expected an integer"):
        parse_method_options("prefix-tuning", ["prefix_hidden=big"])
    with pytest.raises(PromptTuneError, match=r"--method-option residual=maybe: expected true or false"):
        parse_method_options("p-tuning", ["residual=maybe"])
    with pytest.raises(PromptTuneError, match=r"expected KEY=VALUE"):
        parse_method_options("p-tuning", ["encoder"])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"encoder": "gru"}, "encoder gru: unknown; choose one of mlp, lstm"),
        ({"prefix_hidden": -1}, "prefix_hidden -1"),
    ],
)
def test_bad_method_settings(tiny_backbone, config, message):
    method = "p-tuning" if "encoder" in config else "prefix-tuning"
    with pytest.raises(PromptTuneError, match=message):
        make(tiny_backbone, method, **config)


@pytest.mark.parametrize(
    ("user", "where"),
    [
        ("Review: {{ text }} [soft:x]", "user, line 1, column 20"),
        ("Review:\n[soft:0] {{ text }}", "user, line 2, column 1"),
        ("[soft 4]{{ text }}", "user, line 1, column 1"),
    ],
)
def test_soft_slot_syntax_errors_name_their_position(tiny_backbone, user, where):
    with pytest.raises(TemplateError, match=where):
        Template.from_spec({"user": user}).compile(tiny_backbone.tokenizer, ["a", "b"], 4)


def test_cli_reports_bad_method_options(tmp_path, tiny_model_dir, sentiment_file):
    from typer.testing import CliRunner

    from prompttune import cli

    for args, needle in (
        (["--method", "nope"], "unknown method"),
        (["--method", "prefix-tuning", "-o", "hidden=3"], "known: init, init_text, num_virtual_tokens, prefix_hidden"),
        (["--method", "p-tuning", "--method-option", "encoder_hidden=wide"], "expected an integer"),
    ):
        result = CliRunner().invoke(
            cli.app, ["train", str(sentiment_file), "--out", str(tmp_path / "a"), "--model", str(tiny_model_dir), *args]
        )
        assert result.exit_code != 0
        assert isinstance(result.exception, PromptTuneError) and needle in str(result.exception)


# --- the same methods on the tiny encoder (the KV prefix / soft tokens reach every layer) -----------
@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    from tiny import make_encoder

    from prompttune.core.backbone import Backbone

    bb = Backbone.load(str(make_encoder(tmp_path_factory.mktemp("tiny") / "encoder")))
    ids = torch.tensor([bb.tokenizer("the cat")["input_ids"]])
    try:
        n = ids.shape[1]
        bb.run(
            ids,
            torch.ones(1, n + 1, dtype=torch.long),
            torch.arange(1, n + 1)[None],
            bb.prefix_kv(bb.embed(ids[:, :1])),
        )
    except Exception:  # noqa: BLE001
        pytest.skip("this backbone.py runs no KV prefix on an encoder")
    return bb


def encoder_outputs(bb, method, ids):
    kv = method.prefix_kv(bb, [SoftSlot(0, 3)])
    n, t = kv[0][0].shape[2], ids.shape[1]
    return bb.run(ids, torch.ones(1, n + t, dtype=torch.long), torch.arange(n, n + t)[None], kv)


@pytest.mark.parametrize("method", TRAINABLE)
def test_methods_on_an_encoder_train_and_reload(tiny_encoder, method):
    bb = tiny_encoder
    config = {"num_virtual_tokens": 3, **OPTIONS.get(method, {})}

    def build(seed):
        return build_method(method, config, bb, [SoftSlot(0, 3)], {"generator": torch.Generator().manual_seed(seed)})

    m = build(0)
    ids = torch.tensor([bb.tokenizer("the cat sat on the mat")["input_ids"]])
    target = torch.randn(bb.hidden_size, generator=torch.Generator().manual_seed(3))
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.05)
    losses = []
    for _ in range(10):
        loss = ((encoder_outputs(bb, m, ids).mean(1)[0] - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    with torch.no_grad():
        cached = encoder_outputs(bb, m, ids)
        other = build(1)
        other.load_trainable_state(m.trainable_state())
        torch.testing.assert_close(encoder_outputs(bb, other, ids), cached)
    torch.testing.assert_close(encoder_outputs(bb, m, ids).detach(), cached)  # training path == inference path


def test_p_tuning_encoder_trains_at_its_own_fraction_of_the_learning_rate(tiny_backbone):
    task = make(tiny_backbone, "p-tuning", encoder_lr_scale=0.25)
    rows = from_records([{"text": "good", "label": "positive"}, {"text": "bad", "label": "negative"}])
    trainer = Trainer(VerbalizerObjective(task.model, rows, rows), TrainConfig(lr=0.02))
    groups = {len(g["params"]): g["lr"] for g in trainer.optimizer.param_groups}
    encoder = sum(1 for _ in task.model.method.encoder.parameters())
    assert groups == {1: 0.02, encoder: pytest.approx(0.005)}  # the embeddings at --lr, the encoder at 1/4
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == {
        id(p) for p in task.model.method.parameters() if p.requires_grad
    }
    with pytest.raises(PromptTuneError, match="encoder_lr_scale"):
        make(tiny_backbone, "p-tuning", encoder_lr_scale=0)

"""Label scoring and soft tokens stay bounded (issue 18, 1 and 6.2): many multi-token label words share one
copy of each row's keys/values, "late" soft tokens train without holding the input's activations, and an
over-large number of virtual tokens or label words is an error naming the limit."""

import pytest
import torch
import torch.nn.functional as F
from conftest import write_jsonl
from reference import reference_scores
from test_cli import assert_user_error, rows, run_main  # noqa: F401, F811 (run_main: a fixture)

from prompttune import scorer
from prompttune.api import PromptTask
from prompttune.core.data import from_records
from prompttune.core.errors import DataError, ModelError
from prompttune.label_words import label_forms

ROWS = from_records(["a great movie", "a terrible film , boring and bad , what a waste", "the cat", "I loved it"])
MANY = [f"label number {i}" for i in range(40)]  # 40 labels of several tokens each


def record_runs(monkeypatch, backbone):
    """Every backbone.run call: (batch, query length, keys held per row in the cache it continues, grad on)."""
    calls = []
    original = backbone.run

    def run(input_ids, attention_mask, position_ids, prefix, inputs_embeds=None, return_cache=False):
        x = input_ids if input_ids is not None else inputs_embeds
        keys = prefix[0][0].shape[0] if prefix else 0
        calls.append((x.shape[0], x.shape[1], keys, torch.is_grad_enabled()))
        return original(input_ids, attention_mask, position_ids, prefix, inputs_embeds, return_cache)

    monkeypatch.setattr(backbone, "run", run)
    return calls


def many_label_task(backbone, template=None):
    return PromptTask.create(
        backbone,
        MANY,
        "prompt-tuning",
        {"num_virtual_tokens": 2, "init": "random"},
        template or {"system": "Classify.", "user": "[soft]{{ text }}"},
        seed=5,
    )


@torch.no_grad()
def test_many_multi_token_labels_share_each_rows_cache_and_score_exactly(tiny_backbone, monkeypatch):
    task = many_label_task(tiny_backbone)
    pm = task.model
    assert pm.max_form_len > 2 and len(pm.form_tokens) == 40
    expected = reference_scores(pm, ROWS.rows)
    calls = record_runs(monkeypatch, tiny_backbone)
    fast = pm.score(pm.encode(ROWS), batch_size=4, calibrate=False)
    torch.testing.assert_close(fast, expected, atol=1e-5, rtol=1e-5)
    # the rows' pass and the label words' pass(es): never more sequences than rows (before: rows x 40 forms)
    assert calls and max(batch for batch, *_ in calls) == 4
    assert all(keys <= 4 for _, _, keys, _ in calls)


def test_label_words_are_scored_in_chunks_that_recompute_in_training(tiny_backbone, monkeypatch):
    monkeypatch.setattr(label_forms, "CONTINUATION_CHUNK", 8)
    pm = many_label_task(tiny_backbone).model
    assert len(pm._cont_chunks) > 3
    enc = pm.encode(ROWS)
    calls = record_runs(monkeypatch, tiny_backbone)
    train = F.log_softmax(pm.label_scores(enc.ids, pm.prefix_kv()), -1)
    label_passes = calls[-len(pm._cont_chunks) :]  # after the prefix's and the rows' passes
    # each label-word pass holds one chunk (a longer word: a chunk of its own)
    assert max(length for _, length, _, _ in label_passes) <= max(8, pm.max_form_len - 1)
    train.sum().backward()
    assert pm.method.embeddings.grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(train.detach(), pm.score(enc, batch_size=2, calibrate=False), atol=1e-5, rtol=1e-5)
        expected = reference_scores(pm, ROWS.rows)
        torch.testing.assert_close(pm.score(enc, calibrate=False), expected, atol=1e-5, rtol=1e-5)


LATE = {"system": "Classify.", "user": "{{ text }}", "answer": "[soft:3]"}  # soft tokens after the input only


def late_task(backbone):
    return PromptTask.create(
        backbone,
        ["not_entailment", "entailment"],
        "prompt-tuning",
        {"num_virtual_tokens": 3, "init": "random"},
        LATE,
        seed=6,
    )


def test_late_soft_tokens_train_with_the_input_run_without_gradients(tiny_backbone, monkeypatch):
    pm = late_task(tiny_backbone).model
    enc = pm.encode(ROWS)
    with torch.no_grad():
        expected = reference_scores(pm, ROWS.rows)
        torch.testing.assert_close(pm.score(enc, calibrate=False), expected, atol=1e-5, rtol=1e-5)
    calls = record_runs(monkeypatch, tiny_backbone)
    scores = F.log_softmax(pm.label_scores(enc.ids, pm.prefix_kv()), -1)
    torch.testing.assert_close(scores.detach(), pm.score(enc, calibrate=False), atol=1e-5, rtol=1e-5)
    scores.sum().backward()
    assert pm.method.embeddings.grad.abs().sum() > 0
    # with gradients on, no pass runs over the rows' text: only the soft tokens and what follows them
    longest_row = max(len(x) for x in enc.ids)
    grad_lengths = [length for _, length, _, grad in calls if grad]
    assert grad_lengths and max(grad_lengths) < longest_row
    assert any(not grad and length >= longest_row - 10 for _, length, _, grad in calls)


def test_late_soft_tokens_train_through_fit(tiny_backbone, sentiment_rows):
    task = PromptTask.create(
        tiny_backbone, ["negative", "positive"], "prompt-tuning", {"num_virtual_tokens": 3}, LATE, seed=1
    )
    from prompttune.train import Callback, TrainConfig

    ds = from_records(sentiment_rows)
    losses = []
    config = TrainConfig(max_steps=12, batch_size=8, lr=0.1, warmup_steps=1, eval_every=100, ema=0)
    task.fit(ds, ds, config, callbacks=[Callback(on_step=lambda ev: losses.append(ev["loss"]))])
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])


def test_too_many_virtual_tokens_is_an_error_naming_the_limit(tiny_backbone):
    with pytest.raises(ModelError, match=r"--num-virtual-tokens 300: .*limit of 256"):
        PromptTask.create(tiny_backbone, ["a", "b"], "prompt-tuning", {"num_virtual_tokens": 300})


def test_too_many_label_words_is_an_error_naming_the_limit(tiny_backbone, monkeypatch):
    monkeypatch.setattr(scorer, "MAX_LABEL_FORMS", 10)
    with pytest.raises(DataError, match=r"40 labels .* limit of 10"):
        many_label_task(tiny_backbone)


def test_cli_refuses_a_huge_num_virtual_tokens_before_training(run_main, tmp_path, tiny_model_dir):  # noqa: F811
    write_jsonl(tmp_path / "train.jsonl", rows(4))
    run = run_main("train", "train.jsonl", "--model", tiny_model_dir, "--num-virtual-tokens", "8100", "--out", "o")
    assert_user_error(run, "--num-virtual-tokens 8100", "limit of 256")
    assert not (tmp_path / "o").exists()


def test_validation_keeps_the_rows_text_and_still_follows_the_parameters(tiny_backbone, sentiment_rows, monkeypatch):
    from prompttune.label_words.verbalizer_objective import VerbalizerObjective

    task = PromptTask.create(tiny_backbone, ["negative", "positive"], "prompt-tuning", {"num_virtual_tokens": 3}, LATE)
    pm = task.model
    ds = from_records(sentiment_rows)
    objective = VerbalizerObjective(pm, ds, ds)

    def plain_accuracy() -> float:
        pred = pm.score(pm.encode(ds), calibrate=False).argmax(-1)
        return float((pred == objective.y_val).float().mean())

    accuracies = []
    for seed in range(3):
        with torch.no_grad():
            pm.method.embeddings.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed))
        pm.clear_cache()
        calls = record_runs(monkeypatch, tiny_backbone)
        accuracies.append(objective.validate())
        # a pass over the rows' text continues the prefix (one row, expanded); later passes continue the rows
        text_passes = [c for c in calls if c[2] == 1]
        monkeypatch.undo()
        assert accuracies[-1] == plain_accuracy()
        assert len(text_passes) == (0 if seed else 1)  # after the first validation, the text is never run again
    assert objective._val_batches and all(heads is not None for _, heads in objective._val_batches)


def test_long_rows_train_in_parts_of_a_token_budget_with_the_same_scores_and_gradients(tiny_backbone, monkeypatch):
    """Rows that run with gradients (soft tokens before them) are taken in parts of at most ROW_TOKEN_BUDGET
    padded tokens, each recomputed in the backward pass: what a step holds follows the budget, not the batch."""
    task = many_label_task(tiny_backbone)  # soft tokens in the prefix: the rows carry gradients
    pm = task.model
    enc = pm.encode(ROWS)

    def scores_and_grad():
        pm.method.zero_grad()
        scores = F.log_softmax(pm.label_scores(enc.ids, pm.prefix_kv()), -1)
        scores[:, 0].sum().backward()
        return scores.detach(), pm.method.embeddings.grad.clone()

    whole, whole_grad = scores_and_grad()
    monkeypatch.setattr(scorer, "ROW_TOKEN_BUDGET", 12)
    assert len(scorer.token_budget_parts(enc.ids, 12)) > 1
    calls = record_runs(monkeypatch, tiny_backbone)
    parts, parts_grad = scores_and_grad()
    row_passes = [(b, n) for b, n, keys, _ in calls if keys == 1]  # passes over rows, after the prefix
    assert row_passes and all(b * n <= 12 or b == 1 for b, n in row_passes)
    torch.testing.assert_close(parts, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(parts_grad, whole_grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("late", [False, True])
def test_a_step_on_long_rows_accumulates_micro_batches_to_the_whole_batchs_gradient(tiny_backbone, late):
    """The Trainer takes a label-word step in parts of at most micro_batch_tokens padded tokens (each part's
    mean loss weighted by its rows): the loss and the gradient equal one pass over the batch."""
    from prompttune.train import TrainConfig, Trainer, micro_batches

    template = {"system": "Classify.", "user": "{{ text }}", "answer": "[soft]"} if late else None
    labels = ["a", "b", "a", "b"]
    rows = from_records([{"text": r.fields["text"], "label": lab} for r, lab in zip(ROWS.rows, labels, strict=True)])
    results = []
    for budget in (None, 16):
        task = PromptTask.create(
            tiny_backbone, ["a", "b"], "prompt-tuning", {"num_virtual_tokens": 3}, template, seed=0
        )
        objective = task.objective(rows, rows, TrainConfig(lr=0.1))
        objective.micro_batch_tokens = budget
        if budget:
            assert len(micro_batches([0, 1, 2, 3], objective.lengths, budget)) > 1
        trainer = Trainer(objective, TrainConfig(lr=0.1))
        trainer.optimizer.zero_grad()
        loss = trainer._backward_micro_batches([0, 1, 2, 3])
        results.append((loss, task.model.method.embeddings.grad.clone()))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-6, rtol=1e-4)


def test_micro_batches_respect_the_token_budget():
    from prompttune.train import micro_batches

    lengths = [5, 5, 5, 20, 3]
    assert micro_batches([0, 1, 2, 3, 4], lengths, 15) == [[0, 1, 2], [3], [4]]
    assert micro_batches([0, 1, 2, 3, 4], lengths, 1000) == [[0, 1, 2, 3, 4]]


def test_training_without_a_template_puts_the_soft_tokens_after_long_rows(tiny_backbone):
    """No --template: the fields' built-in, in its "-late" form when the rows are long (the input then runs
    without gradients); short rows keep the early form; an explicit template is used as given."""
    from prompttune.prompt_task import LATE_ROW_TOKENS

    short = from_records([{"text": "good", "label": "a"}, {"text": "bad", "label": "b"}])
    long_text = " ".join(["word"] * (LATE_ROW_TOKENS + 8))
    long = from_records([{"text": long_text, "label": "a"}, {"text": long_text + " more", "label": "b"}])
    pairs = from_records(
        [{"text_a": long_text, "text_b": "x", "label": "a"}, {"text_a": "y", "text_b": long_text, "label": "b"}]
    )
    early = PromptTask.for_data(tiny_backbone, short, method_config={"num_virtual_tokens": 2})
    assert early.model.template.user.startswith("[soft]")
    for data, user in ((long, "{{ text }}"), (pairs, "Text A: {{ text_a }}\nText B: {{ text_b }}")):
        late = PromptTask.for_data(tiny_backbone, data, method_config={"num_virtual_tokens": 2})
        assert (late.model.template.user, late.model.template.answer) == (user, "[soft]")
        assert late.model.compiled.row_slots and not [s for s in late.model.compiled.prefix if not isinstance(s, str)]
    given = PromptTask.for_data(tiny_backbone, long, template="classify", method_config={"num_virtual_tokens": 2})
    assert given.model.template.user.startswith("[soft]")


def test_a_long_constant_prefix_bounds_the_rows_a_pass_holds(tiny_backbone, sentiment_rows, monkeypatch):
    """Where every row's cache holds its own copy of the prefix's keys/values (a backbone shared_prefix/ does not
    run; multi-token label words; rows' text kept for validation), with a long system text, scoring and validation
    take fewer rows a pass (prefix + row tokens over the rows <= KV_TOKEN_BUDGET, VAL_KV_TOKENS), with the same
    scores. (Held once, the prefix is not counted: tests/test_shared_prefix.py.)"""
    from prompttune import shared_prefix
    from prompttune.label_words import verbalizer_objective as vo

    monkeypatch.setattr(shared_prefix.cascade, "ENABLED", False)  # the layout the bound is for

    system = "Read the guidelines. " + " ".join(f"Rule {i}: weigh it." for i in range(8))
    task = PromptTask.create(
        tiny_backbone, ["negative", "positive"], "prompt-tuning", {"num_virtual_tokens": 2}, {"system": system,
        "user": "[soft]{{ text }}"}, seed=2,
    )  # fmt: skip
    pm, ds = task.model, from_records(sentiment_rows)
    enc = pm.encode(ds)
    calls = record_runs(monkeypatch, tiny_backbone)
    with torch.no_grad():
        lead = scorer.prefix_length(pm.cached_prefix())
        unbounded, accuracy = pm.score(enc, calibrate=False), vo.VerbalizerObjective(pm, ds, ds).validate()
    assert max(b for b, _, keys, _ in calls if keys == 1) > 3  # passes over the rows, continuing the prefix
    monkeypatch.undo()
    monkeypatch.setattr(shared_prefix.cascade, "ENABLED", False)
    budget = (lead + max(len(x) for x in enc.ids)) * 3  # three rows of the longest at most
    assert lead > 40 and len(scorer.token_budget_parts(enc.ids, 10**6, lead, budget)) > len(enc.ids) // 3
    monkeypatch.setattr(scorer, "KV_TOKEN_BUDGET", budget)
    monkeypatch.setattr(vo, "VAL_KV_TOKENS", budget)
    calls = record_runs(monkeypatch, tiny_backbone)
    with torch.no_grad():
        bounded = pm.score(enc, calibrate=False)
        objective = vo.VerbalizerObjective(pm, ds, ds)
        assert objective.validate() == accuracy
    torch.testing.assert_close(bounded, unbounded, atol=1e-5, rtol=1e-5)
    assert max(b for b, _, keys, _ in calls if keys == 1) == 3
    plan = objective._plan_validation(pm.cached_prefix())
    assert all((lead + max(len(objective.val.ids[i]) for i in idx)) * len(idx) <= budget for idx, _ in plan)

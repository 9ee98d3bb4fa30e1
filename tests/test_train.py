"""Training: the loss goes down, runs are deterministic, and a killed run resumes to the same result."""

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from prompttune.api import PromptTask
from prompttune.core.data import from_records
from prompttune.core.errors import PromptTuneError
from prompttune.train import Callback, TrainConfig, epoch_batches


def make(tiny_backbone, seed=0):
    return PromptTask.create(
        tiny_backbone, ["negative", "positive"], "prompt-tuning", {"num_virtual_tokens": 4, "init": "vocab"}, seed=seed
    )


def dataset(rows):
    return from_records(rows)


def test_epoch_batches_cover_every_row_once_and_are_seeded():
    lengths = [i % 7 for i in range(50)]
    a = epoch_batches(lengths, 8, seed=1, epoch=0)
    assert sorted(i for b in a for i in b) == list(range(50))
    assert a == epoch_batches(lengths, 8, seed=1, epoch=0)
    assert a != epoch_batches(lengths, 8, seed=1, epoch=1)


def test_loss_goes_down_and_only_the_prompt_trains(tiny_backbone, sentiment_rows):
    task = make(tiny_backbone)
    before = {k: v.clone() for k, v in tiny_backbone.model.state_dict().items()}
    ds = dataset(sentiment_rows)
    losses = []
    task.fit(
        ds,
        ds,
        TrainConfig(max_steps=40, batch_size=8, lr=0.1, warmup_steps=2, eval_every=100),
        callbacks=[Callback(on_step=lambda ev: losses.append(ev["loss"]))],
    )
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8
    after = tiny_backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_training_is_deterministic_under_a_seed(tiny_backbone, sentiment_rows):
    states = []
    for _ in range(2):
        task = make(tiny_backbone, seed=7)
        ds = dataset(sentiment_rows)
        task.fit(ds, ds, TrainConfig(max_steps=6, batch_size=8, eval_every=3, seed=7))
        states.append(task.model.method.embeddings.detach().clone())
    torch.testing.assert_close(states[0], states[1], rtol=0, atol=0)


@pytest.mark.parametrize(("ema", "average_best"), [(0.0, 1), (0.8, 1), (0.8, 3)])
def test_killed_run_resumes_to_the_same_weights(tiny_backbone, sentiment_rows, tmp_path, ema, average_best):
    cfg = TrainConfig(
        max_steps=12, batch_size=8, lr=0.05, eval_every=4, patience=100, seed=2, ema=ema, average_best=average_best
    )
    task = make(tiny_backbone, seed=2)
    ds = dataset(sentiment_rows)
    full_result = task.fit(ds, ds, cfg, checkpoint_dir=tmp_path / "full")
    full_prompt = task.model.method.embeddings.detach().clone()

    def kill_at_step_9(ev):
        if ev.get("step") == 9:
            raise KeyboardInterrupt

    task = make(tiny_backbone, seed=2)
    with pytest.raises(KeyboardInterrupt):
        task.fit(ds, ds, cfg, checkpoint_dir=tmp_path / "killed", callbacks=[Callback(on_step=kill_at_step_9)])
    task = make(tiny_backbone, seed=99)  # a different init: everything must come from the checkpoint
    result = task.fit(ds, ds, cfg, checkpoint_dir=tmp_path / "killed", resume=True)
    assert result.steps == 12 and result.kept_steps == full_result.kept_steps
    torch.testing.assert_close(task.model.method.embeddings.detach(), full_prompt, rtol=1e-6, atol=1e-7)
    full = load_file(tmp_path / "full" / "state.safetensors")
    resumed = load_file(tmp_path / "killed" / "state.safetensors")
    assert full.keys() == resumed.keys()
    for k in full:
        torch.testing.assert_close(full[k], resumed[k], rtol=1e-6, atol=1e-7)


def test_resume_with_other_settings_is_refused(tiny_backbone, sentiment_rows, tmp_path):
    task = make(tiny_backbone)
    ds = dataset(sentiment_rows)
    task.fit(ds, ds, TrainConfig(max_steps=2, batch_size=8, eval_every=2), checkpoint_dir=tmp_path / "ck")
    with pytest.raises(PromptTuneError, match="other settings"):
        task.fit(
            ds, ds, TrainConfig(max_steps=4, batch_size=4, eval_every=2), checkpoint_dir=tmp_path / "ck", resume=True
        )


def test_early_stopping_keeps_the_best_state(tiny_backbone, sentiment_rows):
    task = make(tiny_backbone)
    ds = dataset(sentiment_rows)
    cfg = TrainConfig(max_steps=200, batch_size=8, lr=1e-6, warmup_steps=1, eval_every=2, patience=2, average_best=1)
    start = task.model.method.embeddings.detach().clone()
    result = task.fit(ds, ds, cfg)
    assert result.stopped_early and result.steps < 200
    if result.best_step == 0:  # nothing beat the initial prompt: the initial prompt is what we keep
        torch.testing.assert_close(task.model.method.embeddings.detach(), start)


def test_time_budget_validates_once_more_and_stops(tiny_backbone, sentiment_rows):
    """A run past its time budget (here: any time at all) validates the state it reached and stops there."""
    task = make(tiny_backbone)
    ds = dataset(sentiment_rows)
    result = task.fit(ds, ds, TrainConfig(max_steps=50, batch_size=8, eval_every=100, time_budget_s=1e-9))
    assert result.steps == 1 and result.stopped_early and result.stopped_by == "time budget"
    assert [h["step"] for h in result.history] == [0, 1]
    assert task.record["metrics"]["stopped_by"] == "time budget"


def test_the_default_recipe_has_a_time_budget_and_bad_budgets_are_refused():
    assert TrainConfig().time_budget_s == 780.0
    assert TrainConfig(time_budget_s=None).time_budget_s is None
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(PromptTuneError, match="time_budget_s"):
            TrainConfig(time_budget_s=bad)


def test_patience_is_named_as_what_stopped_a_run(tiny_backbone, sentiment_rows):
    task = make(tiny_backbone)
    ds = dataset(sentiment_rows)
    cfg = TrainConfig(max_steps=200, batch_size=8, lr=1e-6, warmup_steps=1, eval_every=2, patience=2)
    result = task.fit(ds, ds, cfg)
    assert result.stopped_by == "patience"


def test_a_binding_time_budget_brings_the_schedule_forward_so_the_rate_anneals(
    tiny_backbone, sentiment_rows, monkeypatch
):
    """Every step "takes" 10 s on a fake clock and the budget is 100 s: at the validation after step 4 (40 s in)
    the run replans to end at step 10, the learning rate decays to 0 there, and the run stops by its budget."""
    import prompttune.train as train_mod

    clock = [0.0]
    monkeypatch.setattr(train_mod.time, "perf_counter", lambda: clock[0])
    lrs = []

    def tick(ev):
        clock[0] += 10.0
        lrs.append(ev["lr"])

    task = make(tiny_backbone)
    ds = dataset(sentiment_rows)
    cfg = TrainConfig(max_steps=50, batch_size=8, lr=0.1, warmup_steps=2, eval_every=4, patience=100, time_budget_s=100)
    result = task.fit(ds, ds, cfg, callbacks=[Callback(on_step=tick)])
    assert result.planned_steps == 10 and result.steps == 10
    assert result.stopped_by == "time budget"
    assert lrs[:4] == pytest.approx([0.05, 0.1, 0.1, 0.1 * 47 / 48])  # planned for 50 steps until step 4
    assert lrs[4:] == pytest.approx([0.1 * (10 - s) / 8 for s in range(4, 10)])  # then for 10: 0.0125 at the end
    assert task.record["metrics"]["planned_steps"] == 10


def test_a_budget_that_does_not_bind_keeps_the_configured_schedule(tiny_backbone, sentiment_rows):
    task = make(tiny_backbone)
    ds = dataset(sentiment_rows)
    result = task.fit(ds, ds, TrainConfig(max_steps=8, batch_size=8, warmup_steps=2, eval_every=4, patience=100))
    assert result.planned_steps == 8 and result.steps == 8 and result.stopped_by is None


def test_a_resume_with_more_steps_plans_for_them(tiny_backbone, sentiment_rows, tmp_path):
    """The schedule's end saved in a checkpoint belongs to the total it was planned from: resuming with a larger
    --max-steps runs the new total."""
    task = make(tiny_backbone)
    ds = dataset(sentiment_rows)
    cfg = TrainConfig(max_steps=2, batch_size=8, eval_every=2, patience=100)
    task.fit(ds, ds, cfg, checkpoint_dir=tmp_path / "ck")
    result = task.fit(ds, ds, replace(cfg, max_steps=4), checkpoint_dir=tmp_path / "ck", resume=True)
    assert result.steps == 4 and result.planned_steps == 4


class _Scripted:
    """An Objective whose validations return a fixed sequence: selection and patience in isolation."""

    metric = "accuracy"

    def __init__(self, vals):
        self.trainable = _Weights()
        self.lengths = [3] * 8
        self.vals = list(vals)

    def batch_loss(self, batch):
        return (self.trainable.w**2).sum()

    def validate(self):
        return self.vals.pop(0)

    def clear_cache(self):
        pass


class _Weights(torch.nn.Module):
    lr_scales: dict = {}

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))

    def parameter_groups(self):
        return {"w": [self.w]}

    def trainable_state(self):
        return {"w": self.w.detach().clone()}

    def load_trainable_state(self, state):
        with torch.no_grad():
            self.w.copy_(state["w"])


def test_a_tie_keeps_the_later_state_but_does_not_reset_patience():
    """Validation after steps 1..: 0.8 (best), 0.7, 0.8 (tie: kept, as the more trained state), 0.7, 0.75 -> with
    patience 4 the run stops at step 5, four validations after 0.8 was first reached, keeping step 3's state."""
    from prompttune.train import Trainer

    objective = _Scripted([0.5, 0.8, 0.7, 0.8, 0.7, 0.75, 0.9])
    cfg = TrainConfig(
        max_steps=50, batch_size=8, lr=0.1, warmup_steps=0, eval_every=1, patience=4, ema=0, average_best=1
    )
    states = []
    cb = Callback(on_step=lambda e: states.append(objective.trainable.w.detach().clone()))
    result = Trainer(objective, cfg, callbacks=[cb]).fit()
    assert result.stopped_by == "patience" and result.steps == 5
    assert (result.best_step, result.best_val) == (3, 0.8)
    torch.testing.assert_close(objective.trainable.w.detach(), states[2])  # the state after step 3, not step 1


def test_a_tie_goes_to_the_lower_validation_loss_where_the_objective_reports_one():
    from prompttune.train import Trainer

    class WithLoss(_Scripted):
        def __init__(self, vals, losses):
            super().__init__(vals)
            self.losses = list(losses)

        def validate(self):
            self.val_loss = self.losses.pop(0)
            return super().validate()

    objective = WithLoss([0.5, 0.8, 0.8, 0.8, 0.7], [1.0, 0.3, 0.2, 0.4, 0.1])
    cfg = TrainConfig(max_steps=4, batch_size=8, lr=0.1, warmup_steps=0, eval_every=1, ema=0, average_best=1)
    states = []
    cb = Callback(on_step=lambda e: states.append(objective.trainable.w.detach().clone()))
    result = Trainer(objective, cfg, callbacks=[cb]).fit()
    assert (result.best_step, result.best_val) == (2, 0.8)  # step 2's loss 0.2 beats steps 1 and 3
    torch.testing.assert_close(objective.trainable.w.detach(), states[1])
    assert [h["val_loss"] for h in result.history] == [1.0, 0.3, 0.2, 0.4, 0.1]


def test_the_default_recipe_waits_ten_validations_and_averages_the_three_best():
    assert (TrainConfig().patience, TrainConfig().average_best) == (10, 3)


def test_the_api_defaults_are_the_cli_recipe():
    """TrainConfig() (train_from_file, Task.fit) trains what `prompttune train` with no flags trains."""
    import inspect

    from prompttune.cli.train import train as train_command

    cli = {name: p.default for name, p in inspect.signature(train_command).parameters.items()}
    cfg = TrainConfig()
    for name in ("epochs", "max_steps", "batch_size", "eval_every", "patience", "ema", "average_best", "seed", "lr"):
        assert getattr(cfg, name) == cli[name], name
    assert cfg.time_budget_s == cli["time_budget"]


def test_average_best_ends_with_the_mean_of_the_k_best_validated_states(tiny_backbone, sentiment_rows, monkeypatch):
    """Validation values scripted: the run keeps the 3 best (a tie goes to the later state), ends with their mean,
    and validates that mean once more."""
    from prompttune.train import Trainer

    values = iter([0.5, 0.6, 0.9, 0.7, 0.9, 0.88, 0.6, 0.89])  # steps 0, 2, 4, ..., 12; then the average
    seen: dict[int, torch.Tensor] = {}

    def validate(self):
        seen[len(seen) * 2] = self.parts.trainable_state()["embeddings"].detach().clone()
        return next(values)

    monkeypatch.setattr(Trainer, "validate", validate)
    task = make(tiny_backbone)
    ds = dataset(sentiment_rows)
    cfg = TrainConfig(max_steps=12, batch_size=8, lr=0.05, eval_every=2, patience=100, ema=0.0, average_best=3)
    result = task.fit(ds, ds, cfg)
    assert result.kept_steps == [4, 8, 10]  # 0.9, 0.9 and 0.88; 0.89 at "step 14" is the average's own validation
    assert result.best_val == 0.9 and result.best_step == 8 and result.averaged_val == 0.89
    mean = torch.stack([seen[4], seen[8], seen[10]]).mean(0)
    torch.testing.assert_close(task.model.method.embeddings.detach(), mean)
    assert result.metrics()["kept_steps"] == [4, 8, 10]

    # a kept state more than a standard error below the best (80 validation rows: 0.034 at 0.9) is not averaged
    values = iter([0.5, 0.6, 0.9, 0.7, 0.9, 0.8, 0.6, 0.9])
    seen.clear()
    task = make(tiny_backbone)
    result = task.fit(ds, ds, cfg)
    assert result.kept_steps == [4, 8] and result.averaged_val == 0.9
    torch.testing.assert_close(task.model.method.embeddings.detach(), torch.stack([seen[4], seen[8]]).mean(0))

    # an average that validates below every state in it is dropped for the best state
    values = iter([0.5, 0.6, 0.9, 0.7, 0.9, 0.88, 0.6, 0.7])
    seen.clear()
    task = make(tiny_backbone)
    result = task.fit(ds, ds, cfg)
    assert result.kept_steps == [8] and result.averaged_val is None
    torch.testing.assert_close(task.model.method.embeddings.detach(), seen[8])


def test_only_states_within_a_standard_error_of_the_best_are_averaged():
    """DBpedia-14, a run the time budget stopped while it still climbed: the mean of its states at 0.48 / 0.79 /
    0.89 validated 0.775; with 200 validation rows (one standard error 0.022 at 0.89) the best state stays alone."""
    from prompttune.kept_states import KeptStates, standard_error

    assert standard_error(0.89, 200) == pytest.approx((0.89 * 0.11 / 200) ** 0.5)
    assert standard_error(1.0, 50) == 1 / 50 and standard_error(0.9, None) is None  # one row's worth at least
    kept = KeptStates(3, within=standard_error(0.89, 200))
    for step, value in ((28, 0.48), (56, 0.79), (80, 0.89)):
        kept.offer(value, step, {"w": torch.full((1,), float(step))})
    assert kept.steps == [80] and kept.averaged()["w"].item() == 80.0
    kept.within = None  # rows unknown: every kept state, as before
    assert kept.steps == [28, 56, 80]
    close = KeptStates(3, within=standard_error(0.885, 200))  # SST-2, seed 1: 0.885, 0.885, 0.87 all averaged
    for step, value in ((252, 0.87), (336, 0.885), (350, 0.885)):
        close.offer(value, step, {"w": torch.full((1,), float(step))})
    assert close.steps == [252, 336, 350]


def test_the_untrained_start_is_never_averaged_into_trained_states():
    from prompttune.kept_states import KeptStates

    kept = KeptStates(3)
    for step, value in ((0, 0.6), (2, 0.8), (4, 0.5)):
        kept.offer(value, step, {"w": torch.full((1,), float(step))})
    assert kept.steps == [2, 4] and kept.averaged()["w"].item() == 3.0
    alone = KeptStates(3)
    alone.offer(0.9, 0, {"w": torch.zeros(1)})
    alone.offer(0.5, 2, {"w": torch.ones(1)})
    assert alone.steps == [0] and alone.averaged()["w"].item() == 0.0


def test_kept_states_rank_by_value_then_later_step_and_round_trip():
    from prompttune.kept_states import KeptStates

    kept = KeptStates(2)
    state = lambda x: {"w": torch.full((2,), float(x)), "n": torch.tensor([x])}  # noqa: E731
    assert kept.offer(0.5, 0, state(0)) and kept.offer(0.7, 1, state(1)) and kept.offer(0.7, 2, state(2))
    assert not kept.offer(0.6, 3, state(3))  # below both kept states
    assert kept.steps == [1, 2]
    avg = kept.averaged()
    torch.testing.assert_close(avg["w"], torch.full((2,), 1.5))
    assert avg["n"].tolist() == [2]  # not floating point: the best (the later of the tie)'s
    tensors, ranks = kept.to_tensors()
    again = KeptStates(2)
    again.load(tensors, ranks)
    assert again.steps == [1, 2] and torch.equal(again.averaged()["w"], avg["w"])
    with pytest.raises(PromptTuneError, match="--average-best 0"):
        TrainConfig(average_best=0)


def test_kept_states_break_ties_by_the_lower_validation_loss():
    from prompttune.kept_states import KeptStates

    kept = KeptStates(1)
    state = {"w": torch.zeros(1)}
    kept.offer(0.8, 4, state, loss=0.30)
    assert not kept.offer(0.8, 8, state, loss=0.35)  # a tie on accuracy with a higher loss: not kept
    assert kept.best == (0.8, 4)
    assert kept.offer(0.8, 12, state, loss=0.25) and kept.best == (0.8, 12)
    assert kept.offer(0.9, 16, state, loss=0.5) and kept.best == (0.9, 16)  # the metric comes first
    tensors, ranks = kept.to_tensors()
    again = KeptStates(1)
    again.load(tensors, ranks)
    assert again.entries[0][3] == 0.5


def test_verbalizer_validation_reports_its_loss_and_history_records_it(tiny_backbone, sentiment_rows):
    task = make(tiny_backbone)
    ds = dataset(sentiment_rows)
    result = task.fit(ds, ds, TrainConfig(max_steps=4, batch_size=8, eval_every=2))
    assert [h["step"] for h in result.history] == [0, 2, 4]
    assert all(h["val_loss"] > 0 for h in result.history)

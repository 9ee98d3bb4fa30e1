"""Generation tasks (issue 14): the loss reads target tokens only, cached-prefix decoding equals decoding that
recomputes everything, metrics against sacrebleu / rouge-score / known values, several references per input,
bad input, and train / save / load / eval / predict through the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import write_jsonl
from typer.testing import CliRunner

from prompttune import cli
from prompttune.core.data import from_records
from prompttune.core.errors import DataError
from prompttune.core.generate import GenerationConfig
from prompttune.generation.metrics import corpus_bleu, generation_report, rouge_l, token_f1
from prompttune.generation.task import GenerationTask, group_by_input, is_generation_data, split_by_input

WORDS = ["a great movie", "the cat sat", "I loved it", "boring and bad", "a joy to watch", "what a waste"]
PLAIN = GenerationConfig(max_new_tokens=10, repetition_penalty=1.0, no_repeat_ngram_size=0)
METHODS = ["prompt-tuning", "p-tuning", "prefix-tuning", "p-tuning-v2"]
runner = CliRunner()


def gen_rows(n: int = 4) -> list[dict]:
    return [{"input": w, "target": f"{w} , truly fun"} for w in WORDS] * n


def make(backbone, method="prompt-tuning", template=None) -> GenerationTask:
    config = {"num_virtual_tokens": 4}
    return GenerationTask.create(backbone, method, config, template or {"user": "[soft]{{ input }}"}, seed=1)


# --- the loss ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("chat", [True, False])
def test_the_loss_reads_target_tokens_only(tiny_backbone, chat):
    """target_loss over a KV prefix and right-padded rows equals a hand-masked LM loss over one full sequence."""
    template = {"user": "[soft]{{ input }}", "chat": chat} if chat else "[soft] Input: {{ input }} Output: [label]"
    task = make(tiny_backbone, "prompt-tuning", template)
    model = task.model
    rows = from_records([{"input": "the cat sat on the mat", "target": "fun"}, {"input": "bad", "target": "a joy"}])
    examples = model.encode(rows.rows, targets=True)
    assert examples[0].target[-1] == model.end_id and len(examples[0].ids) != len(examples[1].ids)
    loss = model.target_loss(examples, model.prefix_kv())
    # by hand: [prefix embeddings | row | target] in one pass, labels -100 everywhere but the target tokens
    prefix = model.method.prefix_embeddings(tiny_backbone, model.segments)[0]
    logps, golds = [], []
    for x in examples:
        seq = torch.tensor(x.ids + x.target)
        embeds = torch.cat([prefix, tiny_backbone.embed(seq)])[None]
        logits = tiny_backbone.model(inputs_embeds=embeds).logits[0].float()
        labels = torch.full((embeds.shape[1],), -100)
        start = prefix.shape[0] + len(x.ids)
        labels[start : start + len(x.target)] = torch.tensor(x.target)
        logps.append(logits[:-1])
        golds.append(labels[1:])
    reference = F.cross_entropy(torch.cat(logps), torch.cat(golds), ignore_index=-100)
    assert torch.allclose(loss, reference, atol=1e-5)
    loss.backward()  # gradients reach the soft prompt
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.method.parameters())


def test_the_target_starts_after_the_templates_last_field(tiny_backbone):
    task = make(tiny_backbone, "prompt-tuning", "[soft] Input: {{ input }} Output: [label]")
    x = task.model.encode(from_records([{"input": "cat", "target": "mat"}]).rows, targets=True)[0]
    tok = tiny_backbone.tokenizer
    assert tok.decode(x.ids).endswith("cat Output:") and tok.decode(x.target[:-1]) == " mat"


# --- decoding ---------------------------------------------------------------------------------------
def greedy_uncached(model, ids: list[int], n: int) -> str:
    """Greedy decoding that recomputes the prefix and the whole sequence at every step (no cache reused)."""
    head = model.backbone.model.get_output_embeddings()
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            prefix = model.prefix_kv()
            p = prefix[0][0].shape[2] if prefix else 0
            seq = torch.tensor([ids + out])
            input_ids, embeds = model.row_inputs(seq)
            att = torch.ones(1, p + seq.shape[1], dtype=torch.long)
            hidden = model.backbone.run(input_ids, att, torch.arange(p, p + seq.shape[1])[None], prefix or None, embeds)
            nxt = int(head(hidden[:, -1]).argmax())
            if nxt in model.backbone.end_token_ids:
                break
            out.append(nxt)
    return model.backbone.tokenizer.decode(out, skip_special_tokens=True)


@pytest.mark.parametrize("method", METHODS)
def test_cached_prefix_generation_equals_uncached(tiny_backbone, method):
    template = {"user": "[soft]{{ input }} [soft:2]"} if method == "p-tuning" else None  # row soft tokens too
    task = make(tiny_backbone, method, template)
    task.model.method.eval()
    for text in ("the cat sat", "a great movie , truly wonderful"):
        ids = task.model.encode(from_records([{"input": text}]).rows, targets=False)[0].ids
        cached = task.model.generate(ids, PLAIN)
        assert cached == greedy_uncached(task.model, ids, PLAIN.max_new_tokens)


@pytest.mark.parametrize("method", ["prompt-tuning", "p-tuning", "prefix-tuning"])
@pytest.mark.parametrize("settings", [{}, {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0}, {"stop": (" t",)}])
def test_batched_greedy_equals_one_row_at_a_time(tiny_backbone, method, settings):
    """write() decodes rows of different lengths together (left-padded); each equals Generator's output alone."""
    template = {"user": "[soft]{{ input }} [soft:2]"} if method == "p-tuning" else None
    task = make(tiny_backbone, method, template)
    config = GenerationConfig(max_new_tokens=12, **settings)
    rows = from_records([{"input": w} for w in [*WORDS, "a great movie , truly wonderful and fun"]]).rows
    batched = task.write(rows, config)
    alone = [task.model.generate(x.ids, config).strip() for x in task.model.encode(rows, targets=False)]
    assert batched == alone


@pytest.mark.parametrize("settings", [{}, {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0}, {"stop": (" t",)}])
def test_continuous_batching_refills_free_slots_and_writes_what_each_row_writes_alone(
    tiny_backbone, settings, monkeypatch
):
    """More rows than slots: rows that finish leave, waiting rows join the rows still writing (their keys/values
    padded to a common width), never more than ``slots`` at once; each output equals Generator's alone."""
    import prompttune.generation.task as gen_task

    monkeypatch.setattr(gen_task, "DECODE_BATCH", 3)
    task = make(tiny_backbone, "prefix-tuning")
    config = GenerationConfig(max_new_tokens=9, **settings)
    texts = [*WORDS, "no"]
    rows = from_records([{"input": w} for w in texts]).rows
    # a context that ends 6 tokens after the longest prompt: longer rows stop sooner (6 to 9 tokens), so rows of
    # one batch finish at different steps (the tiny model seldom writes an end token)
    longest = max(len(x.ids) for x in task.model.encode(rows, targets=False))
    context = task.model.prefix_length + longest + 6
    monkeypatch.setattr(type(tiny_backbone), "max_length", property(lambda self: context))
    calls = []  # (rows, tokens per row) of every pass: prompts (tokens > 1) and steps (1 token a row)
    run = tiny_backbone.run

    def recording(ids, attention, positions, *a, **k):
        calls.append(tuple(positions.shape))
        return run(ids, attention, positions, *a, **k)

    monkeypatch.setattr(tiny_backbone, "run", recording)
    batched = task.write(rows, config)
    monkeypatch.setattr(tiny_backbone, "run", run)
    alone = [task.model.generate(x.ids, config).strip() for x in task.model.encode(rows, targets=False)]
    assert batched == alone
    assert max(b for b, _ in calls) <= 3
    kinds = ["step" if n == 1 else "prompt" for _, n in calls]
    later = [i for i, k in enumerate(kinds) if k == "prompt" and "step" in kinds[:i]]
    assert later, "no row joined a batch that was already writing"
    # a row joined rows still writing: the step after its prompt pass runs more rows than that pass brought
    assert any(i + 2 < len(calls) and calls[i + 2][0] > calls[i][0] for i in later if kinds[i + 1] == "step")


def test_stop_strings_and_bounded_length(tiny_backbone):
    task = make(tiny_backbone)
    full = task.predict(["the cat sat"], config=PLAIN)[0]
    assert len(tiny_backbone.tokenize(full)) <= PLAIN.max_new_tokens
    if len(full) > 2:
        stop = full[1:3]
        cut = task.predict(["the cat sat"], config=PLAIN.replace(stop=(stop,)))[0]
        assert stop not in cut and full.strip().startswith(cut.strip())


# --- metrics ----------------------------------------------------------------------------------------
def test_metrics_against_known_values():
    import sacrebleu

    assert corpus_bleu(["the cat sat on the mat"], [["the cat sat on the mat"]]) == pytest.approx(100.0)
    # LCS "the cat sat on mat": 5 of 6 tokens each way
    assert rouge_l(["the cat sat on the mat"], [["the cat sat on a mat"]]) == pytest.approx(100 * 5 / 6)
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(2 * (2 / 2) * (2 / 3) / (2 / 2 + 2 / 3))
    hyps = ["the cat sat on the mat", "a dog ran in the park", "it rained"]
    refs = [["the cat sat on a mat", "a cat is on the mat"], ["the dog ran in a park"], ["it was raining", "rain"]]
    streams = [[r[0] for r in refs], ["a cat is on the mat", None, "rain"]]
    assert corpus_bleu(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score)
    report = generation_report(hyps, refs)
    assert set(report) >= {"bleu", "rougeL", "exact_match", "f1", "n"} and report["n_references"] == 5


def test_several_references_per_input_score_the_best_one():
    rows = from_records(
        [
            {"input": "x", "target": "one"},
            {"input": "x", "target": "two"},
            {"input": "y", "targets": ["three", "four"]},
        ]
    )
    groups = group_by_input(rows.rows, ["input"])
    assert [refs for _, refs in groups] == [["one", "two"], ["three", "four"]]
    report = generation_report(["two", "four"], [refs for _, refs in groups])
    assert report["exact_match"] == 100.0 and report["f1"] == 100.0 and report["rougeL"] == pytest.approx(100.0)


def test_evaluate_groups_rows_by_input(tiny_backbone, monkeypatch):
    task = make(tiny_backbone)
    monkeypatch.setattr(
        task, "write", lambda rows, config=None: ["two" if r.fields["input"] == "x" else "z" for r in rows]
    )
    rows = [{"input": "x", "target": "one"}, {"input": "x", "target": "two"}, {"input": "y", "target": "three"}]
    report = task.evaluate(rows)
    assert report["n"] == 2 and report["n_references"] == 3 and report["exact_match"] == 50.0
    assert report["examples_per_s"] > 0 and "tokens_per_s" in report


def test_split_keeps_an_inputs_rows_together():
    ds = from_records(gen_rows(3))
    train, val = split_by_input(ds, 0.34, seed=0)
    assert {r.fields["input"] for r in train}.isdisjoint({r.fields["input"] for r in val}) and len(val)
    assert is_generation_data(ds) and not is_generation_data(from_records([{"text": "a", "label": "b"}]))


# --- bad input --------------------------------------------------------------------------------------
def test_bad_targets_are_errors_naming_the_row(tiny_backbone):
    model = make(tiny_backbone).model
    with pytest.raises(DataError, match="item 1: missing field 'target'"):
        model.encode(from_records([{"input": "a"}]).rows, targets=True)
    with pytest.raises(DataError, match="item 1: empty target"):
        model.encode(from_records([{"input": "a", "target": "  "}]).rows, targets=True)
    with pytest.raises(DataError, match="item 1: prompt .* exceed the model's context"):
        model.encode(from_records([{"input": "a", "target": "the cat sat " * 200}]).rows, targets=True)


# --- through the CLI --------------------------------------------------------------------------------
def invoke(*args):
    result = runner.invoke(cli.app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.mark.parametrize("flag", [["--task", "generate"], []])  # named, or detected from the target field
def test_train_save_load_eval_predict_through_the_cli(tmp_path, tiny_model_dir, flag):
    data = write_jsonl(tmp_path / "gen.jsonl", gen_rows())
    out = tmp_path / "run"
    fast = ["--max-steps", "3", "--batch-size", "4", "--num-virtual-tokens", "4", "--eval-every", "3"]
    r = invoke(
        "train", data, "--model", tiny_model_dir, "--out", out, "--method", "prompt-tuning", *fast, *flag, "--json"
    )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["task"] == "generate" and summary["metric"] == "rougeL" and summary["steps"] == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generation"]["decoding"]["max_new_tokens"] >= 8 and manifest["verbalizer"] is None
    r = invoke("eval", out, data, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"bleu", "rougeL", "exact_match", "f1", "examples_per_s", "tokens_per_s"} <= set(report)
    assert report["n"] == len(WORDS) and report["n_references"] == len(gen_rows())
    import prompttune

    task = prompttune.load(out)
    assert isinstance(task, GenerationTask)  # not read as a label-word task
    expected = task.predict(["the cat sat"])[0]
    r = invoke("generate", "the cat sat", "--artifact", out, "--max-new-tokens", "5")
    assert r.exit_code == 0, r.output
    r = invoke("predict", out, "the cat sat", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout.strip().splitlines()[-1]) == {
        "input": "the cat sat",
        "answer": expected,
    }


def run_main(monkeypatch, capsys, *args) -> tuple[int, str]:
    """The real entry point, as a user runs it: (exit code, stderr)."""
    monkeypatch.setenv("COLUMNS", "1000")
    monkeypatch.chdir(Path(str(args[1])).parent)  # train's default --out lands beside the data
    monkeypatch.setattr(sys, "argv", ["prompttune", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    return e.value.code, capsys.readouterr().err


def test_cli_errors_for_generation_data(tmp_path, tiny_model_dir, monkeypatch, capsys):
    data = write_jsonl(tmp_path / "bad.jsonl", [{"input": w} for w in WORDS])
    code, err = run_main(monkeypatch, capsys, "train", data, "--model", tiny_model_dir, "--task", "generate")
    assert code == 2 and "bad.jsonl, line" in err and "missing field 'target'" in err
    code, err = run_main(monkeypatch, capsys, "train", data, "--model", tiny_model_dir, "--task", "summarize")
    assert code == 2 and "--task summarize" in err

"""Export to PEFT and back: PeftModel.from_pretrained on the exported adapter gives the same label scores."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import prompttune
from prompttune.api import PromptTask
from prompttune.core.data import from_records
from prompttune.core.errors import PromptTuneError
from prompttune.core.template import SoftSlot
from prompttune.interop.peft import export_peft, import_peft

peft = pytest.importorskip("peft")

LEADING = "[soft]Review: {{ text }} Sentiment: [label]"  # soft tokens first: PEFT's layout
CHAT = {"system": "Classify.", "user": "[soft:2]{{ text }}", "answer": "[soft:2]"}
OPTIONS = {"p-tuning": {"encoder": "mlp", "encoder_hidden": 8}, "prefix-tuning": {"prefix_hidden": 16}}
ROWS = from_records(["a great movie", "a terrible film , boring and bad", "I loved it"])
EXPORTABLE = [
    ("prompt-tuning", LEADING),
    ("p-tuning", LEADING),
    ("prefix-tuning", LEADING),
    ("prefix-tuning", CHAT),  # the KV prefix stands before all text whatever the template
    ("p-tuning-v2", CHAT),
]


def trained_artifact(backbone, method, template, path):
    config = {"num_virtual_tokens": 3, **OPTIONS.get(method, {})}
    task = PromptTask.create(backbone, ["negative", "positive"], method, config, template, seed=1)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in task.model.method.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    task.model.clear_cache()
    task.save(path)
    return prompttune.load(path, model=backbone)


def peft_scores(peft_model, pm, rows) -> torch.Tensor:
    """Label log-probabilities from the PEFT model, fed the same token ids prompttune reads."""
    hard = [t for s in pm.segments if not isinstance(s, SoftSlot) for t in s.tolist()]
    out = []
    for ids in pm.encode(rows).ids:
        form_scores = []
        for toks, cand in zip(pm.form_token_ids, pm.form_tokens, strict=True):
            seq = torch.tensor([hard + ids + toks[:-1]])
            with torch.no_grad():
                logits = peft_model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[0]
            logp = F.log_softmax(logits[-len(toks) :, pm.candidates].float(), -1)
            form_scores.append(sum(logp[j, c] for j, c in enumerate(cand)))
        fs = torch.stack(form_scores)
        labels = torch.stack([torch.logsumexp(fs[pm.form_label == i], 0) for i in range(len(pm.verbalizer.labels))])
        out.append(F.log_softmax(labels, -1))
    return torch.stack(out)


@pytest.mark.parametrize(("method", "template"), EXPORTABLE)
def test_export_loads_in_peft_with_the_same_scores(tiny_backbone, tiny_model_dir, tmp_path, method, template):
    from transformers import AutoModelForCausalLM

    task = trained_artifact(tiny_backbone, method, template, tmp_path / "art")
    info = export_peft(tmp_path / "art", tmp_path / "peft", model=tiny_backbone)
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == info["peft_type"] == task.model.method.peft_type
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, tmp_path / "peft")
    model.eval()
    ours = task.model.score(task.model.encode(ROWS), calibrate=False)
    torch.testing.assert_close(peft_scores(model, task.model, ROWS), ours, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("method", "template"), EXPORTABLE)
def test_export_then_import_gives_the_same_scores(tiny_backbone, tmp_path, method, template):
    task = trained_artifact(tiny_backbone, method, template, tmp_path / "art")
    export_peft(tmp_path / "art", tmp_path / "peft", model=tiny_backbone)
    spec = template if isinstance(template, str) else json.dumps(template)
    if not isinstance(template, str):
        (tmp_path / "t.json").write_text(spec)
        spec = str(tmp_path / "t.json")
    info = import_peft(tmp_path / "peft", ["negative", "positive"], tmp_path / "back", spec, model=tiny_backbone)
    back = prompttune.load(tmp_path / "back", model=tiny_backbone)
    assert back.manifest["imported_from"]["peft_type"] == info["peft_type"]
    torch.testing.assert_close(
        back.model.score(back.model.encode(ROWS), calibrate=False),
        task.model.score(task.model.encode(ROWS), calibrate=False),
        atol=1e-5,
        rtol=1e-5,
    )


def test_peft_trained_adapter_imports_with_the_same_scores(tiny_backbone, tiny_model_dir, tmp_path):
    """An adapter made by PEFT itself (prefix tuning with its MLP) reads back exactly."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    cfg = peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=4, prefix_projection=True, encoder_hidden_size=8
    )
    model = peft.get_peft_model(base, cfg)
    with torch.no_grad():
        for p in model.prompt_encoder.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path / "peft")
    import_peft(tmp_path / "peft", ["negative", "positive"], tmp_path / "art", LEADING, model=tiny_backbone)
    task = prompttune.load(tmp_path / "art", model=tiny_backbone)
    model.eval()
    ref = peft_scores(model, task.model, ROWS)
    torch.testing.assert_close(task.model.score(task.model.encode(ROWS), calibrate=False), ref, atol=1e-5, rtol=1e-5)


def test_templates_with_soft_tokens_after_the_start_are_refused(tiny_backbone, tmp_path):
    trained_artifact(tiny_backbone, "prompt-tuning", CHAT, tmp_path / "art")
    with pytest.raises(PromptTuneError, match=r"soft tokens all stand at the very start.*prefix-tuning"):
        export_peft(tmp_path / "art", tmp_path / "peft", model=tiny_backbone)
    assert not (tmp_path / "peft").exists()


def test_import_refuses_bad_adapters(tiny_backbone, tmp_path):
    with pytest.raises(PromptTuneError, match="not a PEFT adapter"):
        import_peft(tmp_path, ["a", "b"], tmp_path / "out", model=tiny_backbone)
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(PromptTuneError, match="LORA is not a prompt-learning adapter"):
        import_peft(tmp_path / "lora", ["a", "b"], tmp_path / "out", model=tiny_backbone)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING"}))
    save_file({"prompt_embeddings": torch.zeros(3, 7)}, bad / "adapter_model.safetensors")
    with pytest.raises(PromptTuneError, match=r"shape \(3, 7\).*needs \(n, 32\)"):
        import_peft(bad, ["a", "b"], tmp_path / "out", LEADING, model=tiny_backbone)
    save_file({"prompt_embeddings": torch.zeros(3, 32)}, bad / "adapter_model.safetensors")
    with pytest.raises(PromptTuneError, match="must start with its one soft slot"):
        import_peft(bad, ["a", "b"], tmp_path / "out", "Review: {{ text }} [soft] [label]", model=tiny_backbone)


def test_cli_export_and_import(tiny_backbone, tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from prompttune import cli

    trained_artifact(tiny_backbone, "prefix-tuning", LEADING, tmp_path / "art")
    runner = CliRunner()
    m = ["--model", str(tiny_model_dir)]
    res = runner.invoke(cli.app, ["export", str(tmp_path / "art"), str(tmp_path / "peft"), "--format", "peft", *m])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "peft" / "adapter_model.safetensors").exists()
    res = runner.invoke(
        cli.app,
        ["import", str(tmp_path / "peft"), "--labels", "negative,positive", "--out", str(tmp_path / "back"), *m],
    )
    assert res.exit_code == 0, res.output
    assert prompttune.load(tmp_path / "back", model=tiny_backbone).method_name == "prefix-tuning"
    res = runner.invoke(cli.app, ["export", str(tmp_path / "art"), str(tmp_path / "x"), "--format", "onnx", *m])
    assert isinstance(res.exception, PromptTuneError) and "--format onnx" in str(res.exception)

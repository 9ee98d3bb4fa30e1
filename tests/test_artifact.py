"""Artifacts: save/load round trips, the manifest, safetensors weights, backbone checks, atomic writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import prompttune
from prompttune import PromptTask
from prompttune.core import artifact, atomic
from prompttune.core.errors import ArtifactError

LABELS = ["negative", "positive"]
TEXTS = ["a great movie", "boring and bad", "I loved it", "what a waste , truly"]


def make_task(backbone, perturb: bool = True, **kw) -> PromptTask:
    kw.setdefault("method_config", {"num_virtual_tokens": 4})
    task = PromptTask.create(backbone, LABELS, verbalizer="positive=great|good;negative=bad", seed=0, **kw)
    if perturb:  # weights unlike a fresh init, so a round trip that dropped them would show
        gen = torch.Generator().manual_seed(123)
        with torch.no_grad():
            for p in task.model.method.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.5)
        task.model.clear_cache()
    return task


def scores(task) -> torch.Tensor:
    return torch.tensor([[p.scores[lab] for lab in LABELS] for p in task.predict(TEXTS)])


@pytest.fixture
def saved(tmp_path, tiny_backbone):
    task = make_task(tiny_backbone)
    path = task.save(tmp_path / "art", {"note": "extra"})
    return task, path


@pytest.fixture(scope="module")
def other_backbone(tmp_path_factory):
    from tiny import make_decoder

    from prompttune import Backbone

    return Backbone.load(str(make_decoder(tmp_path_factory.mktemp("other") / "decoder", seed=1)))


# --- round trip -----------------------------------------------------------------------------------


def test_round_trip_same_predictions(saved, tiny_backbone):
    task, path = saved
    before = scores(task)
    loaded = prompttune.load(path, model=tiny_backbone)
    assert loaded.labels == LABELS
    assert loaded.method_name == "prompt-tuning"
    assert loaded.model.template == task.model.template
    assert loaded.model.verbalizer.words == task.model.verbalizer.words
    torch.testing.assert_close(scores(loaded), before, rtol=0, atol=1e-6)
    # the weights came from the file: a fresh prompt scores differently
    fresh = make_task(tiny_backbone, perturb=False)
    assert not torch.allclose(scores(fresh), before, atol=1e-4)


def test_round_trip_by_model_path_and_by_manifest(saved, tiny_model_dir):
    task, path = saved
    before = scores(task)
    by_path = prompttune.load(str(path), model=str(tiny_model_dir))
    torch.testing.assert_close(scores(by_path), before, rtol=0, atol=1e-6)
    by_manifest = prompttune.load(path)  # the backbone id recorded in the manifest is the model folder
    torch.testing.assert_close(scores(by_manifest), before, rtol=0, atol=1e-6)


def test_round_trip_keeps_calibration(tmp_path, tiny_backbone):
    task = make_task(tiny_backbone)
    calibration = task.calibrate()
    assert len(calibration) == len(LABELS)
    calibrated = scores(task)
    loaded = prompttune.load(task.save(tmp_path / "art"), model=tiny_backbone)
    assert loaded.model.verbalizer.calibration == pytest.approx(calibration)
    torch.testing.assert_close(scores(loaded), calibrated, rtol=0, atol=1e-6)


def test_zero_shot_round_trip(tmp_path, tiny_backbone):
    task = PromptTask.create(tiny_backbone, LABELS, method="zero-shot", method_config={"num_virtual_tokens": 4})
    path = task.save(tmp_path / "zs")
    assert load_file(path / artifact.WEIGHTS) == {}
    loaded = prompttune.load(path, model=tiny_backbone)
    assert loaded.method_name == "zero-shot"
    torch.testing.assert_close(scores(loaded), scores(task), rtol=0, atol=1e-6)


def test_copy_of_the_same_backbone_is_accepted(saved, tmp_path, tiny_model_dir):
    task, path = saved
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy-of-model")
    loaded = prompttune.load(path, model=str(copy))  # same weights, another folder: same fingerprint
    torch.testing.assert_close(scores(loaded), scores(task), rtol=0, atol=1e-6)


# --- what is on disk --------------------------------------------------------------------------------


def test_manifest_contents(saved, tiny_backbone):
    task, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "weights.safetensors"]
    m = json.loads((path / "manifest.json").read_text())
    assert m["format"] == "prompttune-artifact" and m["format_version"] == 1
    assert m["method"] == "prompt-tuning"
    assert m["method_config"] == {"num_virtual_tokens": 4, "init": "labels", "init_text": None, "reparam_hidden": 0}
    assert m["backbone"]["id"] == tiny_backbone.model_id
    assert m["backbone"]["fingerprint"] == tiny_backbone.fingerprint()
    assert m["backbone"]["fingerprint"].startswith("sha256:")
    assert m["backbone"]["kind"] == "decoder"
    assert m["template"] == task.model.template.to_dict()
    assert m["template"]["user"] == "[soft]{{ text }}"
    words = {"negative": ["bad"], "positive": ["great", "good"]}
    assert m["verbalizer"] == {"labels": LABELS, "words": words, "calibration": None}
    assert set(m["versions"]) >= {"prompttune", "torch", "transformers", "python"}
    assert m["versions"]["prompttune"] == prompttune.__version__
    assert m["versions"]["torch"] == torch.__version__
    assert m["note"] == "extra"
    assert "created" in m


def test_weights_are_safetensors(saved):
    task, path = saved
    raw = (path / "weights.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8 : 8 + header_len])["__metadata__"]["method"] == "prompt-tuning"
    weights = load_file(path / "weights.safetensors")
    state = task.model.method.trainable_state()
    assert weights.keys() == state.keys() == {"embeddings"}
    assert weights["embeddings"].shape == (4 + 4, task.model.backbone.hidden_size)
    assert torch.equal(weights["embeddings"], state["embeddings"])


# --- loading errors ---------------------------------------------------------------------------------


def test_other_backbone_is_rejected(saved, tiny_backbone, other_backbone):
    _, path = saved
    assert other_backbone.fingerprint() != tiny_backbone.fingerprint()
    with pytest.raises(ArtifactError) as e:
        prompttune.load(path, model=other_backbone)
    msg = str(e.value)
    assert tiny_backbone.model_id in msg and tiny_backbone.fingerprint() in msg
    assert other_backbone.model_id in msg and other_backbone.fingerprint() in msg
    assert f"--model {tiny_backbone.model_id}" in msg  # what to do about it


def test_missing_artifact_dir(tmp_path):
    path = tmp_path / "no-such-run"
    with pytest.raises(ArtifactError) as e:
        prompttune.load(path)
    msg = str(e.value)
    assert str(path) in msg and "no such artifact" in msg
    assert f"prompttune train DATA --out {path}" in msg


def test_dir_without_manifest(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="not a prompttune artifact") as e:
        prompttune.load(tmp_path / "empty")
    assert "pass that" not in str(e.value)


def test_dir_holding_an_artifact_names_it(saved, tmp_path):
    """`prompttune continual --out DIR` writes DIR/pack: DIR itself is an error that names DIR/pack."""
    import shutil

    shutil.copytree(saved[1], tmp_path / "run" / "pack")
    with pytest.raises(ArtifactError) as e:
        prompttune.load(tmp_path / "run")
    assert f"it holds {tmp_path / 'run' / 'pack'}: pass that" in str(e.value)


def test_damaged_manifest(saved, tiny_backbone):
    _, path = saved
    text = (path / "manifest.json").read_text()
    (path / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(ArtifactError, match="damaged") as e:
        prompttune.load(path, model=tiny_backbone)
    assert str(path / "manifest.json") in str(e.value)


def test_foreign_manifest(saved, tiny_backbone):
    _, path = saved
    (path / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ArtifactError, match="not a prompttune manifest"):
        prompttune.load(path, model=tiny_backbone)


def test_newer_format_version(saved, tiny_backbone):
    _, path = saved
    m = json.loads((path / "manifest.json").read_text())
    m["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="newer prompttune"):
        prompttune.load(path, model=tiny_backbone)


@pytest.mark.parametrize("manifest", [{"format": "prompttune-artifact", "format_version": 1}, [1, 2], "text"])
def test_manifest_of_the_wrong_shape(saved, tiny_backbone, manifest):
    _, path = saved
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError):
        prompttune.load(path, model=tiny_backbone)


def test_damaged_weights(saved, tiny_backbone):
    _, path = saved
    (path / "weights.safetensors").write_bytes(b"\x00\x01not safetensors")
    with pytest.raises(ArtifactError, match="cannot be read as safetensors") as e:
        prompttune.load(path, model=tiny_backbone)
    assert str(path / "weights.safetensors") in str(e.value)


def test_weights_that_do_not_fit(saved, tiny_backbone):
    _, path = saved
    m = json.loads((path / "manifest.json").read_text())
    m["method_config"]["num_virtual_tokens"] = 6  # weights hold 4 virtual tokens
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="weights do not fit"):
        prompttune.load(path, model=tiny_backbone)


# --- atomic writes ------------------------------------------------------------------------------------


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_write_dir_creates_and_replaces(tmp_path):
    target = tmp_path / "out"
    atomic.write_dir(target, lambda d: (d / "a.txt").write_text("one"))
    assert (target / "a.txt").read_text() == "one"
    atomic.write_dir(target, lambda d: (d / "b.txt").write_text("two"))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # replaced, not merged
    assert _siblings(target) == ["out"]  # no temporary or old directories left behind


def test_write_dir_failure_keeps_the_old_directory(tmp_path):
    target = tmp_path / "out"
    atomic.write_dir(target, lambda d: (d / "good.txt").write_text("good"))

    def fill(d: Path) -> None:
        (d / "good.txt").write_text("half")
        (d / "more.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic.write_dir(target, fill)
    assert sorted(p.name for p in target.iterdir()) == ["good.txt"]
    assert (target / "good.txt").read_text() == "good"
    assert _siblings(target) == ["out"]


def test_write_dir_failure_without_old_directory(tmp_path):
    target = tmp_path / "out"

    def fill(d: Path) -> None:
        (d / "a.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic.write_dir(target, fill)
    assert not target.exists()
    assert _siblings(target) == []


def test_write_text_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    atomic.write_json(path, {"v": 1})

    def boom(*a, **k):
        raise OSError("no space")

    monkeypatch.setattr(atomic.os, "fsync", boom)
    with pytest.raises(OSError, match="no space"):
        atomic.write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert _siblings(path) == ["f.json"]


@pytest.mark.parametrize("where", ["save_file", "write_json"])
def test_failed_save_keeps_the_old_artifact(saved, tiny_backbone, monkeypatch, where):
    task, path = saved
    before = scores(task)
    manifest_before = (path / "manifest.json").read_bytes()
    weights_before = (path / "weights.safetensors").read_bytes()

    def partial_write(*args, **kwargs):
        target = Path(args[1] if where == "save_file" else args[0])
        target.write_bytes(b"half-written")
        raise OSError("disk full")

    if where == "save_file":
        monkeypatch.setattr(artifact, "save_file", partial_write)
    else:
        monkeypatch.setattr(artifact.atomic, "write_json", partial_write)
    other = make_task(tiny_backbone, perturb=False)
    with pytest.raises(OSError, match="disk full"):
        other.save(path)
    monkeypatch.undo()
    assert (path / "manifest.json").read_bytes() == manifest_before
    assert (path / "weights.safetensors").read_bytes() == weights_before
    assert _siblings(path) == ["art"]
    torch.testing.assert_close(scores(prompttune.load(path, model=tiny_backbone)), before, rtol=0, atol=1e-6)

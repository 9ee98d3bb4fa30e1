"""The frozen backbone: loading, freezing, and running it over a cached key/value prefix.

Everything model-specific lives here: which HF class to load, where the embeddings and the LM head
are, and how a per-layer KV prefix is handed to the model.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from prompttune.core import attention, decode_step, defaults, layer_states, lean, skinny
from prompttune.core import one_pass as one_pass_layout
from prompttune.core.errors import ModelError

# A KV prefix: one (key, value) pair per layer, each (batch, kv_heads, prefix_len, head_dim).
KV = list[tuple[Tensor, Tensor]]


@dataclass
class Backbone:
    model: torch.nn.Module
    tokenizer: object
    model_id: str
    kind: str  # "decoder" | "encoder"

    @classmethod
    def load(cls, model: str | None = None, dtype: str | None = None, device: str | None = None) -> Backbone:
        """Load and freeze a backbone: a default model's alias, a local HF folder, or a hub id.

        dtype: "float32", "bfloat16", or "auto" (the default, or $PROMPTTUNE_DTYPE): bfloat16 on a GPU or
        where the CPU computes it natively (AVX512-BF16 / AMX), else float32. The backbone is frozen, so its
        weights need no float32 master copy; trainable prompt parameters always stay float32.
        device: "cpu" (the default, or $PROMPTTUNE_DEVICE), "cuda", "cuda:N" or "auto" (a GPU if there is one).
        """
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        where = resolve_device(device)
        model_id, location = defaults.resolve(model)
        local = isinstance(location, Path)
        try:
            config = AutoConfig.from_pretrained(location, local_files_only=local)
            tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local)
            decoder = _is_decoder(config)
            loader = AutoModelForCausalLM if decoder else AutoModel
            # Eager attention: on CPU its backward is ~2x faster than SDPA's for prompt-length sequences.
            hf_model = loader.from_pretrained(
                location, local_files_only=local, dtype=resolve_dtype(dtype, where), attn_implementation="eager"
            )
        except OSError as e:
            raise ModelError(
                f"--model {model}: cannot load it ({e}). Give a local HuggingFace model folder, or one of "
                f"{', '.join(sorted(defaults.ALIASES))}."
            ) from None
        hf_model.to(where)
        hf_model.eval()
        hf_model.requires_grad_(False)
        attention.register()
        if not decoder:
            # Encoders ignore past_key_values: the KV prefix reaches every layer through this attention function.
            hf_model.config._attn_implementation = attention.PREFIX_ATTENTION
        elif _llama_like(config):
            # Eager attention without repeating each key/value per query head (core/attention.py), and RMSNorm
            # and MLP blocks that keep less for the backward pass (core/lean.py).
            hf_model.config._attn_implementation = attention.GROUPED
            lean.use_lean_blocks(hf_model, config.get_text_config(decoder=True))
        if decoder:
            # decoding steps run every projection on a few rows: taken as W @ x.T there (core/skinny.py)
            skinny.use_skinny_linears(hf_model)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        return cls(hf_model, tokenizer, model_id, "decoder" if decoder else "encoder")

    # --- what the rest of the code asks of a backbone -------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def text_config(self):
        return self.model.config.get_text_config(decoder=self.kind == "decoder")

    @property
    def device(self) -> torch.device:
        """Where the backbone's weights live; inputs given to ``embed`` and ``run`` are moved there."""
        return self.embedding_matrix.device

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def kv_layout(self) -> tuple[int, int, int]:
        """(layers, kv_heads, head_dim) of the per-layer key/value prefix (kv_heads < heads under GQA)."""
        cfg = self.text_config
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        return cfg.num_hidden_layers, kv_heads, head_dim

    @property
    def max_length(self) -> int:
        cfg = self.text_config
        return int(getattr(cfg, "max_position_embeddings", None) or getattr(self.tokenizer, "model_max_length", 2048))

    def embed(self, ids: Tensor) -> Tensor:
        return self.model.get_input_embeddings()(ids.to(self.device))

    @property
    def embedding_matrix(self) -> Tensor:
        return self.model.get_input_embeddings().weight

    def lm_rows(self, token_ids: Tensor) -> Tensor:
        """The LM head's rows for the given tokens only: (n, d). Never the full vocabulary."""
        head = self.model.get_output_embeddings()
        return head.weight[token_ids]

    @property
    def body(self) -> torch.nn.Module:
        return self.model.get_decoder() if self.kind == "decoder" else self.model

    @functools.cached_property
    def _cache_kwarg(self) -> str:
        """The decoder's name for its KV cache argument: ``cache`` in newer transformers, else ``past_key_values``."""
        return "cache" if "cache" in inspect.signature(self.body.forward).parameters else "past_key_values"

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @property
    def bos_ids(self) -> list[int]:
        tok = self.tokenizer
        return [tok.bos_token_id] if getattr(tok, "add_bos_token", False) and tok.bos_token_id is not None else []

    @functools.cached_property
    def end_token_ids(self) -> frozenset[int]:
        """Tokens that end generation: eos (the tokenizer's and the generation config's) and the chat
        template's end-of-turn token, read from what the template writes after an assistant reply."""
        tok = self.tokenizer
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ends = {tok.eos_token_id, *(gen_eos if isinstance(gen_eos, list) else [gen_eos])}
        if getattr(tok, "chat_template", None):
            marker = "\u2063reply\u2063"
            try:
                chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}]
                text = tok.apply_chat_template(chat, tokenize=False)
            except Exception:  # a template that refuses this layout: eos alone
                text = ""
            after = self.tokenize(text[text.find(marker) + len(marker) :]) if marker in text else []
            special = set(getattr(tok, "all_special_ids", [])) | set(getattr(tok, "added_tokens_decoder", {}))
            if after and after[0] in special:  # e.g. <|im_end|>, <|eot_id|>, <end_of_turn>
                ends.add(after[0])
        return frozenset(t for t in ends if isinstance(t, int))

    # --- running over a KV prefix --------------------------------------------------------------
    def prefix_kv(self, inputs_embeds: Tensor, past: KV | None = None) -> KV:
        """Run a (1, n, d) sequence (after ``past``, if given) and return the per-layer keys/values of all."""
        start = past[0][0].shape[2] if past else 0
        n = inputs_embeds.shape[1]
        _, kv = self.run(
            None,
            torch.ones(1, start + n, dtype=torch.long),
            torch.arange(start, start + n)[None],
            past,
            inputs_embeds=inputs_embeds,
            return_cache=True,
        )
        return kv

    def run(
        self,
        input_ids: Tensor | None,
        attention_mask: Tensor,
        position_ids: Tensor,
        prefix: KV | None,
        inputs_embeds: Tensor | None = None,
        return_cache: bool = False,
        layers: tuple[int, ...] | None = None,
        one_pass: one_pass_layout.Layout | None = None,
        plan=None,
    ):
        """Hidden states of a batch that continues a prefix (expanded over the batch, not copied), or a decoder's
        cache object the caller keeps across steps (``core.kv_cache.GrowingCache``: extended in place).

        attention_mask covers prefix + input; position_ids number the input from the prefix's end. ``layers``
        (decoders): instead of the last hidden state, a list of the outputs of those layers (0: the embeddings,
        ``n_layers``: the last layer's, after the final norm); the layers above the highest asked for do not run.
        ``one_pass``: the batch is a trainable prefix (sequence 0) and the rows that read it (``core.one_pass``).
        ``plan`` (``shared_prefix.cascade.Plan``, with a cache the caller keeps): the cache holds the rows' own
        keys/values, the mask covers them only, and each layer merges in the prefix the plan holds once.
        """
        from transformers import Cache, DynamicCache

        dev = self.device
        input_ids = input_ids.to(dev) if input_ids is not None else None
        attention_mask, position_ids = attention_mask.to(dev), position_ids.to(dev)
        if isinstance(prefix, Cache):  # a decoder's cache the caller keeps (decoding): updated in place
            cache = prefix
            if self._steps_directly(input_ids, inputs_embeds, attention_mask, cache, return_cache, layers):
                return decode_step.step(self.body, input_ids, attention_mask, position_ids, cache, plan)
        else:
            batch = attention_mask.shape[0]
            data = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in prefix] if prefix else None
            if self.kind == "encoder":
                return self._run_encoder(input_ids, attention_mask, position_ids, data, inputs_embeds, return_cache)
            cache = DynamicCache(ddp_cache_data=data, config=self.model.config)
        kwargs = {
            "input_ids": input_ids,
            "inputs_embeds": inputs_embeds,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "use_cache": True,
            self._cache_kwarg: cache,
        }
        if one_pass is not None:
            kwargs[one_pass_layout.KWARG] = one_pass
        if plan is not None:
            kwargs[attention.PLAN] = plan
        if layers is not None and layer_states.can_stop_early(self.body, layers):
            return layer_states.states_of(self.body, layers, lambda: self.body(**kwargs))
        out = self.body(**kwargs, **({"output_hidden_states": True} if layers is not None else {}))
        if layers is not None:
            return [out.hidden_states[i] for i in layers]
        if return_cache:
            return out.last_hidden_state, [(layer.keys, layer.values) for layer in cache.layers]
        return out.last_hidden_state

    @property
    def takes_one_pass(self) -> bool:
        """Whether ``run(..., one_pass=...)`` works: the decoder's attention is ``core.attention``'s grouped one."""
        return self.kind == "decoder" and self.model.config._attn_implementation == attention.GROUPED

    @functools.cached_property
    def fast_steps(self) -> bool:
        """Decoding steps skip transformers' per-call glue (``core.decode_step``): Llama decoders only."""
        return self.kind == "decoder" and decode_step.supports(self.model)

    def _steps_directly(self, input_ids, inputs_embeds, attention_mask, cache, return_cache, layers) -> bool:
        return (
            self.fast_steps
            and input_ids is not None
            and inputs_embeds is None
            and layers is None
            and not return_cache
            and not torch.is_grad_enabled()
            and not self.model.training
            and getattr(cache, "grows_in_place", False)
            and input_ids.shape[1] <= decode_step.MAX_STEP_TOKENS
            and attention_mask.shape[1] == cache.get_seq_length() + input_ids.shape[1]
        )

    def _run_encoder(self, input_ids, attention_mask, position_ids, prefix, inputs_embeds, return_cache):
        """Encoders: every token of the input attends to the prefix (always) and to the unmasked input."""
        start = prefix[0][0].shape[2] if prefix else 0
        capture: list | None = [] if return_cache else None
        out = self.body(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask[:, start:],
            position_ids=position_ids,
            prompttune_prefix=prefix,
            prompttune_capture=capture,
        )
        return (out.last_hidden_state, capture) if return_cache else out.last_hidden_state

    # --- identity -------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A short hash of the architecture and a sample of the weights: tells backbones apart."""
        cfg = self.text_config
        h = hashlib.sha256()
        shape = {
            k: getattr(cfg, k, None)
            for k in (
                "model_type",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "vocab_size",
            )
        }
        h.update(json.dumps(shape, sort_keys=True).encode())
        emb = self.embedding_matrix.detach().cpu()
        # rounded to bfloat16 first, so the same weights loaded in either dtype match
        h.update(emb.flatten()[:4096].to(torch.bfloat16).float().numpy().tobytes())
        h.update(emb[-1].to(torch.bfloat16).float().numpy().tobytes())
        return "sha256:" + h.hexdigest()[:16]


# Llama-family decoders: eager attention is plain softmax attention (no soft-capping, no per-layer scaling), so
# ``attention.grouped_attention`` computes what it does; RMSNorm and SwiGLU MLP are Llama's (``core.lean``).
LLAMA_LIKE = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def _llama_like(config) -> bool:
    return config.get_text_config(decoder=True).model_type in LLAMA_LIKE


def _is_decoder(config) -> bool:
    """Decoder-only models are loaded with their LM head; everything else as a bare encoder."""
    archs = getattr(config, "architectures", None) or []
    if archs:
        return any(a.endswith("ForCausalLM") for a in archs)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not getattr(config, "is_encoder_decoder", False)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_device(name: str | None) -> torch.device:
    """--device / $PROMPTTUNE_DEVICE: cpu (default), cuda, cuda:N, or auto (the GPU when there is one)."""
    name = name or os.environ.get("PROMPTTUNE_DEVICE") or "cpu"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModelError(f"--device {name}: choose cpu, cuda, cuda:N or auto.") from None
    if device.type not in ("cpu", "cuda"):
        raise ModelError(f"--device {name}: choose cpu, cuda, cuda:N or auto.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"--device {name}: this PyTorch sees no CUDA GPU; use --device cpu (or auto).")
    return device


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 matrix products natively (else bf16 is slower than fp32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str | None, device: torch.device | None = None) -> torch.dtype:
    name = name or os.environ.get("PROMPTTUNE_DTYPE") or "auto"
    if name == "auto":
        on_gpu = device is not None and device.type == "cuda"
        return torch.bfloat16 if on_gpu or native_bf16() else torch.float32
    if name not in DTYPES:
        raise ModelError(f"--dtype {name}: choose auto, float32 or bfloat16.")
    return DTYPES[name]


def set_threads() -> None:
    """Use every core we are given (torch may default to fewer in containers), unless OMP_NUM_THREADS says."""
    if os.environ.get("OMP_NUM_THREADS"):
        return
    n = os.cpu_count() or 1
    if torch.get_num_threads() < n:
        torch.set_num_threads(n)

"""Hidden states of chosen layers of a decoder, without running the layers above them.

A probe reads layer 20 of the default decoder's 30: running layers 21-30 (and keeping every layer's states, as
``output_hidden_states`` does) would be a third of the work for nothing. ``states_of`` hooks the chosen layers,
keeps their outputs and stops the forward pass after the highest with an exception caught here. The hooks act
only for the thread that set them (a thread-local), so other threads running the same model are untouched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

_local = threading.local()


class _Stop(Exception):  # noqa: N818 - control flow, not an error
    pass


def _layers_of(body: torch.nn.Module):
    return getattr(body, "layers", None)


def can_stop_early(body: torch.nn.Module, layers: Sequence[int]) -> bool:
    """Whether ``states_of`` serves these layers: each the output of a decoder layer below the last one (the last
    layer's state, after the final norm, and the embeddings, layer 0, come from ``output_hidden_states``)."""
    blocks = _layers_of(body)
    return blocks is not None and bool(layers) and all(1 <= i < len(blocks) for i in layers)


def states_of(body: torch.nn.Module, layers: Sequence[int], run: Callable[[], object]) -> list[Tensor]:
    """The outputs of ``layers`` (1-based, as ``output_hidden_states`` counts them) of the forward pass ``run``,
    which stops after the highest of them."""
    blocks = _layers_of(body)
    wanted = {i - 1: i for i in layers}  # block index -> layer number
    top = max(wanted)
    got: dict[int, Tensor] = {}
    token = object()

    def hook(module, args, output, index):
        if getattr(_local, "token", None) is not token:
            return None  # another thread's forward pass
        got[wanted[index]] = output[0] if isinstance(output, tuple) else output
        if index == top:
            raise _Stop
        return None

    handles = [blocks[i].register_forward_hook(lambda m, a, o, i=i: hook(m, a, o, i)) for i in wanted]
    _local.token = token
    try:
        run()
    except _Stop:
        pass
    finally:
        _local.token = None
        for h in handles:
            h.remove()
    return [got[i] for i in layers]

"""Soft-prompt methods, one file each, registered by name.

Code outside a method's own file never asks which method it holds: it calls the method's hooks
(``prefix_kv``, ``trainable_state`` ...). Adding a method is one new file plus one import below.
"""

from . import deep_prompt, p_tuning, prefix_tuning, prompt_tuning, zero_shot  # noqa: F401,E402  (registration side effects)
from .base import METHODS, SoftPromptMethod, build_method, register  # noqa: F401

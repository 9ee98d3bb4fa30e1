"""Soft-prompt methods, one file each, registered by name.

Code outside a method's own file never asks which method it holds: it calls the method's hooks
(``prefix_kv``, ``trainable_state`` ...). Adding a method is one new file plus one import below.
"""

from prompttune.methods import (
    deep_prompt,  # noqa: F401,E402  (registration side effects)
    p_tuning,  # noqa: F401,E402  (registration side effects)
    prefix_tuning,  # noqa: F401,E402  (registration side effects)
    prompt_tuning,  # noqa: F401,E402  (registration side effects)
    zero_shot,  # noqa: F401,E402  (registration side effects)
)
from prompttune.methods.base import METHODS, SoftPromptMethod, build_method, register  # noqa: F401

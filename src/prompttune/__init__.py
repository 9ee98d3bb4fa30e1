"""prompttune: adapt a frozen language model to many tasks through prompts."""

__version__ = "0.1.0"

from prompttune.api import Prediction, PromptTask, load  # noqa: E402,F401
from prompttune.core.backbone import Backbone  # noqa: E402,F401
from prompttune.core.errors import PromptTuneError  # noqa: E402,F401

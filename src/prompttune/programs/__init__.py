"""Programs, not strings: declared steps (signatures, modules) whose prompts optimizers search (DSPy-style).

signature.py   Signature, InputField, OutputField: what a step reads and writes
parse.py       the model's reply read into typed fields (label set, number, JSON, text)
lm.py          the LM interface; BackboneLM (in-process), FakeLM (tests); lm_http.py: OpenAILM
modules.py     Predict, ChainOfThought, Program (composed like nn.Module), using(lm), tracing()
files.py       Pipeline (YAML steps), load_program, save_program (JSON: instructions + demos)
metrics.py     accuracy, em, f1, MODULE:FN
search.py      SearchConfig (the named limits), MeteredLM, scoring, demo collection
optimizers.py  bootstrap, random_search, mipro -> Result with a NEW program
run.py         the verbs behind `prompttune optimize` and `prompttune run`
"""

from prompttune.programs.files import Pipeline, load_program, save_program
from prompttune.programs.lm import LM, BackboneLM, FakeLM, Prompt
from prompttune.programs.metrics import make_metric
from prompttune.programs.modules import ChainOfThought, Module, Predict, Prediction, Program, tracing, using
from prompttune.programs.optimizers import OPTIMIZERS, bootstrap, mipro, optimize, random_search
from prompttune.programs.parse import OutputParseError
from prompttune.programs.search import Result, SearchConfig, score
from prompttune.programs.signature import Field, InputField, OutputField, Signature, SignatureError

__all__ = [
    "LM", "OPTIMIZERS", "BackboneLM", "ChainOfThought", "FakeLM", "Field", "InputField", "Module",
    "OutputField", "OutputParseError", "Pipeline", "Predict", "Prediction", "Program", "Prompt", "Result",
    "SearchConfig", "Signature", "SignatureError", "bootstrap", "load_program", "make_metric", "mipro",
    "optimize", "random_search", "save_program", "score", "tracing", "using",
]  # fmt: skip

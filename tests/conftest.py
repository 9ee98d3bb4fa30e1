import json
import os
import random
from pathlib import Path

import pytest
from tiny import make_decoder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PROMPTTUNE_DTYPE", "float32")  # exact comparisons in unit tests

POS = ["a great movie", "truly wonderful and fun", "I loved it", "a joy to watch", "great fun , truly great"]
NEG = ["a terrible film", "boring and bad", "I hated it", "what a waste", "bad , bad and boring"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_decoder(tmp_path_factory.mktemp("tiny") / "decoder")


@pytest.fixture(scope="session")
def tiny_backbone(tiny_model_dir):
    from prompttune import Backbone

    return Backbone.load(str(tiny_model_dir))


@pytest.fixture(scope="session")
def long_model_dir(tmp_path_factory) -> Path:
    """The tiny decoder with a 4,096-position context (rotary positions: nothing learned per position), for
    prompts longer than 256 tokens of the tiny tokenizer (the react example, retrieved passages)."""
    path = make_decoder(tmp_path_factory.mktemp("long") / "decoder")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def sentiment_rows() -> list[dict]:
    rng = random.Random(0)
    rows = [{"text": t, "label": "positive"} for t in POS] + [{"text": t, "label": "negative"} for t in NEG]
    rows = rows * 4
    rng.shuffle(rows)
    return rows


@pytest.fixture
def sentiment_file(tmp_path, sentiment_rows) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", sentiment_rows)

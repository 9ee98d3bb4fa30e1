import json
import os
import random
import shutil
import subprocess
import tempfile
import uuid
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


# --- registry databases: SQLite, and PostgreSQL ($PROMPTTUNE_TEST_POSTGRES or a throwaway server) -----------
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def postgres_server():
    url = os.environ.get("PROMPTTUNE_TEST_POSTGRES")
    if url:
        yield url
        return
    required = os.environ.get("PROMPTTUNE_REQUIRE_POSTGRES") == "1"
    folder = tempfile.mkdtemp(prefix="prompttune-pg-")
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "postgres.sh"), "start", folder], capture_output=True, text=True, timeout=180
    )
    if proc.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        reason = f"PostgreSQL could not be started by scripts/postgres.sh: {proc.stderr.strip()[-400:]}"
        if required:
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield proc.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "stop", folder], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path) -> str:
    """A fresh, empty registry database: a SQLite file, or a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "registry.db")
    server = request.getfixturevalue("postgres_server")
    name = "t_" + uuid.uuid4().hex[:12]
    import sqlalchemy as sa

    admin = sa.create_engine(server.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return server.rsplit("/", 1)[0] + "/" + name

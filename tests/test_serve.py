"""`prompttune serve`: an in-process server on a free loopback port, real HTTP (httpx, the openai client),
tiny models. Predictions equal the library's; mixed-task batches equal one-task batches; OpenAI-compatible
completions, chat and streaming; hot add/remove; keys and limits (401/403/413/422/429/504)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import write_jsonl
from test_cli import FAST, invoke, rows
from tiny import make_encoder

from prompttune.core.data import from_records
from prompttune.core.generate import GenerationConfig, Generator
from prompttune.core.template import Template
from prompttune.serve import ServeConfig, build_table, create_app
from prompttune.serve.runner import ThreadedServer

TEXTS = ["a great movie", "boring and bad , bad", "the cat sat on the mat", "I loved it"]
ADMIN_KEY = "admin-key-0123456789abcdef"
USER_KEY = "user-key-0123456789abcdef"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_model_dir):
    """Two soft prompts trained through the CLI (prompt tuning, prefix tuning) and a tagging head artifact."""
    from prompttune import Backbone
    from prompttune.heads.task import HeadTask

    folder = tmp_path_factory.mktemp("serve")
    data = write_jsonl(folder / "train.jsonl", rows(8))
    out = {}
    for name, method in (("pt", "prompt-tuning"), ("prefix", "prefix-tuning")):
        out[name] = folder / name
        result = invoke("train", data, "--out", out[name], "--model", tiny_model_dir, "--method", method, *FAST)
        assert result.exit_code == 0, result.output
    encoder = Backbone.load(str(make_encoder(folder / "encoder")))
    tagger = HeadTask.create(encoder, "tokens", ["O", "B-ANI"], "p-tuning-v2", {"num_virtual_tokens": 4})
    out["tags"] = tagger.save(folder / "tags")
    return out


def task_args(artifacts) -> tuple[list[str], dict]:
    tasks = [f"pt={artifacts['pt']}", f"prefix={artifacts['prefix']}", f"tags={artifacts['tags']}"]
    tasks += ["zs=classify", "nli=classify-instruct", "gen=qa"]
    return tasks, {"zs": "negative,positive", "nli": "entailment,not_entailment"}


@pytest.fixture(scope="module")
def table(artifacts, tiny_model_dir):
    tasks, labels = task_args(artifacts)
    return build_table(ServeConfig(model=str(tiny_model_dir)), tasks, labels)


@pytest.fixture(scope="module")
def server(table):
    """Batches close at 64 rows or after 20 ms."""
    app = create_app(ServeConfig(max_wait_ms=20, max_batch=64), table)
    with ThreadedServer(app) as s:
        yield s


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def predict(client, task: str, inputs) -> httpx.Response:
    return client.post(f"/v1/tasks/{task}/predict", json={"inputs": inputs})


def assert_same_predictions(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g["input"] == w["input"] and g["label"] == w["label"]
        assert g["scores"] == pytest.approx(w["scores"], abs=1e-5)


# --- predict ------------------------------------------------------------------------------------------


def test_predict_equals_prompttune_predict(client, artifacts, tiny_model_dir):
    from prompttune.api import predict as library_predict

    for name in ("pt", "prefix"):
        r = predict(client, name, TEXTS)
        assert r.status_code == 200, r.text
        assert r.json()["task"] == name
        assert_same_predictions(r.json()["outputs"], library_predict(artifacts[name], TEXTS, str(tiny_model_dir)))


def test_predict_hard_prompt_and_head_equal_the_library(client, table):
    for name in ("zs", "nli"):
        r = predict(client, name, TEXTS)
        assert r.status_code == 200, r.text
        assert_same_predictions(r.json()["outputs"], table.get(name).task.predictions(from_records(TEXTS)))
    assert table.get("nli").task.model.max_form_len > 1  # multi-token label words are continued
    tagged = [{"tokens": ["the", "cat", "sat"]}, {"tokens": ["dog", "ran", "in", "park"]}]
    r = predict(client, "tags", tagged)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == table.get("tags").task.predictions(from_records(tagged))


def test_predict_on_a_generation_task_gives_text(client, table):
    r = predict(client, "gen", [{"question": "the cat sat on"}])
    assert r.status_code == 200, r.text
    gen = Generator(table.get("gen").backbone)
    assert r.json()["outputs"][0]["text"] == gen.complete(Template.from_spec("qa"), {"question": "the cat sat on"})


def test_mixed_task_batch_equals_one_task_batches(artifacts, table):
    """Every row of 4 label-word tasks in ONE batch (it closes at 16 rows): the same as each task alone."""
    app = create_app(ServeConfig(max_batch=16, max_wait_ms=30_000), table)
    names = ["pt", "prefix", "zs", "nli"]
    with ThreadedServer(app) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        with ThreadPoolExecutor(16) as pool:
            futures = [(n, t, pool.submit(predict, c, n, [t])) for n in names for t in TEXTS]
            got = {(n, t): f.result() for n, t, f in futures}
        metrics = c.get("/metrics").text
    for (name, text), r in got.items():
        assert r.status_code == 200, r.text
        alone = table.get(name).task.predictions(from_records([text]))
        assert_same_predictions(r.json()["outputs"], alone)
    assert 'prompttune_batch_tasks_bucket{le="2.0"} 0.0' in metrics  # one batch, of 4 tasks
    assert "prompttune_batch_rows_count 1.0" in metrics


# --- OpenAI compatibility -------------------------------------------------------------------------------


def test_openai_client_completions_chat_and_streaming(server, table):
    import openai

    api = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert {m.id for m in api.models.list()} == {"pt", "prefix", "tags", "zs", "nli", "gen"}
    gen = Generator(table.get("gen").backbone)
    want = gen.complete(Template.from_spec("qa"), {"question": "the cat"}, GenerationConfig(max_new_tokens=8))
    done = api.completions.create(model="gen", prompt="the cat", max_tokens=8)
    assert done.choices[0].text == want
    assert done.usage.completion_tokens > 0
    chat = api.chat.completions.create(model="gen", messages=[{"role": "user", "content": "the cat"}], max_tokens=8)
    assert chat.choices[0].message.content == want
    stream = api.chat.completions.create(
        model="gen", messages=[{"role": "user", "content": "the cat"}], max_tokens=8, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    text = "".join(c.choices[0].text for c in api.completions.create(model="gen", prompt="the cat", max_tokens=8,
                                                                    stream=True))  # fmt: skip
    assert text == want
    # a soft prompt continues its own prompt
    soft = api.completions.create(model="pt", prompt="a great movie", max_tokens=6)
    assert soft.choices[0].text == table.get("pt").task.generate("a great movie", GenerationConfig(max_new_tokens=6))
    with pytest.raises(openai.UnprocessableEntityError, match="--max-tokens"):
        api.completions.create(model="gen", prompt="x", max_tokens=100_000)
    with pytest.raises(openai.UnprocessableEntityError, match="does not generate"):
        api.completions.create(model="tags", prompt="x")
    with pytest.raises(openai.NotFoundError, match="no such task"):
        api.completions.create(model="nope", prompt="x")


# --- the task table while serving ---------------------------------------------------------------------


def test_hot_add_and_remove_lose_no_request(client, artifacts):
    """Tasks come and go while another task is queried: every one of its requests succeeds."""
    statuses: list[int] = []
    stop = threading.Event()

    def traffic():
        with httpx.Client(base_url=str(client.base_url), timeout=60) as c:
            for _ in range(200):  # bounded; ends early once the changes are done
                statuses.append(predict(c, "pt", TEXTS[:2]).status_code)
                if stop.is_set():
                    return

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        for i in range(3):
            r = client.post("/v1/tasks", json={"name": f"hot{i}", "source": str(artifacts["prefix"])})
            assert r.status_code == 201, r.text
            assert r.json()["kind"] == "labels"
            assert predict(client, f"hot{i}", TEXTS[:1]).status_code == 200
            assert client.delete(f"/v1/tasks/hot{i}").status_code == 200
            assert predict(client, f"hot{i}", TEXTS[:1]).status_code == 404
        r = client.post("/v1/tasks", json={"name": "hard", "source": "classify", "labels": ["negative", "positive"]})
        assert r.status_code == 201 and r.json()["labels"] == ["negative", "positive"]
        assert client.delete("/v1/tasks/hard").status_code == 200
    finally:
        stop.set()
        worker.join(120)
    assert statuses and set(statuses) == {200}


def test_bad_sources_are_4xx_with_the_reason(client, tmp_path):
    r = client.post("/v1/tasks", json={"name": "gone", "source": str(tmp_path / "missing")})
    assert r.status_code == 422 and "no such artifact" in r.json()["error"]["message"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text("{}")
    r = client.post("/v1/tasks", json={"name": "other", "source": str(other)})
    assert r.status_code == 422 and str(other) in r.json()["error"]["message"]
    assert client.post("/v1/tasks", json={"name": "pt", "source": "classify"}).status_code == 409
    r = client.post("/v1/tasks", json={"name": "bad name!", "source": "classify"})
    assert r.status_code == 422 and "task name" in r.json()["error"]["message"]
    assert predict(client, "pt", TEXTS[:1]).status_code == 200  # the others keep serving
    assert client.get("/healthz").json()["status"] == "ok"


# --- limits ---------------------------------------------------------------------------------------------


def test_limits_name_the_flag(table):
    config = ServeConfig(max_rows=3, max_input_chars=50, max_body_bytes=2048, max_tokens=16)
    with ThreadedServer(create_app(config, table)) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        r = predict(c, "zs", TEXTS)
        assert r.status_code == 413 and "--max-rows" in r.json()["error"]["message"]
        r = predict(c, "zs", ["x" * 51])
        assert r.status_code == 413 and "--max-input-chars" in r.json()["error"]["message"]
        r = c.post("/v1/tasks/zs/predict", content=b'{"inputs": ["' + b"x" * 4000 + b'"]}')
        assert r.status_code == 413 and "--max-body-bytes" in r.json()["error"]["message"]
        r = c.post("/v1/completions", json={"model": "gen", "prompt": "x", "max_tokens": 17})
        assert r.status_code == 422 and "--max-tokens" in r.json()["error"]["message"]
        r = predict(c, "zs", [{"txt": "no text field"}])
        assert r.status_code == 422 and "missing field 'text'" in r.json()["error"]["message"]
        r = c.post("/v1/tasks/zs/predict", json={"rows": ["x"]})
        assert r.status_code == 422 and "inputs" in r.json()["error"]["message"]
        assert c.post("/v1/tasks/zs/predict", content=b"{not json").status_code == 400
        assert predict(c, "zs", TEXTS[:3]).status_code == 200


class BlockingGenerator:
    """A generator that holds the worker until released (bounded wait), to fill the queue on purpose: in
    ``prompt`` (a completion, before the batched decoding) and ``complete`` (predict on a generation task)."""

    def __init__(self, real: Generator):
        self.real = real
        self.entered, self.release = threading.Event(), threading.Event()

    def complete(self, template, values, config=None) -> str:
        self.entered.set()
        self.release.wait(60)
        return "done"

    def prompt(self, template, values):
        self.complete(template, values)
        return self.real.prompt(template, values)


@pytest.fixture
def blocked(table):
    served = table.get("gen")
    original = served.generator
    served.generator = BlockingGenerator(original)
    yield served.generator
    served.generator.release.set()
    served.generator = original


def test_full_queue_is_429_with_retry_after(table, blocked):
    config = ServeConfig(max_queue=2, max_rows=2)
    with ThreadedServer(create_app(config, table)) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(c.post, "/v1/completions", json={"model": "gen", "prompt": "x", "max_tokens": 2})
            assert blocked.entered.wait(30)  # the worker holds the completion
            queued = pool.submit(predict, c, "zs", TEXTS[:2])  # 2 rows wait: the queue is full
            for _ in range(3000):  # bounded wait until they are queued
                if c.get("/healthz").json()["queue_rows"] == 2:
                    break
                threading.Event().wait(0.01)
            r = predict(c, "zs", TEXTS[:1])
            assert r.status_code == 429 and r.headers["Retry-After"] == "1"
            assert "--max-queue" in r.json()["error"]["message"]
            blocked.release.set()
            assert first.result().status_code == 200  # decoded once released
            assert queued.result().status_code == 200


def test_request_timeout_is_504(table, blocked):
    with ThreadedServer(create_app(ServeConfig(timeout_s=0.2), table)) as s:
        with httpx.Client(base_url=s.url, timeout=60) as c:
            r = c.post("/v1/completions", json={"model": "gen", "prompt": "x", "max_tokens": 2})
            assert r.status_code == 504 and "--timeout" in r.json()["error"]["message"]
            blocked.release.set()


# --- keys -----------------------------------------------------------------------------------------------


def test_api_keys_401_403_and_admin(table, tmp_path):
    import hashlib

    from prompttune.serve.auth import KeyStore

    keys = tmp_path / "keys.txt"
    hashed = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    keys.write_text(f"# keys\nsha256:{hashed} admin\n{USER_KEY} tasks=zs,gen\n")
    store = KeyStore.from_file(keys)
    assert all(USER_KEY.encode() not in k.digest for k in store.keys)  # only digests are kept
    config = ServeConfig(api_keys=keys)
    with ThreadedServer(create_app(config, table)) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        user = {"Authorization": f"Bearer {USER_KEY}"}
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        assert predict(c, "zs", TEXTS[:1]).status_code == 401
        r = c.post("/v1/tasks/zs/predict", json={"inputs": ["x"]}, headers={"Authorization": "Bearer wrong-key"})
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert c.post("/v1/tasks/zs/predict", json={"inputs": ["x"]}, headers=user).status_code == 200
        r = c.post("/v1/tasks/pt/predict", json={"inputs": ["x"]}, headers=user)
        assert r.status_code == 403 and "'pt'" in r.json()["error"]["message"]
        assert {m["id"] for m in c.get("/v1/models", headers=user).json()["data"]} == {"zs", "gen"}
        r = c.post("/v1/tasks", json={"name": "k", "source": "qa"}, headers=user)
        assert r.status_code == 403 and "admin" in r.json()["error"]["message"]
        assert c.post("/v1/tasks", json={"name": "k", "source": "qa"}, headers=admin).status_code == 201
        assert c.delete("/v1/tasks/k", headers=admin).status_code == 200
        assert c.get("/metrics").status_code == 401
        assert c.get("/healthz").status_code == 200


def test_metrics_count_requests(client):
    assert predict(client, "zs", TEXTS[:1]).status_code == 200
    text = client.get("/metrics").text
    assert 'prompttune_requests_total{endpoint="/v1/tasks/{name}/predict",status="200",task="zs"}' in text
    assert "prompttune_prefix_cache_bytes" in text and "prompttune_queue_rows" in text

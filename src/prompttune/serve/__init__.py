"""`prompttune serve`: one frozen backbone, many tasks, chosen per request, over HTTP.

- ``tasks.py``: the task table (name -> a loaded task; one Backbone per model id; hot add/remove);
- ``mixed.py``: rows of different label-word tasks scored in one forward pass over their cached prefixes;
- ``batcher.py``: one bounded queue, one worker thread forming batches (--max-batch, --max-wait-ms);
- ``app.py``: the FastAPI app (predict, tasks, health, metrics); ``openai_api.py``: /v1/models,
  /v1/completions, /v1/chat/completions; ``http.py``: errors, keys, bounded bodies; ``auth.py``: API keys;
- ``runner.py``: uvicorn in the foreground (the CLI) or in a thread (tests, benchmarks).
"""

from prompttune.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app", "build_table"]


def __getattr__(name: str):  # FastAPI and torch load only when the app is built
    if name == "create_app":
        from prompttune.serve.app import create_app

        return create_app
    if name == "build_table":
        from prompttune.serve.runner import build_table

        return build_table
    raise AttributeError(name)

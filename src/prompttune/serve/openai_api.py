"""OpenAI-compatible routes: ``model`` names the task whose prompt (soft or hard) the text continues.

    GET  /v1/models                  one entry per task
    POST /v1/completions             {"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "stream", "seed",
                                      "num_beams", "length_penalty", "response_format"}
    POST /v1/chat/completions        {"model", "messages", ...}: the last user message fills the task's field

A label-word task (an artifact or a hard prompt with labels) continues its own prompt with free text
(as ``PromptTask.generate``); a generation template renders the text into its field (as ``Generator.complete``).
Completions waiting in the queue together, of any tasks, are decoded in one batched loop (``decode.py``).
Decoding is greedy unless ``temperature`` > 0 (then sampled, with ``top_p``) or ``num_beams`` > 1 (beam search,
``core/beam.py``, ranked with ``length_penalty``: two fields outside OpenAI's schema, as vLLM takes its own
sampling settings; the ``openai`` client sends them with ``extra_body``). With ``stream`` the answer comes as
server-sent events in the OpenAI chunk format, token by token as the worker decodes (``streaming.py``), ending
with ``data: [DONE]``; the pieces add up to the text the same request without ``stream`` returns. A beam search
streams its text in one piece at the end: until then any beam may still win.

Structured output: ``response_format`` as OpenAI takes it, ``{"type": "json_object"}`` or ``{"type":
"json_schema", "json_schema": {"name", "schema"}}``, holds the completion to a JSON object (valid under the schema)
token by token (``structured/``); ``{"type": "text"}`` is the default. The JSON comes compact (``", "`` and ``": "``
between items, no other whitespace); cut short by ``max_tokens`` it is incomplete, and ``finish_reason`` says
``length``. With ``num_beams`` > 1 every beam is held to it. vLLM's ``guided_choice`` / ``guided_regex`` /
``guided_json`` / ``guided_grammar`` are taken too (``structured/guided.py``).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

from fastapi import FastAPI, Request

from prompttune.core.errors import PromptTuneError
from prompttune.core.generate import GenerationConfig
from prompttune.serve.decode import Completion
from prompttune.serve.http import ApiError, Server, as_api_error, text_size
from prompttune.serve.streaming import TokenStream, sse
from prompttune.serve.tasks import ServedTask
from prompttune.structured import GUIDED, request_grammar

COMPLETION_FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "stream", "seed", "n", "user",
                     "num_beams", "length_penalty", "response_format", *GUIDED}  # fmt: skip
CHAT_FIELDS = (COMPLETION_FIELDS - {"prompt"}) | {"messages", "max_completion_tokens", "stream_options"}
IGNORED = {"user", "stream_options"}  # accepted and not used
DEFAULT_MAX_TOKENS = 64


def register(app: FastAPI, server: Server) -> None:
    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        return {"object": "list", "data": [model_entry(t) for t in server.visible(request)]}

    @app.get("/v1/models/{name}")
    async def model(name: str, request: Request) -> dict:
        return model_entry(server.task_for(request, name))

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await server.body(request)
        served, config, stream = _common(server, request, body, COMPLETION_FIELDS)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(422, "'prompt' must be a string (one prompt per request).")
        values = _values(server, served, prompt)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": served.name}
        if stream:

            def chunk(text: str, done: str | None) -> dict:
                return {**head, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": done}]}

            return _stream(server, served, values, config, [], chunk)
        text = await server.run(served, "generate", (values, config), 1)
        done = _finish(served, text, config)
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": done}
        return {**head, "choices": [choice], "usage": _usage(served, prompt, text)}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await server.body(request)
        if "max_completion_tokens" in body and "max_tokens" not in body:
            body["max_tokens"] = body.pop("max_completion_tokens")
        served, config, stream = _common(server, request, body, CHAT_FIELDS)
        prompt = _last_user_message(body.get("messages"))
        values = _values(server, served, prompt)
        served = _with_conversation(server, served, body["messages"])  # a generation task reads all of it
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": served.name}
        if stream:

            def chunk(text: str, done: str | None) -> dict:
                delta = {"content": text} if text else {}
                return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": done}]}

            role = {**head, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
            return _stream(server, served, values, config, [role], chunk)
        text = await server.run(served, "generate", (values, config), 1)
        done = _finish(served, text, config)
        message = {"role": "assistant", "content": text}
        return {
            **head,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": done, "logprobs": None}],
            "usage": _usage(served, prompt, text),
        }


def model_entry(t: ServedTask) -> dict:
    return {"id": t.name, "object": "model", "created": 0, "owned_by": "prompttune", "kind": t.kind}


def _common(server: Server, request: Request, body: dict, allowed: set) -> tuple[ServedTask, GenerationConfig, bool]:
    """The task, the generation settings (each checked, naming the field) and whether to stream."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(422, f"unsupported field(s) {unknown}; supported: {', '.join(sorted(allowed - IGNORED))}.")
    name = body.get("model")
    if not isinstance(name, str):
        raise ApiError(422, "'model' must name a task (GET /v1/models lists them).")
    served = server.task_for(request, name)
    if not served.can_generate:
        what = "an ATTEMPT mixture (a prompt per input)" if served.kind == "labels" else f"a {served.kind} task"
        raise ApiError(422, f"task {name!r} is {what}: it does not generate text; use "
                            f"POST /v1/tasks/{name}/predict.")  # fmt: skip
    if body.get("n", 1) != 1:
        raise ApiError(422, "'n' must be 1 (one completion per request).")
    limit = server.config.max_tokens
    max_tokens = body.get("max_tokens", DEFAULT_MAX_TOKENS)
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= limit:
        raise ApiError(422, f"'max_tokens' is {max_tokens!r}: give a whole number from 1 to {limit} (--max-tokens).")
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, list | tuple):
        raise ApiError(422, "'stop' must be a string or a list of strings.")
    temperature = body.get("temperature", 0.0)
    top_p = body.get("top_p", 1.0)
    beams = body.get("num_beams", 1)  # checked by GenerationConfig, as the other settings are
    length_penalty = body.get("length_penalty", 1.0)
    try:
        config = GenerationConfig(
            max_new_tokens=max_tokens,
            temperature=0.0 if temperature is None else temperature,
            top_p=1.0 if top_p is None else top_p,
            seed=body.get("seed") or 0,
            stop=tuple(stop),
            num_beams=1 if beams is None else beams,
            length_penalty=1.0 if length_penalty is None else length_penalty,
            grammar=request_grammar(body),
        )
    except PromptTuneError as e:  # names the setting; the request field has the same name
        raise ApiError(422, str(e).replace(" (--", " (field of the request; flag --", 1)) from None
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(422, "'stream' must be true or false.")
    return served, config, stream


def _last_user_message(messages) -> str:
    if not isinstance(messages, list) or not messages:
        raise ApiError(422, "'messages' must be a non-empty list of {role, content}.")
    for m in reversed(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise ApiError(422, "each message must be an object with 'role' and 'content'.")
        if m["role"] == "user":
            return _content(m)
    raise ApiError(422, "'messages' has no user message; the last one fills the task's template.")


def _content(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
            raise ApiError(422, "message content parts must be text parts ({'type': 'text', 'text': ...}).")
        content = "".join(parts)
    if not isinstance(content, str):
        raise ApiError(422, f"a {message['role']} message's 'content' must be text.")
    return content


def _with_conversation(server: Server, served: ServedTask, messages: list) -> ServedTask:
    """A generation task for this request whose prompt holds the conversation before the last user message: its
    system messages after the template's system text, its user / assistant turns before the template's user turn
    (as DSPy and other clients send instructions and demos). The text is literal, never template syntax.
    A label-word task keeps its own prompt (the last user message fills its field)."""
    if not all(isinstance(m, dict) and "role" in m for m in messages):
        raise ApiError(422, "each message must be an object with 'role' and 'content'.")
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    earlier = messages[:last]
    if served.kind != "generation" or not earlier:
        return served
    system, turns = [], []
    for m in earlier:
        text = _content(m)
        if "endraw" in text:
            raise ApiError(422, "a message contains 'endraw', which the prompt cannot hold literally; remove it.")
        if m["role"] in ("system", "developer"):
            system.append(text)
        elif m["role"] in ("user", "assistant"):
            turns.append((m["role"], "{% raw %}" + text + "{% endraw %}"))
        else:
            raise ApiError(422, f"message role {m['role']!r}: use system, developer, user or assistant.")
    size = sum(len(_content(m)) for m in messages[: last + 1])
    if size > server.config.max_input_chars:
        limit = server.config.max_input_chars
        raise ApiError(413, f"the messages are {size:,} characters; the limit is {limit:,} (--max-input-chars).")
    head = [served.template.system] if served.template.system else []
    text = "\n\n".join(head + ["{% raw %}" + t + "{% endraw %}" for t in system]) or None
    template = replace(served.template, system=text, messages=served.template.messages + tuple(turns))
    return replace(served, template=template)


def _values(server: Server, served: ServedTask, prompt: str) -> dict:
    """The task's fields filled with the prompt (checked against the size limit and the task's fields)."""
    limit = server.config.max_input_chars
    if text_size(prompt) > limit:
        raise ApiError(413, f"the prompt is {len(prompt):,} characters; the limit is {limit:,} (--max-input-chars).")
    fields = served.fields
    if len(fields) > 1:
        raise ApiError(
            422, f"task {served.name!r} takes the fields {', '.join(fields)}; a completion fills one. Use "
            f"POST /v1/tasks/{served.name}/predict with objects of these fields.",
        )  # fmt: skip
    return {fields[0]: prompt} if fields else {}


def _stream(server: Server, served: ServedTask, values: dict, config: GenerationConfig, opening: list[dict], chunk):
    """SSE chunks as the tokens come: ``opening``, ``chunk(piece, None)`` each, ``chunk("", finish_reason)``.

    The job is queued before the response starts, so a full queue is still a 429; an error or timeout after
    that is an ``{"error": ...}`` event (the status line is already sent).
    """
    tok = served.backbone.tokenizer
    stream = TokenStream(lambda ids: tok.decode(ids, skip_special_tokens=True), config)
    job = server.batcher.submit(served, "generate", (values, stream.config), 1)
    stream.attach(job.future)

    async def events():
        for e in opening:
            yield e
        parts: list[str] = []
        try:
            async for piece in stream.pieces(job.future, server.config.timeout_s):
                parts.append(piece)
                yield chunk(piece, None)
        except TimeoutError:
            limit = server.config.timeout_s
            yield _error(ApiError(504, f"the completion took longer than {limit:g} s (--timeout).", "timeout_error"))
            return
        except Exception as e:  # noqa: BLE001 - the status line is sent: the error is an event
            yield _error(as_api_error(e))
            return
        finally:
            job.cancelled = True  # not started yet: skipped; running: stops at its next token
        f = job.future
        whole = f.result() if f.done() and not f.cancelled() and f.exception() is None else "".join(parts)
        yield chunk("", _finish(served, whole, config))

    return sse(events())


def _error(e: ApiError) -> dict:
    return {"error": {"message": e.message, "type": e.kind, "code": e.status}}


def _finish(served: ServedTask, text: str, config: GenerationConfig) -> str:
    """``length`` where the token limit (``max_tokens``, or the room the context left) ended the text, else ``stop``."""
    if isinstance(text, Completion):
        return text.finish
    return "length" if len(served.backbone.tokenize(text)) >= config.max_new_tokens else "stop"


def _usage(served: ServedTask, prompt: str, text: str) -> dict:
    """Tokens as the model saw them: the task's prefix and rendered prompt, and those it generated."""
    if isinstance(text, Completion):
        p, c = text.prompt_tokens, text.tokens
    else:
        p, c = len(served.backbone.tokenize(prompt)), len(served.backbone.tokenize(text))
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

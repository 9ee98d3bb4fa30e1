"""An OpenAI-compatible server as a program's LM (vLLM, llama.cpp's server, Ollama, ``prompttune serve``).

``mode="chat"`` (default) sends ``/chat/completions`` with the system text, the demos as earlier turns
and the row's user turn; the reply is read from its start (the answer's ``name:`` is added in front when
the model left it out). ``mode="completions"`` sends the prompt as one text to ``/completions`` and
continues the answer's start: use it with ``prompttune serve`` and a pass-through generation template
(a file holding ``user: "{{ text }}"`` and ``chat: false``), since its chat route fills only the task's
own field from the last user message.

``guided`` holds each reply to its form (label sets, numbers, JSON; reply_form.py) on the server:

- ``"grammar"`` (or ``True``) sends ``Prompt.form`` as vLLM's ``guided_grammar`` field, a Lark grammar in
  llguidance's dialect: ``prompttune serve`` takes it, and vLLM with ``--guided-decoding-backend guidance``. In
  chat mode the grammar starts with the answer's ``name:`` (the assistant's reply starts from nothing).
- ``"json"`` sends ``Prompt.schema`` as OpenAI's ``response_format`` (``json_schema``): the reply is one JSON
  object keyed by the fields' names, written back as ``name: value`` lines for the parser. OpenAI's API, llama.cpp's
  server, Ollama, SGLang, vLLM and ``prompttune serve`` take it. A reply that is not such an object is parsed as text.

Off by default: servers that reject unknown fields would refuse every request.

Greedy (temperature 0). Network and HTTP errors become a ModelError naming the URL and what came back.
"""

from __future__ import annotations

import json

from prompttune.core.errors import DataError, ModelError
from prompttune.programs.lm import LM, Prompt
from prompttune.programs.reply_form import headed, lines_from_json

MAX_REPLY_CHARS = 100_000
MODES = ("chat", "completions")
GUIDED = ("grammar", "json")
SENT_AS = {"grammar": "vLLM's guided_grammar", "json": "response_format"}


class OpenAILM(LM):
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        mode: str = "chat",
        timeout: float = 60.0,
        transport=None,
        guided: bool | str | None = None,
    ):
        import httpx

        if mode not in MODES:
            raise DataError(f"OpenAILM mode {mode!r}: use one of {', '.join(MODES)}.")
        if not base_url.startswith(("http://", "https://")):
            raise DataError(f"OpenAILM base_url {base_url!r}: give an http(s) URL such as http://127.0.0.1:8000/v1.")
        self.base_url, self.model, self.mode, self.name = base_url.rstrip("/"), model, mode, f"openai:{model}"
        guided = "grammar" if guided is True else (guided or None)
        if guided is not None and guided not in GUIDED:
            raise DataError(f"OpenAILM guided {guided!r}: use one of {', '.join(GUIDED)} (or leave it out).")
        self.guided = guided
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers, transport=transport)

    def complete(self, prompt: Prompt, max_tokens: int) -> str:
        body: dict = {"model": self.model, "max_tokens": max_tokens, "temperature": 0}
        if prompt.stop:
            body["stop"] = list(prompt.stop[:4])  # OpenAI accepts at most 4
        chat = self.mode == "chat" and not prompt.plain  # a plain prompt is a completion text on either endpoint
        if self.guided == "grammar" and prompt.form:
            body["guided_grammar"] = headed(prompt.form, prompt.answer.strip()) if chat else prompt.form
        schema = prompt.schema if self.guided == "json" else None
        if schema:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": json.loads(schema)},
            }
        if chat:
            messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
            for user, assistant in prompt.demos:
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
            body["messages"] = [*messages, {"role": "user", "content": prompt.user}]
            reply = self._post("/chat/completions", body, lambda c: c["message"]["content"])
            if schema and (lines := lines_from_json(reply, schema)) is not None:
                return lines
            head = prompt.answer.strip().lower()
            return reply if not head or reply.lstrip().lower().startswith(head) else f"{prompt.answer} {reply}"
        body["prompt"] = prompt.text()
        reply = self._post("/completions", body, lambda c: c["text"])
        if schema and (lines := lines_from_json(reply, schema)) is not None:
            return lines
        return prompt.answer + reply

    def _post(self, path: str, body: dict, read) -> str:
        import httpx

        url = self.base_url + path
        try:
            response = self.client.post(url, json=body)
        except httpx.HTTPError as e:
            raise ModelError(f"{url}: the server could not be reached ({type(e).__name__}: {e}).") from None
        if response.status_code != 200:
            hint = ""
            if ("guided_grammar" in body or "response_format" in body) and response.status_code in (400, 422):
                hint = (
                    f" (sent with --guided {self.guided}: a server that does not take {SENT_AS[self.guided]} refuses"
                    f" it; try --guided {'json' if self.guided == 'grammar' else 'grammar'} or leave it out)"
                )
            raise ModelError(f"{url}: HTTP {response.status_code}: {response.text[:300]}{hint}")
        try:
            text = read(response.json()["choices"][0])
        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
            raise ModelError(f"{url}: not an OpenAI-style reply: {response.text[:300]}") from None
        if not isinstance(text, str):
            raise ModelError(f"{url}: the reply's text is a {type(text).__name__}, not a string.")
        return text[:MAX_REPLY_CHARS]

    def close(self) -> None:
        self.client.close()

"""An OpenAI-compatible server as a program's LM (vLLM, llama.cpp's server, Ollama, ``prompttune serve``).

``mode="chat"`` (default) sends ``/chat/completions`` with the system text, the demos as earlier turns
and the row's user turn; the reply is read from its start (the answer's ``name:`` is added in front when
the model left it out). ``mode="completions"`` sends the prompt as one text to ``/completions`` and
continues the answer's start: use it with ``prompttune serve`` and a pass-through generation template
(a file holding ``user: "{{ text }}"`` and ``chat: false``), since its chat route fills only the task's
own field from the last user message.

``guided=True`` sends each reply's form (``Prompt.form``: label sets, numbers, JSON; reply_form.py) as vLLM's
``guided_grammar`` field, a Lark grammar in llguidance's dialect, so the server holds the reply to it and it
parses: ``prompttune serve`` takes it, and vLLM with ``--guided-decoding-backend guidance``. Off by default:
servers that reject unknown fields (OpenAI's own) would refuse every request. In chat mode the grammar
starts with the answer's ``name:`` (the assistant's reply starts from nothing).

Greedy (temperature 0). Network and HTTP errors become a ModelError naming the URL and what came back.
"""

from __future__ import annotations

import json

from prompttune.core.errors import DataError, ModelError
from prompttune.programs.lm import LM, Prompt
from prompttune.programs.reply_form import headed

MAX_REPLY_CHARS = 100_000
MODES = ("chat", "completions")


class OpenAILM(LM):
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        mode: str = "chat",
        timeout: float = 60.0,
        transport=None,
        guided: bool = False,
    ):
        import httpx

        if mode not in MODES:
            raise DataError(f"OpenAILM mode {mode!r}: use one of {', '.join(MODES)}.")
        if not base_url.startswith(("http://", "https://")):
            raise DataError(f"OpenAILM base_url {base_url!r}: give an http(s) URL such as http://127.0.0.1:8000/v1.")
        self.base_url, self.model, self.mode, self.name = base_url.rstrip("/"), model, mode, f"openai:{model}"
        self.guided = guided
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers, transport=transport)

    def complete(self, prompt: Prompt, max_tokens: int) -> str:
        body: dict = {"model": self.model, "max_tokens": max_tokens, "temperature": 0}
        if prompt.stop:
            body["stop"] = list(prompt.stop[:4])  # OpenAI accepts at most 4
        chat = self.mode == "chat" and not prompt.plain  # a plain prompt is a completion text on either endpoint
        if self.guided and prompt.form:
            body["guided_grammar"] = headed(prompt.form, prompt.answer.strip()) if chat else prompt.form
        if chat:
            messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
            for user, assistant in prompt.demos:
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
            body["messages"] = [*messages, {"role": "user", "content": prompt.user}]
            reply = self._post("/chat/completions", body, lambda c: c["message"]["content"])
            head = prompt.answer.strip().lower()
            return reply if not head or reply.lstrip().lower().startswith(head) else f"{prompt.answer} {reply}"
        body["prompt"] = prompt.text()
        return prompt.answer + self._post("/completions", body, lambda c: c["text"])

    def _post(self, path: str, body: dict, read) -> str:
        import httpx

        url = self.base_url + path
        try:
            response = self.client.post(url, json=body)
        except httpx.HTTPError as e:
            raise ModelError(f"{url}: the server could not be reached ({type(e).__name__}: {e}).") from None
        if response.status_code != 200:
            hint = ""
            if "guided_grammar" in body and response.status_code in (400, 422):
                hint = (
                    " (sent with --guided: a server that does not take vLLM's guided_grammar refuses it; leave it out)"
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

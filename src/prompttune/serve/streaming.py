"""Token-by-token streaming of completions: server-sent events sent while the worker decodes.

The decoder (``core.generate.Generator``) applies its logits processors once per step with the tokens
generated so far; ``ReportingConfig`` adds one that hands those tokens to a callback. The worker thread
decodes them (``TextDeltas``) and passes each new piece of text to the request's event loop, whose
``events`` generator sends it as one SSE chunk. Text that could still change is held back until it cannot:
a partial UTF-8 character, trailing spaces (a tokenizer's clean-up may remove them), and an ending that
could be the start of a stop string. The last piece comes from the finished text, so the pieces always
add up to exactly what the request without ``stream`` returns.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi.responses import StreamingResponse

from prompttune.core.generate import GenerationConfig

END = object()  # the queue's last item: the job is done (its future holds the text or the error)


class StreamClosed(Exception):
    """The client went away (or timed out): the decoding stops."""


@dataclass(frozen=True)
class ReportingConfig(GenerationConfig):
    """A ``GenerationConfig`` whose decoding reports the tokens generated so far before each step.

    ``on_tokens(ids)`` gets one row's generated token ids each time the decoder applies its logits processors,
    i.e. before it picks the next token; the last token is seen only in the returned text. It may raise to
    stop the decoding.
    """

    on_tokens: Callable[[list[int]], None] | None = None

    @classmethod
    def of(cls, config: GenerationConfig, on_tokens: Callable[[list[int]], None]) -> ReportingConfig:
        given = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
        return cls(**{**given, "on_tokens": on_tokens})

    def processors(self):
        procs = super().processors()
        if self.on_tokens is not None:
            procs.append(_Report(self.on_tokens))
        return procs


class _Report:
    """A logits processor that reports the tokens generated so far (one row) and changes nothing."""

    def __init__(self, on_tokens: Callable[[list[int]], None]):
        self.on_tokens = on_tokens

    def __call__(self, input_ids, scores):
        if input_ids.shape[0] == 1:
            self.on_tokens(input_ids[0].tolist())
        return scores


class TextDeltas:
    """The new text of each step, never more than what is certain to stay in the finished text."""

    def __init__(self, decode: Callable[[list[int]], str], stop: tuple[str, ...] = ()):
        self.decode, self.stop = decode, stop
        self.sent = ""

    def update(self, ids: list[int]) -> str:
        return self._advance(self._settled(self.decode(ids)))

    def finish(self, text: str) -> str:
        """The rest of the finished text (what ``generate`` returned)."""
        return self._advance(text)

    def _advance(self, text: str) -> str:
        if not text.startswith(self.sent):  # cannot happen for prefix-stable decoding; never send text twice
            return ""
        piece, self.sent = text[len(self.sent) :], text
        return piece

    def _settled(self, text: str) -> str:
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            return text[:cut]
        for s in self.stop:  # the longest ending that could begin a stop string waits
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    text = text[:-n]
                    break
        return text.rstrip("\ufffd").rstrip()


class TokenStream:
    """One streamed generation: the worker's pieces, queued on the request's event loop."""

    def __init__(self, decode: Callable[[list[int]], str], config: GenerationConfig):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.deltas = TextDeltas(decode, config.stop)
        self.closed = False
        # beam search reports nothing: until it ends any beam may win, so its text comes whole as the last piece
        self.config = config if config.num_beams > 1 else ReportingConfig.of(config, self._on_tokens)

    def _on_tokens(self, ids: list[int]) -> None:  # the worker thread
        if self.closed:
            raise StreamClosed("the client went away")
        piece = self.deltas.update(ids)
        if piece:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, piece)

    def attach(self, future: asyncio.Future) -> None:
        def done(f: asyncio.Future) -> None:
            if not f.cancelled():
                f.exception()  # seen here: a stream the client left fails its job unread, without a warning
            self.queue.put_nowait(END)

        future.add_done_callback(done)

    async def pieces(self, future: asyncio.Future, timeout_s: float) -> AsyncIterator[str]:
        """Each piece of text as it comes, then the rest of the finished text; raises the job's error."""
        deadline = self.loop.time() + timeout_s
        try:
            while True:
                item = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - self.loop.time()))
                if item is END:
                    break
                yield item
            rest = self.deltas.finish(future.result())
            if rest:
                yield rest
        finally:
            self.closed = True


def sse(events: AsyncIterator[dict]) -> StreamingResponse:
    async def lines():
        async for e in events:
            yield f"data: {json.dumps(e, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

"""The language model a program runs on: one small interface, three implementations.

    BackboneLM(Backbone.load())                         the in-process decoder (core.generate.Generator)
    OpenAILM("http://127.0.0.1:8000/v1", model="lm")   any OpenAI-compatible server (lm_http.py)
    FakeLM(lambda prompt: "sentiment: positive")        deterministic and offline, for tests

A module hands the LM a ``Prompt`` (system text, demo turns, the row's user turn, and the start of the
answer) and gets back the reply **from the start of the answer** (``answer`` included), which it parses.
``choose`` picks one of a label set's options by the model's scores where the LM can score text (the
in-process backbone: the log-probability of each option after the prompt, the constant part of which
is a cached key/value prefix); an LM that cannot returns None and the module generates and parses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from prompttune import shared_prefix
from prompttune.core.errors import DataError
from prompttune.structured.grammar import lark_grammar

MAX_CHOOSE_OPTIONS = 64


@dataclass(frozen=True)
class Prompt:
    """What a module asks: constant text (system, demos) first, the row's part (user, answer) last."""

    system: str
    demos: tuple[tuple[str, str], ...]  # (user turn, assistant turn) per demonstration
    user: str
    answer: str = ""  # the reply's start, e.g. "sentiment:"
    stop: tuple[str, ...] = ()
    plain: bool = False  # a completion-style text (each demo "user\nassistant", blank-line separated), no chat turns
    form: str | None = None  # the reply's form as a Lark grammar (reply_form.py): an LM that can holds its text to it
    schema: str | None = None  # the same form as a JSON Schema's text (reply_form.reply_schema), for response_format

    def text(self) -> str:
        """The prompt as one plain text (completion endpoints, the fake LM's view)."""
        if self.plain:
            head = f"{self.system}\n\n" if self.system else ""
            shots = "".join(f"{user}\n{assistant}\n\n" for user, assistant in self.demos)
            return f"{head}{shots}{self.user}\n{self.answer}"
        turns = [self.system, ""] if self.system else []
        for user, assistant in self.demos:
            turns += [user, assistant, ""]
        return "\n".join([*turns, self.user, self.answer])


class LM:
    """A language model seen by programs. ``name`` is recorded in saved programs' history."""

    name = "lm"
    can_choose = False  # True where ``choose`` scores options
    can_score = False  # True where ``option_logprobs_many`` returns the scores (an ensemble averages them)

    def complete(self, prompt: Prompt, max_tokens: int) -> str:
        raise NotImplementedError

    def choose(self, prompt: Prompt, options: Sequence[str], baseline: Prompt | None = None) -> str | None:
        """The option the model scores highest after ``prompt`` (its answer start); None: cannot score.

        ``baseline`` (contextual calibration, Zhao et al. 2021): the same prompt with a content-free row; each
        option's log-probability (normalized over the options) is taken relative to its log-probability there.
        """
        return None

    def choose_many(
        self, prompts: Sequence[Prompt], options: Sequence[str], baseline: Prompt | None = None
    ) -> list[str | None]:
        """``choose`` for each prompt: the highest of its scores where the LM gives them (one batched call; a
        wrapper that keeps or journals scores serves choices from them), else one ``choose`` per prompt."""
        if self.can_score:
            return [options[argmax(row)] for row in self.option_logprobs_many(prompts, options, baseline)]
        return [self.choose(p, options, baseline) for p in prompts]

    def option_logprobs_many(
        self, prompts: Sequence[Prompt], options: Sequence[str], baseline: Prompt | None = None
    ) -> list[list[float]] | None:
        """Per prompt, each option's log-probability normalized over the options (relative to ``baseline``'s
        where given): what ``choose`` takes the highest of, so an ensemble can average it. None: cannot score."""
        return None


class FakeLM(LM):
    """Replies computed by a Python function of the prompt: deterministic, offline. ``calls`` counts them."""

    name = "fake"

    def __init__(
        self,
        respond: Callable[[Prompt], str],
        choose: Callable[[Prompt, Sequence[str]], str] | None = None,
        scores: Callable[[Prompt, Sequence[str]], Sequence[float]] | None = None,
    ):
        """``scores``: each option's log-probability for a prompt; the choice is then the highest one's."""
        self.respond, self._choose, self._scores, self.calls = respond, choose, scores, 0
        if scores is not None and choose is None:
            self._choose = lambda prompt, options: options[argmax(_normalized(scores(prompt, options)))]
        self.can_choose, self.can_score = self._choose is not None, scores is not None

    def complete(self, prompt: Prompt, max_tokens: int) -> str:
        self.calls += 1
        reply = str(self.respond(prompt))
        return reply if prompt.answer and reply.lstrip().startswith(prompt.answer) else prompt.answer + " " + reply

    def choose(self, prompt: Prompt, options: Sequence[str], baseline: Prompt | None = None) -> str | None:
        if self._choose is None:
            return None
        self.calls += 1
        return self._choose(prompt, options)

    def option_logprobs_many(self, prompts, options, baseline=None):
        if self._scores is None:
            return None
        self.calls += len(prompts)
        base = _normalized(self._scores(baseline, options)) if baseline is not None else [0.0] * len(options)
        rows = [_normalized(self._scores(p, options)) for p in prompts]
        return [[s - b for s, b in zip(row, base, strict=True)] for row in rows]


def _raw(text: str) -> str:
    """Literal text inside a Jinja2 template (a demo or instruction may hold braces)."""
    if "endraw" in text:
        raise DataError("a prompt text contains 'endraw', which cannot be shown literally; remove it from the data.")
    return "{% raw %}" + text + "{% endraw %}" if text else ""


def argmax(row: Sequence[float]) -> int:
    """The index of the highest score (the first, on a tie)."""
    return max(range(len(row)), key=row.__getitem__)


def _normalized(scores: Sequence[float]) -> list[float]:
    """Log-probabilities over the options (log-softmax of their summed log-probabilities)."""
    import math

    top = max(scores)
    total = top + math.log(sum(math.exp(s - top) for s in scores))
    return [s - total for s in scores]


class BackboneLM(LM):
    """The in-process decoder: ``Generator.complete`` for text, label scores over a cached prefix for choices.

    The prompt is a chat template: system, demo turns, then the row's user turn as the one variable, so
    the system text and demos form the constant prefix the Generator caches between rows.
    """

    PREFIX_CACHE_SIZE = 4
    BATCH_TOKENS = 4096  # padded tokens per forward when scoring many rows
    # Where the prefix is copied into every row's keys/values (a backbone ``shared_prefix`` does not run): prefix +
    # row tokens over a batch's rows, the keys/values one forward holds and, with options of several tokens, keeps
    # for them. SST-2 with 8 demos, 400 rows: 2.1 GB peak at 4,096 against 4.4 GB bounded by BATCH_TOKENS alone.
    # Held once (the default decoder), a batch's rows attend one copy of the prefix and only BATCH_TOKENS bounds it:
    # 1,000 SST-2 rows under 8 chat demos (251 tokens) 13.1-13.6 -> 7.7-8.1 s, 1.22 GB either way (bfloat16).
    KV_TOKENS = 4096
    can_choose = can_score = True

    def __init__(self, backbone, config=None):
        from prompttune.core.generate import GenerationConfig, Generator

        self.generator = Generator(backbone)
        self.backbone = backbone
        self.name = backbone.model_id
        # plain greedy: the defaults' repetition controls would push a label away from one already seen
        self.config = config or GenerationConfig(repetition_penalty=1.0, no_repeat_ngram_size=0)
        self._prefixes: dict[tuple[int, ...], list] = {}
        self._baselines: dict[tuple, list[float]] = {}  # the last content-free prompt's option scores

    def _spec(self, prompt: Prompt) -> dict:
        """The prompt as a template with one variable, the row's user turn (plain: laid out as ``Prompt.text``)."""
        end = "\n" if prompt.plain else ""
        messages = []
        for user, assistant in prompt.demos:
            messages += [
                {"role": "user", "content": _raw(user + end)},
                {"role": "assistant", "content": _raw(assistant)},
            ]
        spec = {"user": "{{ row }}" + end, "answer": _raw(prompt.answer), "messages": messages}
        spec["chat"] = not prompt.plain
        if prompt.system:
            spec["system"] = _raw(prompt.system)
        return spec

    def complete(self, prompt: Prompt, max_tokens: int) -> str:
        """The reply, held to ``prompt.form`` where it has one (so it parses: reply_form.py)."""
        grammar = lark_grammar(prompt.form, "the reply's form") if prompt.form else None
        config = self.config.replace(max_new_tokens=max_tokens, stop=prompt.stop, grammar=grammar)
        return prompt.answer + self.generator.complete(self._spec(prompt), {"row": prompt.user}, config)

    def choose(self, prompt: Prompt, options: Sequence[str], baseline: Prompt | None = None) -> str:
        """The option with the highest summed log-probability after the prompt's answer start (calibrated by
        the content-free ``baseline``'s, computed once per baseline and kept while the prompt's constant part is)."""
        return self.choose_many([prompt], options, baseline)[0]

    def option_logprobs_many(
        self, prompts: Sequence[Prompt], options: Sequence[str], baseline: Prompt | None = None
    ) -> list[list[float]]:
        """Each prompt's options' log-probabilities normalized over the options; with ``baseline`` (contextual
        calibration) relative to the content-free prompt's, computed once and kept while it stays the same."""
        scores = [_normalized(row) for row in self.option_scores_many(prompts, options)]
        if baseline is None:
            return scores
        key = (baseline, tuple(options))
        if key not in self._baselines:
            self._baselines = {key: _normalized(self.option_scores(baseline, options))}
        return [[s - b for s, b in zip(row, self._baselines[key], strict=True)] for row in scores]

    def option_scores(self, prompt: Prompt, options: Sequence[str]) -> list[float]:
        """Each option's summed token log-probability after the prompt (" option", after the answer start)."""
        return self.option_scores_many([prompt], options)[0]

    def option_scores_many(self, prompts: Sequence[Prompt], options: Sequence[str]) -> list[list[float]]:
        """``option_scores`` of each prompt. Prompts are grouped by their constant part (one cached prefix per
        group); a group's rows run in batches of at most ``BATCH_TOKENS`` padded tokens (and ``KV_TOKENS`` prefix
        and row tokens: a long prefix is in every row's keys/values), left-padded so every
        row's answer ends at the same position. One pass over the rows scores every option's first token; an
        option of several tokens then runs only its own tokens over the rows' keys/values (kept for the batch,
        at most ``KV_TOKENS`` tokens with the prefix's), not the rows again."""
        import torch

        from prompttune.core.template import Template

        if not options or len(options) > MAX_CHOOSE_OPTIONS:
            raise DataError(f"choose: give 1 to {MAX_CHOOSE_OPTIONS} options (got {len(options)}).")
        bb = self.backbone
        option_ids = [bb.tokenize(" " + option) or bb.tokenize(option) for option in options]
        groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
        constant: dict[Prompt, tuple] = {}  # the prompt without its row: compiled and tokenized once
        for i, prompt in enumerate(prompts):
            shared = replace(prompt, user="")
            if shared not in constant:
                compiled = Template.from_spec(self._spec(prompt)).hard().compile(bb.tokenizer, [], 1)
                ids = bb.bos_ids + (bb.tokenize(compiled.prefix_text) if compiled.prefix else [])
                constant[shared] = (compiled, ids)
            compiled, prefix_ids = constant[shared]
            row = bb.tokenize(compiled.render_row({"row": prompt.user}))
            if not row and not prefix_ids:
                raise DataError("choose: the prompt is empty; give the row some text.")
            groups.setdefault(tuple(prefix_ids), []).append((i, row))
        out: list[list[float]] = [[] for _ in prompts]
        longest = max(len(ids) for ids in option_ids)
        copied = not shared_prefix.applies(bb)  # the prefix in every row's keys/values
        with torch.no_grad():
            for prefix_ids, members in groups.items():
                prefix = self._prefix(list(prefix_ids))
                members.sort(key=lambda m: len(m[1]))
                chunk: list[tuple[int, list[int]]] = []
                for member in members:
                    width = len(member[1]) + longest
                    spanned = (len(chunk) + 1) * (len(prefix_ids) * copied + width)  # keys/values the forward holds
                    if chunk and ((len(chunk) + 1) * width > self.BATCH_TOKENS or spanned > self.KV_TOKENS):
                        self._score_chunk(chunk, prefix, len(prefix_ids), option_ids, out)
                        chunk = []
                    chunk.append(member)
                if chunk:
                    self._score_chunk(chunk, prefix, len(prefix_ids), option_ids, out)
        return out

    def _score_chunk(self, chunk, prefix, start: int, option_ids: list[list[int]], out: list[list[float]]) -> None:
        """Fill ``out[i]`` with each option's score for the chunk's rows ``(i, row ids)``."""
        import torch

        bb = self.backbone
        head = bb.model.get_output_embeddings()
        shared = None
        if prefix and shared_prefix.applies(bb):
            shared = [(torch.arange(len(chunk)), prefix)]  # every row of the chunk continues the one prefix
        longest = max(len(ids) for ids in option_ids)

        def logp_tail(seqs: list[list[int]], n: int, keep: bool = False):
            """(rows, n, vocab) next-token log-probabilities at each sequence's last ``n`` positions; with
            ``keep`` also (the keys/values, attention mask, positions) for more tokens after the sequences."""
            width = max(len(s) for s in seqs)
            if start + width + (longest - 1 if keep else 0) > bb.max_length:
                raise DataError(
                    f"choose: the prompt is {start + width} tokens and the model's context holds "
                    f"{bb.max_length}; use fewer demos or shorter rows."
                )
            pad = bb.tokenizer.pad_token_id or 0
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros(len(seqs), width, dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, width - len(s) :], mask[r, width - len(s) :] = torch.tensor(s), 1
            positions = (start + mask.cumsum(1) - 1).clamp(min=start)
            if shared:  # the rows packed, attending one copy of the prefix (the cache then holds the rows only)
                out = shared_prefix.run_rows(bb, ids, mask, positions, shared, return_cache=keep)
                attention = mask
            else:
                attention = torch.cat([torch.ones(len(seqs), start, dtype=torch.long), mask], dim=1)
                out = bb.run(ids, attention, positions, prefix, return_cache=keep)
            hidden, cache = out if keep else (out, None)
            logp = torch.log_softmax(head(hidden[:, width - n :]).float(), -1)
            return (logp, (cache, attention, positions)) if keep else logp

        rows = [row for _, row in chunk]
        scores = torch.empty(len(rows), len(option_ids))
        if not all(rows):  # a row with no tokens of its own: each option runs as the row's text
            for k, ids in enumerate(option_ids):
                logp = logp_tail([row + ids for row in rows], len(ids) + 1)[:, :-1].cpu()  # (rows, len(ids), vocab)
                scores[:, k] = logp[:, torch.arange(len(ids)), torch.tensor(ids)].sum(-1)
        else:
            longer = [k for k, ids in enumerate(option_ids) if len(ids) > 1]
            first, kept = logp_tail(rows, 1, keep=True) if longer else (logp_tail(rows, 1), None)
            first = first[:, 0].cpu()
            for k, ids in enumerate(option_ids):
                scores[:, k] = first[:, ids[0]]
            for k in longer:  # the option's later tokens, run after the rows' keys/values
                cache, att, pos = kept
                ids, n = option_ids[k], len(option_ids[k]) - 1  # tokens 1..n are predicted from 0..n-1
                attention = torch.cat([att, torch.ones(len(rows), n, dtype=torch.long)], dim=1)
                positions = pos[:, -1:] + 1 + torch.arange(n)[None]
                later = torch.tensor([ids[:n]] * len(rows))
                if shared:  # over the rows' own keys/values, the prefix merged in once (shared_prefix/cascade.py)
                    hidden = shared_prefix.run_rows(bb, later, attention, positions, shared, past=cache)
                else:
                    hidden = bb.run(later, attention, positions, cache)
                logp = torch.log_softmax(head(hidden).float(), -1).cpu()  # (rows, n, vocab)
                scores[:, k] += logp[:, torch.arange(n), torch.tensor(ids[1:])].sum(-1)
        for (i, _), row_scores in zip(chunk, scores.tolist(), strict=True):
            out[i] = row_scores

    def _prefix(self, ids: list[int]):
        if not ids:
            return None
        key = tuple(ids)
        if key not in self._prefixes:
            import torch

            with torch.no_grad():
                kv = self.backbone.prefix_kv(self.backbone.embed(torch.tensor(ids))[None])
                kv = [(k.detach(), v.detach()) for k, v in kv]
            while len(self._prefixes) >= self.PREFIX_CACHE_SIZE:
                self._prefixes.pop(next(iter(self._prefixes)))
            self._prefixes[key] = kv
        return self._prefixes[key]

"""Constrained decoding with llguidance: a token mask per constrained row, every step.

`GrammarCompiler` turns a `StructuredOutput` into an llguidance grammar (cached by kind and
text) and checks it against the model's tokenizer; a schema with keys llguidance does not
implement is refused with their names rather than silently loosened. Each constrained
request owns an `LLMatcher`; before sampling, the sampler asks each matcher for the allowed
tokens (a bitmask, about 20 µs a row for SmolLM2's 49k tokens) and sets the others to
-inf, so constrained and free requests share one batch; after sampling, the matcher
consumes the chosen token. When the grammar is complete, only EOS is allowed.

Why llguidance (over xgrammar and outlines): no dependencies (xgrammar 0.2.8 requires
transformers and triton), a tokenizer built straight from our ``tokenizer.json`` in 0.2 s,
masks computed lazily per step (no up-front compilation of the whole automaton), and
unsupported JSON Schema keys reported as errors.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import numpy as np
import torch

from inferline.core.errors import InvalidParameterError
from inferline.core.structured import StructuredOutput
from inferline.core.tool_calls import CALL_CLOSE, CALL_OPEN, ToolCalling
from inferline.engine.json_closing import CLOSERS, JsonScan, closing_plan
from inferline.engine.tool_grammar import JSON_OPTIONS, tool_call_grammar

CLOSE_HORIZON = 48  # closing plans are computed only this close to max_tokens
_JSON_KINDS = ("json_object", "json_schema", "tool_calls")


class GrammarCompiler:
    """Grammars for one tokenizer, compiled once per distinct constraint."""

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_token_ids: list[int]) -> None:
        import llguidance

        self.llg = llguidance
        self.vocab_size = vocab_size
        self.tokenizer = llguidance.LLTokenizer(
            tokenizer_json, n_vocab=vocab_size, eos_token=eos_token_ids
        )
        self._grammar = functools.lru_cache(maxsize=256)(self._compile)
        self._shortest = functools.lru_cache(maxsize=256)(self._shortest_uncached)
        self.eos_token_id = eos_token_ids[0]
        self.single_tokens = {
            text: ids[0] for text in CLOSERS if len(ids := self.tokenizer.tokenize_str(text)) == 1
        }

    def constraint(self, structured: StructuredOutput) -> Constraint:
        """A fresh grammar state for one request; raises `InvalidParameterError` if unsupported."""
        grammar = self._grammar(structured.kind, structured.spec, structured.param)
        matcher = self.llg.LLMatcher(self.tokenizer, grammar)
        if structured.kind == "tool_calls":
            return Constraint(matcher, self, is_json=True, json_after=CALL_OPEN)
        return Constraint(matcher, self, is_json=structured.kind in _JSON_KINDS)

    def shortest_output(self, structured: StructuredOutput) -> int | None:
        """Tokens of the shortest complete JSON output found (None: not JSON or not found).

        Computed once per distinct constraint, not per request.
        """
        if structured.kind not in _JSON_KINDS:
            return None
        return self._shortest(structured)

    def _shortest_uncached(self, structured: StructuredOutput) -> int | None:
        return self.constraint(structured).shortest_output()

    def _compile(self, kind: str, spec: str, param: str, label: str = "") -> str:
        """The grammar text; ``label`` (default ``param``) starts error messages."""
        matcher = self.llg.LLMatcher
        if kind == "json_object":
            grammar = matcher.grammar_from_json_schema({"type": "object"}, JSON_OPTIONS)
        elif kind == "json_schema":
            try:
                grammar = matcher.grammar_from_json_schema(spec, JSON_OPTIONS)
            except ValueError as error:
                raise InvalidParameterError(
                    f"{label or param}: invalid JSON schema: {error}", param
                ) from error
        elif kind == "regex":
            grammar = matcher.grammar_from_regex(spec)
        elif kind == "tool_calls":
            calling = ToolCalling.from_spec(spec)
            for function in calling.functions:
                what = f"tools: the parameters of {function.name!r}"
                self._compile("json_schema", function.parameters, param, what)
            if calling.answer_schema:
                self._compile("json_schema", calling.answer_schema, "response_format")
            lark = tool_call_grammar(
                calling,
                self._is_special_token(CALL_OPEN),
                self._is_special_token(CALL_CLOSE),
            )
            grammar = self.llg.grammar_from("lark", lark)
        else:
            choices = json.loads(spec)
            grammar = matcher.grammar_from_regex("|".join(re.escape(c) for c in choices))
        is_error, messages = matcher.validate_grammar_with_warnings(grammar, self.tokenizer)
        if is_error or messages:
            raise InvalidParameterError(
                f"{label or param}: unsupported {kind.replace('_', ' ')}: {'; '.join(messages)}",
                param,
            )
        return str(grammar)

    def token_bytes(self, token_ids: list[int]) -> bytes:
        """The bytes of ``token_ids`` (a special token's as its text)."""
        return bytes(self.tokenizer.decode_bytes(token_ids))

    def _is_special_token(self, text: str) -> bool:
        """Whether ``text`` is one token that plain text cannot spell (``<tool_call>`` in Qwen)."""
        ids = self.tokenizer.tokenize_str(text)
        return len(ids) == 1 and bool(self.tokenizer.is_special_token(ids[0]))


_BIT_SHIFTS = torch.arange(8, dtype=torch.uint8)


def apply_masks(logits: torch.Tensor, constraints: list[Constraint | None]) -> None:
    """Sets the logits of tokens each row's grammar forbids to -inf (rows without: as is)."""
    rows = [i for i, c in enumerate(constraints) if c is not None]
    if not rows:
        return
    from llguidance.numpy import fill_next_token_bitmask

    vocab = logits.shape[1]
    bitmask = np.full((len(rows), (vocab + 31) // 32), -1, dtype=np.int32)
    for slot, i in enumerate(rows):
        fill_next_token_bitmask(constraints[i].matcher, bitmask, slot)  # type: ignore[union-attr]
    # Unpacked in torch (little-endian bits, token t = bit t % 8 of byte t // 8): [rows, vocab]
    packed = torch.from_numpy(bitmask.view(np.uint8))
    allowed = ((packed.unsqueeze(-1) >> _BIT_SHIFTS) & 1).view(len(rows), -1)[:, :vocab].bool()
    if len(rows) == logits.shape[0]:
        logits.masked_fill_(~allowed, float("-inf"))
    else:
        index = torch.tensor(rows)
        logits[index] = logits[index].masked_fill(~allowed, float("-inf"))


class Constraint:
    """One constrained request's grammar state, and how to close it in time."""

    def __init__(
        self, matcher: Any, compiler: GrammarCompiler, is_json: bool, json_after: str = ""
    ) -> None:
        self.matcher = matcher
        self.compiler = compiler
        self.is_json = is_json
        # Where the JSON being closed stands; it starts after the last ``json_after``.
        self.scan = JsonScan(json_after.encode())
        self._decided: tuple[int, list[int]] | None = None  # (token, plan after it)
        self._plan_here: list[int] | None = None  # the closing plan from this state, if known

    def consume(self, token_id: int) -> None:
        """Advances the grammar by the sampled token."""
        self.matcher.consume_token(token_id)
        if self.is_json:
            self.scan.feed(self.compiler.token_bytes([token_id]))
        decided, self._decided = self._decided, None
        self._plan_here = decided[1] if decided and decided[0] == token_id else None

    def settle(self, token_id: int, remaining: int) -> int:
        """The token to take: the sampled one, unless it leaves no room to finish the JSON.

        Near the limit, a greedy plan (`json_closing.closing_plan`) says how many tokens
        finishing takes after ``token_id``; if more than the room left after it, the plan
        from the current state is followed instead (EOS once the output is complete). Far
        from the limit, or when no plan fits at all, the model's token stands. The plan
        decided on is kept, so following it costs no planning at the next step.
        """
        if not self.is_json or remaining > CLOSE_HORIZON:
            return token_id
        here = self._plan_here
        if here is None:
            here = self._plan(remaining)
        if here is None:  # cannot finish in the room left whatever comes: nothing to save
            return token_id
        after = here[1:] if here and here[0] == token_id else self._plan(remaining - 1, token_id)
        if after is not None:
            self._decided = (token_id, after)
            return token_id
        if not here:
            return self.compiler.eos_token_id
        self._decided = (here[0], here[1:])
        return here[0]

    def shortest_output(self) -> int | None:
        """Tokens of the shortest complete output the greedy plan finds (None: not found)."""
        plan = self._plan(4 * CLOSE_HORIZON)
        return None if plan is None else len(plan)

    def _plan(self, limit: int, first: int | None = None) -> list[int] | None:
        return closing_plan(self.matcher, self.scan, self.compiler, limit, first)

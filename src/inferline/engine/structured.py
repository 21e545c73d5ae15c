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
        texts = {*_IN_STRING, *_IN_OBJECT, *_IN_ARRAY, *_VALUE}
        self.single_tokens = {
            text: ids[0] for text in texts if len(ids := self.tokenizer.tokenize_str(text)) == 1
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

    def _compile(self, kind: str, spec: str, param: str) -> str:
        matcher = self.llg.LLMatcher
        if kind == "json_object":
            grammar = matcher.grammar_from_json_schema({"type": "object"}, JSON_OPTIONS)
        elif kind == "json_schema":
            try:
                grammar = matcher.grammar_from_json_schema(spec, JSON_OPTIONS)
            except ValueError as error:
                raise InvalidParameterError(f"invalid JSON schema: {error}", param) from error
        elif kind == "regex":
            grammar = matcher.grammar_from_regex(spec)
        elif kind == "tool_calls":
            lark = tool_call_grammar(
                ToolCalling.from_spec(spec),
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
                f"{param}: unsupported {kind.replace('_', ' ')}: {'; '.join(messages)}", param
            )
        return str(grammar)

    def _is_special_token(self, text: str) -> bool:
        """Whether ``text`` is one token that plain text cannot spell (``<tool_call>`` in Qwen)."""
        ids = self.tokenizer.tokenize_str(text)
        return len(ids) == 1 and bool(self.tokenizer.is_special_token(ids[0]))


def apply_masks(logits: torch.Tensor, constraints: list[Constraint | None]) -> None:
    """Sets the logits of tokens each row's grammar forbids to -inf (rows without: as is)."""
    matchers = [c.matcher if c is not None else None for c in constraints]
    rows = [i for i, m in enumerate(matchers) if m is not None]
    if not rows:
        return
    vocab = logits.shape[1]
    words = (vocab + 31) // 32
    bitmask = np.full((len(rows), words), -1, dtype=np.int32)
    from llguidance.numpy import fill_next_token_bitmask

    for slot, i in enumerate(rows):
        matcher: Any = matchers[i]
        fill_next_token_bitmask(matcher, bitmask, slot)
    bits = np.unpackbits(bitmask.view(np.uint8), bitorder="little").reshape(len(rows), -1)
    allowed = torch.from_numpy(bits[:, :vocab].astype(bool))
    index = torch.tensor(rows)
    logits[index] = logits[index].masked_fill(~allowed, float("-inf"))


# Closing a JSON output in time: what to try, by where the text stands.
_IN_STRING = ('"', '"}', '"]', '"}}', "a")
_IN_OBJECT = ("}", "}}", "]}", '"')
_IN_ARRAY = ("]", "]}", "0", '"')
_VALUE = ("0", '""', "null", "false", "[]", "{}", '"', "[", "{")


class Constraint:
    """One constrained request's grammar state, and how to close it in time."""

    def __init__(
        self, matcher: Any, compiler: GrammarCompiler, is_json: bool, json_after: str = ""
    ) -> None:
        self.matcher = matcher
        self.compiler = compiler
        self.is_json = is_json
        self.json_after = json_after  # the JSON being closed starts after this marker's last use
        self.output: list[int] = []  # tokens consumed so far

    def consume(self, token_id: int) -> None:
        """Advances the grammar by the sampled token."""
        self.matcher.consume_token(token_id)
        self.output.append(token_id)

    def settle(self, token_id: int, remaining: int) -> int:
        """The token to take: the sampled one, unless it leaves no room to finish the JSON.

        Near the limit, a greedy plan (the grammar's forced tokens, else the shortest way
        out of the current string, object or array) says how many tokens finishing takes
        after ``token_id``; if more than the room left after it, the plan from the current
        state is followed instead (EOS once the output is complete). Far from the limit,
        the model's token stands.
        """
        if not self.is_json or remaining > CLOSE_HORIZON:
            return token_id
        after = self._plan(2 * CLOSE_HORIZON, first=token_id)
        if after is not None and len(after) <= remaining - 1:
            return token_id
        plan = self._plan(2 * CLOSE_HORIZON)
        if not plan:
            return token_id if plan is None else self.compiler.eos_token_id
        return plan[0]

    def shortest_output(self) -> int | None:
        """Tokens of the shortest complete output the greedy plan finds (None: not found)."""
        plan = self._plan(4 * CLOSE_HORIZON)
        return None if plan is None else len(plan)

    def _plan(self, limit: int, first: int | None = None) -> list[int] | None:
        state = self.matcher.deep_copy()
        text = self.compiler.tokenizer.decode_str(self.output)
        plan: list[int] = []
        if first is not None:
            if state.validate_tokens([first]) != 1:
                return None
            state.consume_token(first)
            text += self.compiler.tokenizer.decode_str([first])
        while not state.is_accepting():
            if len(plan) > limit or state.is_stopped():
                return None
            forced = state.compute_ff_tokens()
            if forced:
                step = forced
            else:
                token = self._closing_token(state, text)
                if token is None:
                    return None
                step = [token]
            state.consume_tokens(step)
            plan += step
            text += self.compiler.tokenizer.decode_str(step)
        return plan

    def _closing_token(self, state: Any, text: str) -> int | None:
        if self.json_after and self.json_after in text:
            text = text[text.rfind(self.json_after) + len(self.json_after) :]
        in_string, stack, expects_value = _json_position(text)
        order: tuple[str, ...]
        if in_string:
            order = _IN_STRING
        elif expects_value:
            order = _VALUE
        else:
            order = _IN_OBJECT if stack and stack[-1] == "{" else _IN_ARRAY
        for candidate in order:
            token = self.compiler.single_tokens.get(candidate)
            if token is not None and state.validate_tokens([token]) == 1:
                return token
        return _first_allowed(state.compute_bitmask(), self.compiler.eos_token_id)


def _json_position(text: str) -> tuple[bool, list[str], bool]:
    """(inside a string?, open brackets, is a value expected next?) of partial JSON."""
    in_string = escaped = False
    stack: list[str] = []
    last = ""
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string, last = False, '"'
            continue
        if char == '"':
            in_string = True
        elif char in "{[":
            stack.append(char)
        elif char in "}]" and stack:
            stack.pop()
        if not char.isspace():
            last = char
    return (
        in_string,
        stack,
        last in (":", "[", ",") and bool(stack) and (last != "," or stack[-1] == "["),
    )


def _first_allowed(bitmask: bytes, eos_token_id: int) -> int | None:
    bits = np.unpackbits(np.frombuffer(bitmask, dtype=np.uint8), bitorder="little")
    allowed = [int(t) for t in np.flatnonzero(bits)[:2] if t != eos_token_id]
    return allowed[0] if allowed else None

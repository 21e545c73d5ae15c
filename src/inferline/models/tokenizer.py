"""Tokenizer and chat template, built from the model's own metadata.

Byte-level BPE comes either from GGUF (``tokenizer.ggml.tokens`` + ``merges``) or from a
Hugging Face ``tokenizer.json``; both end up as a ``tokenizers.Tokenizer``. Chat templates
are rendered in a sandboxed Jinja environment, because a template is untrusted input.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from inferline.core.errors import InvalidParameterError, ModelLoadError
from inferline.core.tool_calls import (
    hermes_messages,
    template_renders_tools,
    template_speaks_hermes,
    with_parsed_arguments,
)
from inferline.models.gguf_file import TokenizerMetadata

_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# GGUF token types (llama.cpp): 3 = control (special), 4 = user-defined (kept whole).
_CONTROL, _USER_DEFINED = 3, 4


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    """The pre-tokenizer llama.cpp uses for ``tokenizer.ggml.pre`` = ``pre``."""
    if pre in ("qwen2", "deepseek-r1-qwen"):
        split = pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated")
        return pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(False, use_regex=False)])
    if pre in ("llama3", "llama-bpe", "llama-v3"):
        split = pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated")
        return pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(False, use_regex=False)])
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        # llama.cpp's SMOLLM pre-tokenizer isolates every numeric character first.
        digits = pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated")
        return pre_tokenizers.Sequence([digits, byte_level])
    return byte_level


def _tokenizer_from_gguf(meta: TokenizerMetadata) -> HFTokenizer:
    if meta.model != "gpt2":
        raise ModelLoadError(f"tokenizer model {meta.model!r} is not supported (only gpt2 BPE)")
    vocab = {token: i for i, token in enumerate(meta.tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta.merges]
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))  # type: ignore[arg-type]
    if meta.pre in ("qwen2", "deepseek-r1-qwen"):
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = _pre_tokenizer(meta.pre)
    tok.decoder = decoders.ByteLevel()
    added = [
        AddedToken(t, special=ty == _CONTROL, normalized=False)
        for t, ty in zip(meta.tokens, meta.token_types, strict=False)
        if ty in (_CONTROL, _USER_DEFINED)
    ]
    tok.add_tokens(added)
    return tok


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _template_environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


class Tokenizer:
    """Text <-> token ids, special tokens, and the chat template of one model.

    Invariant: ``encode`` never adds special tokens unless the model asks for a BOS
    (``add_bos_token``) and ``add_special_tokens`` is true.
    """

    def __init__(
        self,
        tokenizer: HFTokenizer,
        *,
        eos_token_ids: Sequence[int],
        bos_token_id: int | None,
        add_bos_token: bool,
        chat_template: str | None,
    ) -> None:
        self._tokenizer = tokenizer
        self.eos_token_ids = tuple(dict.fromkeys(eos_token_ids))
        self.bos_token_id = bos_token_id
        self.add_bos_token = add_bos_token
        self.chat_template = chat_template
        self._compiled_template = (
            _template_environment().from_string(chat_template) if chat_template else None
        )
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.special_token_ids = frozenset(
            i for i, added in tokenizer.get_added_tokens_decoder().items() if added.special
        )

    @classmethod
    def from_gguf(cls, meta: TokenizerMetadata) -> Tokenizer:
        """Builds the byte-level BPE tokenizer stored in a GGUF file."""
        eos = [meta.eos_token_id] if meta.eos_token_id is not None else []
        # Chat models end a turn with <|im_end|> / <|eot_id|>; stop on <|endoftext|> too.
        for name in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>"):
            if name in meta.tokens and meta.chat_template and name in meta.chat_template:
                eos.append(meta.tokens.index(name))
        return cls(
            _tokenizer_from_gguf(meta),
            eos_token_ids=eos,
            bos_token_id=meta.bos_token_id,
            add_bos_token=meta.add_bos_token,
            chat_template=meta.chat_template,
        )

    @classmethod
    def from_hf_files(
        cls,
        tokenizer_json: Path,
        tokenizer_config: dict[str, Any],
        generation_config: dict[str, Any],
    ) -> Tokenizer:
        """Builds the tokenizer of a Hugging Face model directory."""
        tok = HFTokenizer.from_file(str(tokenizer_json))
        tok.post_processor = None  # we add BOS ourselves, once

        def token_id(key: str) -> int | None:
            value = tokenizer_config.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            return tok.token_to_id(value) if isinstance(value, str) else None

        eos_ids = generation_config.get("eos_token_id")
        eos = list(eos_ids) if isinstance(eos_ids, list) else [eos_ids] if eos_ids else []
        if (eos_id := token_id("eos_token")) is not None:
            eos.append(eos_id)
        return cls(
            tok,
            eos_token_ids=eos,
            bos_token_id=token_id("bos_token"),
            add_bos_token=bool(tokenizer_config.get("add_bos_token", False)),
            chat_template=tokenizer_config.get("chat_template"),
        )

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; special-token markup in the text becomes special tokens."""
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``token_ids``; incomplete UTF-8 at the end decodes as U+FFFD."""
        text: str = self._tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)
        return text

    def to_json(self) -> str:
        """The tokenizer as Hugging Face ``tokenizer.json`` text (for grammar libraries)."""
        return str(self._tokenizer.to_str())

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary string of one token (byte-level spelling)."""
        return self._tokenizer.id_to_token(token_id) or ""

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        """Renders ``messages`` with the model's own chat template (sandboxed).

        Tools, earlier tool calls and tool results go through the template when it renders
        tools in the Hermes format (Qwen2.5); a template without tools gets them as text
        (`hermes_messages`); another tool format is refused (its calls could not be parsed).
        """
        if self._compiled_template is None:
            raise InvalidParameterError(
                "this model has no chat template; use a plain completion prompt", "messages"
            )
        messages = with_parsed_arguments(messages)
        if not template_renders_tools(self.chat_template):
            messages, tools = hermes_messages(messages, tools), None
        elif tools and not template_speaks_hermes(self.chat_template):
            raise InvalidParameterError(
                "this model's chat template writes tool calls in a format inferline does not "
                "parse yet (supported: <tool_call> blocks, as in Qwen2.5)",
                "tools",
            )
        try:
            return self._compiled_template.render(
                messages=list(messages),
                tools=list(tools) if tools else None,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._special_text(self.bos_token_id),
                eos_token=self._special_text(self.eos_token_ids[0] if self.eos_token_ids else None),
                **extra,
            )
        except TemplateError as exc:
            raise InvalidParameterError(f"chat template error: {exc}", "messages") from exc

    def _special_text(self, token_id: int | None) -> str:
        return "" if token_id is None else self.id_to_token(token_id)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas without broken UTF-8.

    A character split over several byte-level tokens decodes as U+FFFD until its last
    byte arrives; such a delta is held back until the character is complete. Only a short
    window of ids (``prefix_offset:``) is decoded per token, so the cost stays O(1).
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._token_ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def add(self, token_ids: Sequence[int]) -> str:
        """Appends tokens and returns the newly completed text (possibly empty)."""
        self._token_ids.extend(token_ids)
        return self._emit(final=False)

    def flush(self) -> str:
        """Returns whatever is held back (called when the request finishes)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        decode = self._tokenizer.decode
        window = self._token_ids[self._prefix_offset :]
        prefix_len = self._read_offset - self._prefix_offset
        prefix_text = decode(window[:prefix_len], self._skip_special)
        full_text = decode(window, self._skip_special)
        if len(full_text) <= len(prefix_text) and not final:
            return ""
        if full_text.endswith("\ufffd") and not final:
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._token_ids)
        return full_text[len(prefix_text) :]

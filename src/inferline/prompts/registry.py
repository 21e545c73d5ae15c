"""The prompt registry: push versions, move labels, resolve a request's prompt reference.

Versions are immutable, so a resolved version is cached for good; labels move, so they are
read from the store on each resolve (one indexed read). A reference names a version by
number, by label, or by neither (then the ``production`` label if the prompt has one, else
the latest version); the resolved prompt keeps both the number and the label.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from inferline.core.errors import InvalidParameterError, NotFoundError
from inferline.openai.schemas import ChatCompletionRequest
from inferline.prompts.spec import SAMPLING_KEYS, PromptSpec
from inferline.prompts.templates import render, variables_of
from inferline.store.prompts import PromptStore

DEFAULT_LABEL = "production"


@dataclass(frozen=True)
class ResolvedPrompt:
    """A prompt version rendered for one request."""

    id: str
    version: int
    label: str | None
    messages: list[dict[str, str]]
    route: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    checks: list[dict[str, Any]] | None = None  # checks of this version, beside the route's


class PromptRegistry:
    """Prompt versions and labels over a `PromptStore`."""

    def __init__(self, store: PromptStore) -> None:
        self.store = store
        self._versions: dict[tuple[str, int], dict[str, Any]] = {}

    def push(self, spec: PromptSpec, prefix_tokens: int | None = None) -> dict[str, Any]:
        """Writes ``spec`` as a new version unless it equals the latest; moves its labels.

        ``prefix_tokens``: how many leading prompt tokens its renders share (see
        `probe_renders`); a version that shares under half its predecessor's gets a
        warning, kept with it."""
        body = spec.body()
        _check(body)
        warning = prefix_warning(self.store.version(spec.id), prefix_tokens)
        row, created = self.store.add_version(
            spec.id, body, message=spec.message, prefix_tokens=prefix_tokens, warning=warning
        )
        labels = self.store.label_map(spec.id)
        for label in spec.labels:
            if labels.get(label) != row["version"]:  # a push of the same file moves nothing
                self.store.move_label(spec.id, label, row["version"])
        return {
            "id": spec.id,
            "object": "prompt.version",
            "version": row["version"],
            "created": created,
            "variables": variables_of([m["content"] for m in body["messages"]]),
            "labels": self.store.label_map(spec.id),
            "prefix_tokens": row["prefix_tokens"],
            "warning": row["warning"],
        }

    def resolve(
        self, prompt_id: str, version: str | int | None, variables: Mapping[str, Any]
    ) -> ResolvedPrompt:
        """The version a reference names, rendered with ``variables`` (404 if none)."""
        number, label = self._number(prompt_id, version)
        body = self._version(prompt_id, number)["body"]
        values = {**body.get("defaults", {}), **variables}
        where = f"prompt {prompt_id!r} version {number}"
        messages = [
            {"role": m["role"], "content": render(m["content"], values, where)}
            for m in body["messages"]
        ]
        return ResolvedPrompt(prompt_id, number, label, messages, body.get("route"),
                              dict(body.get("params", {})), body.get("response_format"),
                              body.get("tools"), body.get("checks"))  # fmt: skip

    def describe(self, prompt_id: str) -> dict[str, Any]:
        """Every version, the labels and their moves (404 for an unknown prompt)."""
        history = self.store.history(prompt_id)
        if not history:
            raise NotFoundError(f"no prompt {prompt_id!r}", "prompt_id")
        usage = self.store.usage(prompt_id)
        return {
            "id": prompt_id,
            "object": "prompt",
            "versions": [
                {**_version_view(row), "usage": usage.get(row["version"])} for row in history
            ],
            "labels": self.store.label_map(prompt_id),
            "label_moves": self.store.label_moves(prompt_id),
        }

    def diff(self, prompt_id: str, old: int, new: int) -> str:
        """A unified diff of two versions' bodies (messages first, then the settings)."""
        a, b = self._version(prompt_id, old), self._version(prompt_id, new)
        text = "".join(
            difflib.unified_diff(
                _lines(a["body"]), _lines(b["body"]),
                f"{prompt_id} v{old}", f"{prompt_id} v{new}",
            )
        )  # fmt: skip
        if a["prefix_tokens"] is not None or b["prefix_tokens"] is not None:
            text += (f"# shared prefix: v{old} {a['prefix_tokens']} tokens, "
                     f"v{new} {b['prefix_tokens']} tokens\n")  # fmt: skip
        for row in (a, b):
            if row["warning"]:
                text += f"# warning (v{row['version']}): {row['warning']}\n"
        return text

    def version_view(self, prompt_id: str, number: int) -> dict[str, Any]:
        """One version as the API shows it, with its usage from the log."""
        usage = self.store.usage(prompt_id).get(number)
        return {**_version_view(self._version(prompt_id, number)), "usage": usage}

    def version_of(self, prompt_id: str, version: str | int | None) -> tuple[int, str | None]:
        """The number a reference names, and the label it went through (404 if none)."""
        return self._number(prompt_id, version)

    def _number(self, prompt_id: str, version: str | int | None) -> tuple[int, str | None]:
        if isinstance(version, int) or (isinstance(version, str) and version.isdecimal()):
            return int(version), None
        labels = self.store.label_map(prompt_id)
        label = version or (DEFAULT_LABEL if DEFAULT_LABEL in labels else None)
        if label is None:
            latest = self.store.version(prompt_id)
            if latest is None:
                raise NotFoundError(f"no prompt {prompt_id!r}", "prompt.id")
            return int(latest["version"]), None
        if label not in labels:
            raise NotFoundError(f"prompt {prompt_id!r} has no label {label!r}", "prompt.version")
        return labels[label], label

    def _version(self, prompt_id: str, number: int) -> dict[str, Any]:
        cached = self._versions.get((prompt_id, number))
        if cached is None:
            cached = self.store.version(prompt_id, number)
            if cached is None:
                raise NotFoundError(f"prompt {prompt_id!r} has no version {number}", "version")
            self._versions[(prompt_id, number)] = cached
        return cached


def probe_renders(spec: PromptSpec) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The version's messages rendered twice, every variable with a different value each
    time: their token ids agree up to the static prefix all its requests share."""
    body = spec.body()
    names = variables_of([m["content"] for m in body["messages"]])
    renders = []
    for mark in ("1", "2"):
        values = dict.fromkeys(names, f"{mark * 4}")
        renders.append([{"role": m["role"], "content": render(m["content"], values, "probe")}
                        for m in body["messages"]])  # fmt: skip
    return renders[0], renders[1]


def prefix_warning(previous: dict[str, Any] | None, prefix_tokens: int | None) -> str | None:
    """A warning when a version shares under half the static prefix of the one before."""
    if previous is None or prefix_tokens is None or not previous["prefix_tokens"]:
        return None
    if prefix_tokens >= previous["prefix_tokens"] / 2:
        return None
    return (
        f"the static prefix its requests share is {prefix_tokens} tokens, down from "
        f"{previous['prefix_tokens']} in version {previous['version']}: a variable moved "
        "ahead of the fixed text? Requests will reuse less of the prefix cache"
    )


def _check(body: dict[str, Any]) -> None:
    """400 unless the templates parse and the settings are what a chat request takes."""
    variables_of([m["content"] for m in body["messages"]])
    unknown = sorted(set(body.get("params", {})) - set(SAMPLING_KEYS))
    if unknown:
        raise InvalidParameterError(
            f"params may set {', '.join(SAMPLING_KEYS)}; not {', '.join(unknown)}", "params"
        )
    settings = {k: body[k] for k in ("response_format", "tools") if k in body}
    probe = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    try:
        ChatCompletionRequest.model_validate({**probe, **body.get("params", {}), **settings})
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"])
        raise InvalidParameterError(f"{param}: {first['msg']}", param) from None


def _version_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": row["version"],
        "created_at": row["created_at"],
        "message": row["message"],
        "warning": row["warning"],
        "prefix_tokens": row["prefix_tokens"],
        **row["body"],
    }


def _lines(body: dict[str, Any]) -> list[str]:
    lines = [f"[{m['role']}]\n{m['content']}\n" for m in body["messages"]]
    settings = {k: v for k, v in body.items() if k != "messages"}
    lines += [f"{line}\n" for line in json.dumps(settings, indent=2, sort_keys=True).split("\n")]
    return [line for chunk in lines for line in chunk.splitlines(keepends=True)]

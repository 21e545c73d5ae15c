"""What the client has received of an answer, and how a continuation's outputs join it.

When a stream is cut after the client got part of the answer, another target continues it
from that text (``assistant_prefix``). The prefix is sent without its trailing whitespace
(a prefix ending in a space tokenizes unlike the model's own text, and derails it); a
continuation that starts with that whitespace again has it dropped, since the client
already has it. Counts, text and logprobs of the continuation are rebased on what was sent
before, so the client sees one answer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from inferline.core.outputs import Logprob, RequestOutput, RouteReport


@dataclass(frozen=True)
class _Base:
    """What a continuation's outputs are joined to."""

    text: str
    num_tokens: int
    logprobs: list[Logprob] | None
    space: str  # the trailing whitespace of the text the client has (not sent as prefix)


def _joined(text: str, space: str) -> str:
    """A continuation's cumulative text without the whitespace the client already has;
    while it could still be only that whitespace, nothing is shown yet."""
    if not space:
        return text
    if len(text) < len(space) and space.startswith(text):
        return ""
    return text[len(space) :] if text.startswith(space) else text


class Progress:
    """The answer so far (choice 0: a continuation is only for ``n = 1``)."""

    def __init__(self) -> None:
        self.started = False
        self.text = ""
        self.num_tokens = 0
        self.logprobs: list[Logprob] | None = None
        self.num_tool_calls = 0
        self.num_prompt_tokens = 0
        self._base: _Base | None = None

    def continuation_prefix(self, own_prefix: str | None) -> str:
        """The prefix to send for a continuation (the request's own prefix, then what the
        client has), and from now on outputs are joined to what the client has."""
        full = (own_prefix or "") + self.text
        sent = full.rstrip()
        logprobs = list(self.logprobs) if self.logprobs is not None else None
        self._base = _Base(self.text, self.num_tokens, logprobs, full[len(sent) :])
        return sent

    def rebase(self, output: RequestOutput, route: RouteReport) -> RequestOutput:
        """``output`` as the client sees it (a continuation joined on); notes it."""
        output.route = route
        base = self._base
        if base is not None and output.outputs:
            first = output.outputs[0]
            text = base.text + _joined(first.text, base.space)
            logprobs = first.logprobs
            if base.logprobs is not None and logprobs is not None:
                logprobs = base.logprobs + logprobs
            rebased = dataclasses.replace(  # a copy: the target may build on its own
                first,
                text=text,
                text_delta=text[len(self.text) :],
                num_tokens=base.num_tokens + first.num_tokens,
                logprobs=logprobs,
            )
            output = dataclasses.replace(
                output,
                outputs=[rebased, *output.outputs[1:]],
                num_prompt_tokens=self.num_prompt_tokens or output.num_prompt_tokens,
            )
        if output.outputs:
            first = output.outputs[0]
            self.text, self.num_tokens = first.text, first.num_tokens
            self.logprobs = first.logprobs
            self.num_tool_calls = len(first.tool_calls)
        if not self.started:
            self.num_prompt_tokens = output.num_prompt_tokens
            self.started = any(c.num_tokens or c.text or c.tool_calls for c in output.outputs)
        return output

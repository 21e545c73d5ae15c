"""A fault-injecting fake OpenAI upstream, our own: for gateway tests and benchmarks.

It speaks ``POST /v1/chat/completions``, ``POST /v1/completions`` (streaming and not) and
``GET /v1/models``. A healthy answer is the canonical text (`canonical_text`, 60 distinct
words by default), one word per SSE chunk, ``data: [DONE]`` last, a usage chunk before it
when ``stream_options.include_usage`` is set; ``max_tokens`` (chat: also
``max_completion_tokens``) cuts it with finish_reason ``length``. Usage: prompt_tokens =
whitespace words of the messages or prompt, completion_tokens = words sent. ``model`` in
responses echoes the request's.

Continuation: a chat request whose last message is an assistant message, with
``"continue_final_message": true`` on the request (or ``"prefix": true`` on the message),
continues the canonical text after that message's content; its words must be the first
canonical words (else 400). A ``/v1/completions`` prompt whose last ``j`` words are the
first ``j`` canonical words continues after them. The response holds only the remaining
words, with a leading space unless the prefix is empty or ends in whitespace, so
``prefix + response == canonical text`` (see `inferline.bench.fake_upstream.text`).

Faults, per request, from (in this order) the control-API queue of the request's model,
the ``*`` queue, then a ``fault:...`` model name (grammar in
`inferline.bench.fake_upstream.faults`, e.g. ``model="fault:429-once:retry_after=1"``).
Kinds and parameters (JSON; ``times`` on each, default 1, ``null`` = until reset):

- ``{"kind": "ok"}``: healthy (a placeholder in a script).
- ``{"kind": "status", "status": 429, "retry_after": 1.5, "code": ..., "message": ...}``:
  an OpenAI error body; ``retry_after`` sets ``Retry-After`` (whole seconds, rounded up)
  and ``retry-after-ms``. ``"code": "context_length_exceeded"`` or ``"content_filter"``
  alone means 400 with OpenAI's message. Defaults per status for 400/401/404/429/500/503.
- ``{"kind": "refuse_prefix", "status": 400}``: 400 for a continuation, healthy otherwise.
- ``{"kind": "hang"}``: reads the request, never answers (until the client leaves).
- ``{"kind": "first_token_delay", "delay": 20}``: headers at once, first chunk D s later.
- ``{"kind": "cut", "after": 40}``: K words, then the connection drops (no last chunk).
- ``{"kind": "stall", "after": 40, "duration": 30}``: K words, a pause (null: forever).
- ``{"kind": "malformed", "after": 40, "then": "continue"}``: K words, ``data: {not json``,
  then the rest (``"stop"``: the stream ends there).
- ``{"kind": "no_done", "finish": true}``: no ``data: [DONE]`` (``false``: nor the
  finish_reason chunk).
- ``{"kind": "flap", "up": 5, "down": 2, "status": 503}``: healthy for U s, then the
  status for D s, repeating from the first matching request (``times`` defaults to null).
- ``{"kind": "content_filter_200"}``: 200, empty content, finish_reason ``content_filter``.
- ``{"kind": "tool_call", "name": "lookup", "arguments": "{}"}``: 200, no content, one call
  of that function (id ``call_<response id>``), finish_reason ``tool_calls``, 10 completion
  tokens (streamed as OpenAI does: the name first, then the arguments).

``after`` counts the words of this response (default two thirds of them). Without
streaming, ``cut`` sends half the JSON body then drops, ``stall`` pauses after half the
body, ``malformed`` answers ``{not json``, ``no_done`` with ``finish`` false answers
finish_reason null, and ``first_token_delay`` delays the whole answer.

Control API: ``POST /_control/script`` ``{"model": "<name or *>", "faults": [...]}`` appends
to that model's FIFO queue (one fault per matching request); ``GET /_control/script`` shows
the queues; ``POST /_control/reset`` clears queues, model-name state, flap clocks and the
log; ``GET /_control/log[?field=value...]`` lists every API request (``/v1/...``) in order:
seq, id, time (epoch), model, endpoint, stream, continuation, prefix_words, traceparent
(the W3C header the client sent, or None), fault, status
(None if none was sent), words_sent, outcome (``pending``, ``ok``, ``error``, ``cut``,
``client_closed``); ``POST /_control/config`` ``{"token_delay_ms": D}`` changes the pace.
Faults never apply to ``/v1/models`` or ``/health``.

Connection reset: ASGI cannot reset a connection, so the runner can also listen on a reset
port where every accepted connection is closed at once with a TCP RST (SO_LINGER 0).

Serving: `start_fake_upstream` (thread or subprocess) / `fake_upstream` (context manager),
or ``python -m inferline.bench.fake_upstream --port P [--reset-port R] [--token-delay-ms D]
[--words N]``. This package imports only the standard library and uvicorn.
"""

from inferline.bench.fake_upstream.app import FakeUpstream
from inferline.bench.fake_upstream.faults import (
    KINDS,
    Fault,
    FaultError,
    parse_fault,
    parse_model_name,
)
from inferline.bench.fake_upstream.runner import (
    FakeUpstreamHandle,
    ResetListener,
    fake_upstream,
    start_fake_upstream,
)
from inferline.bench.fake_upstream.text import canonical_text, canonical_words

__all__ = [
    "KINDS",
    "FakeUpstream",
    "FakeUpstreamHandle",
    "Fault",
    "FaultError",
    "ResetListener",
    "canonical_text",
    "canonical_words",
    "fake_upstream",
    "parse_fault",
    "parse_model_name",
    "start_fake_upstream",
]

"""A route's checks (`GuardCheck`) and what the route answers when one fires (`GuardPolicy`).

Frozen and validated on construction (errors name the field); the CLI builds them from the
route's ``checks:`` entries. Output checks whose action is ``escalate`` are the cascade's
and go to the router (`inferline.router.config.CheckConfig`), not here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from inferline.core.decisions import Action, CheckStage
from inferline.core.errors import InvalidParameterError

# the kinds each stage offers
KINDS: dict[str, tuple[str, ...]] = {
    "input": ("classifier", "pattern", "length", "missing_context"),
    "output": ("logprob", "json_schema", "pattern", "classifier", "length", "judge", "agreement"),
    "tool_call": ("tool",),
}
# the actions each stage offers here (``escalate`` on output is the router's)
STAGE_ACTIONS: dict[str, tuple[str, ...]] = {
    "input": ("abstain", "block", "allow"),
    "output": ("abstain", "review", "block", "allow"),
    "tool_call": ("review", "abstain", "block", "allow"),
}
Expiry = Literal["abstain", "allow"]
DEFAULT_ABSTAIN_TEXT = "I can't give a reliable answer to that."
DEFAULT_REVIEW_TEXT = "This answer is waiting for a person's review."


def _fail(message: str, field: str) -> InvalidParameterError:
    return InvalidParameterError(message, field)


@dataclass(frozen=True)
class GuardCheck:
    """One check of a route: where it looks (``on``), what it measures (``kind``), when it
    fires, and its ``action`` then.

    Kinds (the fields each reads):
        classifier: a served one-pass model scores the last user message (on input) or the
            answer (on output): ``model``, and ``label`` (a class of a classifier) or
            ``examples`` (phrases of the flagged topic, for a sentence-embeddings model: the
            score is the best cosine similarity); fires when the score is ``above``.
        pattern: ``detectors`` (``email``, ``phone``, ``credit_card`` (Luhn-checked),
            ``iban`` (mod-97-checked), ``us_ssn``, ``ipv4``, ``secret``) and/or ``pattern`` (a
            regular expression) found in the text.
        length: more than ``max_chars`` characters.
        missing_context: one of ``variables`` (a stored prompt's variables) is absent or
            empty.
        logprob: the answer's mean token logprob is below ``min_mean``, or its lowest below
            ``min_token``, or its mean entropy over the returned alternatives above
            ``max_entropy`` (nats); an answer without logprobs fires (nothing vouches for it).
        json_schema: the answer is not JSON valid against the request's schema (any JSON
            when it has none).
        tool: a call of one of ``tools`` (every tool when empty) whose arguments match
            ``arguments_pattern`` (when set).
        judge: ``route`` scores the answer against ``rubric`` (0 to 1, structured output);
            fires when the score is ``below``. Its cost is the request's.
        agreement: ``samples`` more answers to the same question (sampled at temperature
            0.8 or the request's, if higher); fires when the share that agree with the answer
            (first line, folded) is ``below``. For short answers; their cost is the request's.
    ``deadline_s``: how long a review case waits for a person (``review`` only).
    """

    name: str
    on: CheckStage
    kind: str
    action: Action
    model: str = ""
    label: str = ""
    examples: tuple[str, ...] = ()
    above: float | None = None
    detectors: tuple[str, ...] = ()
    pattern: str = ""
    max_chars: int | None = None
    variables: tuple[str, ...] = ()
    min_mean: float | None = None
    min_token: float | None = None
    max_entropy: float | None = None
    tools: tuple[str, ...] = ()
    arguments_pattern: str = ""
    route: str = ""
    rubric: str = ""
    below: float | None = None
    samples: int = 3
    deadline_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.on not in KINDS:
            raise _fail(f"on must be one of {', '.join(KINDS)}, got {self.on!r}", "on")
        if self.kind not in KINDS[self.on]:
            kinds = ", ".join(KINDS[self.on])
            raise _fail(f"a check on {self.on} is one of {kinds}, got {self.kind!r}", "kind")
        if self.action not in STAGE_ACTIONS[self.on]:
            hint = " (escalate: on output, in a cascade route)" if self.action == "escalate" else ""
            actions = ", ".join(STAGE_ACTIONS[self.on])
            raise _fail(f"a check on {self.on} acts by {actions}{hint}", "action")
        if self.deadline_s <= 0:
            raise _fail("deadline_s must be positive", "deadline_s")
        getattr(self, f"_validate_{self.kind}")()

    def _validate_classifier(self) -> None:
        if not self.model or self.above is None:
            raise _fail("a classifier check needs model and above", "model")
        if bool(self.label) == bool(self.examples):
            raise _fail("a classifier check needs label (a class) or examples", "label")

    def _validate_pattern(self) -> None:
        from inferline.guard.detectors import DETECTORS

        unknown = set(self.detectors) - set(DETECTORS)
        if unknown:
            known = ", ".join(DETECTORS)
            raise _fail(f"unknown detectors {sorted(unknown)}; known: {known}", "detectors")
        if not self.detectors and not self.pattern:
            raise _fail("a pattern check needs detectors or a pattern", "pattern")
        _compiles(self.pattern, "pattern")

    def _validate_length(self) -> None:
        if self.max_chars is None or self.max_chars < 1:
            raise _fail("a length check needs max_chars >= 1", "max_chars")

    def _validate_missing_context(self) -> None:
        if not self.variables:
            raise _fail("a missing_context check needs variables", "variables")

    def _validate_logprob(self) -> None:
        if self.min_mean is None and self.min_token is None and self.max_entropy is None:
            raise _fail("a logprob check needs min_mean, min_token or max_entropy", "min_mean")

    def _validate_json_schema(self) -> None:
        pass

    def _validate_judge(self) -> None:
        if not self.route or not self.rubric or self.below is None:
            raise _fail("a judge check needs route, rubric and below", "route")

    def _validate_agreement(self) -> None:
        if self.below is None or not 0 < self.below <= 1:
            raise _fail("an agreement check needs below in (0, 1]", "below")
        if not 1 <= self.samples <= 16:
            raise _fail("samples must be in [1, 16]", "samples")

    def _validate_tool(self) -> None:
        _compiles(self.arguments_pattern, "arguments_pattern")

    @property
    def logprobs_needed(self) -> int | None:
        """How many alternatives per token the answer must carry (None: no logprobs)."""
        if self.kind != "logprob":
            return None
        return 5 if self.max_entropy is not None else 0


def _compiles(pattern: str, field: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise _fail(f"{field} is not a valid regular expression: {exc}", field) from None


@dataclass(frozen=True)
class GuardPolicy:
    """A route's checks and its answers when one fires.

    ``abstain_text``: the assistant message of an abstention (and of a rejected review);
    ``review_text``: the message a client gets while its answer waits for review;
    ``on_review_expiry``: what a case past its deadline becomes (``abstain``, or ``allow``
    the draft).
    """

    route: str
    checks: tuple[GuardCheck, ...]
    abstain_text: str = DEFAULT_ABSTAIN_TEXT
    review_text: str = DEFAULT_REVIEW_TEXT
    on_review_expiry: Expiry = "abstain"

    def __post_init__(self) -> None:
        if self.on_review_expiry not in ("abstain", "allow"):
            raise _fail("on_review_expiry must be abstain or allow", "on_review_expiry")
        names = [c.name for c in self.checks]
        if len(set(names)) != len(names):
            raise _fail("two checks of a route share a name", "checks")

    def stage(self, on: CheckStage) -> tuple[GuardCheck, ...]:
        """The checks that look at ``on``."""
        return tuple(c for c in self.checks if c.on == on)

    @property
    def holds_output(self) -> bool:
        """Whether the answer is held until the output and tool-call checks have run."""
        return any(c.on != "input" for c in self.checks)

    @property
    def logprobs_needed(self) -> int | None:
        """How many alternatives the answer must carry for the logprob checks (None: none)."""
        needs = [n for c in self.checks if (n := c.logprobs_needed) is not None]
        return max(needs) if needs else None

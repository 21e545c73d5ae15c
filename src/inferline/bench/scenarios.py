"""Benchmark scenarios (issue 5's a, b, c, c0) and synthetic prompts of known token length."""

from __future__ import annotations

import random
from dataclasses import dataclass

from inferline.core.errors import InvalidParameterError
from inferline.core.registry import Registry

# Common English words that are one token each (with their leading space) in the byte-level
# BPE vocabularies we serve (SmolLM2, Qwen2.5; checked in the tests), so N words = N tokens.
_WORDS_TEXT = (
    "the cat sat on a mat and then it ran to old red barn where many birds sang each day "
    "we you they he she was were is are be have has had do did not but or if so as at by for "
    "from with about into over after before under up down out off new good great small big "
    "long high little own other right same last first next few more most some any all time "
    "year people way man woman child world life hand part place case week work point home "
    "water room mother area money story fact month lot book eye job word side kind head house"
)
WORDS = tuple(_WORDS_TEXT.split())


@dataclass(frozen=True)
class Scenario:
    """One load shape: prompt and output lengths in tokens, how many requests, how much load.

    ``shared_prefix_tokens`` of every prompt are identical (a long system prompt); the rest
    are distinct per request. Exactly one of ``concurrency`` (closed loop) and ``rate``
    (Poisson arrivals per second, open loop) is set.
    """

    name: str
    input_tokens: int
    output_tokens: int
    num_requests: int
    concurrency: int | None = 1
    rate: float | None = None
    shared_prefix_tokens: int = 0

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise InvalidParameterError("set exactly one of concurrency and rate", "concurrency")
        if self.shared_prefix_tokens >= self.input_tokens:
            raise InvalidParameterError(
                "the shared prefix must be shorter than the prompt", "shared_prefix_tokens"
            )
        for field_name in ("input_tokens", "output_tokens", "num_requests"):
            if getattr(self, field_name) < 1:
                raise InvalidParameterError(f"{field_name} must be at least 1", field_name)

    def prompts(self, seed: int = 0) -> list[str]:
        """``num_requests`` prompts of ``input_tokens`` words, sharing the prefix if any."""
        rng = random.Random(seed)
        prefix = [rng.choice(WORDS) for _ in range(self.shared_prefix_tokens)]
        unique = self.input_tokens - self.shared_prefix_tokens
        return [
            "".join(f" {w}" for w in prefix + [rng.choice(WORDS) for _ in range(unique)])
            for _ in range(self.num_requests)
        ]


SCENARIOS: Registry[Scenario] = Registry("scenario")
for _scenario in (
    Scenario("a", 512, 128, 10, concurrency=1),
    Scenario("b4", 256, 128, 12, concurrency=4),
    Scenario("b16", 256, 128, 48, concurrency=16),
    Scenario("b32", 256, 128, 96, concurrency=32),
    Scenario("c", 1024 + 64, 64, 48, concurrency=16, shared_prefix_tokens=1024),
    Scenario("c0", 1024 + 64, 64, 48, concurrency=16),
    Scenario("smoke", 32, 8, 4, concurrency=2),
):
    SCENARIOS.add(_scenario.name, _scenario)

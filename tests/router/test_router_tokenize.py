"""`/tokenize` through the router and the wrappers: a route's first local target answers; a
route of remote upstreams only, or a generator that cannot tokenize, is a 400 naming model."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from inferline.core import UnknownModelError
from inferline.core.errors import CannotTokenizeError
from inferline.core.protocols import Tokenized, TokenizeRequest, detokenize, tokenize
from inferline.core.wrapping import GeneratorWrapper
from inferline.router.config import RetryPolicy, RouteConfig, TargetConfig, TargetRef
from inferline.router.router import Router
from inferline.router.target import Target
from tests.router.fakes import ScriptedGenerator


@dataclass
class TokenizingGenerator(ScriptedGenerator):
    """A scripted local engine that tokenizes one id per character."""

    asked: list[str] = field(default_factory=list)

    async def tokenize(self, request: TokenizeRequest) -> Tokenized:
        self.asked.append(request.model)
        return Tokenized([ord(c) for c in request.prompt or ""], self.max_model_len)

    async def detokenize(self, model: str, token_ids: list[int]) -> str:
        self.asked.append(model)
        return "".join(map(chr, token_ids))


def router() -> tuple[Router, TokenizingGenerator]:
    local = TokenizingGenerator("small")
    remote = ScriptedGenerator("remote")
    targets = [
        Target(TargetConfig("remote", kind="openai"), remote),
        Target(TargetConfig("small"), local),
    ]
    routes = [
        RouteConfig("pool", (TargetRef("remote"), TargetRef("small")), retry=RetryPolicy(1)),
        RouteConfig("far", (TargetRef("remote"),), retry=RetryPolicy(1)),
    ]
    return Router(targets, routes), local


def test_a_route_tokenizes_on_its_first_local_target() -> None:
    gateway, local = router()
    out = asyncio.run(tokenize(gateway, TokenizeRequest("pool", prompt="hi")))
    assert out == Tokenized([104, 105], 1000)
    assert asyncio.run(detokenize(gateway, "small", [104, 105])) == "hi"
    assert local.asked == ["small", "small"]  # the target's own model name


@pytest.mark.parametrize("model", ["far", "remote"])
def test_remote_only_routes_cannot_tokenize(model: str) -> None:
    gateway, _ = router()
    with pytest.raises(CannotTokenizeError) as info:
        asyncio.run(tokenize(gateway, TokenizeRequest(model, prompt="hi")))
    assert info.value.param == "model" and "remote upstreams" in info.value.message
    with pytest.raises(CannotTokenizeError):
        asyncio.run(detokenize(gateway, model, [1]))


def test_unknown_models_and_plain_generators() -> None:
    gateway, _ = router()
    with pytest.raises(UnknownModelError):
        asyncio.run(tokenize(gateway, TokenizeRequest("nope", prompt="hi")))
    plain = GeneratorWrapper(ScriptedGenerator("x"))  # what a wrapper sees of a non-engine
    with pytest.raises(CannotTokenizeError) as info:
        asyncio.run(tokenize(plain, TokenizeRequest("x", prompt="hi")))
    assert info.value.param == "model"
    wrapped = GeneratorWrapper(gateway)  # the cache and the guard pass it through
    assert asyncio.run(detokenize(wrapped, "pool", [104])) == "h"

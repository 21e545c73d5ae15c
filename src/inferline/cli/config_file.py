"""The config file of ``inferline serve --config FILE``: models and routes, checked whole
before anything loads (``inferline config check FILE`` runs the same check).

Three kinds of ``models:`` entries: ``llm`` and ``openai`` generate text (see
`config_models`), the one-pass kinds (``sentence-embeddings``, ``onnx``, ...) run
micro-batched (see `models_file`); ``routes:`` (see `config_routes`) put several text
models behind one name. Every model entry is also addressable by its own name, so names
are unique across models and routes. A mistake is an error naming its place:
``routes[0].targets[1]: unknown model 'parnter'``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferline.cache import CachePolicy
from inferline.cli.config_checks import guard_policy
from inferline.cli.config_fields import fail, mapping, value
from inferline.cli.config_models import LocalModelSpec, UpstreamSpec, parse_llm, parse_openai
from inferline.cli.config_rollouts import parse_rollouts
from inferline.cli.config_routes import parse_cache, parse_route
from inferline.cli.config_state import StateConfig, parse_state
from inferline.cli.models_file import KINDS as PREDICTOR_KINDS
from inferline.cli.models_file import PredictorSpec, parse_predictor
from inferline.core.errors import InvalidParameterError
from inferline.evals.rollout import RolloutSpec
from inferline.guard import GuardPolicy
from inferline.router.config import RouteConfig


@dataclass(frozen=True)
class ReviewsConfig:
    """Where decided reviews are posted (``reviews:`` at the top of the file): a URL from the
    config only, signed with the secret in the environment variable ``webhook_secret_env``."""

    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ServeConfig:
    """Everything a config file describes."""

    local: tuple[LocalModelSpec, ...] = ()
    upstreams: tuple[UpstreamSpec, ...] = ()
    predictors: tuple[PredictorSpec, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    caches: tuple[tuple[str, CachePolicy], ...] = ()  # (route name, its response cache)
    guards: tuple[GuardPolicy, ...] = ()  # routes' checks that abstain, review or block
    reviews: ReviewsConfig = field(default_factory=lambda: ReviewsConfig())
    rollouts: tuple[RolloutSpec, ...] = ()  # candidates on a share of traffic (config_rollouts)
    state: StateConfig = field(default_factory=StateConfig)  # what replicas share (config_state)
    path: Path | None = field(default=None, compare=False)

    @property
    def generator_names(self) -> list[str]:
        """The entries that generate text, in file order."""
        return [m.name for m in self.local] + [u.name for u in self.upstreams]


def load_config(path: Path, environ: Mapping[str, str]) -> ServeConfig:
    """Reads and checks a config file (relative paths are relative to it)."""
    import yaml

    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise fail("config", f"cannot read the config file {path}: {error}") from error
    except yaml.YAMLError as error:
        raise fail("config", f"{path} is not valid YAML: {error}") from error
    return dataclasses.replace(parse_config(document, path.parent, environ), path=path)


def parse_config(document: Any, base_dir: Path, environ: Mapping[str, str]) -> ServeConfig:
    """Checks a parsed config document (see the module docstring)."""
    if not isinstance(document, dict) or not isinstance(document.get("models"), list):
        raise InvalidParameterError("the config file needs a top-level list `models:`", "models")
    mapping(document, "config", {"models", "routes", "reviews", "rollouts", "state"})
    local, upstreams, predictors = _models(document["models"], base_dir, environ)
    generators = {m.name for m in local} | {u.name for u in upstreams}
    names = generators | {p.name for p in predictors}
    routes, caches, guards = [], [], []
    for index, raw in enumerate(value(document, "routes", list, "config", [])):
        route = parse_route(raw, f"routes[{index}]", generators)
        guard = guard_policy(raw, f"routes[{index}]", route.name)
        if guard is not None:
            guards.append(guard)
        if route.name in names:
            raise fail(f"routes[{index}].name", f"the name {route.name!r} is already used")
        names.add(route.name)
        routes.append(route)
        cache = parse_cache(raw, f"routes[{index}]")
        if cache is not None:
            caches.append((route.name, cache))
    if routes and not generators:
        raise fail("routes", "routes need models of kind llm or openai")
    embedders = {p.name for p in predictors if p.kind == "sentence-embeddings"}
    _check_scorers(routes, embedders)
    _check_caches(caches, embedders)
    _check_classifiers(guards, {p.name for p in predictors}, embedders)
    _check_judges(guards, generators | {r.name for r in routes})
    route_names = {r.name for r in routes}
    rollouts = parse_rollouts(document.get("rollouts"), base_dir, generators | route_names,
                              route_names)  # fmt: skip
    return ServeConfig(
        tuple(local), tuple(upstreams), tuple(predictors), tuple(routes), tuple(caches),
        tuple(guards), _reviews(document, environ), tuple(rollouts),
        parse_state(document.get("state"), environ),
    )  # fmt: skip


def _reviews(document: dict[str, Any], environ: Mapping[str, str]) -> ReviewsConfig:
    entry = mapping(document.get("reviews") or {}, "reviews", {"webhook_url", "webhook_secret_env"})
    url = value(entry, "webhook_url", str, "reviews", None)
    if url is not None and not url.startswith(("http://", "https://")):
        raise fail("reviews.webhook_url", "expected an http(s) URL")
    secret_env = value(entry, "webhook_secret_env", str, "reviews", None)
    secret = None
    if secret_env is not None:
        secret = environ.get(secret_env) or None
        if secret is None:
            raise fail("reviews.webhook_secret_env", f"${secret_env} is not set")
    if url is not None and secret is None:
        raise fail("reviews.webhook_secret_env", "a webhook is signed: name the secret's variable")
    return ReviewsConfig(url, secret)


def _check_judges(guards: list[GuardPolicy], callable_names: set[str]) -> None:
    """A judge check names a route or a text model of the same file."""
    for guard in guards:
        for check in guard.checks:
            if check.kind == "judge" and check.route not in callable_names:
                place = f"route {guard.route!r}: check {check.name!r}: route"
                raise fail(place, f"{check.route!r} is not a route or text model of this file")


def _check_classifiers(guards: list[GuardPolicy], models: set[str], embedders: set[str]) -> None:
    """A classifier check names a one-pass model of the same file (examples: embeddings)."""
    for guard in guards:
        for check in guard.checks:
            if check.kind != "classifier":
                continue
            place = f"route {guard.route!r}: check {check.name!r}: model"
            if check.model not in models:
                raise fail(place, f"{check.model!r} is not a one-pass model of this file")
            if check.examples and check.model not in embedders:
                raise fail(place, f"examples need a sentence-embeddings model, not {check.model!r}")


def _models(
    entries: list[Any], base_dir: Path, environ: Mapping[str, str]
) -> tuple[list[LocalModelSpec], list[UpstreamSpec], list[PredictorSpec]]:
    """The ``models:`` entries by kind (names unique)."""
    local, upstreams, predictors = [], [], []
    names: set[str] = set()
    for index, raw in enumerate(entries):
        place = f"models[{index}]"
        entry = mapping(raw, place)
        name, kind = value(entry, "name", str, place), value(entry, "kind", str, place)
        if name in names:
            raise fail(f"{place}.name", f"the name {name!r} is used twice")
        names.add(name)
        if kind == "llm":
            local.append(parse_llm(entry, place, base_dir))
        elif kind == "openai":
            upstreams.append(parse_openai(entry, place, environ))
        elif kind in PREDICTOR_KINDS:
            predictors.append(parse_predictor(entry, place, base_dir))
        else:
            kinds = ", ".join(("llm", "openai", *PREDICTOR_KINDS))
            raise fail(f"{place}.kind", f"{kind!r} is not one of {kinds}")
    return local, upstreams, predictors


def _check_caches(caches: list[tuple[str, CachePolicy]], embedders: set[str]) -> None:
    """A semantic cache needs a sentence-embeddings model of the same file."""
    for name, cache in caches:
        if cache.mode == "semantic" and cache.embedding_model not in embedders:
            raise fail(
                f"route {name!r}: cache.embedding_model",
                f"{cache.embedding_model!r} is not a sentence-embeddings model here",
            )


def _check_scorers(routes: list[RouteConfig], embedders: set[str]) -> None:
    """A similarity check needs a sentence-embeddings model of the same file."""
    for index, route in enumerate(routes):
        for position, check in enumerate(route.checks):
            if check.kind == "similarity" and check.model not in embedders:
                place = f"routes[{index}].checks[{position}].model"
                raise fail(place, f"{check.model!r} is not a sentence-embeddings model here")

"""Builds the router of ``inferline serve``: local engines, upstream clients, targets,
routes, and reloads them (``POST /admin/reload``, SIGHUP) without dropping a request."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from inferline.cache import CachedGenerator, CachePolicy, Embed
from inferline.cli.config_file import ServeConfig, load_config
from inferline.cli.config_models import LocalModelSpec, UpstreamSpec
from inferline.core.errors import InvalidParameterError
from inferline.core.protocols import Generator
from inferline.guard import Classify, GuardedGenerator, GuardPolicy, ReviewDesk
from inferline.router.checks import Scorer
from inferline.router.config import RetryPolicy, RouteConfig, TargetConfig, TargetRef
from inferline.router.router import Router
from inferline.router.target import Target

logger = logging.getLogger(__name__)
Spec = LocalModelSpec | UpstreamSpec
ClassifiersFor = Callable[[Sequence[GuardPolicy]], dict[str, Classify]]


def single_model_config(args: argparse.Namespace) -> ServeConfig:
    """``serve --model X`` as a config: one local model, named by the first
    ``--served-model-name`` (default X); the other names are routes to it."""
    names = list(getattr(args, "served_model_name", None) or [args.model])
    model = LocalModelSpec(names[0], args.model, {}, TargetConfig(names[0]))
    aliases = tuple(
        RouteConfig(alias, (TargetRef(names[0]),), retry=RetryPolicy(attempts=1))
        for alias in dict.fromkeys(names[1:])
        if alias != names[0]
    )
    return ServeConfig(local=(model,), routes=aliases)


def serve_config(args: argparse.Namespace, environ: Mapping[str, str]) -> ServeConfig:
    """The config file if it names text models, else ``--model`` beside its predictors."""
    if args.config is None:
        return single_model_config(args)
    config = load_config(args.config, environ)
    if config.generator_names:
        return config
    single = single_model_config(args)
    return dataclasses.replace(single, predictors=config.predictors, path=config.path)


def build_local(spec: LocalModelSpec, args: argparse.Namespace, data_dir: Path) -> Generator:
    """A local engine on its own thread (slow: loads the model)."""
    from inferline.cli.engine_factory import engine_config
    from inferline.engine import AsyncEngine, FrontendConfig, LLMEngine, SchedulerConfig

    options = {**vars(args), **spec.engine, "model": spec.source}
    settings = argparse.Namespace(**options)
    scheduler = SchedulerConfig(
        max_num_batched_tokens=settings.max_num_batched_tokens,
        max_num_seqs=settings.max_num_seqs,
        batch_token_share=settings.batch_token_share,
        batch_prefill_tokens=settings.batch_prefill_tokens,
    )
    config = engine_config(settings, data_dir, scheduler=scheduler)
    frontend = FrontendConfig(
        max_queued_requests=settings.max_queued_requests, stall_timeout_s=settings.stall_timeout
    )
    # built on the engine thread (see AsyncEngine)
    return AsyncEngine(lambda: LLMEngine(config), frontend, name=spec.name)


def _build_upstream(spec: UpstreamSpec) -> Generator:
    from inferline.client import UpstreamClient

    return UpstreamClient(spec.client)


class Gateway:
    """The targets and routes in force, built from a `ServeConfig`, and their reload."""

    def __init__(
        self,
        args: argparse.Namespace,
        data_dir: Path,
        environ: Mapping[str, str],
        *,
        scorers: Mapping[str, Scorer] | None = None,
        embedders: Mapping[str, Embed] | None = None,
        classifiers: ClassifiersFor | None = None,
        desk: ReviewDesk | None = None,
        local_generators: Mapping[str, Generator] | None = None,
    ):
        self.args, self.data_dir, self.environ = args, data_dir, environ
        self.local_generators = dict(local_generators or {})  # running elsewhere (Ray)
        self.config = serve_config(args, environ)
        self._targets: dict[str, tuple[Spec, Target]] = {}
        self._draining: set[asyncio.Task[None]] = set()
        self._drain_timeout_s = float(getattr(args, "drain_timeout", 30.0))
        self.router = Router(
            [self._target(spec) for spec in self._specs(self.config)],
            self.config.routes,
            scorers=scorers,
        )
        self.cache: CachedGenerator | None = None
        if self.config.caches:
            self.cache = CachedGenerator(self.router, self._policies(self.config), embedders)
        self._classifiers = classifiers or (lambda _: {})
        # always there: a prompt version may bring checks to a route that has none
        self.guard = GuardedGenerator(
            self.cache if self.cache is not None else self.router,
            {g.route: g for g in self.config.guards},
            classifiers=self._classifiers(self.config.guards),
            desk=desk,
        )

    @property
    def generator(self) -> Generator:
        """What the app serves: the routes' checks, in front of the response cache (when
        routes have one), in front of the router."""
        return self.guard

    def _policies(self, config: ServeConfig) -> dict[str, CachePolicy]:
        """Each cached route's policy, with the revision of its models: a changed model
        (its source, settings or upstream) starts a new set of entries."""
        specs = {spec.name: spec for spec in self._specs(config)}
        routes = {route.name: route for route in config.routes}
        policies = {}
        for name, policy in config.caches:
            route = routes[name]
            revision = repr((route, [specs[t.name] for t in route.targets]))
            digest = hashlib.sha256(revision.encode()).hexdigest()[:16]
            policies[name] = dataclasses.replace(policy, revision=digest)
        return policies

    @staticmethod
    def _specs(config: ServeConfig) -> list[Spec]:
        return [*config.local, *config.upstreams]

    def _target(self, spec: Spec) -> Target:
        target = self._make_target(spec)
        self._targets[spec.name] = (spec, target)
        return target

    def _make_target(self, spec: Spec) -> Target:
        if isinstance(spec, LocalModelSpec) and getattr(self.args, "ray", False):
            generator = self.local_generators.get(spec.name)
            if generator is None:  # a reload cannot deploy a model on the cluster
                raise InvalidParameterError(
                    f"model {spec.name!r} is not deployed on the cluster: restart to add it",
                    "models",
                )
        elif isinstance(spec, LocalModelSpec):
            generator = build_local(spec, self.args, self.data_dir)
        else:
            generator = _build_upstream(spec)
        return Target(spec.target, generator)

    def summary(self) -> str:
        """One line per model entry and route (for the server's start-up output)."""
        lines = []
        for spec, target in self._targets.values():
            where = spec.source if isinstance(spec, LocalModelSpec) else spec.client.base_url
            lines.append(f"model {spec.name}: {target.config.kind} {where}")
        lines += [
            f"route {r.name}: {r.strategy} over {', '.join(t.name for t in r.targets)}"
            for r in self.config.routes
        ]
        return "\n".join(lines)

    def _check_reloadable(self, new: ServeConfig) -> None:
        """Refuses a new config that a reload cannot apply."""
        if new.predictors != self.config.predictors:
            raise InvalidParameterError(
                "the embedding and classic models changed: restart the server to apply that",
                "models",
            )
        self.guard.check_desk(new.guards)

    async def reload(self) -> dict[str, Any]:
        """Re-reads the config file; a bad one is refused (the old one stays). New models
        load before traffic moves to them; dropped ones drain, then stop."""
        if self.config.path is None:
            raise InvalidParameterError("the server was not started with --config", "config")
        args = argparse.Namespace(**{**vars(self.args), "config": self.config.path})
        new = serve_config(args, self.environ)
        self._check_reloadable(new)
        kept, loaded, targets, built = [], [], [], []
        try:
            for spec in self._specs(new):
                old = self._targets.get(spec.name)
                if old is not None and old[0] == spec:
                    targets.append(old[1])
                    kept.append(spec.name)
                    continue
                target = await asyncio.to_thread(self._make_target, spec)
                built.append((spec, target))
                targets.append(target)
                loaded.append(spec.name)
            dropped = await self.router.replace(targets, new.routes)
        except Exception as error:
            for _, target in built:
                await target.generator.shutdown(0)
            if isinstance(error, InvalidParameterError):
                raise
            raise InvalidParameterError(f"reload failed: {error}", "config") from error
        self._targets = {
            spec.name: (spec, target)
            for spec, target in [*((s, t) for s, t in self._targets.values()), *built]
            if target in targets
        }
        for target in dropped:
            task = asyncio.create_task(target.generator.shutdown(self._drain_timeout_s))
            self._draining.add(task)  # kept referenced until it is done
            task.add_done_callback(self._draining.discard)
        self.config = new
        if self.cache is not None:
            self.cache.set_policies(self._policies(new))
        self.guard.set_policies({g.route: g for g in new.guards}, self._classifiers(new.guards))
        names = sorted(t.name for t in dropped)
        logger.warning("reloaded %s: loaded %s, dropped %s", new.path, loaded, names)
        return {
            "object": "reload",
            "loaded": loaded,
            "kept": kept,
            "dropped": names,
            "routes": [r.name for r in new.routes],
        }

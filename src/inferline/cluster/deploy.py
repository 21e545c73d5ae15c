"""The Ray Serve application of ``inferline serve --ray``: one deployment per local model
(`EngineReplica` replicas, fixed or autoscaled on queued tokens, chosen per request by
`PrefixAwareRouter`) and the gateway as the ingress deployment, its app built in each
gateway replica by the CLI's own factory with each model as a `ReplicaSet` target."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from inferline.cluster.remote import ReplicaSet
from inferline.cluster.replica import EngineReplica, MakeGenerator
from inferline.core.errors import InvalidParameterError
from inferline.core.protocols import Generator

logger = logging.getLogger(__name__)
APP_NAME = "inferline"
MakeApp = Callable[[Mapping[str, Generator]], Any]  # local models' generators -> ASGI app


@dataclass(frozen=True)
class Scale:
    """How many replicas a local model runs: ``replicas`` fixed, or between
    ``min_replicas`` and ``max_replicas`` on queued prompt tokens (``target_queued_tokens``
    per replica; ``upscale_delay_s`` / ``downscale_delay_s`` are the cool-downs). Each
    replica reserves ``num_cpus`` of Ray's CPUs and runs ``threads`` compute threads;
    ``routing`` is ``prefix`` (prefix-cache locality, then reported load:
    `PrefixAwareRouter`), ``load`` (Ray Serve's default: the shorter queue of two random
    replicas) or ``random`` (a uniformly random replica: the baseline of the locality
    measurement)."""

    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_queued_tokens: int = 2048
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 60.0
    num_cpus: float = 1.0
    threads: int | None = None
    routing: str = "prefix"
    saturation_tokens: int = 4096

    def __post_init__(self) -> None:
        if self.routing not in ("prefix", "load", "random"):
            raise InvalidParameterError("routing must be prefix, load or random", "routing")
        low = self.min_replicas if self.min_replicas is not None else self.replicas
        if self.replicas < 1 or low < 1:
            raise InvalidParameterError("replicas must be >= 1 (no scale to zero)", "replicas")
        if self.max_replicas is not None and self.max_replicas < low:
            raise InvalidParameterError("max_replicas must be >= min_replicas", "autoscaling")

    @property
    def autoscaled(self) -> bool:
        """Whether the replica count follows the load."""
        return self.max_replicas is not None

    def deployment_options(self) -> dict[str, Any]:
        """The Ray Serve options of the model's deployment."""
        from ray.serve.config import AutoscalingConfig, AutoscalingPolicy, RequestRouterConfig

        from inferline.cluster.autoscaling import queued_tokens_policy
        from inferline.cluster.routing import PrefixAwareRouter

        env = {"OMP_NUM_THREADS": str(self.threads)} if self.threads else {}
        options: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.num_cpus, "runtime_env": {"env_vars": env}},
            "max_ongoing_requests": 64,
            "health_check_period_s": 5,
        }
        if self.routing != "load":
            options["request_router_config"] = RequestRouterConfig(
                request_router_class=PrefixAwareRouter,  # type: ignore[arg-type]
                request_router_kwargs={
                    "saturation_tokens": self.saturation_tokens,
                    "placement": self.routing,
                },
                request_routing_stats_period_s=0.5,  # type: ignore[arg-type]
            )
        if not self.autoscaled:
            options["num_replicas"] = self.replicas
            return options
        low = self.min_replicas if self.min_replicas is not None else self.replicas
        assert self.max_replicas is not None
        policy = AutoscalingPolicy(
            policy_function=queued_tokens_policy,
            policy_kwargs={"target_queued_tokens": self.target_queued_tokens},
        )
        options["autoscaling_config"] = AutoscalingConfig(
            min_replicas=low, initial_replicas=low, max_replicas=self.max_replicas,
            upscale_delay_s=self.upscale_delay_s, downscale_delay_s=self.downscale_delay_s,
            metrics_interval_s=0.5, look_back_period_s=2.0, policy=policy,
        )  # fmt: skip
        return options


@dataclass(frozen=True)
class EngineDeployment:
    """One local model entry on the cluster: its name, how a replica builds its engine
    (a picklable factory), and its scale."""

    name: str
    make_generator: MakeGenerator
    scale: Scale = field(default_factory=Scale)
    drain_timeout_s: float = 30.0


class GatewayIngress:
    """The ingress deployment's body: builds the gateway's app in the replica, with each
    local model's handle as a `ReplicaSet`."""

    def __init__(self, make_app: MakeApp, engines: Mapping[str, Any]) -> None:
        self.make_app = make_app
        self.engines = dict(engines)

    def __serve_build_asgi_app__(self) -> Any:  # noqa: PLW3201  (Ray Serve's hook)
        generators = {name: ReplicaSet(name, handle) for name, handle in self.engines.items()}
        return self.make_app(generators)


def application(engines: list[EngineDeployment], make_app: MakeApp, gateway_replicas: int) -> Any:
    """The bound Ray Serve application (the gateway and every engine deployment)."""
    from ray import serve

    bound = {}
    for engine in engines:
        deployment: Any = serve.deployment(EngineReplica, name=engine.name)
        options = engine.scale.deployment_options()
        bound[engine.name] = deployment.options(**options).bind(
            engine.make_generator, engine.drain_timeout_s
        )
    ingress: Any = serve.deployment(serve.ingress()(GatewayIngress), name="gateway")
    ingress = ingress.options(num_replicas=gateway_replicas, max_ongoing_requests=1000,
                              ray_actor_options={"num_cpus": 0})  # fmt: skip
    return ingress.bind(make_app, bound)


def run(app: Any, *, address: str | None, host: str, port: int) -> None:
    """Starts (or joins, with ``address``) a Ray cluster, deploys ``app`` on ``host:port``
    and serves until SIGTERM or SIGINT; then deletes the application."""
    import ray

    # Serve's proxy must answer its ready check in 5 s by default, else the controller kills
    # it and serve.start fails: on two busy cores, with every replica loading its model at
    # once, that failed the start (seen with the CPUs saturated). Set before ray.init: the
    # controller started here reads it. An explicit setting wins.
    for name in ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S"):
        os.environ.setdefault(name, "30")
    from ray import serve

    ray.init(address=address, ignore_reinit_error=True, log_to_driver=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())  # replaces ray.init's sys.exit handler
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    logger.warning("inferline: serving on Ray at http://%s:%d", host, port)
    stop.wait()
    logger.warning("inferline: stopping: the gateway drains, then the engines")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the drain short
    serve.delete(APP_NAME)
    serve.shutdown()
    ray.shutdown()

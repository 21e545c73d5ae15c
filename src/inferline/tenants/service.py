"""`Tenants`: virtual keys in front of the routes — who is calling, what they may use, how
fast, and what they may spend.

The server asks it, per request: `identify` (the bearer token: an admin key, a virtual key,
or nothing), `admit` (route allowed, rate limits, the budget's reservation, written to the
ledger before the request runs), and `finish` (the real spend of every attempt settles the
reservation; token counts correct the rate limit). A request's `Admission` is its spend
guard: the router charges every output to it, and the budget stops the request when it
cannot pay for more.

The limits and the ledger have two implementations behind one interface each
(`limits.Limits`, `budget.Ledger`): in this process, or in Redis for every gateway
process (``redis_limits``, ``redis_budget``). With shared ones, an admission runs in a
worker thread (one hop, with the ledger row's write) and a settlement in the background.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from inferline.core.errors import LimitExceededError, PermissionDeniedError
from inferline.core.outputs import RouteReport
from inferline.core.protocols import ModelInfo
from inferline.store.keys import KeyStore, hash_secret
from inferline.tenants.budget import BudgetLedger, Ledger
from inferline.tenants.limits import Limits, LocalLimits, reset_text
from inferline.tenants.policy import KeyPolicy

logger = logging.getLogger(__name__)
DEFAULT_OUTPUT_TOKENS = 512  # reserved for a request without max_tokens (local targets)
REMOTE_MAX_TOKENS_CAP = 4096  # max_tokens set for a remote target when the request has none


@dataclass(frozen=True)
class Identity:
    """Who is calling: an admin (the server's ``--api-key``s), a virtual key, or nobody
    (no key needed on this server)."""

    is_admin: bool = False
    key: KeyPolicy | None = None


@dataclass
class Admission:
    """An admitted request of a key: what it reserved, and its spend guard."""

    tenants: Tenants
    key: KeyPolicy
    request_id: str
    route: str
    reserved_usd: float
    estimated_tokens: int
    max_tokens: int | None  # lowered or set when the budget asked for it
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False

    def charge(self, amount_usd: float) -> bool:
        """The `core.SpendGuard` the router charges every output to."""
        return self.tenants.ledger.charge(self.key, self.request_id, amount_usd)


@dataclass(frozen=True)
class Estimate:
    """What a request may cost, known at admission (before tokenization)."""

    prompt_tokens: int
    max_tokens: int | None


class Tenants:
    """Keys, limits and budgets of one server (thread-safe for the admin routes).

    ``limits`` and ``ledger`` default to this process's (`LocalLimits`, `BudgetLedger`);
    gateway replicas pass the Redis ones. ``renew_every_s``: how often shared ones renew
    this process's leases (a third of the lease).
    """

    def __init__(
        self,
        store: KeyStore | None,
        admin_keys: tuple[str, ...] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
        limits: Limits | None = None,
        ledger: Ledger | None = None,
        renew_every_s: float = 10.0,
    ) -> None:
        self.store = store
        self._admin_hashes = [hashlib.sha256(k.encode()).digest() for k in admin_keys]
        self._lock = threading.Lock()
        self._by_hash: dict[str, KeyPolicy] = {}
        self.clock = clock
        self.limits: Limits = limits or LocalLimits(clock)
        self.ledger: Ledger = ledger or BudgetLedger(
            store.spent_since if store else lambda _k, _s: 0.0
        )
        self.renew_every_s = renew_every_s
        self.interrupted: list[Any] = []
        self._version: tuple[float, int] = (0.0, 0)
        self.reload()

    # ---- keys --------------------------------------------------------------------------

    def reload(self) -> None:
        """Reads every key from the store (after a change by the admin API or the CLI)."""
        if self.store is None:
            return
        version = self.store.version()
        by_hash = {r["key_hash"]: KeyPolicy.from_row(r) for r in self.store.rows_with_hashes()}
        with self._lock:
            self._by_hash = by_hash
            self._version = version

    @property
    def is_shared(self) -> bool:
        """Whether limits or budgets are shared with other processes (network calls)."""
        return self.limits.is_shared or self.ledger.is_shared

    async def watch(self, interval_s: float = 1.0) -> None:
        """Reloads the keys when the store changed (``inferline keys`` writes it directly):
        a key revoked from the command line is refused within ``interval_s``. With shared
        state, also renews this process's leases and, every few renewals, marks the ledger
        rows of dead processes ``interrupted`` (`recover`)."""
        store = self.store
        if store is None and not self.is_shared:
            return
        renewed = reconciled = time.monotonic()
        while True:
            await asyncio.sleep(interval_s)
            try:
                if self.is_shared and time.monotonic() - renewed >= self.renew_every_s:
                    renewed = time.monotonic()
                    await asyncio.to_thread(self.renew)
                if self.is_shared and time.monotonic() - reconciled >= 3 * self.renew_every_s:
                    reconciled = time.monotonic()
                    await asyncio.to_thread(self.recover)
                if store is not None and await asyncio.to_thread(store.version) != self._version:
                    await asyncio.to_thread(self.reload)
            except Exception:  # the next poll retries; requests go on with the keys known
                logger.exception("keys: reading the key store or the shared state failed")

    def renew(self) -> None:
        """Renews the leases of this process's in-flight requests and budget holds."""
        self.limits.renew()
        self.ledger.renew()

    def recover(self) -> list[Any]:
        """At start-up: the requests in flight at a crash, charged as they had reserved.
        With a shared ledger, only the rows no living process holds (the others' requests
        are still running)."""
        if self.store is None:
            return []
        keep = self.ledger.alive if self.ledger.is_shared else None
        interrupted = self.store.interrupt_unsettled(keep)
        self.interrupted = [*self.interrupted, *interrupted]
        for row in interrupted:
            logger.warning(
                "key %s: request %s was in flight at a crash; charged its reservation %.6f USD",
                row.key_id, row.request_id, row.reserved_usd,
            )  # fmt: skip
        return interrupted

    def has_key(self, key_id: str) -> bool:
        """Whether a live (not revoked) virtual key has this id."""
        with self._lock:
            return any(policy.id == key_id for policy in self._by_hash.values())

    @property
    def requires_auth(self) -> bool:
        """A key is needed once there is an admin key or any virtual key."""
        return bool(self._admin_hashes) or bool(self._by_hash)

    def identify(self, token: str) -> Identity | None:
        """The caller of a bearer ``token`` (None: not a valid key). Compared as hashes in
        constant time; the token itself is never stored or logged."""
        digest = hashlib.sha256(token.encode()).digest()
        if any(hmac.compare_digest(digest, admin) for admin in self._admin_hashes):
            return Identity(is_admin=True)
        key = self._by_hash.get(hash_secret(token))
        return Identity(key=key) if key is not None else None

    # ---- the request path ------------------------------------------------------------

    def check_access(self, key: KeyPolicy, model: str) -> None:
        """Refuses a revoked or expired key, and a route it may not use (403)."""
        refusal = key.refusal()
        if refusal is not None:
            raise PermissionDeniedError(refusal)
        if not key.may_use(model):
            raise PermissionDeniedError(f"this API key may not use the model {model!r}", "model")

    async def admit(
        self, key: KeyPolicy, request_id: str, info: ModelInfo, estimate: Estimate
    ) -> Admission:
        """Checks the key, takes its rate limits and reserves the request's cost (written to
        the ledger before it runs). Raises 403 / 429 with the headers to send."""
        self.check_access(key, info.name)
        tokens = estimate.prompt_tokens + (estimate.max_tokens or DEFAULT_OUTPUT_TOKENS)
        if self.is_shared:  # network calls: one worker-thread hop, the ledger row included
            return await asyncio.to_thread(
                self._admit_now, key, request_id, info, estimate, tokens, True
            )
        admission = self._admit_now(key, request_id, info, estimate, tokens, False)
        if self.store is not None and key.budget_usd is not None:
            await asyncio.to_thread(
                self.store.reserve, key.id, request_id, info.name, admission.reserved_usd
            )
        return admission

    def _admit_now(
        self,
        key: KeyPolicy,
        request_id: str,
        info: ModelInfo,
        estimate: Estimate,
        tokens: int,
        write_row: bool,
    ) -> Admission:
        """Takes the rate limits, then the budget's reservation (and, with ``write_row``,
        writes the ledger row)."""
        refused = self.limits.admit(key, request_id, tokens)
        if refused is not None:
            raise LimitExceededError(
                _rate_message(key, refused.which),
                retry_after_s=refused.wait_s,
                headers=self.headers(key),
            )
        try:
            admission = self._reserve(key, request_id, info, estimate, tokens)
        except LimitExceededError:
            self.limits.finish(key, request_id, tokens, 0)
            raise
        if write_row and self.store is not None and key.budget_usd is not None:
            self.store.reserve(key.id, request_id, info.name, admission.reserved_usd)
        return admission

    def _reserve(
        self, key: KeyPolicy, request_id: str, info: ModelInfo, estimate: Estimate, tokens: int
    ) -> Admission:
        """What the request reserves of the budget (its expected cost at the route's
        highest price); with too little left, refuse or lower max_tokens (the key's
        policy)."""
        prompt_cost = estimate.prompt_tokens * info.input_usd_per_mtok / 1e6
        out_price = info.output_usd_per_mtok / 1e6
        max_tokens = estimate.max_tokens
        if max_tokens is None and not info.is_local:
            max_tokens = REMOTE_MAX_TOKENS_CAP  # a remote answer cannot be stopped exactly
        reserved = prompt_cost + (max_tokens or DEFAULT_OUTPUT_TOKENS) * out_price
        admission = Admission(self, key, request_id, info.name, reserved, tokens, max_tokens)
        if self.ledger.reserve(key, request_id, reserved):
            if max_tokens != estimate.max_tokens:
                admission.headers["x-inferline-max-tokens"] = f"{max_tokens} (set: no max_tokens)"
            return admission
        available = self.ledger.available(key) or 0.0
        affordable = math.floor((available - prompt_cost) / out_price) if out_price else 0
        if key.budget_policy == "lower_max_tokens" and affordable >= 1:
            admission.max_tokens = affordable
            admission.reserved_usd = prompt_cost + affordable * out_price
            if self.ledger.reserve(key, request_id, admission.reserved_usd):
                admission.headers["x-inferline-max-tokens"] = f"{affordable} (lowered: budget)"
                return admission
        raise LimitExceededError(
            f"this API key's budget ({key.budget_usd} USD per {key.budget_period}) cannot pay "
            f"for this request (about {reserved:.6f} USD; {available:.6f} USD left)",
            code="insufficient_quota",
            headers=self.headers(key),
        )

    def finish(
        self,
        admission: Admission,
        report: RouteReport | None,
        tokens: tuple[int, int, int],
    ) -> float:
        """Settles a request: its spend is the cost of every attempt; returns it.

        ``tokens``: (prompt, cached, completion) counts of the answer, for the rate limit
        and the ledger. The ledger row is settled in the background (a crash before that
        leaves it reserved: reported and charged at the reservation on restart).
        """
        if admission.settled:
            return 0.0
        admission.settled = True
        spend = report.cost_usd if report is not None else 0.0
        if self.is_shared:
            _background(self._settle, admission, spend, tokens)
            return spend
        key = admission.key
        self.ledger.settle(key, admission.request_id, spend)
        self.limits.finish(key, admission.request_id, admission.estimated_tokens,
                           tokens[0] + tokens[2])  # fmt: skip
        if self.store is not None and key.budget_usd is not None:
            _background(self.store.settle, admission.request_id, spend, *tokens)
        return spend

    def _settle(self, admission: Admission, spend: float, tokens: tuple[int, int, int]) -> None:
        """Settles a request on shared state (in a worker thread). The ledger row first:
        another process's `recover` interrupts only rows whose hold is gone, so a row is
        settled before its hold goes."""
        key, request_id = admission.key, admission.request_id
        try:
            if self.store is not None and key.budget_usd is not None:
                self.store.settle(request_id, spend, *tokens)
        finally:
            self.ledger.settle(key, request_id, spend)
            self.limits.finish(key, request_id, admission.estimated_tokens, tokens[0] + tokens[2])

    def headers(self, key: KeyPolicy) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers for a key's limits now."""
        out = {}
        for name, state in self.limits.states(key).items():
            out[f"x-ratelimit-limit-{name}"] = str(state.limit)
            out[f"x-ratelimit-remaining-{name}"] = str(state.remaining)
            out[f"x-ratelimit-reset-{name}"] = reset_text(state.reset_s)
        return out


_PENDING: set[asyncio.Future[Any]] = set()


def _background(fn: Callable[..., Any], *args: Any) -> None:
    """Runs a store write in a worker thread without waiting (kept referenced until done)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        fn(*args)
        return
    future = loop.run_in_executor(None, fn, *args)
    _PENDING.add(future)
    future.add_done_callback(_PENDING.discard)


def _rate_message(key: KeyPolicy, which: str) -> str:
    if which == "parallel":
        return f"this API key already has {key.max_parallel} requests in flight (max_parallel)"
    limit = key.rpm if which == "requests" else key.tpm
    return f"Rate limit reached for this API key: {limit} {which} per minute"

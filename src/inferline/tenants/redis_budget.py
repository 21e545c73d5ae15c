"""`RedisLedger`: the budget ledger of `budget.BudgetLedger`, shared by every gateway process.

The check is the same — a key's settled spend in the period plus every live request's hold
never passes its budget — but the settled spend and the holds of every process live in
Redis, per key and period, and each change is one Lua script, so two processes admitting
at once cannot both take the last of a budget:

- ``budget:<key id>:<period start>:state``: ``settled``, the spend of the finished requests
  (seeded once from the database's ledger, ``KeyStore.spent_since``), and ``held``, the
  sum of the holds (kept with them, so a check is O(1) however many requests run);
- ``...:holds``: request id -> ``reserved|hold`` (hold: the larger of the reservation and
  the charges so far);
- ``...:leases``: request id -> the end of its lease. A process renews its own; an
  expired hold (its process died) is swept into ``settled`` at its reservation, as the
  database charges the row of a request cut by a crash (``interrupted``);
- ``budget:live``: every live hold's lease, whatever its key: what `Tenants.recover` asks
  before it marks a ledger row ``interrupted`` (a row of another, living, process is not).

A charge that stays within what the request already holds is counted in this process
only: only a hold that has to grow asks Redis (one round trip, checked against the
others' holds). The keys are not hash-tagged (``budget:live`` spans keys): a standalone
Redis or one primary.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from inferline.tenants.policy import KeyPolicy
from inferline.tenants.redis_state import RedisState, SharedStateError

logger = logging.getLogger(__name__)

TTL_MS = 7 * 86400 * 1000  # an idle key's state goes; the next use seeds it from the database

_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function fmt(x) return string.format('%.17g', x) end
local function reserved_of(v) return tonumber(string.match(v, '^([^|]+)')) end
local function hold_of(v) return tonumber(string.match(v, '|(.+)$')) end
local function add_held(delta)  -- the running sum of the holds (exactly 0 when none)
  if redis.call('HLEN', KEYS[2]) == 0 then
    redis.call('HSET', KEYS[1], 'held', '0')
  else
    redis.call('HINCRBYFLOAT', KEYS[1], 'held', delta)
  end
end
local function sweep()
  local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
  if #dead == 0 then return end
  local seeded = redis.call('HEXISTS', KEYS[1], 'settled') == 1
  for _, id in ipairs(dead) do
    local v = redis.call('HGET', KEYS[2], id)
    if v then
      redis.call('HDEL', KEYS[2], id)
      add_held(-hold_of(v))
      if seeded then redis.call('HINCRBYFLOAT', KEYS[1], 'settled', reserved_of(v)) end
    end
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
end
local function seed()
  if redis.call('HEXISTS', KEYS[1], 'settled') == 1 then return true end
  if ARGV[#ARGV] == '' then return false end
  redis.call('HSET', KEYS[1], 'settled', ARGV[#ARGV])
  return true
end
local function used(without)
  local total = tonumber(redis.call('HGET', KEYS[1], 'settled'))
  local held = tonumber(redis.call('HGET', KEYS[1], 'held') or '0')
  if without then
    local v = redis.call('HGET', KEYS[2], without)
    if v then held = held - hold_of(v) end
  end
  held = math.max(0, held)
  return total + held, held
end
local function touch()
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], TTL_MS) end
end
""".replace("TTL_MS", str(TTL_MS))

# KEYS: state, holds, leases, live. ARGV: budget, request id, amount, lease_s, seed.
_RESERVE = (
    _PRELUDE
    + """
sweep()
if not seed() then return {'seed', ''} end
local budget, amount, lease = tonumber(ARGV[1]), tonumber(ARGV[3]), tonumber(ARGV[4])
local u = used(nil)
if u + amount > budget + 1e-12 then return {'no', fmt(budget - u)} end
redis.call('HSET', KEYS[2], ARGV[2], fmt(amount) .. '|' .. fmt(amount))
add_held(amount)
redis.call('ZADD', KEYS[3], now + lease, ARGV[2])
redis.call('ZADD', KEYS[4], now + lease, ARGV[2])
touch()
return {'ok', fmt(budget - u - amount)}
"""
)

# KEYS: state, holds, leases, live. ARGV: budget, request id, the new hold, seed ('').
_GROW = (
    _PRELUDE
    + """
sweep()
local v = redis.call('HGET', KEYS[2], ARGV[2])
if not v or not seed() then return {'gone', ''} end
local budget, hold = tonumber(ARGV[1]), tonumber(ARGV[3])
local u = used(ARGV[2])
if u + hold > budget + 1e-12 then return {'no', fmt(budget - u)} end
redis.call('HSET', KEYS[2], ARGV[2], fmt(reserved_of(v)) .. '|' .. fmt(hold))
add_held(hold - hold_of(v))
return {'ok', fmt(budget - u - hold)}
"""
)

# KEYS: state, holds, leases, live. ARGV: request id, spend. A hold already swept (its
# lease ran out) was charged at its reservation: its spend is not added again.
_SETTLE = (
    _PRELUDE
    + """
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
local v = redis.call('HGET', KEYS[2], ARGV[1])
if not v then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
add_held(-hold_of(v))
if redis.call('HEXISTS', KEYS[1], 'settled') == 1 then
  redis.call('HINCRBYFLOAT', KEYS[1], 'settled', ARGV[2])
end
return 1
"""
)

# KEYS: state, holds, leases, live. ARGV: budget, seed. -> what is left, what is held.
_READ = (
    _PRELUDE
    + """
sweep()
if not seed() then return {'seed', '', ''} end
local u, held = used(nil)
return {'ok', fmt(tonumber(ARGV[1]) - u), fmt(held)}
"""
)

# KEYS: state, holds, leases, live. ARGV: lease_s, then this process's request ids.
_RENEW = (
    _PRELUDE
    + """
local until_s = now + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[3], 'XX', until_s, ARGV[i])
  redis.call('ZADD', KEYS[4], 'XX', until_s, ARGV[i])
end
touch()
return 1
"""
)


@dataclass
class _Hold:
    keys: list[str]  # state, holds, leases, live
    reserved: float
    charged: float = 0.0
    held: float = 0.0  # what Redis holds for it


class RedisLedger:
    """Implements the ledger of `budget.BudgetLedger` (same methods) in Redis.

    ``spent_since(key_id, since)`` reads a key's settled spend from the database, once per
    key and period for every process together (or again after the state expired).
    """

    is_shared = True

    def __init__(self, state: RedisState, spent_since: Callable[[str, float], float]) -> None:
        self.state = state
        self._spent_since = spent_since
        scripts = (_RESERVE, _GROW, _SETTLE, _READ, _RENEW)
        self._reserve, self._grow, self._settle, self._read, self._renew = map(
            state.script, scripts
        )
        self._lock = threading.Lock()
        self._live: dict[str, _Hold] = {}

    def _keys(self, policy: KeyPolicy) -> list[str]:
        period = f"{policy.id}:{int(policy.period_start())}"
        names = ("state", "holds", "leases")
        return [*(self.state.key("budget", period, n) for n in names), self._live_key]

    @property
    def _live_key(self) -> str:
        return self.state.key("budget", "live")

    def _seeded(
        self, script: Any, policy: KeyPolicy, keys: list[str], args: list[object]
    ) -> list[str]:
        """Runs ``script``; when the period has no state yet, seeds it from the database."""
        reply: list[str] = self.state.call(script, keys, [*args, ""])
        if reply[0] == "seed":
            spent = self._spent_since(policy.id, policy.period_start())
            reply = self.state.call(script, keys, [*args, repr(float(spent))])
        return reply

    def available(self, policy: KeyPolicy) -> float | None:
        """What the key may still spend now (None: no budget)."""
        if policy.budget_usd is None:
            return None
        keys = self._keys(policy)
        reply = self._seeded(self._read, policy, keys, [policy.budget_usd])
        return max(0.0, float(reply[1]))

    def reserve(self, policy: KeyPolicy, request_id: str, amount: float) -> bool:
        """Holds ``amount`` for a new request if it fits what every process left."""
        if policy.budget_usd is None:
            return True
        keys = self._keys(policy)
        args = [policy.budget_usd, request_id, amount, self.state.lease_s]
        if self._seeded(self._reserve, policy, keys, args)[0] != "ok":
            return False
        with self._lock:
            self._live[request_id] = _Hold(keys, amount, 0.0, amount)
        return True

    def charge(self, policy: KeyPolicy, request_id: str, amount: float) -> bool:
        """Adds ``amount`` to a live request's charge; False (nothing charged) when its
        hold would have to grow past what the budget has left."""
        if policy.budget_usd is None:
            return True
        with self._lock:
            hold = self._live.get(request_id)
        if hold is None:  # a budget given to the key while the request ran
            if not self.reserve(policy, request_id, amount):
                return False
            with self._lock:
                self._live[request_id].charged = amount
            return True
        after = max(hold.reserved, hold.charged + amount)
        if after > hold.held:
            args = [policy.budget_usd, request_id, after, ""]
            try:
                reply = self.state.call(self._grow, hold.keys, args)
            except SharedStateError:  # cannot be checked: the answer stops here
                logger.warning("budget: Redis did not answer; request %s stopped", request_id)
                return False
            if reply[0] != "ok":
                return False
            hold.held = after
        hold.charged += amount
        return True

    def settle(self, policy: KeyPolicy, request_id: str, spend: float) -> None:
        """The request ended: its hold goes, its real spend counts (in its own period)."""
        with self._lock:
            hold = self._live.pop(request_id, None)
        if hold is not None:
            self.state.call(self._settle, hold.keys, [request_id, spend])

    def reserved(self, policy: KeyPolicy) -> float:
        """What the key's live requests (of every process) hold now."""
        if policy.budget_usd is None:
            return 0.0
        keys = self._keys(policy)
        return float(self._seeded(self._read, policy, keys, [policy.budget_usd])[2])

    def renew(self) -> None:
        """Extends the leases of this process's holds (one pipeline)."""
        with self._lock:
            by_keys: dict[tuple[str, ...], list[str]] = {}
            for request_id, hold in self._live.items():
                by_keys.setdefault(tuple(hold.keys), []).append(request_id)
        if not by_keys:
            return
        pipe = self.state.client.pipeline(transaction=False)
        for keys, ids in by_keys.items():
            self._renew(keys=list(keys), args=[self.state.lease_s, *ids], client=pipe)
        pipe.execute()

    def alive(self, request_ids: Collection[str]) -> set[str]:
        """Which of these requests hold a live lease in some process."""
        ids = list(request_ids)
        if not ids:
            return set()
        seconds, micros = self.state.client.time()
        now = seconds + micros / 1e6
        scores = self.state.client.zmscore(self._live_key, ids)
        return {i for i, score in zip(ids, scores, strict=True) if score and score > now}

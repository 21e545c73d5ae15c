"""`RedisLimits`: the rate limits of `limits.LocalLimits`, shared by every gateway process.

The same token buckets (``capacity`` per minute, refilled continuously; a request larger
than the bucket passes when it is full) and the same in-flight count, kept in Redis and
changed only by Lua scripts, so two processes admitting at once see each other's takes.
Per key, three Redis keys share the hash tag ``{key id}``:

- ``...:requests`` / ``...:tokens``: a bucket's level and when it was last refilled (a full
  bucket has no key: it expires the moment it would be full again);
- ``...:in_flight``: a sorted set of request ids scored by their lease's end; a process
  renews the leases of its requests, so a process that dies frees its slots after
  ``lease_s`` instead of holding them for ever.
"""

from __future__ import annotations

import threading
from typing import Any

from inferline.tenants.limits import LimitState, Refusal
from inferline.tenants.policy import KeyPolicy
from inferline.tenants.redis_state import RedisState

# Shared by the scripts: Redis's clock, and a bucket's level refilled to now.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local function level_of(key, cap)
  if cap <= 0 then return 0 end
  local v = redis.call('HMGET', key, 'l', 't')
  if not v[1] then return cap end
  return math.min(cap, tonumber(v[1]) + math.max(0, now - tonumber(v[2])) * cap / 60)
end
local function save(key, cap, level)
  if level >= cap then redis.call('DEL', key) return end
  redis.call('HSET', key, 'l', string.format('%.17g', level), 't', string.format('%.17g', now))
  redis.call('PEXPIRE', key, math.ceil((cap - level) / (cap / 60) * 1000) + 1000)
end
local function view(cap, level)
  if cap <= 0 then return {'', ''} end
  return {tostring(math.max(0, math.floor(level))),
          string.format('%.6f', math.max(0, (cap - level) / (cap / 60)))}
end
local function reply(verdict, wait, req, tok)
  local r, k = view(rpm, req), view(tpm, tok)
  return {verdict, string.format('%.6f', wait), r[1], r[2], k[1], k[2]}
end
"""

# KEYS: requests, tokens, in_flight. ARGV: rpm, tpm, max_parallel, tokens, request id,
# lease_s (0 means no limit). Takes everything or nothing.
_ADMIT = (
    _PRELUDE
    + """
local max_parallel, tokens, lease = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[6])
local req, tok = level_of(KEYS[1], rpm), level_of(KEYS[2], tpm)
local function wait_for(level, cap, amount)
  if amount <= level or (amount > cap and level >= cap) then return 0 end
  return (math.min(amount, cap) - level) / (cap / 60)
end
if max_parallel > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= max_parallel then
    return reply('parallel', 1, req, tok)
  end
end
if rpm > 0 then
  local w = wait_for(req, rpm, 1)
  if w > 0 then return reply('requests', w, req, tok) end
end
if tpm > 0 then
  local w = wait_for(tok, tpm, tokens)
  if w > 0 then return reply('tokens', w, req, tok) end
end
if rpm > 0 then req = req - 1; save(KEYS[1], rpm, req) end
if tpm > 0 then tok = tok - tokens; save(KEYS[2], tpm, tok) end
if max_parallel > 0 then
  redis.call('ZADD', KEYS[3], now + lease, ARGV[5])
  redis.call('PEXPIRE', KEYS[3], math.ceil(lease * 2000))
end
return reply('ok', 0, req, tok)
"""
)

# KEYS: requests, tokens, in_flight. ARGV: rpm, tpm, request id ('' for none), the
# correction of the token estimate (estimated - actual). Also how the headers read now.
_FINISH = (
    _PRELUDE
    + """
if ARGV[3] ~= '' then redis.call('ZREM', KEYS[3], ARGV[3]) end
local req, tok = level_of(KEYS[1], rpm), level_of(KEYS[2], tpm)
local correction = tonumber(ARGV[4])
if tpm > 0 and correction ~= 0 then
  tok = math.min(tpm, tok + correction)
  save(KEYS[2], tpm, tok)
end
return reply('ok', 0, req, tok)
"""
)

# KEYS[1]: a sorted set of leases. ARGV: lease_s, then the ids whose leases go on.
RENEW = """
local t = redis.call('TIME')
local until_s = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', until_s, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1]) * 2000))
return 1
"""


class RedisLimits:
    """Implements `inferline.tenants.limits.Limits` in Redis (thread-safe).

    ``states`` answers from what the last script of this process said about the key (every
    admission and finish returns the levels), so a response's headers cost no extra round
    trip; a key this process has not touched yet is read from Redis.
    """

    is_shared = True

    def __init__(self, state: RedisState) -> None:
        self.state = state
        self._admit = state.script(_ADMIT)
        self._finish = state.script(_FINISH)
        self._renew = state.script(RENEW)
        self._lock = threading.Lock()
        self._live: dict[str, set[str]] = {}  # in-flight set -> this process's request ids
        self._seen: dict[str, dict[str, LimitState]] = {}

    def _keys(self, key: KeyPolicy) -> list[str]:
        tag = f"{{{key.id}}}"
        return [self.state.key("limits", tag, n) for n in ("requests", "tokens", "in_flight")]

    def admit(self, key: KeyPolicy, request_id: str, tokens: int) -> Refusal | None:
        """See `Limits.admit`."""
        keys = self._keys(key)
        args = [key.rpm or 0, key.tpm or 0, key.max_parallel or 0, tokens, request_id]
        reply = self.state.call(self._admit, keys, [*args, self.state.lease_s])
        self._remember(key, reply)
        if reply[0] != "ok":
            return Refusal(reply[0], float(reply[1]))
        if key.max_parallel:
            with self._lock:
                self._live.setdefault(keys[2], set()).add(request_id)
        return None

    def finish(self, key: KeyPolicy, request_id: str, estimated: int, actual: int) -> None:
        """See `Limits.finish`."""
        keys = self._keys(key)
        with self._lock:
            live = self._live.get(keys[2], set())
            live.discard(request_id)
            if not live:
                self._live.pop(keys[2], None)
        args = [key.rpm or 0, key.tpm or 0, request_id, estimated - actual]
        self._remember(key, self.state.call(self._finish, keys, args))

    def states(self, key: KeyPolicy) -> dict[str, LimitState]:
        """See `Limits.states` (as of this process's last script for the key)."""
        seen = self._seen.get(key.id)
        if seen is None or self._stale(key, seen):
            args = [key.rpm or 0, key.tpm or 0, "", 0]
            self._remember(key, self.state.call(self._finish, self._keys(key), args))
        return self._seen.get(key.id, {})

    def renew(self) -> None:
        """Extends the leases of this process's requests in flight (one pipeline)."""
        with self._lock:
            live = {name: sorted(ids) for name, ids in self._live.items() if ids}
        if not live:
            return
        pipe = self.state.client.pipeline(transaction=False)
        for name, ids in live.items():
            self._renew(keys=[name], args=[self.state.lease_s, *ids], client=pipe)
        pipe.execute()

    @staticmethod
    def _stale(key: KeyPolicy, seen: dict[str, LimitState]) -> bool:
        """The key's limits changed since (an admin edit)."""
        limits = {"requests": key.rpm, "tokens": key.tpm}
        return any(seen.get(n) is None if v else n in seen for n, v in limits.items()) or any(
            state.limit != limits[n] for n, state in seen.items()
        )

    def _remember(self, key: KeyPolicy, reply: list[Any]) -> None:
        states = {}
        for name, limit, at in (("requests", key.rpm, 2), ("tokens", key.tpm, 4)):
            if limit:
                states[name] = LimitState(limit, int(reply[at]), float(reply[at + 1]))
        self._seen[key.id] = states

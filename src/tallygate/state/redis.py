"""Redis state store: several gateway replicas share every limit.

Each operation is ONE Lua script run with EVALSHA (redis-py's Script loads it once and
reloads it on NOSCRIPT), so an operation is atomic and costs one round trip; Python
never reads, modifies and writes back. reserve_and_read / finish_and_read read their
limits' usage inside that same script, so the reads cost no extra trip.

Every key of a store starts with the same hash tag, `{tg}` or `{tg:<namespace>}`. A
reservation across several limits is all-or-nothing only if one script sees every limit,
and Redis Cluster runs a script only when all its keys are in one slot: the hash tag
puts them there. (The scripts also reach reservation records and cells named inside
other records, undeclared in KEYS; the shared tag keeps those in the same slot too.)
The price: one store's state lives on one Cluster node.

Amounts are kept as decimal integer strings changed only by HINCRBY (exact int64) and
compared in Lua as base-1e9 pairs (see lua/common.lua), never as doubles.

Keys expire when nobody writes to them: a limit's cells and leases 2 windows + the lease
+ 1 h after the last reserve, extend or settle; a lifetime counter (`Window.RUN`) after
`run_ttl` + the lease, so a run untouched that long starts again from zero (by Redis's
clock, in real seconds, where the other stores judge by the callers' `now`).

What a restart of Redis keeps is Redis's own setting (`persistence()` reads it): without
the append-only file every window's spending is forgotten, and limits count from zero.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tallygate.core.windows import (
    counter_name,
    live_range,
    room_returns_at,
    window_seconds,
)
from tallygate.errors import InvalidRequest, StoreUnavailable
from tallygate.extras import redis_client_identity
from tallygate.state.base import RUN_TTL
from tallygate.state.checks import (
    check_extend,
    check_finish,
    check_flag,
    check_flag_name,
    check_holds,
    check_time,
    check_usage_args,
)
from tallygate.state.read_along import PlainFromRead
from tallygate.types import Denial, Hold, LimitUsage, Metric, NotHeld, SettleResult, Window

RETENTION = 86_400  # seconds a finished reservation is remembered (idempotent settle)
_BASE = 10**9
_READ_WIDTH = 5  # values per read in a reply (lua/common.lua read_usage)
_OUTAGE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


@functools.cache
def _script_source(name: str, *, common: bool) -> str:
    lua = resources.files("tallygate.state") / "lua"
    body = (lua / f"{name}.lua").read_text(encoding="utf-8")
    return (lua / "common.lua").read_text(encoding="utf-8") + "\n" + body if common else body


def _pair(hi: Any, lo: Any) -> int:
    return int(hi) * _BASE + int(lo)


_WINDOWS = (Window.MINUTE, Window.HOUR, Window.DAY, Window.MONTH)  # extend.lua's order


def _gc_ttl(window: Window, lease: float, run_ttl: float) -> int:
    """Real seconds a limit's keys may sit untouched before Redis drops them."""
    if window is Window.RUN:
        return math.ceil(run_ttl + lease)
    return int(2 * window_seconds(window) + lease) + 3600


def _window_spec(hold: Hold) -> str:
    """How extend.lua finds a line's window: `r:<window>` rolling, `c:<window>` else."""
    return ("r:" if hold.rolling else "c:") + hold.window.value


def _check_reads(read: Sequence[Hold], now: float) -> None:
    """Reads name limits as holds do; their key and window go into key names."""
    for hold in read:
        if type(hold) is not Hold:
            raise InvalidRequest(f"each read must be a Hold, got {hold!r}")
        check_usage_args(hold.key, hold.limit, hold.window, now)


def _usages(values: Sequence[Any], read: Sequence[Hold], now: float) -> list[LimitUsage]:
    """The LimitUsage of each read, from read_usage()'s values (lua/common.lua)."""
    out = []
    for i, hold in enumerate(read):
        at = _READ_WIDTH * i
        first = int(values[at + 4])
        out.append(LimitUsage(
            key=hold.key, limit=hold.limit, used=_pair(values[at], values[at + 1]),
            reserved=_pair(values[at + 2], values[at + 3]),
            reset_at=room_returns_at(hold.window, now, hold.rolling,
                                     None if first < 0 else first)))
    return out


def _denial(holds: Sequence[Hold], reply: Sequence[Any], now: float) -> Denial:
    """reserve.lua's {0, hold index, used+reserved hi, lo, oldest non-empty window id}."""
    hold = holds[int(reply[1]) - 1]
    first = int(reply[4])
    return Denial(
        key=hold.key, limit=hold.limit, used=_pair(reply[2], reply[3]),
        requested=hold.amount,
        reset_at=room_returns_at(hold.window, now, hold.rolling,
                                 None if first < 0 else first),
        window=hold.window, metric=hold.metric)


def _settled(actual: Mapping[str, int], lines: Sequence[Any]) -> SettleResult:
    """Charge and overrun per key, from finish.lua's (key, held amount, metric) lines."""
    charged: dict[str, int] = {}
    overrun: dict[str, int] = {}
    for i in range(0, len(lines), 3):
        key, amount, metric = lines[i], int(lines[i + 1]), lines[i + 2]
        used = actual.get(metric, 0)
        charged[key] = used
        if used > amount:
            overrun[key] = used - amount
    return SettleResult(charged=charged, overrun=overrun)


@dataclass(frozen=True)
class RedisPersistence:
    """What a restart of this Redis keeps (`CONFIG GET appendonly appendfsync save`)."""

    appendonly: bool
    appendfsync: str
    save: str  # the snapshot schedule, "" when snapshots are off

    def warning(self) -> str | None:
        """Why limits would not hold across a Redis restart, or None when they do
        (the append-only file: at most about a second of charges with `everysec`)."""
        if self.appendonly:
            return None
        fix = "run Redis with appendonly yes"
        if self.save.strip():
            return (f"snapshots only (save {self.save}): a Redis restart forgets the "
                    f"charges made since the last snapshot; {fix}")
        return ("persistence off (appendonly no, no snapshots): a Redis restart forgets "
                f"what every limit's current window has spent; {fix}")


class RedisStore(PlainFromRead):
    """StateStore on Redis (standalone, or one Cluster slot via the hash tag)."""

    def __init__(self, url: str, *, namespace: str = "", connect_timeout: float = 2.0,
                 socket_timeout: float = 5.0, max_connections: int = 32,
                 retention: int = RETENTION, run_ttl: float = RUN_TTL) -> None:
        check_time("run_ttl", run_ttl)
        self._prefix = "{tg:" + namespace + "}" if namespace else "{tg}"
        self._retention = retention
        self._run_ttl = run_ttl
        # A blocking pool: past max_connections a call waits for a free connection
        # (up to socket_timeout) instead of failing with "Too many connections". A
        # command on a connection the server has closed (Redis restarted, failed over, an
        # idle timeout) is sent once more on a new one: the retry must be the pool's,
        # redis-py ignores the client's when given a pool. Every script is safe to send
        # twice: reserve, settle, release and claim are idempotent, a repeated extend only
        # holds more until settle, a repeated set or clear of a flag leaves the same flag
        # (clear's answer may then say none was set). A timeout is not retried: it would
        # double the wait.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, socket_connect_timeout=connect_timeout, socket_timeout=socket_timeout,
            max_connections=max_connections, timeout=socket_timeout, decode_responses=True,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            **redis_client_identity(),
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._reserve = self._redis.register_script(_script_source("reserve", common=True))
        self._finish = self._redis.register_script(_script_source("finish", common=True))
        self._extend = self._redis.register_script(_script_source("extend", common=True))
        self._usage = self._redis.register_script(_script_source("usage", common=True))
        self._set_flag = self._redis.register_script(_script_source("set_flag", common=False))
        self._clear_flag = self._redis.register_script(
            _script_source("clear_flag", common=False))
        self._claim = self._redis.register_script(_script_source("claim", common=False))

    async def persistence(self) -> RedisPersistence | None:
        """Redis's persistence settings; None where CONFIG is not allowed (managed
        services often rename or forbid it: their own settings say)."""
        try:
            got = await self._redis.config_get("appendonly", "appendfsync", "save")
        except ResponseError:
            return None
        except _OUTAGE as exc:
            raise StoreUnavailable(f"Redis state store unreachable: {exc}") from exc
        if "appendonly" not in got:
            return None
        return RedisPersistence(appendonly=got.get("appendonly") == "yes",
                                appendfsync=str(got.get("appendfsync") or ""),
                                save=str(got.get("save") or ""))

    @property
    def key_prefix(self) -> str:
        """The hash tag every key this store writes starts with (`{tg}` or
        `{tg:<namespace>}`): one tag, so one Redis Cluster slot."""
        return self._prefix

    @property
    def flags_channel(self) -> str:
        """Pub/sub channel that receives a flag's name whenever it is set."""
        return f"{self._prefix}:flags"

    async def _call(self, op: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await op(keys=keys, args=args)
        except _OUTAGE as exc:
            raise StoreUnavailable(f"Redis state store unreachable: {exc}") from exc

    def _names(self, key: str, window: Window, rolling: bool) -> tuple[str, str]:
        name = counter_name(key, window, rolling)
        return f"{self._prefix}:c:{name}", f"{self._prefix}:l:{name}"

    # -- reservations (reserve / settle / release: PlainFromRead) ---------------------
    # The reads ride inside the operation's own script (one EVALSHA, atomic with it).
    async def reserve_and_read(
        self, request_id: str, holds: Sequence[Hold], *, lease: float, now: float,
        read: Sequence[Hold],
    ) -> tuple[Denial | None, list[LimitUsage]]:
        check_holds(request_id, holds, lease, now)
        _check_reads(read, now)
        keys = [f"{self._prefix}:res:{request_id}"]
        args: list[Any] = [self._prefix, request_id, repr(float(now)),
                           repr(float(now + lease)), math.ceil(lease) + self._retention,
                           len(holds)]
        for hold in holds:
            keys.extend(self._names(hold.key, hold.window, hold.rolling))
            oldest, current = live_range(hold.window, now, hold.rolling)
            args += [hold.key, hold.metric.value, hold.amount, hold.limit, oldest, current,
                     _gc_ttl(hold.window, lease, self._run_ttl), _window_spec(hold)]
        self._add_reads(keys, args, read, now)
        reply = await self._call(self._reserve, keys, args)
        status = int(reply[0])
        if status in (1, 2):
            return None, _usages(reply[1:], read, now)
        if status == 3:
            raise InvalidRequest(f"request_id {request_id!r} was already {reply[1]}; "
                                 "use a new id for a new reservation")
        return _denial(holds, reply, now), []

    async def extend(
        self, request_id: str, more: Mapping[str, int], *, lease: float, now: float
    ) -> Denial | NotHeld | None:
        grow = check_extend(request_id, more, lease, now)
        args: list[Any] = [self._prefix, request_id, repr(float(now)),
                           repr(float(now + lease)), math.ceil(lease) + self._retention,
                           *(grow.get(m.value, 0) for m in (Metric.TOKENS, Metric.REQUESTS,
                                                             Metric.COST))]
        for window in _WINDOWS:
            args.extend(live_range(window, now, True))
            args.append(live_range(window, now, False)[1])
        reply = await self._call(self._extend, [f"{self._prefix}:res:{request_id}"], args)
        status = int(reply[0])
        if status == 1:
            return None
        if status == 4:
            return NotHeld(request_id, str(reply[1]))
        _, key, limit, spec, metric, hi, lo, first, requested = reply
        window, rolling = Window(spec[2:]), spec.startswith("r:")
        first = int(first)
        return Denial(key=key, limit=int(limit), used=_pair(hi, lo), requested=int(requested),
                      reset_at=room_returns_at(window, now, rolling,
                                               None if first < 0 else first),
                      window=window, metric=Metric(metric))

    async def finish_and_read(
        self, request_id: str, actual: Mapping[str, int] | None, *, now: float,
        read: Sequence[Hold],
    ) -> tuple[SettleResult, list[LimitUsage]]:
        actual = check_finish(request_id, actual, now)
        spent = [0, 0, 0] if actual is None else [
            actual.get(m.value, 0) for m in (Metric.TOKENS, Metric.REQUESTS, Metric.COST)]
        _check_reads(read, now)
        keys = [f"{self._prefix}:res:{request_id}"]
        args: list[Any] = ["release" if actual is None else "settle", request_id,
                           self._retention, *spent, self._prefix, repr(float(now))]
        self._add_reads(keys, args, read, now)
        reply = await self._call(self._finish, keys, args)
        usages = _usages(reply[1:], read, now)
        if actual is None:  # a release always answers an empty result
            return SettleResult(), usages
        if int(reply[0]) == 0:
            return SettleResult(already_settled=True), usages
        return _settled(actual, reply[1 + _READ_WIDTH * len(read):]), usages

    async def usage(
        self, key: str, *, limit: int, window: Window, rolling: bool = False, now: float
    ) -> LimitUsage:
        check_usage_args(key, limit, window, now)
        hold = Hold(key, 0, limit, window, rolling=rolling)
        keys: list[str] = []
        args: list[Any] = [self._prefix, repr(float(now))]
        self._add_reads(keys, args, [hold], now)
        reply = await self._call(self._usage, keys, args)
        return _usages(reply, [hold], now)[0]

    def _add_reads(self, keys: list[str], args: list[Any], read: Sequence[Hold],
                   now: float) -> None:
        """Append the read specs read_usage() (lua/common.lua) takes: per read, its
        cells and leases keys, and its oldest and current window ids."""
        for hold in read:
            keys.extend(self._names(hold.key, hold.window, hold.rolling))
            args.extend(live_range(hold.window, now, hold.rolling))

    # -- flags and claims -----------------------------------------------------------
    async def _plain(self, command: str, *args: Any) -> Any:
        try:
            return await self._redis.execute_command(command, *args)
        except _OUTAGE as exc:
            raise StoreUnavailable(f"Redis state store unreachable: {exc}") from exc

    async def get_flag(self, name: str) -> bool | None:
        value = await self._plain("HGET", f"{self._prefix}:flags", name)
        return None if value is None else value == "1"

    async def set_flag(self, name: str, on: bool) -> None:
        check_flag(name, on)
        await self._call(self._set_flag,
                         [f"{self._prefix}:flags", f"{self._prefix}:flags_version"],
                         [name, "1" if on else "0", self.flags_channel])

    async def clear_flag(self, name: str) -> bool:
        check_flag_name(name)
        found = await self._call(self._clear_flag,
                                 [f"{self._prefix}:flags", f"{self._prefix}:flags_version"],
                                 [name, self.flags_channel])
        return bool(int(found))

    async def flags(self) -> dict[str, bool]:
        found = await self._plain("HGETALL", f"{self._prefix}:flags")
        return {name: value == "1" for name, value in found.items()}

    async def flags_version(self) -> int:
        value = await self._plain("GET", f"{self._prefix}:flags_version")
        return 0 if value is None else int(value)

    async def claim(self, key: str, ttl: float, *, now: float) -> bool:
        check_time("ttl", ttl)
        check_time("now", now)
        gc = max(1, math.ceil(ttl)) + 60
        won = await self._call(self._claim, [f"{self._prefix}:claim:{key}"],
                               [repr(float(now)), repr(float(now + ttl)), gc,
                                os.urandom(8).hex()])
        return bool(int(won))

    async def flush_namespace(self) -> int:
        """Delete every key of this store (tests, `tallygate state reset`)."""
        deleted = 0
        try:
            async for name in self._redis.scan_iter(match=f"{self._prefix}:*", count=1000):
                deleted += await self._redis.delete(name)
        except _OUTAGE as exc:
            raise StoreUnavailable(f"Redis state store unreachable: {exc}") from exc
        return deleted

    async def close(self) -> None:
        await self._redis.aclose()

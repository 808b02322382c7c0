"""Library mode: the gateway's enforcement in-process, around the official SDK clients.

    gov = tallygate.Governor.from_config("tallygate.yaml")
    client = gov.openai(openai.OpenAI(), feature="summarize", user="u42")
    with gov.run("TICKET-42"), gov.step("review", attempt=2):
        client.chat.completions.create(model="gpt-4o-mini", messages=[...])

Event loops. The engine and its stores are async and bound to the loop that opened them
(the SQLite worker thread, the Redis connection pool). A Governor therefore owns one
private event loop in a daemon thread, started on first use, and runs *every* engine
operation there: sync clients block on `asyncio.run_coroutine_threadsafe(...).result()`,
async clients await the same future through `asyncio.wrap_future`, so the caller's loop
never blocks on the store and one Governor serves sync and async clients, threads and
tasks alike. `gov.close()` (or `with Governor(...) as gov:`, or interpreter exit) closes
the calls still open (a stream never read to its end is settled with what it relayed),
flushes the ledger, closes the stores and stops the thread.

Exit. A script that simply ends (or raises, or calls sys.exit) is closed by a hook that
runs when the main thread finishes, *before* the interpreter shuts its thread pools
down (a plain atexit hook would run after, when nothing can be scheduled any more): every
row reaches the ledger and nothing is printed. A killed process (SIGTERM, SIGKILL,
os._exit) leaves its rows in the ledger journal; the next writer, or `tallygate report`,
replays them.

Attribution (`gov.run`, `gov.step`) lives in context variables, so it follows threads
started with `contextvars.copy_context()` and asyncio tasks; arguments given to
`gov.openai(...)` / `gov.anthropic(...)` win over it."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import threading
import weakref
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar, Unpack

from tallygate.config import Policy, load_policy
from tallygate.config.names import did_you_mean
from tallygate.engine import Engine
from tallygate.errors import ConfigError, InvalidRequest
from tallygate.library.attribution import Attribution, Labels, run_scope, step_scope
from tallygate.library.delegate import binding_of
from tallygate.runtime import Runtime
from tallygate.types import CallRecord, Usage

T = TypeVar("T")
_OPEN_TIMEOUT = 60.0


class _PrivateLoop:
    """An event loop in a daemon thread; coroutines are submitted from any thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="tallygate-governor", daemon=True
        )
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


class Governor:
    """One policy, one runtime (store, ledger, engine), any number of wrapped clients.

    `policy`: the Policy to enforce (default: `load_policy()`, i.e. ./tallygate.yaml or
    the built-in defaults). `runtime` + `loop`: an already-open Runtime and the running
    event loop (in another thread) it was opened on; the Governor then uses that loop and
    leaves closing the runtime to its owner."""

    def __init__(
        self,
        policy: Policy | None = None,
        *,
        runtime: Runtime | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if runtime is not None and loop is None:
            raise ConfigError("Governor(runtime=…) also needs loop=: the event loop it runs on.")
        if runtime is not None:
            policy = runtime.policy
        self._policy = policy if policy is not None else load_policy()
        self._runtime = runtime
        self._owns_runtime = runtime is None
        self._external_loop = loop
        self._private: _PrivateLoop | None = None
        self._opening: concurrent.futures.Future[Runtime] | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()

    @classmethod
    def from_config(cls, path: str | os.PathLike[str]) -> Governor:
        """A Governor for the policy file at `path` (validated; ConfigError if invalid)."""
        return cls(load_policy(path))

    @property
    def policy(self) -> Policy:
        return self._policy

    # ------------------------------------------------------------------ clients

    def openai(self, client: Any, **labels: Unpack[Labels]) -> Any:
        """Wrap an `openai.OpenAI` / `openai.AsyncOpenAI` client; `labels` attribute its
        calls (feature, user, plan, run, step, attempt: docs/library.md)."""
        from tallygate.library.openai import wrap_openai

        return wrap_openai(self, client, self._attribution("openai", labels))

    def anthropic(self, client: Any, **labels: Unpack[Labels]) -> Any:
        """Wrap an `anthropic.Anthropic` / `anthropic.AsyncAnthropic` client; `labels` as
        for `openai()`."""
        from tallygate.library.anthropic import wrap_anthropic

        return wrap_anthropic(self, client, self._attribution("anthropic", labels))

    def _attribution(self, method: str, labels: Labels) -> Attribution:
        for name in labels:
            if name not in Labels.__optional_keys__:
                raise TypeError(f"gov.{method}() got an unexpected keyword argument {name!r}"
                                f"{did_you_mean(name, Labels.__optional_keys__)}")
        attempt = labels.get("attempt")
        if attempt is not None and (isinstance(attempt, bool) or not isinstance(attempt, int)
                                    or attempt < 0):
            raise InvalidRequest(f"attempt must be a non-negative integer, got {attempt!r}")
        plan = labels.get("plan")
        if plan is None and "default" in self._policy.plans:
            plan = "default"  # the policy's default plan, when it defines one
        return Attribution(labels.get("feature"), labels.get("user"), plan, labels.get("run"),
                           labels.get("step"), attempt)

    # ------------------------------------------------------------------ attribution

    @contextmanager
    def run(self, run_id: str) -> Iterator[None]:
        """Attribute every call in the block to the workflow run (or ticket) `run_id`."""
        if not isinstance(run_id, str) or not run_id:
            raise InvalidRequest("run id must be a non-empty string")
        with run_scope(run_id):
            yield

    @contextmanager
    def step(self, name: str, *, attempt: int | None = None) -> Iterator[None]:
        """Attribute every call in the block to the step `name` (planning, review …),
        loop number `attempt`. Routing by step (`model="auto"`) follows it too."""
        if not isinstance(name, str) or not name:
            raise InvalidRequest("step name must be a non-empty string")
        if attempt is not None and (isinstance(attempt, bool) or not isinstance(attempt, int)
                                    or attempt < 0):
            raise InvalidRequest(f"attempt must be a non-negative integer, got {attempt!r}")
        with step_scope(name, attempt):
            yield

    # ------------------------------------------------------------------ engine access

    def _loop(self) -> asyncio.AbstractEventLoop:
        if self._external_loop is not None:
            return self._external_loop
        with self._lock:
            self._check_usable()
            if self._private is None:
                self._private = _PrivateLoop()
                _close_at_exit(self)
            return self._private.loop

    def _check_usable(self) -> None:
        if self._closed:
            raise InvalidRequest("This Governor is closed.")
        if os.getpid() != self._pid:
            raise InvalidRequest(
                "This Governor was created in another process (fork): create one per process."
            )

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run `coro` on the Governor's loop; the future is thread-safe."""
        try:
            loop = self._loop()
        except BaseException:
            coro.close()
            raise
        return asyncio.run_coroutine_threadsafe(coro, loop)

    def _runtime_future(self) -> concurrent.futures.Future[Runtime]:
        """The Runtime being opened (once) on the Governor's loop."""
        loop = self._loop()
        with self._lock:
            if self._opening is None:
                if self._runtime is not None:
                    ready: concurrent.futures.Future[Runtime] = concurrent.futures.Future()
                    ready.set_result(self._runtime)
                    self._opening = ready
                else:
                    self._opening = asyncio.run_coroutine_threadsafe(self._open(), loop)
            return self._opening

    async def _open(self) -> Runtime:
        self._runtime = await Runtime.open(self._policy)
        return self._runtime

    def runtime(self) -> Runtime:
        """The open Runtime (opened on first use; blocks while it opens)."""
        return self._runtime_future().result(_OPEN_TIMEOUT)

    async def aruntime(self) -> Runtime:
        return await asyncio.wrap_future(self._runtime_future())

    def engine(self) -> Engine:
        return self.runtime().engine

    def call(self, make: Any, *args: Any, **kwargs: Any) -> Any:
        """Sync: open the runtime if needed, run `make(engine, …)` on the loop, wait."""
        engine = self.engine()
        return self.submit(make(engine, *args, **kwargs)).result()

    async def acall(self, make: Any, *args: Any, **kwargs: Any) -> Any:
        """Async: the same, awaited from the caller's loop. If the caller is cancelled the
        operation still finishes on the Governor's loop (a settle is never lost)."""
        engine = (await self.aruntime()).engine
        fut = asyncio.wrap_future(self.submit(make(engine, *args, **kwargs)))
        return await asyncio.shield(fut)

    def fire(self, make: Any, *args: Any, **kwargs: Any) -> None:
        """Schedule without waiting (finalizers); ignored once the Governor is closed."""
        if self._closed or self._runtime is None or os.getpid() != self._pid:
            return
        with suppress(InvalidRequest, RuntimeError):  # closing meanwhile: the lease frees it
            self.submit(make(self._runtime.engine, *args, **kwargs))

    def record_cached(self, client: Any, route: str, model: str, saved: Usage,
                      key: str | None = None) -> CallRecord:
        """A hit of the caller's own cache (`tallygate gen`'s artifacts): a `cached` row,
        attributed like `client`'s calls, with the tokens it saved; nothing reserved."""
        ctx = binding_of(client).context(route, {})
        return self.call(_record_cached, ctx, model, saved, key)

    # ------------------------------------------------------------------ lifecycle

    def flush(self) -> None:
        """Write buffered ledger rows now (e.g. before a CI job reads the ledger)."""
        if self._runtime is not None and not self._closed:
            self.submit(self._runtime.writer.flush()).result(_OPEN_TIMEOUT)

    def close(self) -> None:
        """Flush the ledger, close the stores, stop the private loop. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            private, self._private = self._private, None
            runtime = self._runtime if self._owns_runtime else None
        if os.getpid() != self._pid:
            return
        loop = private.loop if private is not None else self._external_loop
        if runtime is not None and loop is not None:
            asyncio.run_coroutine_threadsafe(runtime.close(), loop).result(_OPEN_TIMEOUT)
        if private is not None:
            private.stop()

    async def aclose(self) -> None:
        """`close()` without blocking the caller's event loop."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Governor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Governor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _record_cached(engine: Engine, ctx: Any, model: str, saved: Usage,
                         key: str | None) -> CallRecord:
    call = await engine.prepare(ctx, {"model": model})  # flags, routing: as for a call
    call.notes.cache_key = key
    return engine.record_cached(call, saved)


_open_governors: weakref.WeakSet[Governor] = weakref.WeakSet()
_exit_hook_lock = threading.Lock()
_exit_hook_set = False


def _close_at_exit(gov: Governor) -> None:
    """Close the Governor when the main thread finishes, before the interpreter shuts
    down the thread pools its loop needs (threading's own exit hooks run first, in
    reverse order of registration: concurrent.futures registered its one at import).
    One hook for every Governor, holding none alive: a process that makes governors by
    the thousand does not grow a hook per governor."""
    global _exit_hook_set
    _open_governors.add(gov)
    with _exit_hook_lock:
        if _exit_hook_set:
            return
        _exit_hook_set = True
    try:
        threading._register_atexit(_close_open_governors)  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):  # already shutting down, or no such hook
        atexit.register(_close_open_governors)


def _close_open_governors() -> None:
    for gov in list(_open_governors):
        try:
            gov.close()
        except Exception:  # one governor's failure must not keep the others' rows unflushed
            logging.getLogger("tallygate").exception("closing a Governor at exit failed")

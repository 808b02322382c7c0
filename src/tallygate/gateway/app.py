"""The gateway ASGI app. Hot routes are dispatched by a dict lookup to raw ASGI
handlers (gateway/proxy.py); admin and the other operational pages go through a
Starlette sub-app. Everything long-lived is created in the lifespan."""

from __future__ import annotations

import asyncio
import gc
from dataclasses import replace
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from tallygate.config import Policy
from tallygate.config.names import PolicyNames
from tallygate.core.catalog import Catalog
from tallygate.dashboard.app import Dashboard
from tallygate.dashboard.sources import Sources, of_runtime
from tallygate.gateway import edges, ops
from tallygate.gateway.admin import admin_routes
from tallygate.gateway.admin.flags import flag_routes
from tallygate.gateway.admin.reload import reload_routes
from tallygate.gateway.admin.reports import report_routes
from tallygate.gateway.drain import DEFAULT_DEADLINE, Drain
from tallygate.gateway.http import Receive, Scope, Send
from tallygate.gateway.port import UpstreamPort
from tallygate.gateway.proxy import Proxy, Route
from tallygate.gateway.reload import PolicyReloader
from tallygate.gateway.throttle import CLIENT, AuthThrottle, ThrottledKeys
from tallygate.gateway.upstream import Transport
from tallygate.gateway.upstream.aiohttp import Upstream
from tallygate.gateway.upstream.lean import LeanUpstream
from tallygate.keys.base import KeyStore
from tallygate.observe import Observability, install
from tallygate.observe.access_log import AccessLog
from tallygate.runtime import Runtime

PROXY_ROUTES = {
    "/v1/chat/completions": Route("openai", "chat/completions"),
    "/v1/responses": Route("openai", "responses"),
    "/v1/embeddings": Route("openai", "embeddings"),
    "/v1/messages": Route("anthropic", "messages"),
}
COUNT_TOKENS = "/v1/messages/count_tokens"


class Gateway:
    """ASGI callable. `runtime` is opened at lifespan start (or injected by tests)."""

    def __init__(self, policy: Policy, *, runtime: Runtime | None = None,
                 sole_process: bool = False, access_log: str | None = None,
                 source: str | None = None) -> None:
        self.policy = policy
        self.source = source  # the policy file, for reloads
        self.reloader: PolicyReloader | None = None
        self._keys: KeyStore | None = None
        self._throttle: AuthThrottle | None = None
        self._background: set[asyncio.Future[None]] = set()
        self.access_log_path = access_log  # a file, or "-" for stdout
        self.access_log: AccessLog | None = None
        self.runtime = runtime
        self._sole_process = sole_process  # see runtime.open_policy_state
        self._owns_runtime = runtime is None
        self.upstream: Transport = (
            LeanUpstream() if policy.server.upstream == "lean" else Upstream())
        self.proxy: Proxy | None = None
        self.ops: Starlette | None = None
        self.count_tokens: ops.CountTokens | None = None
        self.drain = Drain()
        self.observe: Observability | None = None
        self.dashboard: Sources | None = None  # what /dashboard reads (dashboard/sources.py)
        self.throttled = policy.server.auth_failures_per_minute > 0

    async def startup(self) -> None:
        if self.runtime is None:
            self.runtime = await Runtime.open(self.policy, sole_process=self._sole_process)
        await self.upstream.start()
        rt = self.runtime
        self.dashboard = await of_runtime(rt)
        self.observe = install(rt, self.policy, alert_log=self.dashboard.alerts)
        if self.access_log_path:
            self.access_log = AccessLog(self.access_log_path)
            rt.recorders.recorders.append(self.access_log)
        keys: KeyStore = rt.keys
        throttle = None
        if self.throttled:  # one count per address for virtual keys and the admin key
            throttle = AuthThrottle(self.policy.server.auth_failures_per_minute)
            keys = ThrottledKeys(rt.keys, throttle)
        self._keys, self._throttle = keys, throttle
        port = UpstreamPort(self.upstream)
        self.proxy = Proxy(self.policy, rt.engine, keys, port, self.drain)
        self.count_tokens = ops.CountTokens(rt, keys)
        self.ops = self._operations()
        self.reloader = PolicyReloader(self.source, lambda: self.policy, self._swap, rt.store)
        self.reloader.start()
        # Everything built so far (catalog, tokenizer tables, policy) lives as long as
        # the process: out of the collector's sight, full collections stay short.
        gc.freeze()

    def _operations(self) -> Starlette:
        """The operational routes (health, models, usage, metrics, admin), from the
        policy in force: rebuilt when it is reloaded."""
        rt, keys, throttle = self.runtime, self._keys, self._throttle
        assert rt is not None and keys is not None and self.observe is not None
        admin_key = self.policy.admin_key.get_secret_value() if self.policy.admin_key else None
        names = PolicyNames(self.policy, rt.catalog)
        return Starlette(
            exception_handlers=edges.HANDLERS,
            routes=[*ops.routes(rt, keys), *self.observe.routes,
                    *admin_routes(rt.keys, admin_key, names=names, throttle=throttle),
                    *flag_routes(rt.store, admin_key, static=_static_flags(self.policy),
                                 names=names, throttle=throttle),
                    *report_routes(rt, admin_key, throttle),
                    *reload_routes(self.reload, admin_key, throttle),
                    *self._dashboard_routes(names)])

    def _dashboard_routes(self, names: PolicyNames) -> list[BaseRoute]:
        """/dashboard over this gateway's stores, with the policy in force."""
        assert self.dashboard is not None and self.runtime is not None
        sources = replace(self.dashboard, policy=self.policy, catalog=self.runtime.catalog)
        return Dashboard(sources, names=names).routes()

    async def reload(self) -> Policy:
        """Reload the policy file (gateway/reload.py); ConfigError keeps the running one."""
        assert self.reloader is not None
        return await self.reloader.reload()

    def _swap(self, policy: Policy) -> None:
        rt = self.runtime
        assert rt is not None and self.proxy is not None
        catalog = Catalog(policy.models)
        rt.engine.reload(policy, catalog)
        rt.policy, rt.catalog = policy, catalog
        self.policy = self.proxy.policy = policy
        if self.observe is not None:
            task = asyncio.ensure_future(self.observe.reload(rt, policy))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        self.ops = self._operations()

    def begin_shutdown(self, deadline: float = DEFAULT_DEADLINE) -> None:
        """Stop taking calls; those in flight get `deadline` seconds (gateway/drain.py)."""
        self.drain.begin(deadline)

    def stop_now(self) -> None:
        """Cut every call in flight now (each still settled and recorded)."""
        self.drain.cut_now()

    async def shutdown(self) -> None:
        if self.reloader is not None:
            await self.reloader.close()
        self.drain.begin()
        await self.drain.wait()
        if self.observe is not None:
            await self.observe.close()
        if self.dashboard is not None:
            await self.dashboard.close()
        await self.upstream.close()
        if self.runtime is not None and self._owns_runtime:
            await self.runtime.close()
        if self.access_log is not None:
            self.access_log.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if self.throttled:
                client = scope.get("client")
                CLIENT.set(client[0] if client else None)
            path = scope["path"]
            route = PROXY_ROUTES.get(path)
            if route is not None or path == COUNT_TOKENS:
                if scope["method"] != "POST" or not edges.json_body(scope):
                    await edges.refuse(scope, send)
                elif route is not None:
                    assert self.proxy is not None
                    await self.proxy.handle(route, scope, receive, send)
                else:
                    assert self.count_tokens is not None
                    await self.count_tokens(scope, receive, send)
                return
            assert self.ops is not None
            await self.ops(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # report start-up failures to the server
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _static_flags(policy: Policy) -> dict[str, bool]:
    return {name: policy.flag(name) for name in {*policy.features, *policy.flags}}


def create_app(policy: Policy, **kwargs: Any) -> Gateway:
    return Gateway(policy, **kwargs)

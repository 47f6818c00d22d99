"""Assembling the server: every part is built here and wired explicitly
(starlette's applications.py style); nothing reaches for a global.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from gitctl.tailnet import TailnetSettings
from server.config import ServerConfig
from server.control import ControlHandler
from server.datadir import DataDirError, DataDirLock, claim
from server.edge.control_types import ControlRequest, ControlResponse
from server.edge.listeners import Listeners
from server.edge.mesh_config import MeshKeyError, read_mesh_key
from server.edge.public import public_url
from server.edge.stun_server import StunServer
from server.gcpolicy import GcPolicy
from server.metrics import Metrics
from server.protocol.keys import NodePublic
from server.sources.history import HISTORY_FILE, History
from server.sources.remote import RemoteRepo
from server.sources.repo import RepoStatus, SnapshotRepo
from server.startup import Shared, StartupError
from server.startup.background import serve_commits, start_timers
from server.startup.doors import front_doors, listen, listen_http01, open_stun, serving_tls
from server.startup.logins import Logins, start_logins
from server.startup.settings import HeldControlSettings, serving_settings
from server.startup.state import OpenState, open_state
from server.startup.tailnet import RunningTailnet, start_tailnet
from server.tls import TlsError
from server.tls.acme_http import ChallengeResponder
from server.webhooks import Delivery, EventSource, WebhookSender

if TYPE_CHECKING:
    import ssl

    from prometheus_client import CollectorRegistry

    from server.edge.derp_server import DerpServer
    from server.oidc.provider import Provider

__all__ = ["Server"]


class Server:
    def __init__(
        self,
        config: ServerConfig,
        *,
        log: logging.Logger | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics_registry: CollectorRegistry | None = None,
        gc_policy: GcPolicy | None = None,
    ) -> None:
        self.config = config
        # `tailnetd serve` passes one (server/gcpolicy.py); in-process tests leave
        # the collector as it is.
        self.gc_policy = gc_policy
        self.log = log or logging.getLogger("tailnetd")
        self.clock = clock
        self.metrics = Metrics(
            metrics_registry, monotonic=time.monotonic
        )  # a registry on first scrape
        self.metrics_port = config.metrics_port
        self.history = History(config.data_dir / HISTORY_FILE)
        self.status = RepoStatus(journal=self.history)
        self.listeners = Listeners()
        self._tasks: list[asyncio.Task[None]] = []
        self._stun: StunServer | None = None
        self._control_settings = HeldControlSettings(self._settings)
        self.port = config.listen_port
        self.stun_port = config.stun_port
        self.acme_responder = ChallengeResponder()
        self.tls = serving_tls(config, self.acme_responder, log=self.log, clock=clock)
        self.acme_http_port = config.acme_http_port
        self._data_lock: DataDirLock | None = None
        self._derp: DerpServer | None = None  # made on first use (the `derp` property)
        # Webhook events; sent once the store is open and a secret is configured.
        self.events = EventSource(clock=clock)
        self.webhook_delivery = Delivery()  # bounds and retry schedule; tests shorten it
        self.webhooks: WebhookSender | None = None
        self._mesh_key: str | None = None  # --mesh-key-file, read at start
        self._oidc_provider: Provider | None = None  # closed at stop
        self._shared = Shared(config, clock, self.log, self.metrics, self.events)

    # Commits (the lifecycle lives in server/sources/lifecycle.py)

    @property
    def repo(self) -> SnapshotRepo | RemoteRepo:
        return self.commits.repo

    async def sync_now(self) -> None:
        await self.commits.sync_now()

    async def on_revision(self, revision: str) -> None:
        await self.commits.on_revision(revision)

    # DERP

    @property
    def derp(self) -> DerpServer:
        """The embedded DERP relay, made on first use (a /derp connection, a mesh
        peer, a scrape): server/protocol/derp and nacl stay off the start path."""
        if self._derp is None:
            from server.edge.derp_server import DerpServer

            self._derp = DerpServer(
                self.derp_key,
                is_allowed=self._derp_access.allowed,
                log=self.log,
                mesh_key=self._mesh_key,
            )
        return self._derp

    def _derp_disconnect(self, node_key: NodePublic) -> None:
        """Close a node's DERP connection, if DERP has any."""
        if self._derp is not None:
            self._derp.disconnect(node_key)

    # Life cycle

    async def start(self) -> None:
        """Claim the data dir, then start every part; StartupError (one line for
        people) if any cannot, with whatever had started stopped again."""
        try:
            self._data_lock = claim(self.config.data_dir, self.log)
        except DataDirError as exc:
            raise StartupError(str(exc)) from None
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        cfg, shared, tasks = self.config, self._shared, self._tasks
        state = await open_state(shared, history=self.history, status=self.status)
        self.commits, self.store = state.commits, state.store
        self.server_key, self.derp_key = state.server_key, state.derp_key
        ssl_ctx = await self._open_control_port()
        try:
            self._mesh_key = read_mesh_key(cfg.mesh_key_file)
        except MeshKeyError as exc:
            raise StartupError(str(exc)) from None
        running = start_tailnet(
            shared,
            self.store,
            state.source,
            port=self.port,
            stun_port=self.stun_port if self._stun else 0,
            disconnect=self._derp_disconnect,
            delivery=self.webhook_delivery,
            gc_policy=self.gc_policy,
            tasks=tasks,
        )
        self.registry, self.tailnet, self.users = running.registry, running.tailnet, running.users
        self._derp_access, self.webhooks = running.derp_access, running.webhooks
        self.metrics.export_derp(lambda: self.derp.stats())  # a scrape starts DERP
        self.metrics.export_live(self._live_counts)
        logins = start_logins(
            shared,
            self.store,
            running,
            public_url=self._public_url,
            control_settings=self._control_settings,
        )
        self.logins, self.ssh_checks = logins.logins, logins.ssh_checks
        self.probing, self.control = logins.probing, logins.control
        self.oidc, self._oidc_provider = logins.oidc, logins.oidc_provider
        await self._open_doors(state, running, logins, scheme="https" if ssl_ctx else "http")
        self.serving = serve_commits(shared, self.commits, running, self.store, logins, tasks=tasks)
        start_timers(
            shared,
            running,
            logins,
            self.status,
            inactivity=lambda: self._settings().ephemeral_inactivity_timeout,
            disconnect=self._derp_disconnect,
            mesh_key=self._mesh_key,
            derp=lambda: self.derp,
            derp_key=self.derp_key,
            tasks=tasks,
        )
        # The tailnet read every node a moment ago: not a second pass over the store.
        known = (self.tailnet.record(i) for i in self.tailnet.record_ids())
        self.serving.warn_undeclared_tags([n for n in known if n is not None])
        self.log.info(
            "tailnetd listening on %s (control + DERP), STUN %s, serving %s, node state in %s",
            cfg.server_url if cfg.listen_port else f"port {self.port}",
            f"on udp/{self.stun_port}" if self._stun else "off",
            (self.status.serving or "")[:12],
            cfg.store_description,
        )

    async def _open_control_port(self) -> ssl.SSLContext | None:
        """STUN, TLS, then the control port; its TLS context (None: plain HTTP)."""
        cfg = self.config
        self._stun = await open_stun(cfg, self.log)
        if self._stun is not None:
            self.stun_port = self._stun.port
        try:
            ssl_ctx = self.tls.start()
        except TlsError as exc:
            raise StartupError(f"TLS: {exc}") from None
        self._tasks += map(asyncio.create_task, self.tls.tasks())
        self.port = await listen(
            self.listeners,
            "control (tcp)",
            cfg.listen_host,
            cfg.listen_port,
            lambda r, w: self._front.handle(r, w),  # the front door is built in _open_doors
            ssl=ssl_ctx,
            limit=64 * 1024,
        )
        return ssl_ctx

    async def _open_doors(
        self, state: OpenState, running: RunningTailnet, logins: Logins, scheme: str
    ) -> None:
        """The front doors, and their ports but the control one (open already)."""
        cfg = self.config
        doors = front_doors(
            self._shared,
            state,
            running,
            logins,
            self.status,
            # self.control is looked up per request: tests replace it after start().
            control=lambda request: self.control(request),
            answer_now=self._answer_now,
            derp=lambda: self.derp,
            sync=self.sync_now,
            acme_responder=self.acme_responder,
            scheme=scheme,
            http01=self.tls.acme is not None,
        )
        self._ts2021, self._front, self._local_front = doors.ts2021, doors.public, doors.local
        await self.listeners.unix(cfg.socket_path, doors.local.handle)
        if cfg.metrics_host is not None and doors.metrics is not None:
            self.metrics_port = await listen(
                self.listeners, "metrics (tcp)", cfg.metrics_host, cfg.metrics_port,
                doors.metrics.handle,
            )  # fmt: skip
        if self.tls.acme is not None and doors.http01 is not None:
            self.acme_http_port = await listen_http01(self.listeners, cfg, doors.http01)
            self._tasks.append(asyncio.create_task(self.tls.acme.run()))

    def _live_counts(self) -> dict[str, int]:
        return {
            "served": len(self.tailnet.context.nodes),
            "streaming": len(self.registry.online_ids()),
            "control_connections": self._ts2021.connections,
        }

    def reload_tls(self) -> None:
        """Read the certificate files again (SIGHUP)."""
        self.tls.reload()

    def _settings(self) -> TailnetSettings:
        """The serving commit's settings.yaml (its defaults where it says nothing)."""
        return serving_settings(self.tailnet)

    def _answer_now(self, request: ControlRequest) -> ControlResponse | None:
        """What the serving handler answers at once (none: a test's stand-in)."""
        control = self.control
        return control.answer_now(request) if isinstance(control, ControlHandler) else None

    def _public_url(self) -> str:
        return public_url(self.config.server_url, self.config.listen_port, self.port)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.listeners.close()
        if self._stun is not None:
            self._stun.close()
        # End live control and DERP connections first: their sessions write
        # last-seen times, which must reach the store before it closes.
        await self.listeners.end_connections()
        # A start that failed part-way stops too: only what was built is closed.
        if self._derp is not None:
            await self._derp.close()
        if self.webhooks is not None:
            await self.webhooks.aclose()  # what is still queued goes to the outbox
        if self._oidc_provider is not None:
            await self._oidc_provider.aclose()
        if hasattr(self, "store"):
            self.store.close()
        if self._data_lock is not None:
            self.config.socket_path.unlink(missing_ok=True)  # ours: we hold the data dir
            self._data_lock.release()
            self._data_lock = None

"""Assembling the server: every part is built here and wired explicitly
(starlette's applications.py style); nothing reaches for a global.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import logging
import os
import sqlite3
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from gitctl.tailnet import TailnetSettings
from server.acme import AcmeManager, AcmeSettings
from server.acme_http import ChallengeResponder
from server.api import WebDeps, build_app, build_metrics_app
from server.authority import CommitAuthority
from server.config import ServerConfig
from server.control import ControlHandler, ControlSettings
from server.datadir import DataDirError, DataDirLock, claim, make_private, write_private
from server.edge.control_conn import ControlConnection
from server.edge.derp_server import DerpServer
from server.edge.http1 import FrontDoor, RequestHead
from server.edge.stun_server import StunServer, start_stun_server
from server.history import HISTORY_FILE, History, HistoryEntry
from server.logs import event
from server.metrics import DerpCollector, LiveCollector, Metrics
from server.protocol.keys import ChallengePublic, MachinePrivate, NodePrivate, NodePublic
from server.protocol.noise import HandshakeError, accept_initiation, early_payload
from server.remote_repo import RemoteRepo, watch_remote
from server.repo import Checked, Rejection, RepoStatus, SnapshotRepo, watch_repo
from server.store import SqlStore, StoreError, open_store
from server.store.model import Node
from server.tagcheck import undeclared
from server.tailnet import NodeChange, TailnetSource, running_tailnet
from server.tls import ReloadingContext, TlsError, watch_certificate_files
from server.wire import DerpRegion

__all__ = ["Server", "StartupError"]

SWEEP_INTERVAL = 5.0
DEFAULT_SETTINGS = TailnetSettings()


def _expired(node: Node, now: datetime) -> bool:
    return node.key_expiry is not None and node.key_expiry <= now


class StartupError(Exception):
    pass


def _load_or_create_key(path: Path, kind: type[Any]) -> Any:
    try:
        if path.exists():
            return kind.parse(path.read_text().strip())
        key = kind.generate()
        write_private(path, (key.text + "\n").encode())
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a key this server wrote"
        raise StartupError(f"cannot read the key file {path}: {reason}") from None
    return key


def _open_private_store(path: Path) -> SqlStore:
    """The sqlite store, its files (db, -wal, -shm) readable by the owner alone.

    sqlite gives the -wal and -shm files the database file's mode, so the
    database is created 0600 before sqlite opens it."""
    siblings = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        make_private(path, *siblings)
        store = open_store(path)
    except (OSError, sqlite3.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise StartupError(f"cannot open the state database {path}: {reason}") from None
    make_private(*siblings)
    return store


async def _listen(what: str, host: str, port: int, start: Awaitable[Any]) -> Any:
    """Await a listener's start, its failure as one line naming the address."""
    try:
        return await start
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use (is another server running?)"
        raise StartupError(f"cannot listen for {what} on {host}:{port}: {reason}") from None


class Server:
    def __init__(
        self,
        config: ServerConfig,
        *,
        log: logging.Logger | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.log = log or logging.getLogger("tailnetd")
        self.clock = clock
        self.metrics = Metrics(metrics_registry or CollectorRegistry(), monotonic=time.monotonic)
        self._control_connections = 0
        self.metrics_port = config.metrics_port
        self.history = History(config.data_dir / HISTORY_FILE)
        self.status = RepoStatus(journal=self.history)
        self._revision_lock = asyncio.Lock()
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._connections: set[asyncio.Task[Any]] = set()
        self._stun: StunServer | None = None
        self.port = config.listen_port
        self.stun_port = config.stun_port
        self.tls: ReloadingContext | None = None
        self.acme: AcmeManager | None = None
        self.acme_responder = ChallengeResponder()
        self.acme_http_port = config.acme_http_port
        self._data_lock: DataDirLock | None = None

    # Snapshots

    def _load_initial(self) -> TailnetSource:
        head = self.repo.head()
        checked = self.repo.check(head)
        last_good_file = self.config.data_dir / "last_good_revision"
        previous = last_good_file.read_text().strip() if last_good_file.exists() else None
        signer = self.history.signer_of(head) if head is not None else None
        if previous and self.authority.needs_previous:
            # The trust chain goes on across restarts: a new HEAD is checked against
            # the list of the commit served last.
            self.authority.serving(previous, self.repo.load(previous)[0])
        # A commit served before was checked then (an outside list is checked always).
        if head is not None and (head != previous or self.authority.outside):
            checked, signer = self._verified(head, checked)
        snap, errors = checked.snapshot, checked.errors
        if snap is None:
            self._reject(head or str(self.repo.path), checked)
            if previous and previous != head:
                self.log.warning(
                    "HEAD %s is refused; serving the last good commit %s", head, previous
                )
                checked, signer = self.repo.check(previous), self.history.signer_of(previous)
                if self.authority.outside:
                    checked, signer = self._verified(previous, checked)
                snap, errors = checked.snapshot, checked.errors
            if snap is None:
                raise StartupError(
                    "no valid tailnet.d to serve:\n" + "\n".join(f"  {e}" for e in errors)
                )
        self._serving(snap, signer)
        return TailnetSource.from_snapshot(snap)

    def _verified(self, revision: str, checked: Checked) -> tuple[Checked, str | None]:
        """The check with the signature's verdict added, and the signer."""
        if checked.snapshot is None:
            return checked, None
        verdict = self.authority.check(revision, checked.snapshot)
        if verdict.refusal is not None:
            return Checked(None, (verdict.refusal,), "signature"), None
        return checked, verdict.signer

    def _read_initial(self) -> TailnetSource:
        import git

        try:
            return self._load_initial()
        except (OSError, git.GitError) as exc:
            reason = (
                "its .git is not a readable git repository"
                if isinstance(exc, git.InvalidGitRepositoryError)
                else str(exc).strip().splitlines()[0]
            )
            raise StartupError(f"cannot read the repository {self.repo.path}: {reason}") from None

    def _last_rejected(self) -> str | None:
        return self.status.rejected.revision if self.status.rejected is not None else None

    def _serving(self, snap: Any, signer: str | None) -> None:
        self.status.serving = snap.id
        self.status.serving_since = self.clock()
        self.status.signer = signer
        if self.repo.is_git:
            write_private(self.config.data_dir / "last_good_revision", (snap.id + "\n").encode())
            self.authority.serving(snap.revision, snap)
            self.history.append(HistoryEntry(snap.id, self.clock(), "served", signer))

    def _reject(self, revision: str, checked: Checked) -> None:
        errors = checked.errors
        self.metrics.rejected(checked.reason or "compile")
        rejection = Rejection(revision, self.clock(), errors)
        self.status.rejected = rejection
        self.history.append(HistoryEntry(revision, rejection.at, "rejected", None, errors))
        self.log.error(
            "commit %s rejected, still serving %s:\n%s",
            revision[:12],
            (self.status.serving or "nothing")[:12],
            "\n".join(f"  {e}" for e in errors),
            extra=event(
                "snapshot.rejected",
                commit=revision,
                reason=checked.reason or "compile",
                serving=self.status.serving,
                errors=len(errors),
            ),
        )

    async def _serving_documents(self) -> Any:
        """The files of the commit being served (for the API's policy file)."""
        from gitctl.sources import read_directory, read_git

        serving = self.status.serving
        if serving is not None and not serving.startswith("sha256:"):
            return await asyncio.to_thread(read_git, self.repo.path, serving)
        folder = self.repo.path / "tailnet.d"
        return await asyncio.to_thread(
            read_directory, folder if folder.is_dir() else self.repo.path
        )

    async def sync_now(self) -> None:
        """POST /api/v1/repo/sync: look at the repository now instead of waiting."""
        if isinstance(self.repo, RemoteRepo):
            try:
                head = await asyncio.to_thread(self.repo.sync)
            except Exception:
                self.log.warning(
                    "repo: fetching %s failed: %s", self.repo.url, self.repo.last_fetch_error
                )
                return
        else:
            head = await asyncio.to_thread(self.repo.head)
        if head is not None:
            await self.on_revision(head)

    async def on_revision(self, revision: str) -> None:
        """The branch moved (to `revision`, or further since).

        The watcher, its poll and sync requests all report revisions, and a
        report can arrive after a newer one: each is handled in turn, as a
        nudge to serve the branch tip as it is now, so an older commit is
        never served after a newer one."""
        async with self._revision_lock:
            head = await asyncio.to_thread(self.repo.head)
            await self._take_revision(head or revision)

    async def _take_revision(self, revision: str) -> None:
        if revision in (self.status.serving, self._last_rejected()):
            return  # already decided (a watcher and a sync request can both see it)
        # Reading and checking a commit is blocking git and CPU work: keep it off the loop.
        checked, signer = await asyncio.to_thread(
            self._verified, revision, await asyncio.to_thread(self.repo.check, revision)
        )
        snap = checked.snapshot
        if snap is None:
            self._reject(revision, checked)
            return
        try:
            source = TailnetSource.from_snapshot(snap)
            self.tailnet.swap_source(source)
        except Exception as exc:
            self.log.exception("commit %s could not be served", revision[:12])
            error = f"compiling for the live nodes failed: {exc}"
            self._reject(revision, Checked(None, (error,), "compile"))
            return
        self.metrics.snapshot_swapped(self.tailnet.waiting())
        self._apply_addressing(source)
        self.status.rejected = None
        self._serving(snap, signer)
        self._warn_undeclared_tags()

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
        cfg = self.config
        if cfg.repo_url is None and not cfg.repo.is_dir():
            reason = "no such directory" if not cfg.repo.exists() else "not a directory"
            raise StartupError(f"cannot read the repository {cfg.repo}: {reason}")
        self.repo: SnapshotRepo | RemoteRepo
        if cfg.repo_url is not None:
            self.repo = RemoteRepo(cfg.repo_url, cfg.data_dir, branch=cfg.branch)
            try:
                await asyncio.to_thread(self.repo.sync)
            except Exception as exc:
                if self.repo.head() is None:
                    raise StartupError(
                        f"cannot clone {cfg.repo_url}: {self.repo.last_fetch_error or exc}"
                    ) from None
                self.log.warning(
                    "fetching %s failed, serving the last fetched commit: %s", cfg.repo_url, exc
                )
        else:
            self.repo = SnapshotRepo(cfg.repo, branch=cfg.branch)
        self._sync_wake = asyncio.Event()
        if cfg.trusted_signers is not None and not self.repo.is_git:
            raise StartupError(
                f"--trusted-signers needs a git repository; {cfg.repo} is a plain directory"
            )
        self.authority = CommitAuthority(self.repo.path, cfg.trusted_signers, log=self.log)
        source = self._read_initial()
        self.server_key = _load_or_create_key(cfg.data_dir / "noise_private.key", MachinePrivate)
        self.derp_key = _load_or_create_key(cfg.data_dir / "derp_private.key", NodePrivate)
        location = cfg.store_location
        if isinstance(location, Path):
            self.store = _open_private_store(location)
        else:
            try:
                self.store = open_store(location)
            except StoreError as exc:
                raise StartupError(f"node state in {cfg.store_description}: {exc}") from None
        self._apply_addressing(source)

        if cfg.stun_host is not None:
            self._stun = await _listen(
                "STUN (udp)",
                cfg.stun_host,
                cfg.stun_port,
                start_stun_server(cfg.stun_host, cfg.stun_port, log=self.log),
            )
            self.stun_port = self._stun.port

        ssl_ctx = self._start_tls(*self._certificate_files())

        listener = await _listen(
            "control (tcp)",
            cfg.listen_host,
            cfg.listen_port,
            asyncio.start_server(
                self._handle_tcp, cfg.listen_host, cfg.listen_port, ssl=ssl_ctx, limit=64 * 1024
            ),
        )
        self._servers.append(listener)
        self.port = listener.sockets[0].getsockname()[1]

        self.derp = DerpServer(self.derp_key, is_allowed=self._derp_allowed, log=self.log)
        self.registry, self.tailnet = running_tailnet(
            self.store, source, derp_regions=[self._derp_region()], log=self.log
        )
        self.registry.subscribe(self._node_changed)
        self.registry.subscribe(self.metrics.node_changed)
        self.metrics.registry.register(DerpCollector(self.derp.stats))
        self.metrics.registry.register(LiveCollector(self._live_counts))
        self.control = ControlHandler(
            self.tailnet,
            self.registry,
            self.store,
            clock=self.clock,
            settings=self._control_settings,
            log=self.log,
            metrics=self.metrics,
        )
        scheme = "https" if ssl_ctx else "http"
        upgrades = {"/ts2021": self._ts2021, "/derp": self._derp}

        def web(local: bool) -> WebDeps:
            return WebDeps(
                self.server_key.public(),
                self.tailnet,
                self.registry,
                self.store,
                self.clock,
                self.status,
                os.urandom,
                local=local,
                sync=self.sync_now,
                metrics=self.metrics,
                log=self.log,
                documents=self._serving_documents,
            )

        public = self.acme_responder.wrap(build_app(web(local=False)))
        local = build_app(web(local=True))
        self._front = FrontDoor(public, upgrades, log=self.log, scheme=scheme)
        self._local_front = FrontDoor(local, {}, log=self.log)

        sock_path = cfg.socket_path
        if sock_path.exists():
            sock_path.unlink()
        unix = await asyncio.start_unix_server(
            lambda r, w: self._tracked(self._local_front.handle, r, w), path=str(sock_path)
        )
        os.chmod(sock_path, 0o600)
        self._servers.append(unix)
        if cfg.metrics_host is not None:
            await self._start_metrics(build_metrics_app(web(local=False)))

        if self.acme is not None:
            await self._start_acme(FrontDoor(public, upgrades, log=self.log, scheme="http"))
        if isinstance(self.repo, RemoteRepo):
            self._tasks.append(
                asyncio.create_task(
                    watch_remote(
                        self.repo,
                        self.on_revision,
                        log=self.log,
                        interval=cfg.fetch_interval,
                        wake=self._sync_wake,
                    )
                )
            )
        elif self.repo.is_git:
            self._tasks.append(
                asyncio.create_task(watch_repo(self.repo, self.on_revision, log=self.log))
            )
        self._tasks.append(asyncio.create_task(self._sweep()))
        self._warn_undeclared_tags()
        self.log.info(
            "tailnetd listening on %s (control + DERP), STUN %s, serving %s, node state in %s",
            cfg.server_url if cfg.listen_port else f"port {self.port}",
            f"on udp/{self.stun_port}" if self._stun else "off",
            (self.status.serving or "")[:12],
            cfg.store_description,
        )

    async def _start_metrics(self, app: Any) -> None:
        """--metrics-listen: plain HTTP, /metrics, /health and /ready only."""
        cfg = self.config
        assert cfg.metrics_host is not None
        front = FrontDoor(app, {}, log=self.log)
        listener = await _listen(
            "metrics (tcp)",
            cfg.metrics_host,
            cfg.metrics_port,
            asyncio.start_server(
                lambda r, w: self._tracked(front.handle, r, w), cfg.metrics_host, cfg.metrics_port
            ),
        )
        self._servers.append(listener)
        self.metrics_port = listener.sockets[0].getsockname()[1]

    def _live_counts(self) -> dict[str, int]:
        return {
            "served": len(self.tailnet.context.nodes),
            "streaming": len(self.registry.online_ids()),
            "control_connections": self._control_connections,
        }

    def _certificate_files(self) -> tuple[Path | None, Path | None]:
        cfg = self.config
        if cfg.acme_domain is None:
            return cfg.tls_cert, cfg.tls_key
        settings = AcmeSettings(
            cfg.acme_domain, cfg.acme_email, cfg.acme_directory, cfg.data_dir / "acme"
        )
        self.acme = AcmeManager(
            settings,
            self.acme_responder,
            on_new_certificate=self.reload_tls,
            log=self.log,
            clock=self.clock,
        )
        return self.acme.prepare()

    def _start_tls(self, cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
        cfg = self.config
        if cert is None or key is None:
            return None
        try:
            self.tls = ReloadingContext(cert, key, log=self.log)
        except TlsError as exc:
            raise StartupError(f"TLS: {exc}") from None
        host = urlsplit(cfg.server_url).hostname or ""
        if not self.tls.info.covers(host) and cfg.acme_domain is None:
            # Clients check the name for /key and for DERP: they would fail later, obscurely.
            self.log.warning(
                "TLS: the certificate is for %s, not for %s from the server URL; "
                "clients will refuse it",
                ", ".join(self.tls.info.names) or "no names",
                host,
            )
        self._tasks.append(asyncio.create_task(watch_certificate_files(self.tls)))
        return self.tls.context

    async def _start_acme(self, plain: FrontDoor) -> None:
        # HTTP-01 answers come from port 80; the same front door also serves
        # /ts2021 there, which clients given an https:// URL try as well.
        assert self.acme is not None
        cfg = self.config
        try:
            listener = await asyncio.start_server(
                lambda r, w: self._tracked(plain.handle, r, w),
                cfg.acme_http_host,
                cfg.acme_http_port,
            )
        except OSError as exc:
            raise StartupError(
                f"ACME: cannot listen on {cfg.acme_http_host}:{cfg.acme_http_port} for HTTP-01: "
                f"{exc.strerror} (use --acme-http-listen, or allow binding port 80)"
            ) from None
        self._servers.append(listener)
        self.acme_http_port = listener.sockets[0].getsockname()[1]
        self._tasks.append(asyncio.create_task(self.acme.run()))

    def reload_tls(self) -> None:
        """Read the certificate files again (SIGHUP)."""
        if self.tls is not None:
            self.tls.reload()

    def _apply_addressing(self, source: TailnetSource) -> None:
        """settings.yaml's prefixes and allocation, for the nodes that join next."""
        settings = source.settings
        if settings is not None:
            self.store.set_addressing(
                settings.ipv4_prefix, settings.ipv6_prefix, settings.ip_allocation
            )

    def _settings(self) -> TailnetSettings:
        """The serving commit's settings.yaml (its defaults where it says nothing)."""
        return self.tailnet.source.settings or DEFAULT_SETTINGS

    def _control_settings(self) -> ControlSettings:
        return ControlSettings(node_key_expiry=self._settings().node_key_expiry)

    def _derp_region(self) -> DerpRegion:
        # Clients reach DERP where they reach control: the server URL, which
        # behind a proxy is the proxy's address, not our listener's.
        url = urlsplit(self.config.server_url)
        host = url.hostname or "127.0.0.1"
        port = url.port or (443 if url.scheme == "https" else 80)
        if self.config.listen_port == 0:
            port = self.port
        return DerpRegion(
            region_id=999,
            region_code="tailnetd",
            region_name="tailnetd embedded DERP",
            host_name=host,
            derp_port=port,
            stun_port=self.stun_port if self._stun else 0,
        )

    def _warn_undeclared_tags(self) -> None:
        """One warning per node or usable pre-auth key whose tags the served policy
        does not declare (a commit dropped them from tagOwners)."""
        policy = self.tailnet.source.policy
        keys = self.store.list_preauth_keys()
        for entry in undeclared(policy, self.registry.nodes(), keys, self.clock()):
            self.log.warning("%s", entry.describe())

    def _derp_allowed(self, key: NodePublic) -> bool:
        """DERP relays for nodes the tailnet serves: not deleted, not expired
        or logged out, not cut off from git."""
        node = self.registry.by_node_key(key)
        return (
            node is not None and not _expired(node, self.clock()) and self.tailnet.serves(node.id)
        )

    def _node_changed(self, change: NodeChange) -> None:
        """DERP drops a node key that stops being allowed: deleted, replaced
        by a renewal, expired or logged out, or cut off."""
        old, node = change.previous, change.node
        if old is not None and (node is None or node.node_key != old.node_key):
            self.derp.disconnect(old.node_key)
        if node is not None and not self._derp_allowed(node.node_key):
            self.derp.disconnect(node.node_key)

    async def _sweep(self) -> None:
        """Every few seconds: remove inactive ephemeral nodes, and drop the
        DERP connections of nodes whose key expired since the last look."""
        last = self.clock()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = self.clock()
            timeout = self._settings().ephemeral_inactivity_timeout
            cutoff = now - timeout
            # The serving node list, not a read of every row: this runs every few seconds.
            for node in list(self.tailnet.context.nodes.values()):
                if node.key_expiry is not None and last < node.key_expiry <= now:
                    self.log.info(
                        "node %d %s: key expired",
                        node.id,
                        node.given_name,
                        extra=event(
                            "node.expired", node=node.id, node_name=node.given_name, user=node.user
                        ),
                    )
                    self.derp.disconnect(node.node_key)
                if not node.ephemeral or self.registry.is_online(node.id):
                    continue
                if (node.last_seen or node.created) < cutoff:
                    self.log.info(
                        "removing ephemeral node %d %s: inactive",
                        node.id,
                        node.given_name,
                        extra=event(
                            "node.deleted",
                            node=node.id,
                            node_name=node.given_name,
                            user=node.user,
                            reason="ephemeral node inactive",
                        ),
                    )
                    self.registry.remove(node.id)
            for node in self.tailnet.cut_off():
                self.derp.disconnect(node.node_key)
            last = now

    async def _handle_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._tracked(self._front.handle, reader, writer)

    async def _tracked(
        self,
        handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Run one connection so that stop() can end it before the store closes."""
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await handle(reader, writer)
        except asyncio.CancelledError:
            writer.close()  # shutting down: the client reconnects to the next process
        finally:
            self._connections.discard(task)

    async def _ts2021(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: RequestHead
    ) -> None:
        if head.upgrade != "tailscale-control-protocol":
            writer.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            return
        try:
            initiation = base64.b64decode(head.header("x-tailscale-handshake"), validate=True)
            accepted = accept_initiation(self.server_key, initiation)
        except (ValueError, HandshakeError) as exc:
            peer = writer.get_extra_info("peername")
            self.log.info("ts2021: handshake from %s refused: %s", peer, exc)
            body = b"invalid noise handshake\n"
            writer.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            return
        challenge = ChallengePublic(NodePrivate.generate().public_raw())
        conn = ControlConnection(
            reader,
            writer,
            accepted,
            self.control,
            log=self.log,
            early_payload=early_payload(challenge),
        )
        self._control_connections += 1
        try:
            await conn.run()
        finally:
            self._control_connections -= 1

    async def _derp(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: RequestHead
    ) -> None:
        if head.upgrade != "derp":
            body = b"DERP requires connection upgrade\n"
            writer.write(
                b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            return
        await self.derp.handle(reader, writer, fast_start=head.header("derp-fast-start") == "1")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for server in self._servers:
            server.close()
        if self._stun is not None:
            self._stun.close()
        # End live control and DERP connections first: their sessions write
        # last-seen times, which must reach the store before it closes.
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        if connections:
            await asyncio.wait(connections, timeout=5)
        # A start that failed part-way stops too: only what was built is closed.
        if hasattr(self, "derp"):
            await self.derp.close()
        if hasattr(self, "store"):
            self.store.close()
        if self._data_lock is not None:
            self.config.socket_path.unlink(missing_ok=True)  # ours: we hold the data dir
            self._data_lock.release()
            self._data_lock = None

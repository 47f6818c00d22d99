"""A start's first phase: the repository and its commit lifecycle, the server's
keys, and the node store made ready for the commit served first."""

from __future__ import annotations

from dataclasses import dataclass

from server.datadir import DataDirError, load_or_create_key
from server.protocol.keys import MachinePrivate, NodePrivate
from server.sources.authority import CommitAuthority
from server.sources.history import History
from server.sources.lifecycle import CommitLifecycle, SourceError, open_repo
from server.sources.repo import RepoStatus
from server.sources.serving import prepare_store
from server.startup import Shared, StartupError
from server.store import SqlStore, StoreError, open_node_store
from server.tailnet import TailnetSource

__all__ = ["OpenState", "open_state"]


@dataclass(frozen=True, slots=True)
class OpenState:
    commits: CommitLifecycle
    source: TailnetSource  # the commit to serve first
    server_key: MachinePrivate
    derp_key: NodePrivate
    store: SqlStore


async def open_state(shared: Shared, *, history: History, status: RepoStatus) -> OpenState:
    cfg, clock, log = shared.config, shared.clock, shared.log
    try:
        repo = await open_repo(
            repo=cfg.repo,
            repo_url=cfg.repo_url,
            data_dir=cfg.data_dir,
            branch=cfg.branch,
            log=log,
            trusted_signers=cfg.trusted_signers,
        )
    except SourceError as exc:
        raise StartupError(str(exc)) from None
    commits = CommitLifecycle(
        repo,
        authority=CommitAuthority(repo.path, cfg.trusted_signers, log=log),
        history=history,
        status=status,
        data_dir=cfg.data_dir,
        clock=clock,
        log=log,
        metrics=shared.metrics,
        on_outcome=shared.events.commit,
    )
    try:
        source = TailnetSource.from_snapshot(commits.initial())
    except SourceError as exc:
        raise StartupError(str(exc)) from None
    try:
        server_key = load_or_create_key(cfg.control_key_path, MachinePrivate)
        derp_key = load_or_create_key(cfg.data_dir / "derp_private.key", NodePrivate)
    except DataDirError as exc:
        raise StartupError(str(exc)) from None
    try:
        store = open_node_store(cfg.store_location, cfg.store_description)
    except StoreError as exc:
        raise StartupError(str(exc)) from None
    try:
        prepare_store(store, source, clock(), log)
    except BaseException:
        store.close()  # the Server never held it: its stop() cannot
        raise
    return OpenState(commits, source, server_key, derp_key, store)

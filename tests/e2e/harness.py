"""Real parts for end-to-end tests: a tailnetd server process, real
`tailscaled` daemons (1.96.4 unless a test names another version) in
userspace-networking mode, and git repos.

Everything listens on 127.0.0.1 only. Daemons start in parallel (threads
around subprocesses) because CI has two cores and minutes matter.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import git
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.tailscale_bin import VERSION, install

ROOT = Path(__file__).resolve().parents[2]


# users.yaml of a tailnet with two people, for tests that need no more.
ALICE_AND_BOB = """\
users:
  - {name: alice, email: alice@example.com}
  - {name: bob, email: bob@example.com}
"""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_error = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what}"
        + (f": {last_error}" if last_error else "")
    )


class TailnetRepo:
    """A git work tree holding tailnet.d/, committed with gitpython."""

    def __init__(self, path: Path, files: dict[str, str]) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        # Each use opens and closes its own Repo: gitpython keeps `git cat-file`
        # helper processes alive for as long as a Repo object lives.
        with git.Repo.init(path, initial_branch="main") as repo, repo.config_writer() as cw:
            cw.set_value("user", "name", "tailnetd tests")
            cw.set_value("user", "email", "tests@tailnetd.invalid")
        self.commit(files, "initial tailnet")

    def head(self) -> str:
        with git.Repo(self.path) as repo:
            return str(repo.head.commit.hexsha)

    def commit(self, files: dict[str, str | None], message: str) -> str:
        with git.Repo(self.path) as repo:
            for name, text in files.items():
                target = self.path / "tailnet.d" / name
                if text is None:
                    if target.exists():
                        target.unlink()
                        repo.index.remove([str(target)])
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
                repo.index.add([str(target)])
            return str(repo.index.commit(message).hexsha)


class ServerProcess:
    def __init__(
        self,
        repo: Path | str,  # a work tree, or a remote URL
        data: Path,
        log_path: Path,
        *,
        extra: Iterable[str] = (),
        ca_file: Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        """`ca_file` set: the server speaks TLS (pass --tls-cert/--tls-key in
        `extra`) with a certificate that this CA issued, for `host`."""
        self.repo, self.data, self.log_path = repo, data, log_path
        self.ca_file = ca_file
        self.host = host
        self.extra_env: dict[str, str] = {}
        self.port = free_port()
        self.stun_port = free_port(socket.SOCK_DGRAM)
        self.extra = list(extra)
        self.launcher: list[str] = []  # interpreter options, e.g. ["-m", "cProfile", ...]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ca_file else 'http'}://{self.host}:{self.port}"

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *self.launcher,
                "-m",
                "server.cli",
                "serve",
                "--repo",
                str(self.repo),
                "--data",
                str(self.data),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--stun-listen",
                f"127.0.0.1:{self.stun_port}",
                *self.extra,
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.extra_env},
        )
        log.close()
        wait_for(self._healthy, 30, "tailnetd to answer /health")

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"tailnetd exited with {self.proc.returncode}:\n{self.log()[-20000:]}"
            )
        context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
        with urllib.request.urlopen(self.url + "/health", timeout=2, context=context) as resp:
            return resp.status == 200

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        """The whole log: a check that something is (or is never) logged, or a count,
        must see all of it; a failure message takes its own tail."""
        return self.log_path.read_text(errors="replace")

    def admin(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "server.cli", *args, "--data", str(self.data)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if out.returncode != 0:
            raise AssertionError(f"tailnetd {' '.join(args)} failed: {out.stderr}")
        return out.stdout

    def create_key(self, user: str, *flags: str) -> str:
        return self.admin("keys", "create", "--user", user, *flags).strip()

    def ping(self, peer: str, count: int = 10) -> str:
        """`tailscale ping` output; it exits 1 when no *direct* path formed, which
        is expected while TS_DEBUG_ALWAYS_USE_DERP forces relaying."""
        out = self.cli(
            "ping", "--c", str(count), "--timeout", "5s", peer, timeout=30 + 6 * count, check=False
        )
        return out.stdout + out.stderr

    def status(self) -> dict[str, Any]:
        return json.loads(self.admin("status", "--json"))

    def nodes_json(self) -> list[dict[str, Any]]:
        """`tailnetd nodes list --json`."""
        return list(json.loads(self.admin("nodes", "list", "--json")))


class TailscaleNode:
    """One real tailscaled in userspace-networking mode, private state dir."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        *,
        ephemeral: bool = False,
        derp_over_http: bool = True,
        version: str = VERSION,
    ) -> None:
        """`derp_over_http=False`: DERP over TLS, as outside tests; set
        SSL_CERT_FILE in `extra_env` when the server's CA is a test one.
        `version`: which tailscale client runs (see tests/tailscale_bin.py)."""
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "ts.sock"
        self.socks_port = free_port()
        self.ephemeral = ephemeral
        self.derp_over_http = derp_over_http
        self.proc: subprocess.Popen[bytes] | None = None
        self.version = version
        self.bin = install(version=version)
        self.extra_env: dict[str, str] = {}
        self.extra_args: list[str] = []  # more tailscaled flags, e.g. --verbose=1
        self.prefix: list[str] = []  # runs tailscaled under it, e.g. `ip netns exec NS`

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            TS_LOGS_DIR=str(self.dir / "logs"),
            TS_ASSUME_NETWORK_UP_FOR_TEST="1",
            TS_NO_LOGS_NO_SUPPORT="1",
            TS_DISABLE_PORTMAPPER="1",
            TS_DISABLE_UPNP="1",
            TS_PANIC_IF_HIT_MAIN_CONTROL="1",
        )
        if self.derp_over_http:
            env["TS_DEBUG_USE_DERP_HTTP"] = "1"
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        state = ["--state=mem:"] if self.ephemeral else []
        log = open(self.dir / "tailscaled.log", "ab")
        self.proc = subprocess.Popen(
            [
                *self.prefix,
                str(self.bin / "tailscaled"),
                "--tun=userspace-networking",
                f"--statedir={self.dir}",
                *state,
                f"--socket={self.socket}",
                "--port=0",
                "--no-logs-no-support",
                f"--socks5-server=127.0.0.1:{self.socks_port}",
                *self.extra_args,
            ],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for(lambda: self.socket.exists(), 20, f"{self.name}'s tailscaled socket")

    def cli(
        self, *args: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [str(self.bin / "tailscale"), f"--socket={self.socket}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
        )
        if check and out.returncode != 0:
            raise AssertionError(
                f"{self.name}: tailscale {' '.join(args)} exited {out.returncode}:\n"
                f"{out.stdout}\n{out.stderr}"
            )
        return out

    def up(self, server: ServerProcess | str, key: str, *extra: str) -> None:
        """Log in to `server`, or to a URL (a reverse proxy in front of it)."""
        url = server if isinstance(server, str) else server.url
        self.cli(
            "up",
            f"--login-server={url}",
            f"--auth-key={key}",
            f"--hostname={self.name}",
            *extra,
            timeout=90,
        )

    def ping(self, peer: str, count: int = 10) -> str:
        """`tailscale ping` output; it exits 1 when no *direct* path formed, which
        is expected while TS_DEBUG_ALWAYS_USE_DERP forces relaying."""
        out = self.cli(
            "ping", "--c", str(count), "--timeout", "5s", peer, timeout=30 + 6 * count, check=False
        )
        return out.stdout + out.stderr

    def status(self) -> dict[str, Any]:
        return json.loads(self.cli("status", "--json").stdout)

    def peer(self, hostname: str) -> dict[str, Any] | None:
        """The status entry of the peer whose machine calls itself `hostname`."""
        for entry in (self.status().get("Peer") or {}).values():
            if entry["HostName"] == hostname:
                return dict(entry)
        return None

    def peer_names(self) -> set[str]:
        peers = self.status().get("Peer") or {}
        return {p["HostName"] for p in peers.values()}

    def ip(self) -> str:
        return self.cli("ip", "-4").stdout.strip()

    def log(self) -> str:
        """The daemon's whole log (as `ServerProcess.log`)."""
        return (self.dir / "tailscaled.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped (SIGSTOP) daemon cannot terminate
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class TestCA:
    """A throw-away certificate authority for TLS on loopback."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, directory: Path, name: str = "tailnetd test CA") -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            _builder(self.name, self.name, self.key.public_key(), days=3650)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path = directory / "ca.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, names: Iterable[str], *, days: float = 30) -> tuple[Path, Path]:
        """A server certificate for `names` (DNS names or IPs): (cert.pem, key.pem)."""
        names = list(names)
        alt: list[x509.GeneralName] = []
        for n in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        cert = (
            _builder(subject, self.name, key.public_key(), days=days)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = self.dir / f"{stem}.pem", self.dir / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: Any, *, days: float
) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
    )


def diagnose(server: ServerProcess, nodes: Iterable[TailscaleNode]) -> str:
    """The ends of the server's and the daemons' logs, for a failed assertion."""
    parts = [f"--- tailnetd log ---\n{server.log()[-6000:]}"]
    parts += [f"--- {n.name} ({n.version}) ---\n{n.log()[-3000:]}" for n in nodes]
    return "\n".join(parts)


def in_parallel(fns: Iterable[Callable[[], Any]]) -> list[Any]:
    fns = list(fns)
    with ThreadPoolExecutor(max_workers=max(1, len(fns))) as pool:
        return [f.result() for f in [pool.submit(fn) for fn in fns]]


# One tailnet for a test module: a repo, a server, the daemons the module names
# started and logged in (in parallel), all stopped at the end. A module says
#     tailnet = tailnet_fixture({"users.yaml": USERS}, members=[Member("alice1")])
# and its tests take `tailnet: Tailnet`.

# Every client relays through the embedded DERP unless a module says otherwise.
RELAY_ONLY: Mapping[str, str] = MappingProxyType({"TS_DEBUG_ALWAYS_USE_DERP": "1"})


@dataclass(frozen=True, slots=True)
class Member:
    """A daemon the fixture starts and logs in. Its key is `tailnetd keys create
    --user USER *KEY`; `up` holds more `tailscale up` flags."""

    name: str
    user: str = "alice"
    key: tuple[str, ...] = ()
    up: tuple[str, ...] = ()
    version: str = VERSION


@dataclass(frozen=True)
class Tailnet:
    """The handle a tailnet fixture yields. `nodes` maps the name each daemon was
    made under to it; every daemon made through `node` is stopped at the end."""

    tmp: Path
    repo: TailnetRepo
    server: ServerProcess
    ca: TestCA | None = None  # set when the server speaks TLS
    node_env: Mapping[str, str] = field(default_factory=lambda: dict(RELAY_ONLY))
    nodes: dict[str, TailscaleNode] = field(default_factory=dict)

    def node(
        self,
        name: str,
        *,
        hostname: str | None = None,
        version: str = VERSION,
        ephemeral: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> TailscaleNode:
        """A daemon, not started, known here as `name`; its machine calls itself
        `hostname` (default: `name`)."""
        node = TailscaleNode(
            hostname or name,
            self.tmp / "nodes" / name,
            ephemeral=ephemeral,
            derp_over_http=self.ca is None,
            version=version,
        )
        # `tailscale ssh` and friends write under the user's config dir: keep it apart.
        node.extra_env = {"XDG_CONFIG_HOME": str(node.dir / "config"), **self.node_env}
        node.extra_env.update(env or {})
        if self.ca is not None:
            node.extra_env.setdefault("SSL_CERT_FILE", str(self.ca.cert_path))
        self.nodes[name] = node
        return node

    def join(self, members: Iterable[Member], *, via: str | None = None) -> list[TailscaleNode]:
        """Start the members' daemons and log them in, all at once; `via`: the
        URL they log in at (a reverse proxy in front of the server)."""
        members = list(members)
        keys = [self.server.create_key(m.user, *m.key) for m in members]
        nodes = [self.node(m.name, version=m.version) for m in members]
        in_parallel(n.start for n in nodes)
        try:
            in_parallel(
                partial(n.up, via or self.server, k, *m.up)
                for n, k, m in zip(nodes, keys, members, strict=True)
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnose()}") from None
        return nodes

    def forget(self, nodes: Iterable[TailscaleNode]) -> None:
        """Stop the daemons and delete their nodes: the next ones start afresh."""
        nodes = list(nodes)
        in_parallel(n.stop for n in nodes)
        listed = self.server.admin("nodes", "list")
        for n in nodes:
            if n.name in listed:
                self.server.admin("nodes", "delete", n.name)

    def diagnose(self) -> str:
        return diagnose(self.server, self.nodes.values())

    def stop(self) -> None:
        in_parallel(n.stop for n in self.nodes.values())
        self.server.stop()


@contextmanager
def running_tailnet(
    tmp: Path,
    files: Mapping[str, str],
    *,
    members: Sequence[Member] = (),
    server_args: Sequence[str] = (),
    server_env: Mapping[str, str] | None = None,
    node_env: Mapping[str, str] = RELAY_ONLY,
    tls: bool = False,
    prepare: Callable[[Tailnet], None] | None = None,
) -> Iterator[Tailnet]:
    """A started tailnet in `tmp`; `tls`: the server speaks TLS with a test CA's
    certificate for 127.0.0.1 and localhost, and the clients trust that CA.
    `prepare` runs before the server starts (it may add server arguments)."""
    repo = TailnetRepo(tmp / "repo", dict(files))
    ca = TestCA(tmp / "ca") if tls else None
    extra = list(server_args)
    if ca is not None:
        cert, key = ca.issue("server", ["127.0.0.1", "localhost"])
        extra += ["--tls-cert", str(cert), "--tls-key", str(key)]
    server = ServerProcess(
        repo.path,
        tmp / "data",
        tmp / "tailnetd.log",
        extra=extra,
        ca_file=ca.cert_path if ca else None,
    )
    server.extra_env = dict(server_env or {})
    net = Tailnet(tmp, repo, server, ca, dict(node_env))
    if prepare is not None:
        prepare(net)
    try:
        server.start()
        net.join(members)
        yield net
    finally:
        net.stop()


def tailnet_fixture(
    files: Mapping[str, str], *, scope: Literal["module", "function"] = "module", **options: Any
) -> Any:
    """A pytest fixture yielding `running_tailnet(tmp, files, **options)`: one
    server and its daemons for the whole module unless `scope` says otherwise."""

    @pytest.fixture(scope=scope)
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tailnet]:
        with running_tailnet(tmp_path_factory.mktemp("tailnet"), files, **options) as net:
            yield net

    return fixture

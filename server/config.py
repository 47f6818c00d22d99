"""Server configuration: read once into a frozen object and passed in.

Precedence: command-line flag > TAILNETD_* environment variable > config file
key > default. The config file is YAML with the same keys as the flags
(`repo`, `data`, `listen`, `server_url`, `stun_listen`, `tls_cert`, `tls_key`,
`branch`, `fetch_interval`, `acme_domain`, `acme_email`, `acme_directory`, `acme_http_listen`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.remote_repo import is_remote

__all__ = ["ConfigError", "ServerConfig", "default_repo", "load_config"]

KEYS = (
    "repo", "data", "listen", "server_url", "stun_listen", "tls_cert", "tls_key", "branch",
    "fetch_interval",
    "acme_domain", "acme_email", "acme_directory", "acme_http_listen",
)  # fmt: skip
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"


class ConfigError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class ServerConfig:
    repo: Path
    data_dir: Path
    listen_host: str
    listen_port: int
    server_url: str
    stun_host: str | None
    stun_port: int
    tls_cert: Path | None = None
    tls_key: Path | None = None
    branch: str | None = None
    repo_url: str | None = None  # a remote repository, cloned into the data dir
    fetch_interval: float = 60.0  # seconds between fetches of a remote repository
    acme_domain: str | None = None  # certificates from an ACME CA instead of files
    acme_email: str | None = None
    acme_directory: str = LETS_ENCRYPT
    acme_http_host: str = "0.0.0.0"  # HTTP-01 answers (and plain-HTTP control) here
    acme_http_port: int = 80

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "tailnetd.sock"


def default_repo(cwd: Path | None = None) -> Path:
    """The current directory when it holds tailnet.d/, else the bundled example."""
    cwd = cwd or Path.cwd()
    if (cwd / "tailnet.d").is_dir():
        return cwd
    return Path(__file__).resolve().parent.parent / "gitctl" / "example"


def _split_hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{what} must be HOST:PORT, got {text!r}")
    if int(port) > 65535:  # else bind() fails much later with a traceback
        raise ConfigError(f"{what}: port must be 0-65535, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def load_config(flags: Mapping[str, Any], env: Mapping[str, str] | None = None) -> ServerConfig:
    env = os.environ if env is None else env
    file_values: dict[str, Any] = {}
    config_file = flags.get("config") or env.get("TAILNETD_CONFIG")
    if config_file:
        from ruamel.yaml import YAML

        try:
            loaded = YAML(typ="safe").load(Path(config_file).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{config_file}: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{config_file}: expected a mapping of settings")
        unknown = set(loaded or {}) - set(KEYS)
        if unknown:
            raise ConfigError(f"{config_file}: unknown setting(s): {', '.join(sorted(unknown))}")
        file_values = dict(loaded or {})

    def pick(key: str) -> Any:
        if flags.get(key) is not None:
            return flags[key]
        env_value = env.get("TAILNETD_" + key.upper())
        if env_value:
            return env_value
        return file_values.get(key)

    listen = str(pick("listen") or "127.0.0.1:8080")
    host, port = _split_hostport(listen, "listen")
    tls_cert, tls_key = pick("tls_cert"), pick("tls_key")
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    acme_domain = pick("acme_domain")
    if acme_domain and tls_cert:
        raise ConfigError("use either --acme-domain or --tls-cert/--tls-key, not both")
    scheme = "https" if tls_cert or acme_domain else "http"
    url_host = host if host not in ("0.0.0.0", "::") else "127.0.0.1"
    if ":" in url_host:
        url_host = f"[{url_host}]"
    default_url = f"{scheme}://{url_host}:{port}"
    if acme_domain:
        default_url = f"https://{acme_domain}" + ("" if port == 443 else f":{port}")
    server_url = str(pick("server_url") or default_url).rstrip("/")
    acme_http_host, acme_http_port = _split_hostport(
        str(pick("acme_http_listen") or "0.0.0.0:80"), "acme-http-listen"
    )
    stun = pick("stun_listen")
    if stun is None:
        stun_host, stun_port = host, 3478
    elif str(stun).lower() in ("", "off", "none"):
        stun_host, stun_port = None, 0
    else:
        stun_host, stun_port = _split_hostport(str(stun), "stun-listen")
    repo_value = pick("repo")
    repo_url = str(repo_value) if repo_value and is_remote(str(repo_value)) else None
    data_dir = Path(pick("data") or "data").resolve()
    if repo_url is not None:
        repo = data_dir / "repo.git"
    else:
        repo = Path(repo_value) if repo_value else default_repo()
    try:
        fetch_interval = float(pick("fetch_interval") or 60)
    except ValueError:
        raise ConfigError("fetch-interval must be a number of seconds") from None
    if fetch_interval <= 0:
        raise ConfigError("fetch-interval must be positive")
    return ServerConfig(
        repo=repo.resolve(),
        repo_url=repo_url,
        fetch_interval=fetch_interval,
        data_dir=data_dir,
        listen_host=host,
        listen_port=port,
        server_url=server_url,
        stun_host=stun_host,
        stun_port=stun_port,
        tls_cert=Path(tls_cert) if tls_cert else None,
        tls_key=Path(tls_key) if tls_key else None,
        branch=pick("branch"),
        acme_domain=str(acme_domain) if acme_domain else None,
        acme_email=pick("acme_email"),
        acme_directory=str(pick("acme_directory") or LETS_ENCRYPT),
        acme_http_host=acme_http_host,
        acme_http_port=acme_http_port,
    )

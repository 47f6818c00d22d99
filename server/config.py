"""Server configuration: read once into a frozen object and passed in.

Every `tailnetd serve` option is one row of `OPTIONS`: its name is the config
file key, `--name-with-dashes` is its flag and `TAILNETD_NAME` its environment
variable. Precedence: flag > environment > config file > default. The flags
(`add_flags`), the file keys, the defaults and the docs' table
(`options_markdown`, in docs/deployment.md) all come from that table.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitctl.tailnet.kinds import did_you_mean
from server.oidc.settings import OidcSettings, oidc_settings
from server.sources.remote import is_remote
from server.store import is_postgres_url, redact_url

__all__ = [
    "OPTIONS",
    "ConfigError",
    "Option",
    "ServerConfig",
    "add_flags",
    "default_repo",
    "load_config",
    "options_markdown",
]

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
    # Node state: a postgresql:// URL or a sqlite file; None = sqlite in the data dir.
    database: str | None = None
    metrics_host: str | None = None  # a plain-HTTP /metrics, /health, /ready listener
    metrics_port: int = 0
    log_format: str = "text"  # "text" or "json" (one object per line)
    # Allowed-signers file outside the repository: only commits its keys signed are served.
    trusted_signers: Path | None = None
    login_timeout: float = 600.0  # seconds an interactive login waits for approval
    # Health probes of routers sharing a subnet (HA): every probe_interval seconds;
    # probe_misses unanswered in a row make a router lose its subnets.
    probe_interval: float = 10.0
    probe_misses: int = 2
    oidc: OidcSettings | None = None  # logins through an identity provider (--oidc-issuer)
    replica_id: str | None = None  # None: a random name each start
    mesh_key_file: Path | None = None  # DERP mesh key shared by replicas
    mesh_with: tuple[str, ...] = ()  # other replicas' server URLs
    # The control protocol's private key; replicas behind one URL share it.
    control_key_file: Path | None = None  # None: DATA/noise_private.key
    # The webhooks' HMAC-SHA256 secret: from --webhook-secret-file or
    # TAILNETD_WEBHOOK_SECRET, never from git. None: webhooks are not sent.
    webhook_secret: bytes | None = field(default=None, repr=False)

    @property
    def control_key_path(self) -> Path:
        return self.control_key_file or self.data_dir / "noise_private.key"

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "tailnetd.sock"

    @property
    def store_location(self) -> str | Path:
        """What `open_store` is given."""
        if self.database is None:
            return self.data_dir / "tailnetd.sqlite"
        return self.database if is_postgres_url(self.database) else Path(self.database)

    @property
    def store_description(self) -> str:
        """The store's location fit for a log line (no password)."""
        where = self.store_location
        return redact_url(where) if isinstance(where, str) else str(where)


def default_repo(cwd: Path | None = None) -> Path:
    """The current directory when it holds tailnet.d/, else the bundled example."""
    cwd = cwd or Path.cwd()
    if (cwd / "tailnet.d").is_dir():
        return cwd
    return Path(__file__).resolve().parent.parent / "gitctl" / "example"


# Parsers take the option's text and raise ValueError with what is wrong; the
# caller names where the text came from.


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"must be HOST:PORT, got {text!r}")
    if int(port) > 65535:  # else bind() fails much later with a traceback
        raise ValueError(f"port must be 0-65535, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _optional_hostport(text: str) -> tuple[str, int] | None:
    """HOST:PORT, or None for `off`."""
    return None if text.lower() in ("", "off", "none") else _hostport(text)


def _log_format(text: str) -> str:
    if text.lower() not in ("json", "text"):
        raise ValueError(f"must be json or text, got {text!r}")
    return text.lower()


def _count(text: str) -> int:
    value = str(text)  # a YAML file may give a number
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"must be a whole number of at least 1, got {text!r}")
    return int(value)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"must be a number of seconds, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"must be positive, got {text!r}")
    return value


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "yes", "no", "1", "0"):
        raise ValueError(f"must be true or false, got {text!r}")
    return text.lower() in ("true", "yes", "1")


def _oidc(
    v: Mapping[str, Any], server_url: str, ttl: float, env: Mapping[str, str]
) -> OidcSettings | None:
    if not v.get("oidc_issuer"):
        if v.get("oidc_client_id"):
            raise ConfigError("--oidc-client-id needs --oidc-issuer")
        return None
    try:
        return oidc_settings(v, server_url=server_url, login_ttl=ttl, env=env)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _file(text: str) -> Path | None:
    return Path(text) if text else None


def _directory(text: str) -> Path:
    return Path(text).resolve()


def _url(text: str) -> str:
    return text.rstrip("/")


def _url_list(text: str) -> tuple[str, ...]:
    return tuple(_url(u.strip()) for u in text.split(",") if u.strip())


def _database(text: str) -> str:
    if "://" in text and not is_postgres_url(text):
        raise ValueError(
            f"must be a postgresql:// URL or the path of a sqlite file, got {redact_url(text)!r}"
        )
    return text


@dataclass(frozen=True, slots=True)
class Option:
    """One `tailnetd serve` setting, declared once."""

    key: str  # the config-file key
    metavar: str
    help: str
    default: str | None = None  # parsed like a given value; None: absent or derived
    shown: str = ""  # the default as people read it, when not `default` itself
    parse: Callable[[str], Any] = str

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def env(self) -> str:
        return "TAILNETD_" + self.key.upper()

    @property
    def default_text(self) -> str:
        return self.shown or self.default or "none"


OPTIONS: tuple[Option, ...] = (
    Option(
        "repo",
        "PATH|URL",
        "git work tree holding tailnet.d/, or a remote URL to clone and fetch",
        shown="the current directory if it has tailnet.d/, else the bundled example",
    ),
    Option(
        "data", "DIR", "state directory: sqlite, keys, admin socket", "data", "./data", _directory
    ),
    Option(
        "database", "URL", "where node state lives: a postgresql:// URL or a sqlite file",
        shown="DATA/tailnetd.sqlite", parse=_database,
    ),
    Option(
        "listen", "HOST:PORT", "address for control, DERP and the API", "127.0.0.1:8080",
        parse=_hostport,
    ),
    Option(
        "server_url", "URL", "URL clients use to reach this server",
        shown="from --listen, or https://ACME_DOMAIN", parse=_url,
    ),
    Option(
        "stun_listen", "HOST:PORT", "address for STUN over UDP, or off",
        shown="the listen host, port 3478", parse=_optional_hostport,
    ),
    Option("tls_cert", "FILE", "PEM certificate chain file (with --tls-key)", parse=_file),
    Option("tls_key", "FILE", "PEM private key file (with --tls-cert)", parse=_file),
    Option("branch", "NAME", "branch to serve", shown="the work tree's HEAD"),
    Option(
        "fetch_interval", "SECONDS", "seconds between fetches when --repo is a remote URL", "60",
        parse=_seconds,
    ),
    Option("acme_domain", "NAME", "get and renew a certificate for this name from an ACME CA"),
    Option("acme_email", "EMAIL", "contact address for the ACME account (expiry notices)"),
    Option(
        "acme_directory", "URL", "ACME directory URL", LETS_ENCRYPT,
        shown="Let's Encrypt production",
    ),
    Option(
        "acme_http_listen", "HOST:PORT", "address answering HTTP-01 challenges", "0.0.0.0:80",
        parse=_hostport,
    ),
    Option(
        "metrics_listen", "HOST:PORT",
        "plain-HTTP address serving only /metrics, /health and /ready, or off "
        "(/metrics is always on the admin socket)",
        "off", parse=_optional_hostport,
    ),
    Option("log_format", "json|text", "log lines as text, or one JSON object per line", "text",
           parse=_log_format),
    Option(
        "replica_id", "NAME", "this server's name among replicas sharing one PostgreSQL",
        shown="random per start",
    ),
    Option(
        "mesh_key_file", "FILE",
        "file holding the DERP mesh key (64 hex digits) shared by replicas", parse=_file,
    ),
    Option(
        "mesh_with", "URL,...",
        "other replicas' server URLs: their DERP servers mesh with this one's and the DERP "
        "map lists them in this region", parse=_url_list,
    ),
    Option(
        "control_key_file", "FILE",
        "the control protocol's private key (created if missing); replicas behind one URL "
        "must share it, or clients are refused when they land on another",
        shown="DATA/noise_private.key", parse=_file,
    ),
    Option(
        "trusted_signers", "FILE",
        "serve only commits signed by an SSH key in this allowed-signers file (outside the "
        "repository; overrides the repository's trusted_signers setting)",
        parse=_file,
    ),
    Option(
        "login_timeout", "SECONDS",
        "seconds an interactive login (tailscale up without a key) waits for approval",
        "600", parse=_seconds,
    ),
    Option(
        "probe_interval", "SECONDS",
        "seconds between health probes of subnet routers that share a subnet (HA routes)",
        "10", parse=_seconds,
    ),
    Option(
        "probe_misses", "N",
        "unanswered probes in a row after which such a router loses its subnets to another",
        "2", parse=_count,
    ),
    Option(
        "oidc_issuer", "URL", "OpenID Connect issuer: logins go through this identity provider"
    ),
    Option("oidc_client_id", "ID", "OAuth client id registered at the issuer"),
    Option(
        "oidc_client_secret_file", "FILE",
        "file holding the client secret (else env TAILNETD_OIDC_CLIENT_SECRET)", parse=_file,
    ),
    Option(
        "oidc_scopes", "LIST", "scopes asked for, comma-separated", "openid,email,profile,groups"
    ),
    Option(
        "oidc_allowed_domains", "LIST", "only emails of these domains may log in (comma-separated)"
    ),
    Option("oidc_allowed_emails", "LIST", "only these emails may log in (comma-separated)"),
    Option("oidc_allowed_groups", "LIST", "only members of one of these groups may log in"),
    Option(
        "oidc_groups_claim", "CLAIM", "ID token claim whose values become policy groups", "groups"
    ),
    Option("oidc_groups_prefix", "TEXT", 'claim value V becomes policy group "group:TEXTV"', ""),
    Option(
        "oidc_allow_unverified_email", "true|false",
        "accept an email the provider has not verified", "false", parse=_bool,
    ),
    Option(
        "oidc_admit_unknown", "true|false",
        "admit a verified identity that passes the allow-lists but is not in "
        "tailnet.d/users.yaml as a runtime user (false: refuse it, naming the email)",
        "false", parse=_bool,
    ),
    Option(
        "webhook_secret_file", "FILE",
        "file holding the secret that signs webhooks (HMAC-SHA256); or give the secret itself "
        "in TAILNETD_WEBHOOK_SECRET. Without one, settings.yaml's webhooks are not sent",
        parse=_file,
    ),
)  # fmt: skip
_BY_KEY = {option.key: option for option in OPTIONS}


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per option (absent flags read as None), and --config."""
    for option in OPTIONS:
        parser.add_argument(
            option.flag,
            dest=option.key,
            metavar=option.metavar,
            help=f"{option.help} (default: {option.default_text}; env {option.env})",
        )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML file whose keys are these options' names (env TAILNETD_CONFIG)",
    )


def options_markdown() -> str:
    """The table of options for docs/deployment.md."""
    lines = [
        "| flag | environment | config key | default | what |",
        "|---|---|---|---|---|",
    ]
    for o in OPTIONS:
        cells = (f"`{o.flag} {o.metavar}`", f"`{o.env}`", f"`{o.key}`", o.default_text, o.help)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def _read_file(path: str) -> dict[str, Any]:
    from ruamel.yaml import YAML

    try:
        loaded = YAML(typ="safe").load(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    unknown = [str(key) for key in loaded or {} if key not in _BY_KEY]
    if unknown:
        named = ", ".join(f'"{key}"{did_you_mean(key, list(_BY_KEY))}' for key in sorted(unknown))
        raise ConfigError(f"{path}: unknown setting(s): {named}")
    return {key: value for key, value in (loaded or {}).items() if value is not None}


def _pick(
    flags: Mapping[str, Any], env: Mapping[str, str], file: Mapping[str, Any], file_name: str
) -> dict[str, Any]:
    """Each option's parsed value from the highest level that gives one (else its
    default); options with neither are left out."""
    picked: dict[str, Any] = {}
    for option in OPTIONS:
        if flags.get(option.key) is not None:
            text, where = str(flags[option.key]), option.flag
        elif env.get(option.env):
            text, where = env[option.env], option.env
        elif option.key in file:
            text, where = str(file[option.key]), f"{file_name}: {option.key}"
        elif option.default is not None:
            text, where = option.default, f"default {option.flag}"
        else:
            continue
        try:
            picked[option.key] = option.parse(text)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return picked


def load_config(flags: Mapping[str, Any], env: Mapping[str, str] | None = None) -> ServerConfig:
    """`flags` maps option keys (and `config`) to values, None when not given."""
    env = os.environ if env is None else env
    config_file = flags.get("config") or env.get("TAILNETD_CONFIG")
    file_values = _read_file(config_file) if config_file else {}
    v = _pick(flags, env, file_values, config_file or "")

    host, port = v["listen"]
    tls_cert, tls_key = v.get("tls_cert"), v.get("tls_key")
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    acme_domain = v.get("acme_domain")
    if acme_domain and tls_cert:
        raise ConfigError("use either --acme-domain or --tls-cert/--tls-key, not both")
    scheme = "https" if tls_cert or acme_domain else "http"
    url_host = host if host not in ("0.0.0.0", "::") else "127.0.0.1"
    if ":" in url_host:
        url_host = f"[{url_host}]"
    default_url = f"{scheme}://{url_host}:{port}"
    if acme_domain:
        default_url = f"https://{acme_domain}" + ("" if port == 443 else f":{port}")
    stun = v["stun_listen"] if "stun_listen" in v else (host, 3478)
    repo_value = v.get("repo")
    repo_url = repo_value if repo_value and is_remote(repo_value) else None
    data_dir = v["data"]
    if repo_url is not None:
        repo = data_dir / "repo.git"
    else:
        repo = Path(repo_value) if repo_value else default_repo()
    acme_http_host, acme_http_port = v["acme_http_listen"]
    metrics = v["metrics_listen"]
    signers = v.get("trusted_signers")
    if signers is not None:
        signers = signers.resolve()
        if repo_url is None and signers.is_relative_to(repo.resolve()):
            # A file in the work tree is one a commit could change.
            raise ConfigError(f"--trusted-signers {signers}: must be outside the repository")
    return ServerConfig(
        webhook_secret=_webhook_secret(v.get("webhook_secret_file"), env),
        repo=repo.resolve(),
        repo_url=repo_url,
        fetch_interval=v["fetch_interval"],
        data_dir=data_dir,
        database=v.get("database"),
        listen_host=host,
        listen_port=port,
        server_url=v.get("server_url") or default_url,
        stun_host=stun[0] if stun else None,
        stun_port=stun[1] if stun else 0,
        tls_cert=tls_cert,
        tls_key=tls_key,
        branch=v.get("branch"),
        acme_domain=acme_domain,
        acme_email=v.get("acme_email"),
        acme_directory=v["acme_directory"],
        acme_http_host=acme_http_host,
        acme_http_port=acme_http_port,
        metrics_host=metrics[0] if metrics else None,
        metrics_port=metrics[1] if metrics else 0,
        log_format=v["log_format"],
        trusted_signers=signers,
        login_timeout=v["login_timeout"],
        probe_interval=v["probe_interval"],
        probe_misses=v["probe_misses"],
        oidc=_oidc(v, v.get("server_url") or default_url, v["login_timeout"], env),
        replica_id=v.get("replica_id"),
        mesh_key_file=v.get("mesh_key_file"),
        mesh_with=v.get("mesh_with", ()),
        control_key_file=v.get("control_key_file"),
    )


def _webhook_secret(path: Path | None, env: Mapping[str, str]) -> bytes | None:
    if path is not None:
        try:
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"--webhook-secret-file {path}: {exc.strerror}") from None
        if not secret:
            raise ConfigError(f"--webhook-secret-file {path}: the file is empty")
        return secret
    text = env.get("TAILNETD_WEBHOOK_SECRET", "").strip()
    return text.encode() if text else None


if __name__ == "__main__":
    print(options_markdown(), end="")

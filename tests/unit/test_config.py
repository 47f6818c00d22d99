"""Server configuration: flag > TAILNETD_* environment > config file > default,
and errors that tell the operator which setting is wrong."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest

from server.config import OPTIONS, ConfigError, add_flags, load_config, options_markdown


def config_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tailnetd.yaml"
    path.write_text(text)
    return str(path)


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    path = config_file(
        tmp_path, "listen: 127.0.0.3:3000\nbranch: from-file\nserver_url: https://file\n"
    )
    flags: dict[str, Any] = {"config": path, "listen": "127.0.0.1:1000"}
    env = {"TAILNETD_LISTEN": "127.0.0.2:2000", "TAILNETD_BRANCH": "from-env"}
    cfg = load_config(flags, env)
    assert (cfg.listen_host, cfg.listen_port) == ("127.0.0.1", 1000)  # flag
    assert cfg.branch == "from-env"  # environment over file
    assert cfg.server_url == "https://file"  # file over default
    assert load_config({"config": path}, env).listen_port == 2000
    assert load_config({"config": path}, {}).listen_port == 3000
    assert load_config({}, {}).listen_port == 8080  # default
    # The config file can be named in the environment too.
    assert load_config({}, {"TAILNETD_CONFIG": path}).branch == "from-file"


def test_absent_flags_do_not_hide_lower_levels() -> None:
    # argparse hands over None for flags not given.
    cfg = load_config({"listen": None, "branch": None}, {"TAILNETD_BRANCH": "env"})
    assert cfg.listen_port == 8080 and cfg.branch == "env"


def test_defaults_derive_from_listen() -> None:
    cfg = load_config({"listen": "0.0.0.0:9000"}, {})
    assert cfg.server_url == "http://127.0.0.1:9000"
    assert (cfg.stun_host, cfg.stun_port) == ("0.0.0.0", 3478)
    assert cfg.tls_cert is None and cfg.tls_key is None
    v6 = load_config({"listen": "[::1]:9000", "server_url": "https://example.com/"}, {})
    assert v6.listen_host == "::1" and v6.server_url == "https://example.com"
    assert load_config({"listen": "[::1]:9000"}, {}).server_url == "http://[::1]:9000"


def test_stun_can_be_turned_off_or_moved() -> None:
    assert load_config({"stun_listen": "off"}, {}).stun_host is None
    cfg = load_config({}, {"TAILNETD_STUN_LISTEN": "127.0.0.1:3479"})
    assert (cfg.stun_host, cfg.stun_port) == ("127.0.0.1", 3479)


def test_unknown_config_file_keys_are_named(tmp_path: Path) -> None:
    path = config_file(tmp_path, "listen: 127.0.0.1:1\nlisten_addr: x\nserver-url: y\n")
    with pytest.raises(ConfigError) as info:
        load_config({"config": path}, {})
    assert "listen_addr" in str(info.value) and "server-url" in str(info.value)
    assert path in str(info.value)


def test_config_file_must_be_a_mapping_and_readable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_config({"config": config_file(tmp_path, "- listen\n")}, {})
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config({"config": str(tmp_path / "missing.yaml")}, {})


def test_tls_cert_and_key_go_together(tmp_path: Path) -> None:
    for flags in ({"tls_cert": "c.pem"}, {"tls_key": "k.pem"}):
        with pytest.raises(ConfigError) as info:
            load_config(flags, {})
        assert "--tls-cert" in str(info.value) and "--tls-key" in str(info.value)
    # From different levels they still pair up, and the server URL becomes https.
    path = config_file(tmp_path, "tls_key: k.pem\n")
    cfg = load_config({"config": path, "listen": "127.0.0.1:8443"}, {"TAILNETD_TLS_CERT": "c.pem"})
    assert cfg.tls_cert == Path("c.pem") and cfg.tls_key == Path("k.pem")
    assert cfg.server_url == "https://127.0.0.1:8443"


@pytest.mark.parametrize("listen", ["8080", "localhost", "127.0.0.1:http", "127.0.0.1:70000"])
def test_bad_listen_address_is_refused_with_its_text(listen: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"listen": listen}, {})
    assert "listen" in str(info.value) and listen in str(info.value)


DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_option_is_a_flag_an_environment_variable_and_a_file_key(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    for option in OPTIONS:
        assert option.flag == "--" + option.key.replace("_", "-")
        assert option.env == "TAILNETD_" + option.key.upper()
        assert vars(parser.parse_args([option.flag, "x"]))[option.key] == "x"
    # A value given each of the three ways reaches the same field.
    samples = {
        "repo": str(tmp_path),
        "data": "d",
        "database": "postgresql://tailnetd@db/tailnet",
        "listen": "127.0.0.5:5",
        "server_url": "https://s",
        "stun_listen": "127.0.0.6:6",
        "branch": "b",
        "fetch_interval": "5",
        "acme_domain": "example.com",
        "acme_email": "a@example.com",
        "acme_directory": "https://ca",
        "acme_http_listen": "127.0.0.7:7",
        "metrics_listen": "127.0.0.8:8",
        "log_format": "json",
        "trusted_signers": "/etc/tailnetd/allowed_signers",
        "login_timeout": "60",
        "probe_interval": "2.5",
        "probe_misses": "3",
        "replica_id": "east",
        "mesh_key_file": "/etc/tailnetd/mesh.key",
        "mesh_with": "http://127.0.0.9:9,http://127.0.0.10:10",
        "control_key_file": "/etc/tailnetd/control.key",
        "webhook_secret_file": str(_secret_file(tmp_path)),
    }
    oidc = {o.key for o in OPTIONS if o.key.startswith("oidc_")}  # test_oidc_options
    assert set(samples) | {"tls_cert", "tls_key"} | oidc == {o.key for o in OPTIONS}
    for option in OPTIONS:
        if option.key not in samples:
            continue  # the TLS pair: test_tls_cert_and_key_go_together
        text = samples[option.key]
        configs = [
            load_config(vars(parser.parse_args([option.flag, text])), {}),
            load_config({}, {option.env: text}),
            load_config({"config": config_file(tmp_path, f"{option.key}: '{text}'\n")}, {}),
        ]
        assert configs[0] == configs[1] == configs[2] != load_config({}, {}), option.key


def _secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "webhook.secret"
    path.write_text("s3cret\n")
    return path


def test_the_webhook_secret_comes_from_a_file_or_the_environment_never_shown(
    tmp_path: Path,
) -> None:
    from_file = load_config({"webhook_secret_file": str(_secret_file(tmp_path))}, {})
    assert from_file.webhook_secret == b"s3cret" and "s3cret" not in repr(from_file)
    assert load_config({}, {"TAILNETD_WEBHOOK_SECRET": "env"}).webhook_secret == b"env"
    assert load_config({}, {}).webhook_secret is None
    (tmp_path / "empty").write_text("")
    with pytest.raises(ConfigError, match="the file is empty"):
        load_config({"webhook_secret_file": str(tmp_path / "empty")}, {})


def test_trusted_signers_inside_the_repository_are_refused(tmp_path: Path) -> None:
    # A commit could change a file in the work tree: the outside list must be outside.
    inside = tmp_path / ".tailnet" / "allowed_signers"
    with pytest.raises(ConfigError, match="must be outside the repository"):
        load_config({"repo": str(tmp_path), "trusted_signers": str(inside)}, {})
    cfg = load_config({"repo": str(tmp_path / "repo"), "trusted_signers": str(inside)}, {})
    assert cfg.trusted_signers == inside


def test_defaults_come_from_the_table() -> None:
    cfg = load_config({}, {})
    assert (cfg.listen_host, cfg.listen_port) == ("127.0.0.1", 8080)
    assert (cfg.acme_http_host, cfg.acme_http_port) == ("0.0.0.0", 80)
    assert cfg.fetch_interval == 60.0 and cfg.data_dir == Path("data").resolve()
    assert cfg.acme_directory.startswith("https://acme-v02.api.letsencrypt.org")
    assert cfg.metrics_host is None and cfg.log_format == "text"  # no metrics port unless asked


def test_log_format_is_json_or_text() -> None:
    assert load_config({}, {"TAILNETD_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match="^TAILNETD_LOG_FORMAT: must be json or text"):
        load_config({}, {"TAILNETD_LOG_FORMAT": "yaml"})


def test_unknown_config_key_suggests_the_close_one(tmp_path: Path) -> None:
    path = config_file(tmp_path, "server-url: https://x\nlisten_port: 1\nwhatever: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config({"config": path}, {})
    message = str(info.value)
    assert '"server-url" (did you mean "server_url"?)' in message
    assert '"listen_port" (did you mean "listen"?)' in message
    assert '"whatever"' in message and 'whatever" (did' not in message


def test_bad_values_name_where_they_came_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^TAILNETD_FETCH_INTERVAL: must be positive"):
        load_config({}, {"TAILNETD_FETCH_INTERVAL": "0"})
    path = config_file(tmp_path, "acme_http_listen: nowhere\n")
    with pytest.raises(ConfigError, match="acme_http_listen: must be HOST:PORT, got 'nowhere'"):
        load_config({"config": path}, {})


def test_the_docs_list_every_option_as_the_table_says() -> None:
    text = (DOCS / "deployment.md").read_text()
    start = text.index("<!-- generated from OPTIONS in server/config.py")
    block = text[text.index("\n", start) + 1 : text.index("<!-- end of generated options -->")]
    assert block == options_markdown(), "regenerate: python -m server.config"
    readme = (DOCS.parent / "README.md").read_text()
    serve_usage = readme[readme.index("tailnetd serve [") : readme.index("tailnetd keys create")]
    known = {o.flag for o in OPTIONS} | {"--config"}
    assert set(re.findall(r"--[a-z-]+", serve_usage)) <= known


def test_database_defaults_to_sqlite_in_the_data_dir_or_takes_a_url(tmp_path: Path) -> None:
    default = load_config({"data": str(tmp_path)}, {})
    assert default.store_location == tmp_path / "tailnetd.sqlite"
    url = "postgresql://tailnetd:s3cret@db.internal:5432/tailnet?sslmode=require"
    shared = load_config({"database": url}, {})
    assert shared.store_location == url
    # what the log shows: never the password
    assert shared.store_description == (
        "postgresql://tailnetd:***@db.internal:5432/tailnet?sslmode=require"
    )
    in_env = load_config({}, {"TAILNETD_DATABASE": "postgresql://u@/t?password=pw"})
    assert "pw" not in in_env.store_description
    elsewhere = load_config({"database": str(tmp_path / "state.db")}, {})
    assert elsewhere.store_location == tmp_path / "state.db"


def test_database_of_another_kind_is_refused_without_its_password() -> None:
    with pytest.raises(ConfigError, match="--database: must be a postgresql:// URL") as excinfo:
        load_config({"database": "mysql://root:hunter2@db/tailnet"}, {})
    assert "hunter2" not in str(excinfo.value)


def test_oidc_options(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    flags = {
        "oidc_issuer": "http://127.0.0.1:5556/dex/",
        "oidc_client_id": "tailnetd",
        "oidc_client_secret_file": str(secret),
        "oidc_allowed_domains": "Example.com, corp.example",
        "oidc_groups_prefix": "idp-",
        "server_url": "https://ts.example",
    }
    cfg = load_config(flags, env={})
    assert cfg.oidc is not None
    assert cfg.oidc.issuer == "http://127.0.0.1:5556/dex"
    assert cfg.oidc.client_secret == "s3cret"
    assert cfg.oidc.redirect_uri == "https://ts.example/oidc/callback"
    assert cfg.oidc.allowed_domains == {"example.com", "corp.example"}
    assert cfg.oidc.scopes == ("openid", "email", "profile", "groups")
    assert (cfg.oidc.groups_claim, cfg.oidc.groups_prefix) == ("groups", "idp-")
    assert load_config({}, env={}).oidc is None
    from_env = load_config(
        {**flags, "oidc_client_secret_file": None},
        env={"TAILNETD_OIDC_CLIENT_SECRET": "from-env"},
    )
    assert from_env.oidc is not None and from_env.oidc.client_secret == "from-env"
    with pytest.raises(ConfigError, match="client secret"):
        load_config({**flags, "oidc_client_secret_file": None}, env={})
    with pytest.raises(ConfigError, match="needs --oidc-client-id"):
        load_config({**flags, "oidc_client_id": None}, env={})

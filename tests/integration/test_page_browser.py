"""The operator page in a real headless Chromium (Debian's `chromium`, driven
through Playwright with `executable_path`): a person logs in with a read API
key, reads the nodes and the commit, and asks the access explorer. With
TAILNETD_SCREENSHOTS=DIR the screenshots are kept there (docs/ holds the ones
a person looked at: docs/operator-page-*.png).

A real `tailnetd serve` on loopback; its two nodes are put in the data dir's
store before it starts (as a restored backup would be), so no tailscaled runs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from server.store import open_store
from server.wire import Hostinfo
from tests.e2e.harness import ROOT, ServerProcess, TailnetRepo
from tests.integration.test_admin_cli import tailnetd
from tests.unit.test_page import POLICY, USERS
from tests.unit.test_store import NOW, add_node

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (make test-tools)"
)
SCREENSHOTS = os.environ.get("TAILNETD_SCREENSHOTS")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass(frozen=True, slots=True)
class Served:
    server: ServerProcess
    read_key: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("page")
    repo = TailnetRepo(tmp / "repo", {"users.yaml": USERS, "policy.hujson": POLICY})
    data = tmp / "data"
    data.mkdir(mode=0o700)
    with open_store(data / "tailnetd.sqlite") as store:
        laptop = add_node(store, 1, "laptop", key_expiry=NOW + timedelta(days=180))
        add_node(store, 2, "db", user=None, tags=("tag:db",))
        info = Hostinfo(ipn_version="1.96.4-t1", os="linux")
        store.update_from_map(laptop.id, now=NOW, hostinfo=info, capver=130)
    server = ServerProcess(repo.path, data, tmp / "tailnetd.log", extra=["--stun-listen", "off"])
    server.start()
    try:
        made = tailnetd("apikeys", "create", "--scope", "read", "--data", str(data))
        assert made.returncode == 0, made.stderr
        yield Served(server, made.stdout.strip())
    finally:
        server.stop()


def test_a_person_logs_in_reads_the_tailnet_and_asks_the_explorer(
    served: Served, tmp_path: Path
) -> None:
    url = served.server.url
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url + "/")
            assert page.url == url + "/ui/login"
            page.get_by_label("API key").fill(served.read_key)
            page.get_by_role("button", name="Log in").click()
            page.wait_for_load_state()
            assert page.url == url + "/ui/", page.content()
            nodes = page.get_by_role("table").first
            for fact in ("laptop", "db", "tag:db", "1.96.4-t1", "100.64.0.1"):
                assert fact in nodes.inner_text(), fact
            assert "Serving" in page.locator("main").inner_text()
            cookies = page.context.cookies()
            assert [c["httpOnly"] and c["sameSite"] == "Strict" for c in cookies] == [True]
            page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)

            page.get_by_role("link", name="Access explorer").click()
            page.get_by_label("Source").fill("alice")
            page.get_by_label("Destination").fill("db")
            page.get_by_label("Port (empty: any)").fill("5432")
            page.get_by_role("button", name="Explain").click()
            answer = page.locator("main").inner_text()
            assert "allowed" in answer and "acls[1]" in answer
            assert "tailnet.d/policy.hujson:6" in answer
            page.screenshot(path=str(tmp_path / "explorer.png"), full_page=True)
        finally:
            browser.close()
    if SCREENSHOTS:
        keep = ROOT / SCREENSHOTS
        keep.mkdir(parents=True, exist_ok=True)
        for name in ("overview", "explorer"):
            shutil.copyfile(tmp_path / f"{name}.png", keep / f"operator-page-{name}.png")

"""The live server's web face under attack, over real HTTP on its web port.

A burst of parallel logins from one address, and failed logins spread over many
addresses; password checks kept out of the pool that delivery uses; a session cookie
copied before logout (or before a password change) used afterwards; security headers on
every kind of response; a foreign Host header (DNS rebinding); one address opening many
idle connections.

Clients bind to different loopback addresses (127.0.0.x) so per-address counters of one
test do not leak into the next.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import re
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from mailgate.config import WebConfig
from mailgate.web.auth import AdminAuth
from tests.support.live import LiveServer, mailgate_cli
from tests.support.smtpwire import loopback_config, wait_until

PASSWORD = "correct horse battery"
WRONG = "not the admin password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Web:
    server: LiveServer
    port: int
    data_dir: Path


def start(tmp: Path, **web: Any) -> Web:
    data = tmp / "data"
    data.mkdir(parents=True)
    AdminAuth(data).set_password(PASSWORD)
    port = free_port()
    config = loopback_config(data, web=WebConfig(True, "127.0.0.1", port, **web))
    return Web(LiveServer(config, web=True), port, data)


def running(tmp: Path, **web: Any) -> Iterator[Web]:
    w = start(tmp, **web)
    with w.server:
        wait_until("the web port", lambda: _can_connect(w.port))
        yield w


def _can_connect(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    yield from running(tmp_path_factory.mktemp("webhard"))


@pytest.fixture
def own_web(tmp_path: Path) -> Iterator[Web]:
    yield from running(tmp_path)


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: str

    @property
    def cookie(self) -> str | None:
        """The mailgate_session cookie this reply sets (name=value), if any."""
        for value in self.headers.get_all("set-cookie") or []:
            m = re.match(r"(mailgate_session=[^;]*)", value)
            if m:
                return m.group(1)
        return None


def call(port: int, method: str, path: str, *, source: str = "127.0.0.1",
         host: str | None = None, cookie: str | None = None,
         form: dict[str, str] | None = None) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60,
                                      source_address=(source, 0))
    headers = {"Host": f"127.0.0.1:{port}" if host is None else host, "Connection": "close"}
    if cookie:
        headers["Cookie"] = cookie
    body = None
    if form is not None:
        body = urlencode(form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return Reply(r.status, r.headers, r.read().decode("utf-8", "replace"))
    finally:
        conn.close()


def _csrf(text: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', text)
    assert m, text[:500]
    return m.group(1)


def login_form(port: int, source: str) -> tuple[str, str]:
    """A fresh session cookie and its CSRF token, from the login page."""
    r = call(port, "GET", "/admin/login", source=source)
    assert r.status == 200 and r.cookie, (r.status, r.body[:300])
    return r.cookie, _csrf(r.body)


def try_login(port: int, source: str, password: str,
              form: tuple[str, str] | None = None) -> Reply:
    cookie, csrf = form or login_form(port, source)
    return call(port, "POST", "/admin/login", source=source, cookie=cookie,
                form={"password": password, "csrf": csrf, "next": "/admin"})


def login(port: int, source: str, password: str = PASSWORD) -> str:
    r = try_login(port, source, password)
    assert r.status == 303 and r.cookie, (r.status, r.body[:300])
    return r.cookie


# ---------------------------------------------------------------------- 1. login limits


def test_parallel_logins_from_one_address_check_at_most_five_passwords(web: Web) -> None:
    source = "127.0.0.2"
    form = login_form(web.port, source)
    # 14 at once: within the cap of connections per address (16), so every one reaches
    # the login.
    with ThreadPoolExecutor(14) as pool:
        statuses = list(pool.map(lambda _: try_login(web.port, source, WRONG, form).status,
                                 range(200)))
    assert set(statuses) <= {401, 429}, sorted(set(statuses))
    assert statuses.count(401) <= 5, f"{statuses.count(401)} passwords checked"
    # The address stays limited, even with the right password.
    assert try_login(web.port, source, PASSWORD).status == 429
    # Another address is not.
    login(web.port, "127.0.0.3")


def test_failed_logins_over_many_addresses_hit_the_global_limit(own_web: Web) -> None:
    statuses = []
    for i in range(7):  # 7 addresses x 5 failures each = 35 > 30
        source = f"127.0.0.{10 + i}"
        form = login_form(own_web.port, source)
        statuses += [try_login(own_web.port, source, WRONG, form).status for _ in range(5)]
    assert statuses.count(401) == 30 and statuses.count(429) == 5, statuses
    # The admin account is limited for everyone now (API tokens and the CLI still work).
    r = try_login(own_web.port, "127.0.0.30", PASSWORD)
    assert r.status == 429 and "Retry-After" in r.headers, r.body[:300]


def test_a_successful_login_gives_its_slot_back(own_web: Web) -> None:
    source = "127.0.0.31"
    for _ in range(4):
        assert try_login(own_web.port, source, WRONG).status == 401
    login(own_web.port, source)  # the 5th slot, used and given back
    for _ in range(5):
        assert try_login(own_web.port, source, WRONG).status == 401
    assert try_login(own_web.port, source, WRONG).status == 429


def test_password_checks_run_in_their_own_small_pool(
        web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not in the event loop's default pool, which delivery uses (asyncio.to_thread)."""
    real = hashlib.scrypt
    lock = threading.Lock()
    names: list[str] = []
    busy = [0, 0]  # now, most at once

    def watched(*args: Any, **kwargs: Any) -> bytes:
        with lock:
            names.append(threading.current_thread().name)
            busy[0] += 1
            busy[1] = max(busy[1], busy[0])
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                busy[0] -= 1

    forms = {f"127.0.0.{40 + i}": login_form(web.port, f"127.0.0.{40 + i}") for i in range(4)}
    monkeypatch.setattr(hashlib, "scrypt", watched)
    jobs = [(src, form) for src, form in forms.items() for _ in range(3)]
    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(lambda j: try_login(web.port, j[0], WRONG, j[1]).status, jobs))
    assert statuses == [401] * 12
    assert len(names) == 12
    assert all(n.startswith("mailgate-hash") for n in names), sorted(set(names))
    assert busy[1] <= 2


# ---------------------------------------------------------------------- 2. sessions


def test_a_cookie_copied_before_logout_no_longer_works(web: Web) -> None:
    source = "127.0.0.50"
    cookie = login(web.port, source)
    page = call(web.port, "GET", "/admin", source=source, cookie=cookie)
    assert page.status == 200
    out = call(web.port, "POST", "/admin/logout", source=source, cookie=cookie,
               form={"csrf": _csrf(page.body)})
    assert out.status == 303
    # The attacker's copy of the cookie, sent after the logout.
    again = call(web.port, "GET", "/admin", source="127.0.0.51", cookie=cookie)
    assert again.status == 303 and again.headers["location"].startswith("/admin/login")
    api = call(web.port, "GET", "/api/stats", source="127.0.0.51", cookie=cookie)
    assert api.status == 401
    # Logging in again works, with a new session.
    assert login(web.port, source) != cookie


def test_setting_the_password_ends_every_session(own_web: Web) -> None:
    cookies = [login(own_web.port, "127.0.0.52"), login(own_web.port, "127.0.0.53")]
    for c in cookies:
        assert call(own_web.port, "GET", "/admin", cookie=c).status == 200
    run = mailgate_cli(own_web.data_dir, "admin", "set-password", "--password-stdin",
                       input="a new password\n")
    assert run.returncode == 0, run.stderr
    for c in cookies:
        r = call(own_web.port, "GET", "/admin", cookie=c)
        assert r.status == 303 and r.headers["location"].startswith("/admin/login")
    login(own_web.port, "127.0.0.52", "a new password")


# ---------------------------------------------------------------------- 3. headers and Host

PATHS = ["/", "/codes", "/codes/556", "/compare", "/api/codes/556", "/api/openapi.json",
         "/metrics", "/admin/login", "/admin", "/api/stats", "/static/style.css",
         "/no/such/page"]


@pytest.mark.parametrize("path", PATHS)
def test_every_response_has_the_security_headers(web: Web, path: str) -> None:
    r = call(web.port, "GET", path)
    assert r.status < 500
    csp = r.headers["content-security-policy"]
    for part in ("default-src 'self'", "frame-ancestors 'none'", "object-src 'none'",
                 "base-uri 'none'", "form-action 'self'"):
        assert part in csp, csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "same-origin"


def test_templates_have_no_inline_script_or_style() -> None:
    """What the CSP forbids: inline <script>, style= and on...= handlers."""
    templates = Path(__file__).resolve().parent.parent / "src/mailgate/web/templates"
    for f in templates.rglob("*.html"):
        text = f.read_text(encoding="utf-8")
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), f
        assert not re.search(r"\s(?:on[a-z]+|style)\s*=", text), f


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.nip.io",
                                  "localhost.evil.example:{port}", ""])
def test_a_foreign_host_header_is_refused(web: Web, host: str) -> None:
    for path in ("/codes", "/admin/login", "/api/stats"):
        r = call(web.port, "GET", path, host=host.format(port=web.port))
        assert r.status in (400, 421), (host, path, r.status)
        assert "host" in r.body.lower() and len(r.body) < 300, r.body
        assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}",
                                  "[::1]:{port}", "127.0.0.1", "localhost"])
def test_loopback_names_are_accepted(web: Web, host: str) -> None:
    assert call(web.port, "GET", "/codes", host=host.format(port=web.port)).status == 200


def test_allowed_hosts_setting(tmp_path: Path) -> None:
    for w in running(tmp_path, allowed_hosts=("mail.example.org",)):
        assert call(w.port, "GET", "/codes", host=f"mail.example.org:{w.port}").status == 200
        assert call(w.port, "GET", "/codes", host="mail.example.org").status == 200
        assert call(w.port, "GET", "/codes", host="localhost").status == 200
        assert call(w.port, "GET", "/codes", host="other.example.org").status in (400, 421)


# ---------------------------------------------------------------------- 4. connections


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_one_address_cannot_hold_every_connection(
        own_web: Web, caplog: pytest.LogCaptureFixture) -> None:
    from mailgate.web import guard

    caplog.set_level(logging.INFO)
    cap = guard.MAX_CONNECTIONS_PER_IP
    extra = 10
    with ExitStack() as stack:
        socks = []
        for _ in range(cap + extra):
            s = socket.create_connection(("127.0.0.1", own_web.port), timeout=60,
                                         source_address=("127.0.0.60", 0))
            stack.callback(s.close)
            socks.append(s)
        refused: list[bytes] = []
        # The ones past the cap are answered at once with 503 and closed.
        for s in socks[cap:]:
            s.settimeout(30)
            refused.append(_read_all(s))
        assert all(r.startswith(b"HTTP/1.1 503 ") for r in refused), refused[:2]
        # Someone else is served meanwhile.
        assert call(own_web.port, "GET", "/codes", source="127.0.0.61").status == 200
        # The idle ones within the cap are closed by the server before long.
        for s in socks[:cap]:
            s.settimeout(60)
            assert _read_all(s) == b""
    assert any("127.0.0.60" in r.getMessage() and "refused" in r.getMessage()
               for r in caplog.records)
    # Once they are gone the address is served again.
    assert call(own_web.port, "GET", "/codes", source="127.0.0.60").status == 200


def test_uvicorn_runs_with_limits() -> None:
    from mailgate.web import guard

    assert guard.MAX_CONNECTIONS >= guard.MAX_CONNECTIONS_PER_IP > 1
    assert 0 < guard.KEEP_ALIVE_TIMEOUT <= 5


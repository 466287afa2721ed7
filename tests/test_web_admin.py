"""The admin pages and the queue's JSON API, through Starlette's test client.

Every route without a session (redirect / 401), the login (wrong password, rate limit,
CSRF), each action with its CSRF and confirmation checks, the queue's filters and keyed
pagination on a queue filled here, bad filter input, API tokens, session expiry, and
`mailgate admin set-password` ending the sessions of a running app.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.generation.case import Case
from starlette.testclient import TestClient

from mailgate.config import Config, WebConfig
from mailgate.queue import Attempt, NewMessage, NewRecipient, NotFound, RecipientState
from mailgate.queue.sqlite import SQLiteQueue
from mailgate.web.admin import pages, session
from mailgate.web.app import WebContext, create_app
from mailgate.web.auth import AdminAuth
from mailgate.web.context import SESSION_MAX_AGE
from mailgate.web.tokens import TokenStore
from tests.support.live import mailgate_cli

# Starlette's test client (and schemathesis on the ASGI app) sends "Host: testserver".
TESTSERVER = WebConfig(allowed_hosts=("testserver",))

PASSWORD = "correct horse battery"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Env:
    data_dir: Path
    queue: SQLiteQueue
    auth: AdminAuth
    client: TestClient
    due: list[int] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def enqueue(self, sender: str = "alice@example.com",
                recipients: tuple[str, ...] = ("bob@example.org",),
                content: bytes = b"From: Alice <alice@example.com>\r\nSubject: Hi\r\n\r\nhi\r\n",
                ) -> str:
        return self.queue.enqueue(NewMessage(
            sender=sender, recipients=[NewRecipient(r) for r in recipients], content=content,
            received_at=time.time(), client_address="192.0.2.1", client_helo="client.example",
        ))

    def defer(self, qid: str, code: int = 450, enhanced: str | None = "4.2.1",
              text: str = "Mailbox busy, try later", later: float = 3600) -> None:
        for r in self.queue.show(qid).recipients:
            self.queue.record(r.id, Attempt(
                at=time.time(), host="mx.example.org[192.0.2.25]:25", code=code,
                enhanced=enhanced, text=text, outcome="deferred",
            ), next_attempt=time.time() + later)

    def age(self, qid: str, seconds: float) -> None:
        """Pretend the message was queued `seconds` ago."""
        with sqlite3.connect(self.data_dir / "queue.db") as db:
            db.execute("UPDATE messages SET queued_at = queued_at - ?, "
                       "received_at = received_at - ? WHERE id = ?", (seconds, seconds, qid))

    def csrf(self, path: str = "/admin") -> str:
        page = self.client.get(path)
        m = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert m, page.text
        return m.group(1)

    def login(self, password: str = PASSWORD) -> None:
        r = self.client.post("/admin/login", data={
            "password": password, "csrf": self.csrf("/admin/login"), "next": "/admin"},
            follow_redirects=False)
        assert r.status_code == 303, r.text
        assert r.headers["location"] == "/admin"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    queue = SQLiteQueue(tmp_path / "queue.db")
    auth = AdminAuth(tmp_path)
    auth.set_password(PASSWORD)
    due: list[int] = []
    stats: dict[str, Any] = {"refused": 7, "accepted": 3, "connections_open": 1}
    ctx = WebContext(config=Config(data_dir=tmp_path), queue=queue, auth=auth,
                     server_stats=lambda: stats, on_due=lambda: due.append(1))
    with TestClient(create_app(ctx), base_url="http://127.0.0.1:8025") as client:
        yield Env(tmp_path, queue, auth, client, due, stats)
    queue.close()


def _login_location(r: Any) -> str:
    assert r.status_code == 303, (r.status_code, r.text[:200])
    location: str = r.headers["location"]
    assert location.startswith("/admin/login")
    return location


# ---------------------------------------------------------------------- no access without login


def test_pages_redirect_to_the_login_without_a_session(env: Env) -> None:
    qid = env.enqueue()
    c = env.client
    assert _login_location(c.get("/admin", follow_redirects=False)) == "/admin/login"
    assert _login_location(c.get("/admin/queue?state=queued", follow_redirects=False)) == (
        "/admin/login?next=%2Fadmin%2Fqueue%3Fstate%3Dqueued")
    for path in (f"/admin/message/{qid}", f"/admin/message/{qid}/retry", "/admin/nothing"):
        _login_location(c.get(path, follow_redirects=False))
    for action in pages.ACTIONS:
        _login_location(c.post(f"/admin/message/{qid}/{action}",
                               data={"confirmed": "1"}, follow_redirects=False))
    assert env.queue.show(qid).recipients[0].state is RecipientState.QUEUED


def test_api_answers_401_json_without_a_token_or_session(env: Env) -> None:
    qid = env.enqueue()
    c = env.client
    calls = [("GET", "/api/queue"), ("GET", f"/api/queue/{qid}"), ("GET", "/api/stats"),
             ("POST", f"/api/queue/{qid}/retry"), ("POST", f"/api/queue/{qid}/hold"),
             ("POST", f"/api/queue/{qid}/release"), ("DELETE", f"/api/queue/{qid}")]
    for method, path in calls:
        r = c.request(method, path)
        assert r.status_code == 401, (method, path)
        assert r.headers["content-type"] == "application/json"
        assert r.headers["www-authenticate"] == "Bearer"
        assert "mailgate admin token" in r.json()["error"]
    assert env.queue.show(qid).id == qid


# ---------------------------------------------------------------------- login


def test_login_page_then_dashboard(env: Env) -> None:
    page = env.client.get("/admin/login")
    assert page.status_code == 200
    assert 'type="password"' in page.text
    assert page.headers["cache-control"] == "no-store"
    env.login()
    dash = env.client.get("/admin")
    assert dash.status_code == 200
    assert "<h1>Dashboard</h1>" in dash.text
    # Logged in, the login page sends you on.
    r = env.client.get("/admin/login", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin"


def test_wrong_password_is_refused(env: Env) -> None:
    r = env.client.post("/admin/login", data={"password": "wrong password",
                                              "csrf": env.csrf("/admin/login"),
                                              "next": "/admin/queue"})
    assert r.status_code == 401
    assert "Wrong password." in r.text
    assert 'name="next" value="/admin/queue"' in r.text  # kept for the next try
    _login_location(env.client.get("/admin", follow_redirects=False))
    r = env.client.post("/admin/login", data={"password": "", "csrf": env.csrf("/admin/login")})
    assert r.status_code == 400 and "Enter the admin password." in r.text


def test_login_redirects_to_next_but_only_within_the_admin(env: Env) -> None:
    csrf = env.csrf("/admin/login")
    r = env.client.post("/admin/login", data={"password": PASSWORD, "csrf": csrf,
                                              "next": "/admin/queue?state=held"},
                        follow_redirects=False)
    assert r.headers["location"] == "/admin/queue?state=held"
    env.client.cookies.clear()
    for evil in ("https://evil.example/", "//evil.example/admin", "/codes", "/admin\\@evil"):
        r = env.client.post("/admin/login", data={"password": PASSWORD,
                                                  "csrf": env.csrf("/admin/login"),
                                                  "next": evil}, follow_redirects=False)
        assert r.headers["location"] == "/admin", evil
        env.client.cookies.clear()


def test_login_is_rate_limited_per_address(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    for _ in range(session.LOGIN_FAILURES):
        r = env.client.post("/admin/login", data={"password": "nope nope",
                                                  "csrf": env.csrf("/admin/login")})
        assert r.status_code == 401
    r = env.client.post("/admin/login", data={"password": PASSWORD,
                                              "csrf": env.csrf("/admin/login")})
    assert r.status_code == 429  # even the right password, until the window passes
    assert int(r.headers["retry-after"]) > 500
    assert "Too many failed logins" in r.text
    later = time.time() + session.LOGIN_WINDOW + 1
    monkeypatch.setattr(session, "_now", lambda: later)
    env.login()


def test_login_needs_the_csrf_token_and_same_origin(env: Env) -> None:
    c = env.client
    r = c.post("/admin/login", data={"password": PASSWORD})
    assert r.status_code == 403 and "security token is missing" in r.text
    env.csrf("/admin/login")
    r = c.post("/admin/login", data={"password": PASSWORD, "csrf": "x" * 32})
    assert r.status_code == 403 and "does not match" in r.text
    r = c.post("/admin/login", data={"password": PASSWORD, "csrf": env.csrf("/admin/login")},
               headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "another site" in r.text
    _login_location(c.get("/admin", follow_redirects=False))


def test_logout_needs_csrf_and_ends_the_session(env: Env) -> None:
    env.login()
    r = env.client.post("/admin/logout", data={"csrf": "wrong"}, follow_redirects=False)
    assert r.status_code == 403
    assert env.client.get("/admin").status_code == 200
    r = env.client.post("/admin/logout", data={"csrf": env.csrf()}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin/login"
    _login_location(env.client.get("/admin", follow_redirects=False))


def test_session_expires_after_eight_hours(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.login()
    start = time.time()
    monkeypatch.setattr(session, "_now", lambda: start + SESSION_MAX_AGE - 60)
    assert env.client.get("/admin").status_code == 200  # being busy does not extend it
    monkeypatch.setattr(session, "_now", lambda: start + SESSION_MAX_AGE + 1)
    _login_location(env.client.get("/admin", follow_redirects=False))
    assert env.client.get("/api/stats").status_code == 401


def test_set_password_cli_ends_every_session(env: Env) -> None:
    env.login()
    assert env.client.get("/admin").status_code == 200
    run = mailgate_cli(env.data_dir, "admin", "set-password", "--password-stdin",
                       input="a new password\n")
    assert run.returncode == 0, run.stderr
    assert "password set" in run.stdout
    _login_location(env.client.get("/admin", follow_redirects=False))
    r = env.client.post("/admin/login", data={"password": PASSWORD,
                                              "csrf": env.csrf("/admin/login")})
    assert r.status_code == 401
    env.login("a new password")
    short = mailgate_cli(env.data_dir, "admin", "set-password", "--password-stdin",
                         input="short\n")
    assert short.returncode == 2 and "too short" in short.stderr
    assert env.client.get("/admin").status_code == 200


# ---------------------------------------------------------------------- dashboard


def test_dashboard_counts_and_chart(env: Env) -> None:
    a = env.enqueue()
    env.enqueue(sender="", recipients=("alice@example.com",))  # a bounce
    c = env.enqueue(recipients=("x@example.net", "y@example.net"))
    env.defer(a)
    rid = env.queue.show(c).recipients[0].id
    env.queue.record(rid, Attempt(time.time(), "mx.example.net[192.0.2.9]:25", 250, "2.0.0",
                                  "OK", "delivered"))
    env.queue.hold(c)
    env.login()
    page = env.client.get("/admin").text

    def metric(name: str) -> str:
        m = re.search(rf'data-metric="{name}">([^<]*)<', page)
        assert m, name
        return m.group(1)

    assert metric("accepted-hour") == metric("accepted-day") == "3"
    assert metric("bounced-day") == "1"
    assert metric("delivered-day") == "1"
    assert metric("deferred-hour") == "1"
    assert metric("failed-day") == "0"
    assert metric("refused").startswith("7 since the server started")
    assert metric("queue-queued") == "1"
    assert metric("queue-deferred") == "1"
    assert metric("queue-held") == "1"
    assert metric("queue-delivered") == "1"
    assert page.count('<svg class="admin-chart"') == 1
    assert page.count('class="bar accepted"') == 24
    assert "3 accepted</title>" in page


def test_dashboard_without_server_stats_or_queue(tmp_path: Path) -> None:
    auth = AdminAuth(tmp_path)
    auth.set_password(PASSWORD)
    ctx = WebContext(config=Config(data_dir=tmp_path, web=TESTSERVER), queue=None, auth=auth)
    with TestClient(create_app(ctx)) as c:
        page = c.get("/admin/login").text
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token
        c.post("/admin/login", data={"password": PASSWORD, "csrf": token.group(1)})
        assert c.get("/admin").status_code == 503
        assert c.get("/admin/queue").status_code == 503


def test_activity_buckets(tmp_path: Path) -> None:
    with SQLiteQueue(tmp_path / "q.db") as q:
        now = time.time()
        ids = [q.enqueue(NewMessage(sender=s, recipients=[NewRecipient("r@example.org")],
                                    content=b"\r\n", received_at=now))
               for s in ("a@example.com", "", "b@example.com")]
        rid = q.show(ids[0]).recipients[0].id
        q.record(rid, Attempt(now - 5000, "h", 450, None, "busy", "deferred"), now + 60)
        q.record(rid, Attempt(now - 10, "h", 250, None, "ok", "delivered"))
        buckets = q.activity(now - 3 * 3600 + 1, 3600, now + 1)
        assert len(buckets) == 3
        assert [b.accepted for b in buckets] == [0, 0, 3]
        assert [b.bounced for b in buckets] == [0, 0, 1]
        assert [b.deferred for b in buckets] == [0, 1, 0]
        assert [b.delivered for b in buckets] == [0, 0, 1]
        assert buckets[1].start == pytest.approx(now - 2 * 3600 + 1)
        assert len(q.activity(now - 3 * 3600, 3600, now + 1)) == 4  # the last one partial
        assert q.activity(now, 60, now) == []
        with pytest.raises(ValueError):
            q.activity(now - 86400, 1, now)


# ---------------------------------------------------------------------- queue page


def _ids(html: str) -> list[str]:
    return re.findall(r'<a href="/admin/message/([0-9a-f]+)"><code>', html)


def _link(html: str, rel: str) -> str | None:
    m = re.search(rf'<a rel="{rel}" href="([^"]+)"', html)
    return m.group(1).replace("&amp;", "&") if m else None


def test_queue_pages_through_everything_both_ways(env: Env) -> None:
    ids = [env.enqueue(recipients=(f"u{i}@example.org",)) for i in range(23)]
    newest_first = ids[::-1]
    env.login()
    page = env.client.get("/admin/queue?limit=5").text
    seen = _ids(page)
    assert seen == newest_first[:5]
    assert _link(page, "prev") is None
    pages = [seen]
    while (older := _link(page, "next")) is not None:
        page = env.client.get(older).text
        pages.append(_ids(page))
    assert [i for p in pages for i in p] == newest_first
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    # ... and back up through the "Newer" links, page by page.
    back = [pages[-1]]
    while (newer := _link(page, "prev")) is not None:
        page = env.client.get(newer).text
        back.append(_ids(page))
    assert back == pages[::-1]


def test_queue_filters(env: Env) -> None:
    old = env.enqueue(sender="old@example.com", recipients=("a@one.example",))
    env.age(old, 5 * 3600)
    deferred = env.enqueue(sender="Carol@Example.com", recipients=("b@two.example",))
    env.defer(deferred)
    bounce = env.enqueue(sender="", recipients=("c@one.example", "d@two.example"))
    held = env.enqueue(recipients=("e@three.example",))
    env.queue.hold(held)
    env.login()

    def ids(query: str) -> set[str]:
        r = env.client.get(f"/admin/queue?{query}")
        assert r.status_code == 200, r.text
        return set(_ids(r.text))

    assert ids("") == {old, deferred, bounce, held}
    assert ids("state=deferred") == {deferred}
    assert ids("state=held") == {held}
    assert ids("state=queued") == {old, bounce}
    assert ids("domain=one.example") == {old, bounce}
    assert ids("domain=%40TWO.example") == {deferred, bounce}
    assert ids("sender=carol%40example.com") == {deferred}
    assert ids("sender=%3C%3E") == {bounce}
    assert ids("older_than=4") == {old}
    assert ids("older_than=6") == set()
    assert ids("state=queued&domain=one.example&older_than=1") == {old}
    assert ids("state=deferred&domain=one.example") == set()
    page = env.client.get("/admin/queue?domain=nowhere.example").text
    assert "No messages match these filters." in page
    # The last reply of a deferred message links to the code pages.
    page = env.client.get("/admin/queue?state=deferred").text
    assert '<a href="/codes/450" class="code">450</a>' in page
    assert '<a href="/codes/4.2.1" class="code">4.2.1</a>' in page


@pytest.mark.parametrize(("query", "message"), [
    ("state=stuck", "State 'stuck' is not one of: queued, deferred, held, delivered, failed."),
    ("older_than=soon", "Age 'soon' is not a number of hours"),
    ("older_than=-1", "Age '-1' is not a number of hours"),
    ("older_than=nan", "Age 'nan' is not a number of hours"),
    ("limit=0", "Page size '0' must be a whole number from 1 to 500."),
    ("limit=9999", "Page size '9999' must be a whole number from 1 to 500."),
    ("domain=a%20b.example", "Recipient domain must be a domain name"),
    ("sender=a%20b%40example.com", "Sender must be one address"),
    ("before=..%2F..%2Fetc", "'before' must be a message id from a previous page."),
    ("after=a%20b", "'after' must be a message id from a previous page."),
])
def test_bad_filter_input_gets_a_clear_message(env: Env, query: str, message: str) -> None:
    env.login()
    r = env.client.get(f"/admin/queue?{query}")
    assert r.status_code == 400
    assert "The filters could not be used:" in r.text
    assert message in r.text.replace("&#39;", "'")
    api = env.client.get(f"/api/queue?{query}")
    assert api.status_code == 400
    assert message in api.json()["error"]


def test_a_vanished_cursor_falls_back_to_the_newest_page(env: Env) -> None:
    a = env.enqueue()
    b = env.enqueue()
    env.login()
    env.queue.delete(a)
    page = env.client.get(f"/admin/queue?before={a}").text
    assert "has left the queue" in page
    assert _ids(page) == [b]
    assert env.client.get(f"/api/queue?before={a}").status_code == 404


# ---------------------------------------------------------------------- message page


def test_message_page_shows_envelope_headers_and_attempts(env: Env) -> None:
    qid = env.enqueue(
        sender="alice@example.com", recipients=("bob@example.org", "carol@example.net"),
        content=b"From: Alice <alice@example.com>\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
                b"Message-ID: <1@example.com>\r\n\r\nbody\r\n")
    env.defer(qid, 550, "5.1.1", "No such user <here>")
    env.login()
    r = env.client.get(f"/admin/message/{qid}")
    assert r.status_code == 200
    page = r.text
    assert f"Message <code>{qid}</code>" in page
    assert "&lt;alice@example.com&gt;" in page
    assert "client.example [192.0.2.1] with ESMTP" in page
    assert "Grüße" in page  # the Subject, decoded
    assert "&lt;1@example.com&gt;" in page
    assert page.count("mx.example.org[192.0.2.25]:25") == 2
    assert page.count('<a href="/codes/550" class="code"') == 2
    assert page.count('<a href="/codes/5.1.1" class="code"') == 2
    assert "No such user &lt;here&gt;" in page
    assert "in 59 min" in page or "in 1 h" in page
    for action in ("retry", "hold", "delete"):
        assert f'action="/admin/message/{qid}/{action}"' in page
    assert f'action="/admin/message/{qid}/release"' not in page  # nothing is held
    assert f'data-confirm="Retry message {qid} now?"' in page  # asked by static/admin.js
    assert "/static/admin.js?v=" in page


def test_unknown_message_is_404(env: Env) -> None:
    env.login()
    r = env.client.get("/admin/message/0123456789abcdef00")
    assert r.status_code == 404 and "is not in the queue" in r.text
    assert env.client.get("/admin/message/bad%20id").status_code == 404
    assert env.client.get("/admin/message/0123456789abcdef00/retry").status_code == 404
    assert env.client.get("/admin/message/x/explode").status_code == 404
    assert env.client.get("/admin/no/such/page").status_code == 404
    r = env.client.get("/admin/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/admin"


# ---------------------------------------------------------------------- actions


def _act(env: Env, qid: str, action: str, **data: str) -> Any:
    return env.client.post(f"/admin/message/{qid}/{action}", data=data, follow_redirects=False)


@pytest.mark.parametrize("action", pages.ACTIONS)
def test_actions_refuse_without_a_valid_csrf_token(env: Env, action: str) -> None:
    qid = env.enqueue()
    env.login()
    r = _act(env, qid, action, confirmed="1")
    assert r.status_code == 403 and "security token is missing" in r.text
    r = _act(env, qid, action, confirmed="1", csrf="not-the-token-at-all")
    assert r.status_code == 403 and "does not match" in r.text
    r = env.client.post(f"/admin/message/{qid}/{action}",
                        data={"confirmed": "1", "csrf": env.csrf()},
                        headers={"Origin": "http://evil.example"}, follow_redirects=False)
    assert r.status_code == 403 and "another site" in r.text
    r = env.client.post(f"/admin/message/{qid}/{action}",
                        data={"confirmed": "1", "csrf": env.csrf()},
                        headers={"Referer": "http://evil.example/page"}, follow_redirects=False)
    assert r.status_code == 403
    msg = env.queue.show(qid)
    assert msg.recipients[0].state is RecipientState.QUEUED
    assert env.due == []


def test_actions_ask_for_confirmation_first(env: Env) -> None:
    qid = env.enqueue()
    env.login()
    r = env.client.get(f"/admin/message/{qid}/delete")
    assert r.status_code == 200 and "Delete?" in r.text and 'name="confirmed" value="1"' in r.text
    r = _act(env, qid, "delete", csrf=env.csrf())  # no JavaScript: the confirmation page
    assert r.status_code == 200 and "This cannot be undone" in r.text
    assert env.queue.show(qid).id == qid


def test_retry_hold_release_delete(env: Env) -> None:
    qid = env.enqueue(recipients=("a@example.org", "b@example.org"))
    env.defer(qid)
    env.login()
    same_site = {"Origin": "http://127.0.0.1:8025"}
    r = env.client.post(f"/admin/message/{qid}/retry", headers=same_site,
                        data={"csrf": env.csrf(), "confirmed": "1"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/admin/message/{qid}"
    assert env.due == [1]
    assert all(r.next_attempt is not None and r.next_attempt <= time.time()
               for r in env.queue.show(qid).recipients)
    page = env.client.get(f"/admin/message/{qid}").text
    assert "2 recipients due now." in page and page.count(">due now</span>") == 2

    r = _act(env, qid, "hold", csrf=env.csrf(), confirmed="1")
    assert r.status_code == 303
    assert {r.state for r in env.queue.show(qid).recipients} == {RecipientState.HELD}
    page = env.client.get(f"/admin/message/{qid}").text
    assert "2 recipients held." in page
    assert f'action="/admin/message/{qid}/release"' in page
    assert f'action="/admin/message/{qid}/retry"' not in page

    r = _act(env, qid, "release", csrf=env.csrf(), confirmed="1")
    assert r.status_code == 303
    assert {r.state for r in env.queue.show(qid).recipients} == {RecipientState.QUEUED}
    assert env.due == [1, 1]

    referer = {"Referer": f"http://127.0.0.1:8025/admin/message/{qid}"}
    r = env.client.post(f"/admin/message/{qid}/delete", headers=referer,
                        data={"csrf": env.csrf(), "confirmed": "1"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin/queue"
    assert f"Message {qid} deleted." in env.client.get("/admin/queue").text
    assert env.client.get(f"/admin/message/{qid}").status_code == 404
    r = _act(env, qid, "delete", csrf=env.csrf(), confirmed="1")
    assert r.status_code == 404


# ---------------------------------------------------------------------- JSON API


def _bearer(env: Env) -> dict[str, str]:
    _, token = TokenStore(env.data_dir).create("test")
    return {"Authorization": f"Bearer {token}"}


def test_api_with_a_token(env: Env) -> None:
    qid = env.enqueue(recipients=("a@one.example", "b@two.example"))
    other = env.enqueue(sender="", recipients=("c@two.example",))
    env.defer(qid)
    auth = _bearer(env)
    c = env.client
    listing = c.get("/api/queue", headers=auth)
    assert listing.status_code == 200
    assert listing.headers["cache-control"] == "no-store"
    body = listing.json()
    assert [m["id"] for m in body["messages"]] == [other, qid]
    assert body["counts"]["deferred"] == 2 and body["counts"]["queued"] == 1
    assert body["older"] is None and body["newer"] is None
    assert [m["id"] for m in c.get("/api/queue?state=deferred", headers=auth).json()[
        "messages"]] == [qid]
    assert [m["id"] for m in c.get("/api/queue?sender=<>", headers=auth).json()[
        "messages"]] == [other]
    page = c.get("/api/queue?limit=1", headers=auth).json()
    assert [m["id"] for m in page["messages"]] == [other] and page["older"] == other
    page = c.get(f"/api/queue?limit=1&before={other}", headers=auth).json()
    assert [m["id"] for m in page["messages"]] == [qid] and page["newer"] == qid

    one = c.get(f"/api/queue/{qid}", headers=auth).json()
    assert one["id"] == qid and len(one["attempts"]) == 2
    assert one["attempts"][0]["code"] == 450 and one["attempts"][0]["enhanced"] == "4.2.1"
    assert ["Subject", "Hi"] in one["headers"]
    assert c.get("/api/queue/0123456789abcdef00", headers=auth).status_code == 404
    stats = c.get("/api/stats", headers=auth).json()
    assert stats["last_day"]["accepted"] == 2 and stats["last_day"]["bounced"] == 1
    assert stats["last_day"]["deferred"] == 2
    assert stats["refused"] == 7
    assert len(stats["hourly"]) == 24
    assert stats["queue"]["queued"] == 1

    r = c.post(f"/api/queue/{qid}/retry", headers=auth)
    assert r.json() == {"id": qid, "action": "retry", "recipients": 2}
    assert env.due == [1]
    assert c.post(f"/api/queue/{qid}/hold", headers=auth).json()["recipients"] == 2
    assert c.post(f"/api/queue/{qid}/release", headers=auth).json()["recipients"] == 2
    assert c.post(f"/api/queue/{qid}/explode", headers=auth).status_code == 404
    assert c.delete(f"/api/queue/{qid}", headers=auth).json()["action"] == "delete"
    assert c.delete(f"/api/queue/{qid}", headers=auth).status_code == 404


def test_api_refuses_bad_tokens(env: Env) -> None:
    for value in ("Bearer mgt_00000000_" + "A" * 43, "Bearer nonsense", "Basic YWRtaW46eA==",
                  "Bearer "):
        r = env.client.get("/api/stats", headers={"Authorization": value})
        assert r.status_code == 401, value
        assert "invalid_token" in r.headers["www-authenticate"]
    # A valid token with a wrong secret part.
    good = _bearer(env)["Authorization"]
    assert env.client.get("/api/stats", headers={"Authorization": good[:-2] + "xx"}
                          ).status_code == 401
    assert env.client.get("/api/stats", headers={"Authorization": good}).status_code == 200


def test_token_cli_creates_lists_and_revokes(env: Env, tmp_path: Path) -> None:
    conf = tmp_path / "mailgate.toml"
    conf.write_text(f'data_dir = "{env.data_dir}"\n')
    base = [sys.executable, "-m", "mailgate", "admin", "token", "--config", str(conf)]
    made = subprocess.run([*base, "--name", "monitoring"], capture_output=True, text=True,
                          timeout=60, check=True)
    token = made.stdout.strip()
    assert token.startswith("mgt_") and "shown only this once" in made.stderr
    assert token not in (env.data_dir / "admin-tokens.json").read_text()  # stored hashed
    assert oct((env.data_dir / "admin-tokens.json").stat().st_mode & 0o777) == "0o600"
    auth = {"Authorization": f"Bearer {token}"}
    assert env.client.get("/api/stats", headers=auth).status_code == 200
    listed = subprocess.run([*base, "--list"], capture_output=True, text=True, timeout=60,
                            check=True).stdout
    token_id = token.split("_")[1]
    assert token_id in listed and "monitoring" in listed
    subprocess.run([*base, "--revoke", token_id], capture_output=True, text=True, timeout=60,
                   check=True)
    assert env.client.get("/api/stats", headers=auth).status_code == 401
    gone = subprocess.run([*base, "--revoke", token_id], capture_output=True, text=True,
                          timeout=60, check=False)
    assert gone.returncode == 2 and "there is no token" in gone.stderr


def test_api_with_the_session_needs_the_csrf_header_for_writes(env: Env) -> None:
    qid = env.enqueue()
    env.login()
    c = env.client
    assert c.get("/api/queue").status_code == 200
    assert c.get(f"/api/queue/{qid}").json()["id"] == qid
    r = c.post(f"/api/queue/{qid}/hold")
    assert r.status_code == 403 and "security token is missing" in r.json()["error"]
    r = c.post(f"/api/queue/{qid}/hold", headers={"X-CSRF-Token": env.csrf(),
                                                  "Origin": "http://evil.example"})
    assert r.status_code == 403
    r = c.post(f"/api/queue/{qid}/hold", headers={"X-CSRF-Token": env.csrf()})
    assert r.status_code == 200 and r.json()["recipients"] == 1
    assert c.delete(f"/api/queue/{qid}").status_code == 403
    assert c.delete(f"/api/queue/{qid}", headers={"X-CSRF-Token": env.csrf()}).status_code == 200


def test_openapi_documents_the_queue_api(env: Env) -> None:
    doc = env.client.get("/api/openapi.json").json()
    for path in ("/api/queue", "/api/queue/{id}", "/api/queue/{id}/retry",
                 "/api/queue/{id}/hold", "/api/queue/{id}/release", "/api/stats"):
        assert path in doc["paths"], path
    assert "delete" in doc["paths"]["/api/queue/{id}"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "QueuePage" in doc["components"]["schemas"]
    assert doc["paths"]["/api/queue"]["get"]["security"][0] == {"bearer": []}


def test_chart_scales_to_the_busiest_hour() -> None:
    from mailgate.queue import ActivityBucket

    buckets = [ActivityBucket(start=i * 3600.0, seconds=3600.0, accepted=i) for i in range(24)]
    svg = str(pages.chart_svg(buckets))
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert ">25</text>" in svg  # 23 rounds up to 25
    assert pages.chart_svg([]).startswith("<svg")


def test_queue_list_pages_by_key(tmp_path: Path) -> None:
    with SQLiteQueue(tmp_path / "q.db") as q:
        ids = [q.enqueue(NewMessage(sender="a@example.com",
                                    recipients=[NewRecipient(f"r{i}@example.org")],
                                    content=b"\r\n", received_at=time.time()))
               for i in range(10)]

        def listed(**kw: Any) -> list[str]:
            return [m.id for m in q.list(limit=3, **kw)]

        assert listed() == ids[:-4:-1]
        assert listed(before=ids[7]) == [ids[6], ids[5], ids[4]]
        assert listed(after=ids[2]) == [ids[5], ids[4], ids[3]]  # just newer, newest first
        assert listed(after=ids[2], before=ids[5]) == [ids[4], ids[3]]
        assert listed(state=RecipientState.QUEUED, before=ids[1]) == [ids[0]]
        assert listed(queued_before=time.time() + 1, recipient_domain="example.org") == (
            ids[:-4:-1])
        assert listed(queued_before=time.time() - 3600) == []
        with pytest.raises(NotFound):
            q.list(before="0123456789abcdef00")


# ---------------------------------------------------------------------- schemathesis

_SCHEMA_DIR = tempfile.TemporaryDirectory(prefix="mailgate-admin-schema-")
_SCHEMA_PATH = Path(_SCHEMA_DIR.name)
_SCHEMA_QUEUE = SQLiteQueue(_SCHEMA_PATH / "queue.db")
for _i in range(3):
    _SCHEMA_QUEUE.enqueue(NewMessage(sender="a@example.com",
                                     recipients=[NewRecipient(f"r{_i}@example.org")],
                                     content=b"Subject: s\r\n\r\nbody\r\n",
                                     received_at=time.time()))
_SCHEMA_AUTH = {"Authorization": "Bearer "
                + TokenStore(_SCHEMA_PATH).create("schemathesis")[1]}
_SCHEMA_APP = create_app(WebContext(config=Config(data_dir=_SCHEMA_PATH, web=TESTSERVER),
                                    queue=_SCHEMA_QUEUE, auth=AdminAuth(_SCHEMA_PATH)))
queue_schema = schemathesis.openapi.from_asgi("/api/openapi.json", _SCHEMA_APP).include(
    tag="queue")


@queue_schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_queue_api_conforms_to_its_schema(case: Case[Any]) -> None:
    """With a valid token: answers as documented, rejects what the schema rules out,
    never a server error."""
    case.call_and_validate(headers=_SCHEMA_AUTH)


def test_a_held_reason_shows_on_the_page_and_in_the_api(env: Env) -> None:
    qid = env.enqueue(recipients=("a@one.example",))
    reason = "delivery failed with an internal error while preparing it (<ValueError>)"
    env.queue.hold(qid, reason=reason)
    env.login()
    page = env.client.get(f"/admin/message/{qid}").text
    assert "Held:</strong> delivery failed with an internal error while preparing it " \
           "(&lt;ValueError&gt;)" in page
    one = env.client.get(f"/api/queue/{qid}", headers=_bearer(env)).json()
    assert one["recipients"][0]["held_reason"] == reason
    env.queue.release_hold(qid)
    assert "Held:" not in env.client.get(f"/admin/message/{qid}").text

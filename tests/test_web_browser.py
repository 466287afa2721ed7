"""The whole web app in a real browser: Debian's chromium, headless, driven by Playwright.

The app (public reference and admin) runs under uvicorn in a thread on 127.0.0.1 with an
ephemeral port, over a temporary data directory whose queue holds one deferred message.
The browser opens the code index, searches for "null MX", opens 556, compares 221 with
556 through the form, switches to 中文 and sees Chinese headings, logs in to the admin,
finds the deferred message in the queue, opens it and retries it (accepting the confirm
dialog). Each step leaves a screenshot in tests/artifacts/ (ignored by git).

Without chromium this test skips, naming it; under CI it fails instead. CI installs
them (`apt-get install chromium`, `pip install playwright`; never `playwright install`).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from mailgate.config import Config
from mailgate.queue import Attempt, NewMessage, NewRecipient, RecipientState
from mailgate.queue.sqlite import SQLiteQueue
from mailgate.web.app import WebContext, create_app
from mailgate.web.auth import AdminAuth
from tests.support.needs import need_tool

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
PASSWORD = "browser test password"
TIMEOUT_MS = 10_000


@dataclass
class Site:
    url: str
    queue: SQLiteQueue
    message_id: str
    due: list[float]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    queue = SQLiteQueue(tmp_path / "queue.db")
    qid = queue.enqueue(NewMessage(
        sender="alice@example.com", recipients=[NewRecipient("bob@busy.example")],
        content=b"From: Alice <alice@example.com>\r\nTo: bob@busy.example\r\n"
                b"Subject: Quarterly report\r\n\r\nHello Bob\r\n",
        received_at=time.time(), client_address="192.0.2.1", client_helo="client.example",
    ))
    rid = queue.show(qid).recipients[0].id
    queue.record(rid, Attempt(
        at=time.time(), host="mx.busy.example[192.0.2.25]:25", code=450, enhanced="4.2.1",
        text="Mailbox busy, try again later", outcome="deferred",
    ), next_attempt=time.time() + 3600)
    auth = AdminAuth(tmp_path)
    auth.set_password(PASSWORD)
    due: list[float] = []
    ctx = WebContext(config=Config(data_dir=tmp_path), queue=queue, auth=auth,
                     server_stats=lambda: {"refused": 2}, on_due=lambda: due.append(time.time()))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(ctx), log_level="warning",
                                           lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield Site(f"http://127.0.0.1:{port}", queue, qid, due)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        queue.close()


def test_public_pages_and_admin_retry_in_chromium(site: Site) -> None:
    need_tool("chromium", path=str(CHROMIUM))
    try:
        from playwright.sync_api import Dialog, expect, sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is missing: pip install playwright "
                    "(the browser is /usr/bin/chromium; do not run `playwright install`)")
    ARTIFACTS.mkdir(exist_ok=True)
    base = site.url

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                    headless=True)
        context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        def shot(name: str) -> None:
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

        # 1. The code index.
        page.goto(f"{base}/codes")
        expect(page.locator("h1")).to_be_visible()
        expect(page.locator('a[href="/codes/556"]').first).to_be_attached()
        shot("01-codes")

        # 2. Search for "null MX": 556 and 5.1.10 are among the results.
        page.fill("#q", "null MX")
        page.press("#q", "Enter")
        page.wait_for_url("**/codes?q=null*")
        results = page.locator("#results")
        expect(results.locator('a[href="/codes/556"]').first).to_be_visible()
        expect(results.locator('a[href="/codes/5.1.10"]').first).to_be_visible()
        shot("02-search-null-mx")

        # 3. Open 556.
        results.locator('a[href="/codes/556"]').first.click()
        page.wait_for_url("**/codes/556")
        expect(page.locator("h1")).to_contain_text("556")
        expect(page.locator("h1")).to_contain_text("Domain Does Not Accept Mail")
        shot("03-code-556")

        # 4. Compare 221 with 556 through the form.
        page.goto(f"{base}/compare")
        page.fill("input#a", "221")
        page.fill("input#b", "556")
        page.locator("form.compare-form button[type=submit]").click()
        page.wait_for_url("**/compare/221/556")
        expect(page.locator("h1")).to_have_text(
            "SMTP 221 Closing Connection vs 556 Domain Does Not Accept Mail")
        shot("04-compare-221-556")

        # 5. Switch to 中文: the same page, with Chinese headings.
        page.locator(".lang-switch a", has_text="中文").click()
        page.wait_for_url("**/compare/221/556?lang=zh")
        expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
        expect(page.locator("h1")).to_contain_text("的区别")
        expect(page.locator("h2, h3").filter(has_text="描述").first).to_be_visible()
        shot("05-compare-zh")
        page.goto(f"{base}/codes/556")  # the choice is remembered
        expect(page.locator("h2, h3").filter(has_text="描述").first).to_be_visible()
        expect(page.locator("h2, h3").filter(has_text="如何修复").first).to_be_visible()
        shot("06-code-556-zh")

        # 6. Log in to the admin (the nav link; the login page comes first). 中文 was
        #    chosen above, so the admin is in Chinese too.
        page.locator('.site-nav a[href="/admin"]').click()
        page.wait_for_url("**/admin/login*")
        shot("07-admin-login")
        page.fill("#password", "not the password")
        page.locator("form.login button[type=submit]").click()
        expect(page.locator("#login-error")).to_have_text("密码错误。")
        page.fill("#password", PASSWORD)
        page.locator("form.login button[type=submit]").click()
        page.wait_for_url(f"{base}/admin")
        expect(page.locator("h1")).to_have_text("概览")
        expect(page.locator('[data-metric="queue-deferred"]')).to_have_text("1")
        expect(page.locator("svg.admin-chart")).to_be_visible()
        shot("08-admin-dashboard")

        # 7. The queue lists the deferred message.
        page.locator('.admin-nav a[href="/admin/queue"]').click()
        page.wait_for_url("**/admin/queue")
        row = page.locator("table.queue tbody tr", has_text=site.message_id)
        expect(row).to_have_count(1)
        expect(row.locator(".state")).to_have_text("已推迟")
        expect(row.locator('a[href="/codes/450"]')).to_be_visible()
        page.select_option("#f-state", "deferred")
        page.locator("form.filters button[type=submit]").click()
        page.wait_for_url("**/admin/queue?state=deferred*")
        expect(page.locator("table.queue tbody tr")).to_have_count(1)
        shot("09-admin-queue")

        # 8. Open it: the attempt, its remote host and reply, each code linked.
        page.locator(f'a[href="/admin/message/{site.message_id}"]').click()
        page.wait_for_url(f"**/admin/message/{site.message_id}")
        attempt = page.locator("table.attempts tbody tr")
        expect(attempt).to_contain_text("mx.busy.example[192.0.2.25]:25")
        expect(attempt).to_contain_text("Mailbox busy, try again later")
        expect(attempt.locator('a[href="/codes/450"]')).to_be_visible()
        expect(attempt.locator('a[href="/codes/4.2.1"]')).to_be_visible()
        expect(page.locator(".recipient .next")).not_to_have_text("立即")
        shot("10-admin-message")

        # 9. Retry: dismissing the dialog does nothing; accepting it makes the work due.
        retry = page.locator("form.action", has=page.get_by_role("button", name="立即重试"))
        dialogs: list[str] = []

        def dismiss(dialog: Dialog) -> None:
            dialogs.append(dialog.message)
            dialog.dismiss()

        page.once("dialog", dismiss)
        retry.locator("button").click()
        page.wait_for_timeout(200)
        assert dialogs == [f"现在重试邮件 {site.message_id}？"]
        assert site.due == []

        def accept(dialog: Dialog) -> None:
            dialogs.append(dialog.message)
            dialog.accept()

        page.once("dialog", accept)
        retry.locator("button").click()
        expect(page.locator(".flash")).to_have_text("1 个收件人已设为立即投递。")
        expect(page.locator(".recipient .next")).to_have_text("立即")
        expect(page.locator(".recipient h3 .state")).to_have_text("已推迟")
        shot("11-admin-retried")
        assert len(dialogs) == 2
        assert len(site.due) == 1
        r = site.queue.show(site.message_id).recipients[0]
        assert r.state is RecipientState.DEFERRED
        assert r.next_attempt is not None and r.next_attempt <= time.time()

        assert errors == []
        browser.close()


def test_admin_in_chinese_fits_a_laptop_and_a_phone(site: Site) -> None:
    """The admin chosen in 中文 is Chinese, and its queue and message pages never push the
    page wider than the window, with long addresses and reply texts, at 1,280 px and on
    a 390 px phone (measured by the browser: the document is no wider than the view)."""
    need_tool("chromium", path=str(CHROMIUM))
    from playwright.sync_api import expect, sync_playwright

    long_rcpt = "first.recipient.with.a.long.name@another-very-long-domain-name.example.org"
    for i in range(3):
        qid = site.queue.enqueue(NewMessage(
            sender=f"a-very-long-sender-address-for-testing-{i}@subdomain.example-company.com",
            recipients=[NewRecipient(long_rcpt), NewRecipient("b@example.org")],
            content=b"Subject: x\r\n\r\nx\r\n", received_at=time.time(),
            client_address="192.0.2.1", client_helo="client.example"))
        for r in site.queue.show(qid).recipients:
            site.queue.record(r.id, Attempt(
                at=time.time(), host="mx.another-very-long-domain-name.example.org"
                "[192.0.2.25]:25", code=450, enhanced="4.2.1",
                text="Mailbox temporarily unavailable, try again later " * 4,
                outcome="deferred"), next_attempt=time.time() + 3600)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                    headless=True)
        for width, height in ((1280, 900), (390, 844)):
            context = browser.new_context(locale="zh-CN",
                                          viewport={"width": width, "height": height})
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()
            page.goto(f"{site.url}/admin/login?lang=zh")
            expect(page.locator("h1")).to_have_text("管理员登录")
            page.fill("#password", PASSWORD)
            page.locator("form.login button[type=submit]").click()
            page.wait_for_url(f"{site.url}/admin")
            for path in ("/admin/queue", f"/admin/message/{qid}", "/admin"):
                page.goto(site.url + path)
                expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
                wide = page.evaluate("document.documentElement.scrollWidth")
                page.screenshot(path=str(ARTIFACTS / f"zh-{width}{path.replace('/', '-')}.png"),
                                full_page=True)
                assert wide <= width, f"{path} at {width} px is {wide} px wide"
            expect(page.locator("h1")).to_have_text("概览")
            context.close()
        browser.close()


def test_a_whole_bounce_pasted_on_explain(site: Site) -> None:
    """/explain's second box: a whole bounce pasted and posted, each failed recipient
    explained; in English on a laptop and in 中文 on a 390 px phone, never wider than
    the window."""
    need_tool("chromium", path=str(CHROMIUM))
    from playwright.sync_api import expect, sync_playwright

    bounce = (Path(__file__).parent / "data" / "bounces" / "exim-blocked.eml").read_text()
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                    headless=True)
        for lang, width, height, heading in (("en", 1280, 900, "What this bounce reports"),
                                             ("zh", 390, 844, "这封退信报告了什么")):
            context = browser.new_context(viewport={"width": width, "height": height})
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()
            page.goto(f"{site.url}/explain?lang={lang}")
            page.fill("#bounce", bounce)
            page.locator("#bounce ~ button[type=submit]").click()
            expect(page.locator("#explained-h")).to_have_text(heading)
            expect(page.locator("article.explained")).to_contain_text("erin@example.net")
            expect(page.locator("article.explained")).to_contain_text("zen.spamhaus.org")
            expect(page.locator("#bounce")).to_have_value(bounce)
            wide = page.evaluate("document.documentElement.scrollWidth")
            page.screenshot(path=str(ARTIFACTS / f"explain-bounce-{lang}-{width}.png"),
                            full_page=True)
            assert wide <= width, f"/explain with a bounce at {width} px is {wide} px wide"
            context.close()
        browser.close()

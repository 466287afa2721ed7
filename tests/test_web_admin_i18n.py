"""The admin pages in Chinese: every word of ours translated, on every page.

The test reads the English admin words from the data (`[words.admin_ui]` of
codes/data/en/web.toml) and checks that none of their sentences is left on any admin
page asked for in Chinese: the dashboard, the queue (with a filter error), a message,
the confirmation page, an error page, the login page with a wrong password.
"""

from __future__ import annotations

import html
import re

from mailgate.codes import registry as reg
from tests.test_web_admin import PASSWORD, Env, env  # noqa: F401  (the fixture)

_ATTRS = re.compile(r'(?:title|aria-label|data-confirm|placeholder|data-label)="([^"]*)"')
# Single English words that the page may show as data rather than as our words: a
# header field name ("From" in the Headers table), protocol names.
_DATA_WORDS = {"From", "To", "Id", "Size", "Body", "Reply",
               "queued", "deferred", "held", "delivered", "failed"}  # ?state= values


def _visible(page: str) -> str:
    body = page.split("<main", 1)[1]
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", body, flags=re.S)
    attrs = " ".join(_ATTRS.findall(body))
    text = re.sub(r"<[^>]+>", " ", body)
    return html.unescape(" ".join((text + " " + attrs).split()))


def _english_fragments() -> set[str]:
    """The fixed parts of every English admin sentence that Chinese says otherwise."""
    en = {k: v for k, v in reg.words("en", "web").items() if k.startswith("admin_ui.")}
    zh = reg.words("zh", "web")
    out: set[str] = set()
    for key, text in en.items():
        if zh[key] == text:
            continue
        if key.startswith(("admin_ui.state_", "admin_ui.outcome_")):
            continue  # the values people type in ?state=: checked as labels below
        for piece in re.split(r"\{[^}]*\}", text):
            part = piece.strip(" .,:;()←→")
            if re.search(r"[A-Za-z]{3}", part) and part not in _DATA_WORDS:
                out.add(part)
    return out


def test_every_admin_page_is_chinese_when_chinese_is_chosen(env: Env) -> None:  # noqa: F811
    env.client.get("/admin/login?lang=zh")  # the choice is kept in a cookie
    wrong = env.client.post("/admin/login", data={
        "password": "not it", "csrf": env.csrf("/admin/login"), "next": "/admin"})
    assert wrong.status_code == 401
    pages = {"login (wrong password)": wrong.text}
    env.login(PASSWORD)
    qid = env.enqueue()
    env.defer(qid)
    for name, path in {
        "dashboard": "/admin",
        "queue": "/admin/queue",
        "queue filter error": "/admin/queue?state=bogus&older_than=x",
        "message": f"/admin/message/{qid}",
        "confirm": f"/admin/message/{qid}/hold",
        "no such message": "/admin/message/nosuchid",
        "no admin page": "/admin/nowhere",
    }.items():
        r = env.client.get(path)
        assert r.status_code in (200, 400, 404), (name, r.status_code)
        pages[name] = r.text
    fragments = _english_fragments()
    assert len(fragments) > 80  # the check has teeth: the admin has that many sentences
    for name, page in pages.items():
        assert '<html lang="zh-CN">' in page, name
        text = _visible(page)
        left = sorted(f for f in fragments
                      if re.search(rf"(?<![A-Za-z]){re.escape(f)}(?![A-Za-z])", text))
        labels = re.findall(r'<span class="state state-[a-z]+">([^<]*)</span>', page)
        assert not [x for x in labels if re.search("[a-z]", x)], (name, labels)
        assert not left, f"{name}: English left on the Chinese page: {left}\n{text}"
    assert "队列" in _visible(pages["queue"]) and "概览" in _visible(pages["dashboard"])
    assert "已推迟" in _visible(pages["message"])
    # The flash after an action is in the language of the page too.
    r = env.client.post(f"/admin/message/{qid}/hold",
                        data={"csrf": env.csrf(f"/admin/message/{qid}"), "confirmed": "1"})
    assert "已暂停 1 个收件人" in _visible(r.text)

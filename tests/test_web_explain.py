"""The /explain page: a box to paste a reply or log line into, the same breakdown as
`mailgate explain`; and the code search finding a pasted line. Through Starlette's
test client, as tests/test_web_public.py does."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from mailgate.web.public.explain import MAX_WEB_PASTE
from tests.test_web_public import FakeQueue, hrefs, make_client, text_of

POSTFIX = ("host mx.example.com[192.0.2.1] said: 550 5.1.1 <u@example.com>: Recipient "
           "address rejected: User unknown (in reply to RCPT TO command)")
EXCHANGE = ("Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient "
            "not found by SMTP address lookup'")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path, FakeQueue()) as c:
        yield c


def test_the_empty_form(client: TestClient) -> None:
    r = client.get("/explain")
    assert r.status_code == 200
    assert '<textarea id="q" name="q"' in r.text and 'action="/explain"' in r.text
    assert "/explain" in hrefs(r.text)  # in the site's navigation
    assert 'href="/explain" aria-current="page"' in r.text


def test_a_postfix_line_is_broken_down(client: TestClient) -> None:
    r = client.get("/explain", params={"q": POSTFIX})
    assert r.status_code == 200
    page = text_of(r.text)
    assert "It looks like a Postfix log or bounce line" in page
    assert "Remote server mx.example.com (line 1, column 6)" in page
    assert "IP address 192.0.2.1" in page
    assert "Command it answered RCPT TO" in page
    assert "Enhanced status code 5.1.1" in page
    assert "Bad Destination Mailbox Address" in page
    # The pasted text is kept in the box, escaped.
    assert html.escape(POSTFIX, quote=False) in r.text
    # Codes in the explanation link to their pages.
    assert "/codes/550" in hrefs(r.text)


def test_the_vendor_meaning_in_both_languages(client: TestClient) -> None:
    r = client.get("/explain", params={"q": EXCHANGE})
    page = text_of(r.text)
    assert "What Microsoft 365 / Exchange means: Recipient Not Found" in page
    assert "read it as 5.1.1, not as null MX" in page
    assert ("https://learn.microsoft.com/en-us/exchange/troubleshoot/email-delivery/ndr/"
            "fix-error-code-550-5-1-10-in-exchange-online") in page
    r = client.get("/explain", params={"q": EXCHANGE, "lang": "zh"})
    assert r.status_code == 200 and r.headers["content-language"] == "zh-CN"
    page = text_of(r.text)
    assert "Microsoft 365 / Exchange 的含义：找不到收件人" in page
    assert "需要谁来处理" in page


def test_a_plain_reply_line_and_a_code(client: TestClient) -> None:
    page = text_of(client.get("/explain", params={"q": "556 5.1.10 null MX"}).text)
    assert "556 Domain Does Not Accept Mail" in page
    page = text_of(client.get("/explain", params={"q": "5.7.26"}).text)
    assert "5.7.26" in page


def test_nonsense_is_one_sentence_and_400(client: TestClient) -> None:
    r = client.get("/explain", params={"q": "nothing to see here"})
    assert r.status_code == 400
    assert 'role="alert"' in r.text and 'aria-invalid="true"' in r.text


def test_a_huge_paste_is_cut(client: TestClient) -> None:
    r = client.get("/explain", params={"q": "550-5.7.26 x " * 1200})
    assert r.status_code in (200, 400)
    box = re.search(r"<textarea[^>]*>([^<]*)</textarea>", r.text)
    assert box is not None and len(html.unescape(box.group(1))) == MAX_WEB_PASTE
    assert len(r.text) < 200_000


def test_the_code_search_finds_a_pasted_line(client: TestClient) -> None:
    r = client.get("/codes", params={"q": POSTFIX})
    assert r.status_code == 200
    page = text_of(r.text)
    assert "2 codes match" in page
    assert "550 Mailbox Unavailable" in page and "X.1.1 Bad Destination Mailbox Address" in page
    links = hrefs(r.text)
    assert any(h.startswith("/explain?q=host+mx.example.com") for h in links)
    # A word search is not taken for a reply.
    r = client.get("/codes", params={"q": "null MX"})
    assert not any(h.startswith("/explain?") for h in hrefs(r.text))
    # The JSON search finds it too.
    data = client.get("/api/codes", params={"q": EXCHANGE}).json()
    codes = [c["key"] for c in data["codes"]] if isinstance(data, dict) else [
        c["key"] for c in data]
    assert codes == ["550", "X.1.10"]


def test_the_paste_is_escaped(client: TestClient) -> None:
    hostile = "550 5.1.1 </textarea><script>alert(1)</script> <b>x</b>"
    r = client.get("/explain", params={"q": hostile})
    assert "<script>alert(1)</script>" not in r.text
    assert "&lt;/textarea&gt;&lt;script&gt;" in r.text


BOUNCES = Path(__file__).parent / "data" / "bounces"


def test_a_whole_bounce_is_explained_per_recipient(client: TestClient) -> None:
    r = client.get("/explain")
    assert '<textarea id="bounce" name="bounce"' in r.text and 'method="post"' in r.text
    bounce = (BOUNCES / "m365-recipientnotfound.eml").read_text(encoding="utf-8")
    r = client.post("/explain", data={"bounce": bounce})
    assert r.status_code == 200
    page = text_of(r.text)
    assert "What this bounce reports" in page
    assert "Recipient heidi@fabrikam.com: failed" in page
    assert "userunknown" in page and "RESOLVER.ADR.RecipientNotFound" in page
    assert "What Microsoft 365 / Exchange means" in page
    # The bounce stays in its box, escaped.
    assert html.escape("<alice@contoso.com>", quote=False) in r.text
    r = client.post("/explain?lang=zh", data={"bounce": bounce})
    page = text_of(r.text)
    assert "这封退信报告了什么" in page and "收件人地址不存在" in page and "谁需要处理" in page


def test_a_complaint_pasted_is_not_a_failure(client: TestClient) -> None:
    arf = (BOUNCES / "arf-complaint.eml").read_text(encoding="utf-8")
    page = text_of(client.post("/explain", data={"bounce": arf}).text)
    assert "a complaint report (ARF, RFC 5965)" in page
    assert ": failed" not in page


def test_a_reply_line_in_the_bounce_box_is_explained_as_a_line(client: TestClient) -> None:
    r = client.post("/explain", data={"bounce": POSTFIX})
    assert r.status_code == 200
    assert "Enhanced status code 5.1.1" in text_of(r.text)


def test_a_bounce_box_too_large_is_413_and_nonsense_is_400(client: TestClient) -> None:
    from mailgate.web.public.explain import MAX_WEB_BOUNCE

    r = client.post("/explain", data={"bounce": "%" * (MAX_WEB_BOUNCE + 1000)})
    assert r.status_code == 413
    assert 'role="alert"' in r.text and str(MAX_WEB_BOUNCE) in r.text
    r = client.post("/explain", data={"bounce": "\x00" * 100})
    assert r.status_code == 400 and 'role="alert"' in r.text
    r = client.post("/explain", content=b"&".join(b"a=%d" % i for i in range(50)),
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200  # too many fields: read as an empty form

"""The public web face: code index and search, code pages, compare, language, JSON API,
/metrics and error pages, through Starlette's test client."""

from __future__ import annotations

import html
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from mailgate import metrics
from mailgate.codes import registry as reg
from mailgate.codes.compare import compare
from mailgate.codes.explain import explain_code
from mailgate.codes.render import comparison_doc, explanation_doc, render
from mailgate.config import Config, WebConfig
from mailgate.queue import Queue
from mailgate.web.app import WebContext, create_app
from mailgate.web.auth import AdminAuth
from mailgate.web.public import knowledge

# Starlette's test client (and schemathesis on the ASGI app) sends "Host: testserver".
TESTSERVER = WebConfig(allowed_hosts=("testserver",))

CODES = [k for k, v in reg.registry().items() if v.kind in ("basic", "enhanced")]


class FakeQueue:
    """Only what /metrics asks of a queue."""

    def counts(self) -> dict[str, int]:
        return {"queued": 3, "deferred": 2, "delivered": 7}


def make_client(data_dir: Path, queue: object = None) -> TestClient:
    ctx = WebContext(config=Config(data_dir=data_dir, web=TESTSERVER),
                     queue=cast(Queue | None, queue), auth=AdminAuth(data_dir))
    return TestClient(create_app(ctx), follow_redirects=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("web")


@pytest.fixture
def client(data_dir: Path) -> Iterator[TestClient]:
    """A fresh client per test: no language cookie carried over."""
    with make_client(data_dir, FakeQueue()) as c:
        yield c


def text_of(page: str) -> str:
    """The visible text of a page: tags dropped, entities decoded, spaces collapsed."""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S)
    body = re.sub(r"</?(?:a|span)\b[^>]*>", "", body)  # inline: no space of its own
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def squash(text: str) -> str:
    return " ".join(text.split())


def hrefs(page: str) -> set[str]:
    return {html.unescape(h) for h in re.findall(r'href="([^"]*)"', page)}


# --- index and search -----------------------------------------------------------------


def test_home_redirects_to_the_code_index(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 307 and r.headers["location"] == "/codes"


def test_index_lists_every_code_grouped_by_class_and_subject(client: TestClient) -> None:
    r = client.get("/codes")
    assert r.status_code == 200
    links = hrefs(r.text)
    for key in CODES:
        assert f"/codes/{key}" in links, key
    text = text_of(r.text)
    for heading in ("2xx Positive Completion", "5xx Permanent Negative Completion",
                    "X.1.X Addressing Status", "X.7.X Security or Policy Status",
                    "Basic reply codes", "Enhanced status codes"):
        assert heading in text
    # The classes and subjects are anchors that related-code links point at.
    assert 'id="5.X.X"' in r.text and 'id="X.1.X"' in r.text and 'id="5xx"' in r.text
    # A non-standard code is marked as such.
    row = re.search(r'<li id="c-571">.*?</li>', r.text, re.S)
    assert row is not None and "non-standard" in row.group(0)
    # The search works without JavaScript: a GET form with a labelled field.
    assert '<form class="search" role="search" method="get" action="/codes"' in r.text
    assert '<label for="q">' in r.text


def test_search_null_mx_finds_556_and_5_1_10_and_5_7_27(client: TestClient) -> None:
    r = client.get("/codes", params={"q": "null MX"})
    assert r.status_code == 200
    links = hrefs(r.text)
    for href in ("/codes/556", "/codes/5.1.10", "/codes/5.7.27"):
        assert href in links
    assert re.search(r"\d+ codes match “null MX”", text_of(r.text))
    assert knowledge.search("null MX")[:3] == ("X.1.10", "X.7.27", "556")


def test_search_by_number(client: TestClient) -> None:
    assert knowledge.search("5.1.10")[0] == "X.1.10"
    assert knowledge.search("556")[0] == "556"
    assert knowledge.search("55")[:3] == ("550", "551", "552")
    r = client.get("/codes", params={"q": "5.7.27"})
    assert "/codes/5.7.27" in hrefs(r.text)


def test_search_in_chinese(client: TestClient) -> None:
    title = reg.prose("zh")["556"].title  # 域名不接收邮件
    r = client.get("/codes", params={"q": title})
    assert "/codes/556" in hrefs(r.text)
    # Spaces between Chinese and Latin do not matter: 空MX finds "空 MX".
    assert "X.7.27" in knowledge.search("空MX")
    assert "X.7.27" in knowledge.search("空 MX")


def test_search_without_match_says_so(client: TestClient) -> None:
    r = client.get("/codes", params={"q": "zebra crossing"})
    assert r.status_code == 200
    assert "No code matches “zebra crossing”" in text_of(r.text)
    # The query is shown escaped, never as markup.
    r = client.get("/codes", params={"q": "<script>x</script>"})
    assert "<script>x</script>" not in r.text and "&lt;script&gt;" in r.text


# --- one code -------------------------------------------------------------------------


def test_code_page_556(client: TestClient) -> None:
    r = client.get("/codes/556")
    assert r.status_code == 200
    assert '<html lang="en">' in r.text
    text = text_of(r.text)
    e = explain_code("556")
    assert "<h1>SMTP 556 Domain Does Not Accept Mail" in r.text
    for label in ("Class", "Description", "When it appears", "How to fix", "Related codes",
                  "References"):
        assert label in text
    assert "5xx Permanent Negative Completion" in text
    # Every sentence `mailgate explain 556` prints is on the page.
    for block in explanation_doc(e).blocks:
        for piece in [block.text, *block.items]:
            if piece:
                assert squash(piece) in text, piece
    links = hrefs(r.text)
    for related in e.related:
        assert f"/codes/{related}" in links
    assert "https://www.rfc-editor.org/rfc/rfc7504#section-4" in links
    # The compare-with form and the JSON link.
    assert 'name="a" value="556"' in r.text
    assert "/api/codes/556?lang=en" in links


def test_enhanced_code_pages(client: TestClient) -> None:
    r = client.get("/codes/5.1.10")
    assert r.status_code == 200
    assert "SMTP 5.1.10 Recipient Address Has Null MX" in text_of(r.text)
    assert "5.X.X Permanent Failure" in text_of(r.text) or "Permanent Failure" in r.text
    r = client.get("/codes/X.1.10")
    assert r.status_code == 200
    # The registry form says which classed form is used, and links it.
    assert "/codes/5.1.10" in hrefs(r.text)


def test_every_code_page_renders(client: TestClient) -> None:
    for key in CODES:
        assert client.get(f"/codes/{key}").status_code == 200, key


def test_code_urls_are_canonical(client: TestClient) -> None:
    r = client.get("/codes/x.01.10")
    assert r.status_code == 301 and r.headers["location"] == "/codes/X.1.10"
    r = client.get("/codes/5.01.010?lang=zh")
    assert r.status_code == 301 and r.headers["location"] == "/codes/5.1.10?lang=zh"


def test_class_and_subject_keys_lead_to_their_group(client: TestClient) -> None:
    r = client.get("/codes/5.X.X")
    assert r.status_code == 302 and r.headers["location"] == "/codes#5.X.X"
    r = client.get("/codes/X.1.X")
    assert r.status_code == 302 and r.headers["location"] == "/codes#X.1.X"


def test_unknown_code_is_404_with_near_codes(client: TestClient) -> None:
    r = client.get("/codes/557")
    assert r.status_code == 404
    text = text_of(r.text)
    assert "557 is not a registered code" in text
    assert "no RFC or registry defines it" in text
    # What its digits say, from the class and the category.
    assert "Permanent Negative Completion" in text
    links = hrefs(r.text)
    assert "/codes/556" in links and "/codes/555" in links
    r = client.get("/codes/5.1.99")
    assert r.status_code == 404
    assert "/codes/5.1.10" in hrefs(r.text)  # the same subject, the nearest detail


@pytest.mark.parametrize(("code", "reason", "near"), [
    ("999", "the first digit must be 2, 3, 4 or 5", "/codes/571"),
    ("5567", "a reply code has exactly three digits", "/codes/556"),
    ("5.9.1", "subject 9 is not defined", "/codes/5.7.1"),
    ("5.1", "it must look like 5.1.10", "/codes/5.1.0"),
    ("nullmx", "a reply code is three digits", ""),
])
def test_malformed_code_is_404_saying_what_is_wrong(client: TestClient, code: str, reason: str,
                                                    near: str) -> None:
    r = client.get(f"/codes/{code}")
    assert r.status_code == 404
    text = text_of(r.text)
    assert f"No such code: {code}" in text
    assert reason in text
    if near:
        assert near in hrefs(r.text)
    assert '<form class="search"' in r.text


def test_suggestions() -> None:
    assert knowledge.suggest("557")[:2] == ["556", "555"]
    assert knowledge.suggest("5.1.99")[0] == "5.1.10"
    assert knowledge.suggest("X.7.99")[0] == "X.7.30"
    assert knowledge.suggest("55")[0] == "550"
    assert knowledge.suggest("null MX")[:3] == ["X.1.10", "X.7.27", "556"]
    assert knowledge.suggest("") == []


# --- compare --------------------------------------------------------------------------


def test_compare_page_has_the_cli_content(client: TestClient) -> None:
    r = client.get("/compare/221/556")
    assert r.status_code == 200
    assert "<h1>SMTP 221 Closing Connection vs 556 Domain Does Not Accept Mail</h1>" in r.text
    text = text_of(r.text)
    c = compare("221", "556")
    doc = comparison_doc(c)
    for block in doc.blocks:
        for piece in [block.text, *block.items]:
            if piece:
                assert squash(piece) in text, piece
    # The same order as the CLI: the two codes, then key differences, then when to use.
    order = [r.text.index(h) for h in ('<a href="/codes/221">221 Closing Connection</a>',
                                       '<a href="/codes/556">556 Domain Does Not Accept',
                                       "<h2>Key differences</h2>", "<h2>When to use which</h2>")]
    assert order == sorted(order)
    # A form to pick two other codes, filled with these.
    assert 'name="a" value="221"' in r.text and 'name="b" value="556"' in r.text


def test_compare_form_redirects_to_the_canonical_url(client: TestClient) -> None:
    r = client.get("/compare", params={"a": "221", "b": "556"})
    assert r.status_code == 303 and r.headers["location"] == "/compare/221/556"
    r = client.get("/compare", params={"a": " 5.01.10 ", "b": "x.7.27", "lang": "zh"})
    assert r.status_code == 303 and r.headers["location"] == "/compare/5.1.10/X.7.27?lang=zh"
    assert "mailgate_lang=zh" in r.headers["set-cookie"]
    r = client.get("/compare/5.01.10/x.1.10")
    assert r.status_code == 301 and r.headers["location"] == "/compare/5.1.10/X.1.10"


def test_compare_form_alone(client: TestClient) -> None:
    r = client.get("/compare")
    assert r.status_code == 200
    assert "Compare two codes" in text_of(r.text)
    assert '<label for="a">' in r.text and '<label for="b">' in r.text
    assert 'aria-invalid' not in r.text


def test_compare_bad_input_is_400_with_a_clear_message(client: TestClient) -> None:
    r = client.get("/compare", params={"a": "999", "b": "556"})
    assert r.status_code == 400
    text = text_of(r.text)
    assert "Correct the code below and compare again." in text
    assert "999 is not an SMTP reply code: the first digit must be 2, 3, 4 or 5." in text
    assert r.text.count('aria-invalid="true"') == 1
    assert 'value="999"' in r.text and 'value="556"' in r.text  # what was typed stays
    # Near codes, each a compare link keeping the other code.
    assert "/compare?a=571&b=556" in hrefs(r.text)

    r = client.get("/compare", params={"a": "", "b": ""})
    assert r.status_code == 400
    assert text_of(r.text).count("Enter a code, such as 550 or 5.1.10.") == 2

    r = client.get("/compare", params={"a": "221"})
    assert r.status_code == 400
    assert "Enter a code, such as 550 or 5.1.10." in text_of(r.text)

    r = client.get("/compare", params={"a": "5.X.X", "b": "556"})
    assert r.status_code == 400
    assert "names a whole class" in text_of(r.text)


def test_compare_path_with_a_malformed_code_is_404(client: TestClient) -> None:
    r = client.get("/compare/221/99x")
    assert r.status_code == 404
    assert "'99x' is not an SMTP reply code" in text_of(r.text)
    assert '<form class="compare-form"' in r.text


def test_compare_with_an_unregistered_code_works_as_the_cli(client: TestClient) -> None:
    r = client.get("/compare/557/556")
    assert r.status_code == 200
    assert "Unregistered code 557" in text_of(r.text)


# --- language -------------------------------------------------------------------------


def test_lang_parameter_sets_a_cookie_and_keeps_the_page(client: TestClient) -> None:
    r = client.get("/codes/556", params={"lang": "zh"})
    assert r.status_code == 200
    assert '<html lang="zh-CN">' in r.text
    assert r.headers["content-language"] == "zh-CN"
    assert "mailgate_lang=zh" in r.headers["set-cookie"]
    for heading in ("描述", "何时出现", "如何修复"):
        assert f"<h2>{heading}</h2>" in r.text
    # The cookie keeps the choice on the next page.
    r = client.get("/compare/221/556")
    assert '<html lang="zh-CN">' in r.text
    for heading in ("主要区别", "何时使用哪个"):
        assert f"<h2>{heading}</h2>" in r.text
    assert "SMTP 221（" in r.text and "与 556（" in r.text and "的区别" in r.text
    # The switch links to the same page in the other language.
    assert "/compare/221/556?lang=en" in hrefs(r.text)
    r = client.get("/compare/221/556", params={"lang": "en"})
    assert '<html lang="en">' in r.text and "mailgate_lang=en" in r.headers["set-cookie"]
    assert "/compare/221/556?lang=zh" in hrefs(r.text)


def test_language_switch_keeps_the_search(client: TestClient) -> None:
    r = client.get("/codes", params={"q": "null MX"})
    assert "/codes?q=null+MX&lang=zh" in hrefs(r.text)
    assert re.search(r'<span aria-current="true">English</span>', r.text)


def test_first_visit_honours_accept_language(data_dir: Path) -> None:
    with make_client(data_dir) as c:
        r = c.get("/codes/556", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"})
        assert '<html lang="zh-CN">' in r.text and "set-cookie" not in r.headers
        r = c.get("/codes/556", headers={"Accept-Language": "en-GB,zh;q=0.5"})
        assert '<html lang="en">' in r.text
        r = c.get("/codes/556", headers={"Accept-Language": "fr, zh-TW;q=0.3"})
        assert '<html lang="zh-CN">' in r.text
        r = c.get("/codes/556", headers={"Accept-Language": "fr"})
        assert '<html lang="en">' in r.text
        # A cookie, once set, wins over the header.
        c.get("/codes/556", params={"lang": "en"})
        r = c.get("/codes/556", headers={"Accept-Language": "zh-CN"})
        assert '<html lang="en">' in r.text


def test_unknown_lang_parameter_is_ignored_on_pages(client: TestClient) -> None:
    r = client.get("/codes/556", params={"lang": "fr"})
    assert r.status_code == 200 and '<html lang="en">' in r.text
    assert "set-cookie" not in r.headers


def test_chinese_error_pages(client: TestClient) -> None:
    r = client.get("/codes/999", params={"lang": "zh"})
    assert r.status_code == 404 and "没有这个代码：999" in text_of(r.text)
    r = client.get("/compare", params={"a": "", "b": "556", "lang": "zh"})
    assert r.status_code == 400 and "请输入代码" in text_of(r.text)


# --- JSON API -------------------------------------------------------------------------


def test_api_code_is_exactly_the_cli_json(client: TestClient) -> None:
    for code, lang in (("556", "en"), ("5.1.10", "zh"), ("X.1.10", "en"), ("571", "en")):
        r = client.get(f"/api/codes/{code}", params={"lang": lang})
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/json")
        assert r.text == render(explain_code(code, lang), "json")


def test_api_compare_is_exactly_the_cli_json(client: TestClient) -> None:
    r = client.get("/api/compare/221/556")
    assert r.status_code == 200
    assert r.text == render(compare("221", "556"), "json")
    assert r.json()["headline"] == "SMTP 221 Closing Connection vs 556 Domain Does Not Accept Mail"
    r = client.get("/api/compare/5.1.10/556", params={"lang": "zh"})
    assert r.json() == json.loads(render(compare("5.1.10", "556", "zh"), "json"))


def test_api_code_list(client: TestClient) -> None:
    r = client.get("/api/codes")
    assert r.status_code == 200
    items: list[dict[str, Any]] = r.json()
    assert [i["code"] for i in items] == list(knowledge.code_keys())
    assert sorted(i["code"] for i in items) == sorted(CODES)
    assert items[0] == json.loads(render(explain_code(items[0]["code"]), "json"))
    r = client.get("/api/codes", params={"q": "null MX", "lang": "zh"})
    found = [i["code"] for i in r.json()]
    assert {"556", "X.1.10", "X.7.27"} <= set(found)
    assert all(i["lang"] == "zh" for i in r.json())
    assert client.get("/api/codes", params={"q": "zebra crossing"}).json() == []


def test_api_errors(client: TestClient) -> None:
    r = client.get("/api/codes/999")
    assert r.status_code == 404
    body = r.json()
    assert set(body) == {"error", "suggestions"}
    assert "first digit must be 2, 3, 4 or 5" in body["error"]
    assert "556" in body["suggestions"]

    r = client.get("/api/codes/557")
    assert r.status_code == 404 and r.json()["suggestions"][0] == "556"
    r = client.get("/api/codes/5.X.X")
    assert r.status_code == 404 and "whole class" in r.json()["error"]
    r = client.get("/api/compare/221/5.9.1")
    assert r.status_code == 404 and "subject 9" in r.json()["error"]
    r = client.get("/api/codes/556", params={"lang": "fr"})
    assert r.status_code == 400 and r.json() == {
        "error": "lang must be one of en, zh, not 'fr'.", "suggestions": []}
    r = client.get("/api/nothing-here")
    assert r.status_code == 404 and r.json() == {"error": "Not Found", "suggestions": []}


def test_api_language_from_accept_language(client: TestClient) -> None:
    r = client.get("/api/codes/556", headers={"Accept-Language": "zh"})
    assert r.json()["lang"] == "zh" and "set-cookie" not in r.headers


def test_openapi_document(client: TestClient) -> None:
    r = client.get("/api/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    assert {"/api/codes", "/api/codes/{code}", "/api/compare/{a}/{b}"} <= set(doc["paths"])
    assert {"Code", "Comparison", "Error"} <= set(doc["components"]["schemas"])
    assert "public" in doc["paths"]["/api/codes/{code}"]["get"]["description"].lower()
    assert doc["info"]["title"] == "mailgate" and doc["servers"]


# --- /metrics -------------------------------------------------------------------------


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_exposition(client: TestClient) -> None:
    before = _samples(client.get("/metrics").text)
    metrics.connection_opened()
    metrics.command("EHLO")
    metrics.command("mail")
    metrics.command("XYZZY")
    metrics.reply_sent(250)
    metrics.reply_sent(556)
    metrics.reply_sent(299)
    metrics.message_accepted()
    metrics.message_refused()
    metrics.delivery("delivered", 250, 1.5)
    metrics.delivery("deferred", 451)
    metrics.delivery("failed", None)
    metrics.dns_lookup("nxdomain")
    metrics.dns_lookup("weird")
    metrics.outbound_connection("verify", True)
    metrics.outbound_connection("may", False)
    metrics.notice("delay")
    metrics.connection_closed()
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = _samples(r.text)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    assert delta("mailgate_connections_total") == 1
    assert delta("mailgate_connections_open") == 0
    assert delta("mailgate_commands_total", command="EHLO") == 1
    assert delta("mailgate_commands_total", command="MAIL") == 1
    assert delta("mailgate_commands_total", command="other") == 1
    assert delta("mailgate_replies_total", code="556") == 1
    assert delta("mailgate_replies_total", code="299") == 1
    assert delta("mailgate_messages_accepted_total") == 1
    assert delta("mailgate_messages_refused_total") == 1
    assert delta("mailgate_deliveries_total", outcome="delivered", code="250") == 1
    assert delta("mailgate_deliveries_total", outcome="deferred", code="451") == 1
    assert delta("mailgate_deliveries_total", outcome="failed", code="none") == 1
    assert delta("mailgate_delivery_latency_seconds_count") == 1
    assert delta("mailgate_delivery_latency_seconds_bucket", le="2.5") == 1
    assert delta("mailgate_delivery_latency_seconds_bucket", le="1.0") == 0
    assert delta("mailgate_dns_lookups_total", result="nxdomain") == 1
    assert delta("mailgate_dns_lookups_total", result="other") == 1
    assert delta("mailgate_outbound_connections_total", tls_level="verify",
                 encrypted="yes") == 1
    assert delta("mailgate_outbound_connections_total", tls_level="may", encrypted="no") == 1
    assert delta("mailgate_notices_total", kind="delay") == 1
    assert delta("mailgate_notices_total", kind="failure") == 0
    # The queue gauge is read from the queue when scraped; states it lacks are 0.
    assert after[("mailgate_queue_recipients", (("state", "queued"),))] == 3
    assert after[("mailgate_queue_recipients", (("state", "deferred"),))] == 2
    assert after[("mailgate_queue_recipients", (("state", "held"),))] == 0
    # Only mailgate's own registry: nothing from the global default one.
    assert all(name.startswith("mailgate_") for name, _ in after)


def test_metrics_without_a_queue(data_dir: Path) -> None:
    with make_client(data_dir, None) as c:
        r = c.get("/metrics")
        assert r.status_code == 200
        names = {f.name for f in text_string_to_metric_families(r.text)}
        assert {"mailgate_connections_open", "mailgate_connections", "mailgate_commands",
                "mailgate_replies", "mailgate_messages_accepted", "mailgate_messages_refused",
                "mailgate_deliveries", "mailgate_queue_recipients",
                "mailgate_delivery_latency_seconds", "mailgate_dns_lookups"} <= names


# --- other pages and errors -----------------------------------------------------------


def test_unknown_page_is_a_404_page(client: TestClient) -> None:
    r = client.get("/no/such/page")
    assert r.status_code == 404
    assert "Page not found" in text_of(r.text) and "/no/such/page" in text_of(r.text)
    assert '<html lang="en">' in r.text


def test_static_files(client: TestClient) -> None:
    page = client.get("/codes").text
    css = re.search(r'href="(/static/style\.css\?v=\w+)"', page)
    js = re.search(r'src="(/static/search\.js\?v=\w+)"', page)
    assert css and js
    assert client.get(css.group(1)).status_code == 200
    assert client.get(js.group(1)).status_code == 200


def test_pages_have_one_h1_and_labelled_fields(client: TestClient) -> None:
    for url in ("/codes", "/codes?q=550", "/codes/556", "/compare", "/compare/221/556",
                "/codes/999"):
        page = client.get(url).text
        assert page.count("<h1") == 1, url
        assert 'class="skip" href="#main"' in page
        for field_id in re.findall(r'<input id="([^"]+)"', page):
            assert f'<label for="{field_id}"' in page, (url, field_id)
        # Headings never skip a level.
        levels = [int(n) for n in re.findall(r"<h([1-6])\b", page)]
        assert all(b - a <= 1 for a, b in itertools.pairwise(levels)), url


def test_errors_on_code_pages_and_the_api_are_in_the_language_asked_for(
        client: TestClient) -> None:
    """Not found, a whole class given for one code, an unregistered code: each sentence
    in Chinese under lang=zh (the CLI's errors were; the web's were English only)."""
    for path, status in (("/codes/5.9.99?lang=zh", 404), ("/codes/5.1?lang=zh", 404),
                         ("/codes/559?lang=zh", 404), ("/compare/5.X.X/556?lang=zh", 404)):
        r = client.get(path)
        assert r.status_code == status, (path, r.status_code)
        assert "names a whole" not in r.text and "is a well-formed" not in r.text, path
        assert "is not an" not in text_of(r.text), path
    r = client.get("/api/codes/X.1.X?lang=zh")
    assert r.status_code == 404 and "一整个主题" in r.json()["error"], r.json()
    r = client.get("/api/compare/5.X.X/556?lang=zh")
    assert r.status_code == 404 and "一整类" in r.json()["error"], r.json()
    r = client.get("/api/codes/559?lang=zh")
    assert r.status_code == 404 and "没有任何 RFC" in r.json()["error"], r.json()
    r = client.get("/api/codes/X.1.X?lang=en")
    assert r.json()["error"].startswith("X.1.X names a whole subject"), r.json()

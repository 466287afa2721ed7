"""Explanations and comparisons, derived from the data, in both languages."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from mailgate.codes import registry as reg
from mailgate.codes.compare import compare
from mailgate.codes.explain import Explanation, ReplyExplanation, explain, explain_code
from mailgate.codes.render import FORMATS, render
from mailgate.codes.reply import ReplyError

BASIC = sorted(k for k, v in reg.registry().items() if v.kind == "basic")


def test_explain_basic_code() -> None:
    e = explain_code("556")
    assert e.kind == "basic" and e.registered and e.standard
    assert e.klass == 5 and e.outcome == "permanent"
    assert "X.1.10" in e.related
    assert any("RFC7504" in r for r in e.rfcs)


def test_explain_enhanced_code_adds_class_and_subject() -> None:
    e = explain_code("5.1.10")
    assert e.key == "X.1.10" and e.klass == 5 and e.outcome == "permanent"
    assert "null mx" in e.title.lower()
    assert e.subject == reg.prose("en")["X.1.X"].title
    assert e.class_name == reg.prose("en")["5.X.X"].title
    assert explain_code("X.1.10").klass is None


def test_unregistered_enhanced_code_is_explained_from_class_and_subject() -> None:
    e = explain_code("5.1.99")
    assert not e.registered
    assert "5.1.99" in e.description and "not in the IANA registry" in e.notes[0]
    assert e.outcome == "permanent"


def test_unregistered_basic_code_is_explained_from_its_digits() -> None:
    e = explain_code("259")
    assert not e.registered and e.klass == 2
    assert "no RFC or registry defines" in e.description


@pytest.mark.parametrize(
    ("query", "why"),
    [("999", "first digit"), ("5.99.1", "subject 99"), ("abc", "not a reply code"),
     ("", "nothing to explain"), ("1234", "exactly three"), ("5.1", "class.subject.detail")],
)
def test_malformed_queries_name_the_problem(query: str, why: str) -> None:
    with pytest.raises(ReplyError, match=why):
        explain(query)


def test_non_standard_code_says_what_it_stands_for() -> None:
    e = explain_code("571")
    assert not e.standard and "550" in e.see
    assert "not a standard" in e.notes[0]


def test_explain_whole_reply_line() -> None:
    x = explain("556 5.1.10 Recipient address has null MX")
    assert isinstance(x, ReplyExplanation)
    assert [p.code for p in x.parts] == ["556", "5.1.10"]
    assert x.reply.lines == ("Recipient address has null MX",)


def test_explain_multi_line_reply() -> None:
    x = explain("550-5.7.27 Sender domain has null MX\n550 5.7.27 See RFC 7505")
    assert isinstance(x, ReplyExplanation)
    assert [p.key for p in x.parts] == ["550", "X.7.27"]


def test_reply_with_mismatched_enhanced_code_gets_a_note() -> None:
    x = explain("550 4.1.1 no such user")
    assert isinstance(x, ReplyExplanation)
    assert len(x.parts) == 1 and "does not match" in x.notes[0]


def test_compare_221_556_says_what_the_issue_requires() -> None:
    c = compare("221", "556")
    text = render(c, "text", color=False, width=200)
    assert c.headline == "SMTP 221 Closing Connection vs 556 Domain Does Not Accept Mail"
    assert "2xx Positive Completion" in text and "5xx Permanent Negative Completion" in text
    assert "QUIT" in c.a.when and "close" in c.a.description.lower()
    assert "null MX" in c.b.description and "RFC 7505" in c.b.description
    assert "preference 0" in c.b.description
    assert "nothing to fix" in text.lower()
    assert "MX" in c.b.fix
    for heading in ("Description", "When it appears", "How to fix", "Key differences",
                    "When to use which"):
        assert heading in text
    diffs = " ".join(c.differences)
    assert "Class:" in diffs and "Connection:" in diffs and "When it appears:" in diffs


def test_compare_221_556_in_chinese() -> None:
    c = compare("221", "556", lang="zh")
    text = render(c, "text", color=False, width=200)
    for heading in ("描述", "何时出现", "如何修复", "主要区别", "何时使用哪个"):
        assert heading in text
    assert "区别" in c.headline
    assert "QUIT" in c.a.when and "MX" in c.b.description


def test_compare_basic_with_enhanced_mentions_pairing() -> None:
    c = compare("556", "5.1.10")
    assert any(d.startswith("Pairing:") for d in c.differences)
    assert any(d.startswith("Kind:") for d in c.differences)


def test_compare_same_subject_enhanced_codes_of_two_classes() -> None:
    c = compare("4.2.2", "5.2.2")
    line = c.differences[0].lower()
    assert "temporary failure" in line and "permanent failure" in line
    assert line.count("permanent failure") == 1  # not "Permanent Failure (permanent failure)"


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_every_pair_of_basic_codes_renders_in_every_format(lang: str) -> None:
    for a, b in itertools.combinations(BASIC, 2):
        c = compare(a, b, lang)
        assert c.headline and c.differences
        for fmt in FORMATS:
            out = render(c, fmt, color=False)
            assert a in out and b in out
            if fmt == "json":
                assert json.loads(out)["type"] == "comparison"


def test_every_code_explains_in_every_format() -> None:
    for key in reg.registry():
        if key.endswith((".X", ".X.X")):
            continue
        for lang in ("en", "zh"):
            e = explain_code(key, lang)
            assert isinstance(e, Explanation) and e.title
            for fmt in ("markdown", "json", "html"):
                assert e.code in render(e, fmt)


def test_json_schema_is_stable() -> None:
    data = json.loads(render(explain_code("5.7.27"), "json"))
    assert data["schema"] == "mailgate.codes/1" and data["type"] == "code"
    assert set(data) >= {"code", "key", "kind", "class", "class_name", "outcome", "subject",
                         "title", "summary", "description", "when", "fix", "rfcs", "related",
                         "closes_connection", "notes"}
    cmp = json.loads(render(compare("221", "556"), "json"))
    assert set(cmp) >= {"schema", "type", "headline", "summary", "a", "b", "differences",
                        "when_to_use"}


def test_html_is_escaped_and_standalone() -> None:
    out = render(explain_code("221"), "html")
    assert out.startswith("<!doctype html>")
    assert "&lt;domain&gt;" in out and "<domain>" not in out
    assert re.search(r'<html lang="en">', out)
    assert 'lang="zh-CN"' in render(explain_code("221", "zh"), "html")

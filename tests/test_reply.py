"""Reply values: parsing what servers send, building what mailgate sends."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.codes import Reply, ReplyError, Subject, parse_enhanced_code, parse_reply
from mailgate.codes.reply import parse_basic_code


def test_single_line_with_enhanced_code() -> None:
    r = parse_reply("556 5.1.10 Recipient address has null MX\r\n")
    assert r == Reply(556, "5.1.10", ("Recipient address has null MX",))
    assert r.is_permanent and r.outcome == "permanent"
    assert r.subject is Subject.ADDRESSING


def test_multi_line_strips_repeated_enhanced_code() -> None:
    r = parse_reply("550-5.7.27 Sender address has null MX\r\n550 5.7.27 See RFC 7505\r\n")
    assert r.code == 550 and r.enhanced == "5.7.27"
    assert r.lines == ("Sender address has null MX", "See RFC 7505")
    assert r.subject is Subject.SECURITY_POLICY


def test_ehlo_style_reply_without_enhanced_code() -> None:
    r = parse_reply("250-mx.example.test\n250-PIPELINING\n250 SIZE 1000\n")
    assert r.enhanced is None
    assert r.lines == ("mx.example.test", "PIPELINING", "SIZE 1000")
    assert r.is_success


def test_bare_code_last_line() -> None:
    assert parse_reply("250") == Reply(250, None, ("",))
    assert parse_reply("354 ") == Reply(354, None, ("",))


def test_enhanced_code_of_other_class_stays_text() -> None:
    r = parse_reply("550 4.1.1 mismatched")
    assert r.enhanced is None and r.lines == ("4.1.1 mismatched",)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("", "empty"),
        ("25", "too short"),
        ("abc hello", "three-digit"),
        ("999 nope", "first digit"),
        ("190 nope", "first digit"),
        ("250x hello", "space or a hyphen"),
        ("250-a\r\n251 b", "mixes codes"),
        ("250 a\r\n250 b", "more lines follow"),
        ("250-a\r\n250-b", "continues"),
        ("250 a\rb", "carriage return"),
    ],
)
def test_malformed_replies_are_rejected_with_reason(raw: str, why: str) -> None:
    with pytest.raises(ReplyError, match=why):
        parse_reply(raw)


def test_invalid_utf8_is_rejected() -> None:
    with pytest.raises(ReplyError, match="UTF-8"):
        parse_reply(b"250 \xff\xfe\r\n")


def test_reply_value_validates_itself() -> None:
    with pytest.raises(ReplyError, match="class must equal"):
        Reply(550, "4.1.1", ("x",))
    with pytest.raises(ReplyError):
        Reply(600, None, ("x",))
    with pytest.raises(ReplyError, match="CR or LF"):
        Reply(250, None, ("a\r\nb",))
    with pytest.raises(ReplyError):
        Reply(250, None, ())


def test_wire_form() -> None:
    r = Reply.make(250, "2.0.0", "first\nsecond")
    assert r.to_bytes() == b"250-2.0.0 first\r\n250 2.0.0 second\r\n"
    assert r.to_bytes(enhanced=False) == b"250-first\r\n250 second\r\n"
    assert Reply(221, "2.0.0", ("",)).to_bytes() == b"221 2.0.0\r\n"
    assert str(Reply.make(556, "5.1.10", "null MX")) == "556 5.1.10 null MX"


@pytest.mark.parametrize(
    ("text", "why"),
    [("5.1", "class.subject.detail"), ("6.1.1", "class must be 2, 4 or 5"),
     ("5.1000.1", "1 to 3 digits"), ("a.b.c", "class.subject.detail")],
)
def test_bad_enhanced_codes(text: str, why: str) -> None:
    with pytest.raises(ReplyError, match=why):
        parse_enhanced_code(text)


def test_basic_code_errors_name_the_problem() -> None:
    assert parse_basic_code(" 221 ") == 221
    with pytest.raises(ReplyError, match="exactly three digits"):
        parse_basic_code("2210")


# --- properties -------------------------------------------------------------

codes = st.builds(
    lambda a, b, c: a * 100 + b * 10 + c,
    st.integers(2, 5), st.integers(0, 5), st.integers(0, 9),
)
# Text that cannot be mistaken for an enhanced code at the start of a line.
line_text = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=40
).filter(lambda s: not s[:1].isdigit())


@st.composite
def replies(draw: st.DrawFn) -> Reply:
    code = draw(codes)
    enhanced = None
    if code // 100 != 3 and draw(st.booleans()):
        enhanced = f"{code // 100}.{draw(st.integers(0, 999))}.{draw(st.integers(0, 999))}"
    lines = draw(st.lists(line_text, min_size=1, max_size=5))
    if enhanced is None:
        # a line of text that starts with a space would be read back without it
        lines = [ln.lstrip(" ") for ln in lines]
    else:
        lines = [ln if ln[:1] != " " else "x" + ln for ln in lines]
    return Reply(code, enhanced, tuple(lines))


@given(replies())
def test_round_trip(reply: Reply) -> None:
    assert parse_reply(reply.to_bytes()) == reply


@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise_reply_error(data: bytes) -> None:
    try:
        r = parse_reply(data)
    except ReplyError:
        return
    assert 200 <= r.code <= 559 and r.lines

"""The Authentication-Results field: forged ones removed while streaming, ours well formed.

`ResultsFilter` sees the message in pieces of any size, as the listener hands them over;
whatever the cut, the output must be the same. What it may hold is bounded (one field,
`MAX_FIELD`); a longer field passes untouched. Our own field is parsed back with
`authres`, an independent RFC 8601 parser, also when the values came from a hostile
message.
"""

from __future__ import annotations

import authres
import pytest

from mailgate.server.authcheck.results import (
    MAX_FIELD,
    ResultsFilter,
    authserv_id_of,
    comment,
    results_header,
    value,
)

ID = "mx.example.net"

MESSAGE = (
    b"Received: from a by b; Sat, 5 Dec 2026 06:00:00 +0000\r\n"
    b"Authentication-Results: mx.example.net;\r\n\tdkim=pass header.d=bank.test\r\n"
    b"Authentication-Results: other.example; spf=pass smtp.mailfrom=x.test\r\n"
    b"authentication-results:   (a (nested) comment) MX.Example.NET 1; spf=pass\r\n"
    b"Authentication-Results: \"mx.example.net\"; dmarc=pass\r\n"
    b"Authentication-Results: mx.example.net.evil; arc=pass\r\n"
    b"X-Authentication-Results: mx.example.net; none\r\n"
    b"Subject: hi\r\n"
    b"\r\n"
    b"Authentication-Results: mx.example.net; this is the body\r\n"
)
EXPECTED = (
    b"Received: from a by b; Sat, 5 Dec 2026 06:00:00 +0000\r\n"
    b"Authentication-Results: other.example; spf=pass smtp.mailfrom=x.test\r\n"
    b"Authentication-Results: mx.example.net.evil; arc=pass\r\n"
    b"X-Authentication-Results: mx.example.net; none\r\n"
    b"Subject: hi\r\n"
    b"\r\n"
    b"Authentication-Results: mx.example.net; this is the body\r\n"
)


def run(data: bytes, size: int) -> tuple[bytes, ResultsFilter]:
    f = ResultsFilter(ID)
    out = b"".join(f.feed(data[i:i + size]) for i in range(0, len(data), size))
    return out + f.finish(), f


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1000, 100_000])
def test_forged_fields_go_whatever_the_pieces(size: int) -> None:
    out, f = run(MESSAGE, size)
    assert out == EXPECTED
    assert f.removed == 3


def test_a_message_that_is_all_header() -> None:
    data = b"Subject: x\r\nAuthentication-Results: mx.example.net; spf=pass\r\n"
    for size in (1, 5, 1000):
        assert run(data, size)[0] == b"Subject: x\r\n"


def test_a_field_too_long_to_hold_passes_untouched_and_memory_stays_bounded() -> None:
    long = b"Authentication-Results: mx.example.net;" + b"\r\n\tx=" + b"y" * 100 \
        * (MAX_FIELD // 50)
    data = long + b"\r\nSubject: after\r\n\r\nbody\r\n"
    for size in (1000, 65536):
        f = ResultsFilter(ID)
        out = bytearray()
        for i in range(0, len(data), size):
            out += f.feed(data[i:i + size])
            assert len(f._field) + len(f._line) <= MAX_FIELD + size
        out += f.finish()
        assert bytes(out) == data


def test_authserv_id_is_read_past_comments_and_quotes() -> None:
    assert authserv_id_of(" mx.example.net; spf=pass") == "mx.example.net"
    assert authserv_id_of(" (c) (d (e)) MX.example.net 1; none") == "mx.example.net"
    assert authserv_id_of(' "mx.example.net"; none') == "mx.example.net"
    assert authserv_id_of("mx.example.net;none") == "mx.example.net"
    assert authserv_id_of("") == ""


def test_our_field_parses_even_with_hostile_values() -> None:
    header = results_header(ID, [
        "spf=pass" + comment("a (nested) comment\\ with \x00 control\r\nand ünïcode")
        + " smtp.mailfrom=" + value("evil.test; dkim=pass"),
        "dkim=fail header.d=" + value('a"b\\c.test') + " header.b=" + value("ab/c+d=="),
        "dmarc=none header.from=" + value("good.test"),
    ])
    assert header.startswith(b"Authentication-Results: mx.example.net;\r\n\t")
    text = header.decode("ascii")
    _, _, rest = text.partition(":")
    parsed = authres.AuthenticationResultsHeader.parse_value(" ".join(rest.split()))
    assert parsed.authserv_id == ID
    assert [r.method for r in parsed.results] == ["spf", "dkim", "dmarc"]
    assert parsed.results[0].smtp_mailfrom == "evil.test; dkim=pass"  # one value, quoted
    assert all(len(line) < 998 for line in text.split("\r\n"))


def test_no_results_is_none() -> None:
    assert results_header(ID, []) == b"Authentication-Results: mx.example.net;\r\n\tnone\r\n"

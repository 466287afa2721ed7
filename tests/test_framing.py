"""DATA framing: terminator, unstuffing, bare CR/LF, limits, and smuggling immunity."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.codes.reply import Reply, ReplyError, parse_reply
from mailgate.smtp import framing, replies
from mailgate.smtp.framing import (
    ChunkReader,
    DataReader,
    ReplyReader,
    ReplyStreamError,
    all_crlf,
    dot_stuff,
    dot_stuff_sized,
    stuffed_size,
)


def feed_all(reader: DataReader, chunks: list[bytes]) -> tuple[bytes, bytes | None]:
    """Feed chunks until the end of data; return content and everything after the end."""
    out = []
    for i, c in enumerate(chunks):
        content, rest = reader.feed(c)
        out.append(content)
        if rest is not None:
            return b"".join(out), rest + b"".join(chunks[i + 1 :])
    return b"".join(out), None


def test_simple_message_and_pipelined_rest() -> None:
    content, rest = feed_all(DataReader(1000), [b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n"])
    assert content == b"Subject: x\r\n\r\nhello\r\n"
    assert rest == b"QUIT\r\n"


def test_empty_message() -> None:
    assert feed_all(DataReader(1000), [b".\r\n"]) == (b"", b"")


def test_message_of_one_empty_line() -> None:
    assert feed_all(DataReader(1000), [b"\r\n.\r\n"]) == (b"\r\n", b"")


def test_dot_unstuffing_including_first_line() -> None:
    content, _ = feed_all(DataReader(1000), [b"..first\r\nmid\r\n...\r\n.\r\n"])
    assert content == b".first\r\nmid\r\n..\r\n"


def test_terminator_split_across_every_boundary() -> None:
    wire = b"line one\r\n.dotted\r\nlast\r\n.\r\nNOOP\r\n"
    for cut in range(len(wire) + 1):
        content, rest = feed_all(DataReader(1000), [wire[:cut], wire[cut:]])
        assert content == b"line one\r\ndotted\r\nlast\r\n", cut
        assert rest == b"NOOP\r\n", cut


SMUGGLING = [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r.\n", b"\r\n.\r"]


@pytest.mark.parametrize("fake_end", SMUGGLING, ids=repr)
def test_smuggled_terminators_never_end_data(fake_end: bytes) -> None:
    wire = b"Subject: a\r\n\r\nbody" + fake_end + b"MAIL FROM:<evil@x.test>\r\n"
    reader = DataReader(10_000)
    content, rest = feed_all(reader, [wire])
    assert rest is None  # still in DATA
    content2, rest = feed_all(reader, [b".\r\n"])
    assert rest == b""
    assert b"MAIL FROM:<evil@x.test>" in content + content2
    assert reader.error is None


@pytest.mark.parametrize("fake_end", SMUGGLING, ids=repr)
def test_smuggled_terminators_rejected_in_reject_mode(fake_end: bytes) -> None:
    reader = DataReader(10_000, bare_newlines="reject")
    content, rest = feed_all(reader, [b"body" + fake_end + b"MAIL FROM:<e@x.test>\r\n.\r\n"])
    assert rest == b"" and content == b""
    assert reader.error == replies.DATA_BARE_LF


def test_normalize_turns_bare_newlines_into_crlf() -> None:
    content, _ = feed_all(DataReader(1000), [b"a\nb\rc\r\n.\r\n"])
    assert content == b"a\r\nb\r\nc\r\n"


def test_size_limit() -> None:
    reader = DataReader(10)
    content, rest = feed_all(reader, [b"0123456789abc\r\n.\r\nNOOP\r\n"])
    assert reader.error == replies.SIZE_EXCEEDED and content == b"" and rest == b"NOOP\r\n"


def test_line_limit_counts_crlf() -> None:
    ok = b"x" * 998 + b"\r\n.\r\n"
    reader = DataReader(10_000)
    assert feed_all(reader, [ok])[0] == b"x" * 998 + b"\r\n" and reader.error is None
    reader = DataReader(10_000)
    feed_all(reader, [b"x" * 999 + b"\r\n.\r\n"])
    assert reader.error == replies.DATA_LINE_TOO_LONG


def test_endless_line_is_bounded_and_refused() -> None:
    reader = DataReader(10**9)
    for _ in range(100):
        reader.feed(b"y" * 65536)
        assert len(reader._buf) <= reader.max_line + 2
    _, rest = reader.feed(b"\r\n.\r\n")
    assert rest == b"" and reader.error == replies.DATA_LINE_TOO_LONG


lines = st.lists(
    st.one_of(
        st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
        st.sampled_from([b".", b"..", b".x", b"", b"." * 5]),
    ),
    max_size=30,
)


@settings(max_examples=200)
@given(lines, st.integers(1, 50))
def test_dot_stuff_then_read_round_trips(body_lines: list[bytes], chunk: int) -> None:
    body = b"".join(line + b"\r\n" for line in body_lines)
    wire = dot_stuff(body) + b"RSET\r\n"
    chunks = [wire[i : i + chunk] for i in range(0, len(wire), chunk)]
    content, rest = feed_all(DataReader(10**6), chunks)
    assert content == body
    assert rest is not None


@settings(max_examples=300)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"x", b"\n\r", b"\r\r\n"]),
                max_size=40))
def test_dot_stuff_sized_is_dot_stuff_and_the_size_the_server_reads(parts: list[bytes]) -> None:
    # Any line ends at all, bare CR and LF among them: the size said in MAIL FROM SIZE=
    # is what the server counts (stuffed_size of the wire), and what it reads back.
    content = b"".join(parts)
    wire, size = dot_stuff_sized(content)
    assert wire == dot_stuff(content)
    assert size == stuffed_size(wire)
    read, rest = feed_all(DataReader(10**6), [wire])
    assert rest == b"" and len(read) == size


@settings(max_examples=300)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"x", b"\n\r", b"\r\r\n",
                                 b"\r\n.\r\n"]), max_size=40),
       st.integers(1, 30))
def test_what_data_reads_is_crlf_throughout_so_delivery_may_skip_its_check(
        parts: list[bytes], chunk: int) -> None:
    # The queue stores "CRLF throughout" for content read by DATA, and delivery then
    # dot-stuffs it without looking at its line ends: that is only safe if the reader
    # never lets a bare CR or LF through, however the line ends are spelled and cut.
    body = b"".join(parts).replace(b"\n.", b"\n..")  # no terminator before the end
    raw = (b"." if body.startswith(b".") else b"") + body + b"\r\n.\r\n" if body else b".\r\n"
    chunks = [raw[i : i + chunk] for i in range(0, len(raw), chunk)]
    content, rest = feed_all(DataReader(10**6), chunks)
    assert rest == b""
    assert all_crlf(content) == (re.search(rb"\r(?!\n)|(?<!\r)\n", content) is None)
    assert all_crlf(content)
    assert dot_stuff_sized(content, crlf=True) == dot_stuff_sized(content)


def test_all_crlf_finds_every_stray_cr_and_lf() -> None:
    assert all_crlf(b"") and all_crlf(b"a\r\nb\r\n") and all_crlf(b"no line end")
    for bad in (b"a\nb", b"a\rb", b"a\n\rb", b"\r\r\n", b"\r\n\n", b"a\r", b"\nb"):
        assert not all_crlf(bad), bad
    # Skipping the check trusts the caller: content with a bare LF goes out as it is.
    assert dot_stuff_sized(b"a\nb\r\n")[0] == b"a\r\nb\r\n.\r\n"
    assert dot_stuff_sized(b"a\nb\r\n", crlf=True)[0] == b"a\nb\r\n.\r\n"


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=200), max_size=20), st.sampled_from(["normalize", "reject"]))
def test_arbitrary_input_never_raises_and_stays_bounded(chunks: list[bytes], mode: str) -> None:
    reader = DataReader(5000, max_line=1000, bare_newlines=mode)
    for c in chunks:
        _, rest = reader.feed(c)
        assert len(reader._buf) <= 1000 + 2 + len(c)
        if rest is not None:
            assert b"\r\n.\r\n" in b"\r\n" + b"".join(chunks)
            break


pieces = st.lists(st.one_of(
    st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"..", b"\r\n.", b"\n."]),
    st.binary(max_size=40), st.just(b"x" * 97)), max_size=30)


@settings(max_examples=300)
@given(pieces, st.lists(st.integers(1, 120), min_size=1, max_size=8),
       st.sampled_from(["normalize", "reject"]))
def test_where_chunks_end_never_changes_what_is_accepted(
        parts: list[bytes], sizes: list[int], mode: str) -> None:
    """Found by fuzzing: bare-LF lines were measured differently when a chunk ended among
    them. Accepted or refused, content and what follows the end must not depend on it
    (which refusal is given may)."""
    data = b"".join(parts) + b"\r\n.\r\n"
    whole = DataReader(3000, max_line=100, bare_newlines=mode)
    content, rest = feed_all(whole, [data])
    chunks, i, k = [], 0, 0
    while i < len(data):
        chunks.append(data[i : i + sizes[k % len(sizes)]])
        i += sizes[k % len(sizes)]
        k += 1
    split = DataReader(3000, max_line=100, bare_newlines=mode)
    content2, rest2 = feed_all(split, chunks)
    assert (whole.error is None) == (split.error is None), (whole.error, split.error)
    assert rest2 == rest
    if whole.error is None:
        assert content2 == content and split.size == whole.size


def test_chunk_reader_takes_only_the_chunk() -> None:
    r = ChunkReader(max_size=100)
    r.chunk(5, last=False)
    buf = bytearray(b"abc")
    assert r.feed(buf) == b"abc" and r.left == 2 and buf == b""
    buf = bytearray(b"deQUIT\r\n")
    assert r.feed(buf) == b"de" and r.left == 0 and buf == b"QUIT\r\n"
    r.chunk(0, last=True)
    assert r.size == 5 and r.last and r.error is None


def test_chunk_reader_refuses_an_oversized_message_once() -> None:
    r = ChunkReader(max_size=4)
    r.chunk(3, last=False)
    assert r.feed(bytearray(b"abc")) == b"abc"
    r.chunk(3, last=True)
    assert r.feed(bytearray(b"d")) == b"d"  # 4 octets: at the limit, not over it
    assert r.feed(bytearray(b"e")) is None
    assert r.error == replies.SIZE_EXCEEDED and r.discarding
    assert r.feed(bytearray(b"f")) is None and r.left == 0


def test_chunk_reader_discards_a_chunk_with_no_transaction() -> None:
    r = ChunkReader(max_size=0)
    r.chunk(4, last=True, discard=True)
    buf = bytearray(b"abcdRSET\r\n")
    assert r.feed(buf) is None and buf == b"RSET\r\n" and r.error is None


def test_reply_reader_groups_lines_and_keeps_the_rest() -> None:
    r = ReplyReader(max_line=512, max_lines=3)
    r.feed(b"250-mx.example\r\n250 SIZE 10\r\n354 go")
    first = r.read()
    assert first is not None and first.code == 250 and len(first.lines) == 2
    assert r.read() is None and r.buffered == len(b"354 go")
    r.feed(b" on\r\n")
    second = r.read()
    assert second is not None and second.code == 354


def test_a_one_line_reply_read_before_is_read_the_same_and_the_memory_stays_bounded(
        ) -> None:
    """The reader keeps the one-line replies it has read (most of a server's replies
    are the same few): the same bytes read the same again, wherever they come in a
    stream, and as many different replies as a server likes take a bounded room."""
    framing._ONE_LINE.clear()
    r = ReplyReader(max_line=512, max_lines=5)
    r.feed(b"250 2.1.0 Ok\r\n")
    first = r.read()
    assert first == Reply(250, "2.1.0", ("Ok",)) and b"250 2.1.0 Ok" in framing._ONE_LINE
    # The same text as a continuation, then as the last line of a reply, then alone
    # with a bare LF; and a line the reader refuses is never one it kept.
    r.feed(b"250-2.1.0 Ok\r\n250 2.1.0 Ok\r\n250 2.1.0 Ok\n250 2.1.0 Ok\r\n")
    assert r.read() == Reply(250, "2.1.0", ("Ok", "Ok"))
    assert r.read() == first and r.read() == first
    r.feed(b"250 a\rb\r\n")
    with pytest.raises(ReplyStreamError):
        r.read()
    too_long = b"250 " + b"x" * 300
    r.feed(too_long + b"\r\n")
    assert r.read() == Reply(250, None, ("x" * 300,)) and too_long not in framing._ONE_LINE
    for i in range(3 * framing._ONE_LINE_MAX):
        r.feed(b"250 2.0.0 Ok: queued as %d\r\n" % i)
        assert r.read() == Reply(250, "2.0.0", (f"Ok: queued as {i}",))
    assert len(framing._ONE_LINE) <= framing._ONE_LINE_MAX


@pytest.mark.parametrize(("data", "too_long"), [
    (b"hello\r\n", False),  # not a reply
    (b"250-a\r\n250-b\r\n250-c\r\n", False),  # more lines than allowed
    (b"2" * 513, True),  # a partial line already over the limit
])
def test_reply_reader_refuses_what_is_not_a_reply(data: bytes, too_long: bool) -> None:
    r = ReplyReader(max_line=512, max_lines=3)
    r.feed(data)
    with pytest.raises(ReplyStreamError) as exc:
        r.read()
    assert exc.value.too_long is too_long



_CODES = st.sampled_from(["250", "354", "451", "550", "571", "199", "650", "25x",
                          "\u0662\u0665\u0660"])  # Arabic-Indic 250: digits, not ASCII
_TEXT = st.text(st.sampled_from("2.0.1 5 4 ok\rHi"), max_size=12)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_CODES, _TEXT), min_size=0, max_size=3), _CODES, _TEXT,
       st.sampled_from(["-", "x"]), st.sampled_from([" ", ""]))
def test_the_reader_reads_a_reply_as_parse_reply_does(
        middle: list[tuple[str, str]], code: str, text: str, more: str, end: str) -> None:
    """The reader parses each line once as it comes and builds the reply from those
    parts; it must agree with `parse_reply` on the same text: the same reply, or both
    refuse it (mixed codes, a bare CR, a code that is not one, a bad separator)."""
    lines = [f"{c}{more}{t}" for c, t in middle] + [f"{code}{end}{text if end else ''}"]
    wire = "\r\n".join(lines) + "\r\n"
    try:
        expected: Reply | None = parse_reply(wire)
    except ReplyError:
        expected = None
    r = ReplyReader(max_line=512, max_lines=10)
    r.feed(wire.encode())
    try:
        got = r.read()
    except ReplyStreamError:
        got = None
    assert got == expected, wire

"""Japanese bounces in ISO-2022-JP read right: the words readable, the SMTP reply and
status found, by `read_bounce` and by `mailgate explain --bounce` alike.

The fixtures (tests/data/bounces/, SOURCES.md) cover ISO-2022-JP declared as the
charset, escape sequences written with no charset at all (in the Subject too), encoded
words cut in the middle of a character and of an escape sequence, and lines a mailer
wrapped inside an escape sequence and inside a two-byte character. The variants below
are made from them as mail programs make them: a bounce saved or pasted as UTF-8 (or
EUC-JP) that keeps its ISO-2022-JP label, the way the Sisimai corpus holds several
(lhost-kddi-01, lhost-notes-01, lhost-mfilter-01 under dos/), and a body in base64,
wrapped at 76 characters or encoded line by line, each line with its own padding.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailgate.cli import main
from mailgate.codes.bounce import read_bounce
from mailgate.codes.bounce.mime import _to_text, read_mail

DATA = Path(__file__).parent / "data" / "bounces"
DOMINO = (DATA / "domino-iso2022jp-userunknown.eml").read_bytes()
MFILTER = (DATA / "mfilter-iso2022jp-userunknown.eml").read_bytes()
REASON = "ユーザー Ren (ren.tanaka@example.co.jp) は Domino ディレクトリには見つかりません。"
SUBJECT = "DELIVERY FAILURE: ユーザー Ren は Domino ディレクトリには見つかりません。"
MFILTER_LINES = ("このメールは「m-FILTER」が自動的に生成して送信しています。\n"
                 "メールサーバーとの通信中、下記の理由により\n"
                 "このメールは送信できませんでした。\n\n"
                 "以下のメールアドレスへの送信に失敗しました。\n")
MFILTER_REPLY = ("550 5.1.1 <kenji.sato@example.co.jp>: Recipient address rejected: "
                 "User unknown in local recipient table")


def _domino_text_part(data: bytes, encode: Callable[[bytes], tuple[str, bytes]]) -> bytes:
    """DOMINO with its text part's body replaced by `encode(body)`: (CTE, bytes)."""
    head, _, rest = data.partition(b"Content-Transfer-Encoding: 7bit\n\n")
    body, boundary, tail = rest.partition(b"\n--==IFJ")
    cte, encoded = encode(body)
    return head + f"Content-Transfer-Encoding: {cte}\n\n".encode() + encoded + boundary + tail


def _saved_as(charset: str, raw_subject: bool) -> bytes:
    """DOMINO as a mail program saves it: its ISO-2022-JP turned into `charset`, the
    label left as it was; with `raw_subject`, the Subject written out raw too."""
    data = DOMINO.decode("iso-2022-jp").encode(charset)
    if raw_subject:
        data = re.sub(rb"Subject: .*?\n(?=Date:)", f"Subject: {SUBJECT}\n".encode(charset),
                      data, count=1, flags=re.S)
    assert b"\x1b" not in data and b"charset=ISO-2022-JP" in data
    return data


def _check_domino(data: bytes, subject: bool = True, reply: bool = True) -> None:
    mail = read_mail(data)
    if subject:
        assert mail.header("subject") == SUBJECT
    assert f"because:\n\n  {REASON}" in mail.texts[0]
    assert "Subject: 来週の打ち合わせ" in mail.texts[0]
    [r] = read_bounce(data).recipients
    assert (r.address, r.status, r.reason) == ("ren.tanaka@example.co.jp", "5.1.1",
                                               "userunknown")
    if reply:
        assert r.reply is not None and "Domino ディレクトリには見つかりません" in r.reply


def test_declared_iso_2022_jp_and_encoded_words_cut_anywhere() -> None:
    # The Subject's words end in two-byte mode, one inside an escape sequence: they
    # are one text (RFC 2047 6.2 joins adjacent words of one charset).
    assert b"?=\n =?ISO-2022-JP?B?QiVH?=" in DOMINO
    _check_domino(DOMINO)


def test_undeclared_escapes_and_lines_wrapped_inside_them() -> None:
    assert b"charset" not in MFILTER.lower() and b"\x1b$\nB" in MFILTER
    mail = read_mail(MFILTER)
    assert mail.header("subject") == "failure notice （送信エラー）"
    assert mail.texts[0].startswith(MFILTER_LINES)
    [r] = read_bounce(MFILTER).recipients
    assert (r.address, r.status, r.reason) == ("kenji.sato@example.co.jp", "5.1.1",
                                               "userunknown")
    assert r.reply == MFILTER_REPLY


@pytest.mark.parametrize("charset", ["utf-8", "euc-jp", "cp932"])
def test_a_saved_copy_still_labelled_iso_2022_jp(charset: str) -> None:
    # A raw Subject is read as UTF-8 (no label says otherwise): only the UTF-8 copy
    # writes it out raw here. The delivery-status part has no label at all (RFC 3464:
    # 7-bit ASCII), and its Diagnostic-Code is read in Japanese in each of the three.
    _check_domino(_saved_as(charset, raw_subject=charset == "utf-8"))


@pytest.mark.parametrize("text", [
    "RÉSUMÉ: DESTINATAIRE INCONNU, BOÎTE PLEINE",
    "ÄRGER MIT DER ZUSTELLUNG: EMPFÄNGER UNBEKANNT",
    "Le candidat réélu: adresse inconnue",
])
@pytest.mark.parametrize("charset", ["latin-1", "cp1252"])
def test_unlabelled_latin_1_is_not_taken_for_japanese(text: str, charset: str) -> None:
    # Each of these decodes as Shift_JIS (half-width katakana, a kanji), one as EUC-JP
    # too; without kana the guess is refused, and the text stays what it was, its
    # accents replaced as before.
    raw = text.encode(charset)
    assert raw.decode("cp932")  # a guess that would have read it, as nonsense
    got = _to_text(raw, None)
    assert got.replace("\ufffd", "") == "".join(c for c in text if c.isascii())


def test_a_base64_body_wrapped_or_encoded_line_by_line() -> None:
    def wrapped(body: bytes) -> tuple[str, bytes]:  # 76 characters a line, cut anywhere
        return "base64", base64.encodebytes(body)

    def line_by_line(body: bytes) -> tuple[str, bytes]:
        return "base64", b"\n".join(base64.b64encode(line + b"\n")
                                    for line in body.split(b"\n")) + b"\n"

    for encode in (wrapped, line_by_line):
        data = _domino_text_part(DOMINO, encode)
        assert b"\x1b" not in data.split(b"Content-Transfer-Encoding: base64", 1)[1][:400]
        _check_domino(data)
    assert re.search(rb"=\n[A-Za-z0-9+/]", _domino_text_part(DOMINO, line_by_line))


@pytest.mark.parametrize("data,words", [
    (DOMINO, [SUBJECT, "Domino ディレクトリには見つかりません", "5.1.1"]),
    (MFILTER, ["failure notice （送信エラー）", "Recipient address rejected", "5.1.1"]),
    (_saved_as("utf-8", raw_subject=True), [SUBJECT, "ディレクトリには見つかりません"]),
], ids=["declared", "undeclared-wrapped", "saved-as-utf-8"])
def test_explain_shows_the_japanese_text_and_the_reply(data: bytes, words: list[str]) -> None:
    r = CliRunner().invoke(main, ["explain", "--bounce", "-", "--lang", "en"], input=data)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    for word in words:
        assert " ".join(word.split()) in text, (word, r.output)
    assert "\ufffd" not in r.output and "\x1b" not in r.output
    js = CliRunner().invoke(main, ["explain", "--bounce", "-", "--format", "json"],
                            input=data)
    obj = json.loads(js.output)
    [rec] = obj["recipients"]
    assert rec["status"] == "5.1.1" and rec["reason"] == "userunknown"
    assert "\ufffd" not in js.output

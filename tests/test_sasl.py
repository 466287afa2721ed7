"""AUTH PLAIN and LOGIN (`smtp/sasl.py`): what the client writes, the server decodes back
to the same credentials."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailgate.codes.reply import Reply
from mailgate.smtp import replies
from mailgate.smtp.sasl import Exchange, encode, plain_response

# Text without NUL (PLAIN's separator) and below the surrogates (not UTF-8), emoji too.
secret = st.text(st.one_of(st.characters(min_codepoint=1, max_codepoint=0xD7FF),
                           st.characters(min_codepoint=0x1F600, max_codepoint=0x1F64F)),
                 max_size=30)


@given(secret.filter(bool), secret)
def test_plain_round_trip(user: str, password: str) -> None:
    assert Exchange("PLAIN").step(plain_response(user, password), initial=True) == (
        "", user, password)


@given(secret, secret)
def test_login_round_trip(user: str, password: str) -> None:
    ex = Exchange("LOGIN")
    assert ex.start() == b"334 VXNlcm5hbWU6\r\n"
    assert ex.step(encode(user)) == b"334 UGFzc3dvcmQ6\r\n"
    assert ex.step(encode(password)) == ("", user, password)


def test_refusals() -> None:
    assert Exchange("PLAIN").step("*") == replies.AUTH_CANCELLED
    assert Exchange("PLAIN").step("not base64!") == replies.AUTH_BAD_BASE64
    assert Exchange("PLAIN").step(encode("no-separators")) == replies.AUTH_MALFORMED
    assert Exchange("PLAIN").step("=", initial=True) == replies.AUTH_MALFORMED
    bad_utf8 = "AHUA/w=="  # \0 u \0 \xff
    got = Exchange("PLAIN").step(bad_utf8)
    assert isinstance(got, Reply) and got == replies.AUTH_MALFORMED

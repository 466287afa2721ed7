"""Fuzz the SMTP client session (`mailgate.smtp.client.ClientSession`) with server bytes.

Input: three header bytes, then the bytes a server sends.

- byte 0, configuration: bits 0-1 TLS (0 never, 1 may, 2 require, 3 may), 4 credentials,
  8 AUTH without TLS, 16 no PIPELINING, 32 prefer BDAT, 64 verify only, 128 implicit TLS
- byte 1, what the shell does: 1 a second message, 2 a UTF-8 recipient, 4 8-bit
  content, 8 the TLS handshake fails, 16 abort() (a timeout) instead of EOF at the end,
  32 7-octet BDAT chunks, 64 LOGIN before PLAIN, 128 quit() at once (not on Idle)
- byte 2: chunk size the bytes arrive in (0: all at once)

Checked beyond "no exception": every message given to send() ends in exactly one
MessageResult, with one outcome per recipient, in order; the session ends closed, once;
the input held stays within `max_reply_line`; a reply mailgate makes up (remote=False)
carries no control characters from the server.
"""

from __future__ import annotations

from fuzzlib import FuzzFinding, allowed, controls

from mailgate.smtp.address import Address
from mailgate.smtp.client import (
    NEED_DATA,
    ClientConfig,
    ClientSession,
    Closed,
    Credentials,
    Envelope,
    Idle,
    MessageResult,
    Recipient,
    StartTLS,
)

_TLS = ("never", "may", "require", "may")
_SENDER = Address("sender", "example.org")
_CONTENT = b"Subject: fuzz\r\n\r\nHello\r\n.leading dot\r\nbare\nLF\r\n"


def _config(flags: int, shell: int) -> ClientConfig:
    return ClientConfig(
        helo_name="client.test",
        tls=_TLS[flags & 3],  # type: ignore[arg-type]
        credentials=Credentials("alice", "secret") if flags & 4 else None,
        auth_without_tls=bool(flags & 8),
        pipelining=not flags & 16,
        prefer_bdat=bool(flags & 32),
        verify_only=bool(flags & 64),
        bdat_chunk_size=7 if shell & 32 else 1024 * 1024,
        auth_mechanisms=("LOGIN", "PLAIN") if shell & 64 else ("PLAIN", "LOGIN"),
    )


def _envelopes(shell: int) -> list[tuple[Envelope, bytes]]:
    rcpts = [
        Recipient(Address("rcpt", "example.org"), notify=("SUCCESS", "FAILURE"),
                  orcpt=("rfc822", "rcpt@example.org")),
        Recipient(Address("other", "example.net")),
    ]
    if shell & 2:
        rcpts.append(Recipient(Address("usér", "exämple.org")))
    content = _CONTENT + (b"caf\xc3\xa9\r\n" if shell & 4 else b"")
    out = [(Envelope(_SENDER, tuple(rcpts), ret="HDRS", envid="fuzz-1"), content)]
    if shell & 1:
        out.append((Envelope(Address("", ""), (Recipient(Address("postmaster", "")),)),
                    b"x" * 50 + b"\r\n"))
    return out


class _Driver:
    def __init__(self, c: ClientSession, shell: int,
                 sent: dict[int, Envelope]) -> None:
        self.c = c
        self.shell = shell
        self.sent = sent
        self.results: dict[int, MessageResult] = {}
        self.closed = 0

    def drain(self) -> None:
        c = self.c
        while (ev := c.next_event()) is not NEED_DATA:
            if self.closed:
                raise FuzzFinding(f"event {ev!r} after Closed")
            if isinstance(ev, StartTLS):
                if self.shell & 8:
                    c.tls_failed("fuzzed handshake failure")
                else:
                    c.tls_established()
            elif isinstance(ev, MessageResult):
                self._result(ev)
            elif isinstance(ev, Idle):
                c.quit()
            elif isinstance(ev, Closed):
                self.closed += 1
        c.data_to_send()
        if c.buffered > c.config.max_reply_line:
            raise FuzzFinding(f"{c.buffered} octets buffered (max {c.config.max_reply_line})")

    def _result(self, ev: MessageResult) -> None:
        if ev.handle in self.results:
            raise FuzzFinding(f"two results for message {ev.handle}")
        env = self.sent.get(ev.handle)
        if env is None:
            raise FuzzFinding(f"a result for unknown message {ev.handle}")
        got = tuple(r.recipient for r in ev.results)
        if got != env.recipients:
            raise FuzzFinding(f"message {ev.handle}: outcomes for {got!r}, "
                              f"recipients {env.recipients!r}")
        for r in ev.results:
            o = r.outcome
            if not o.remote and controls(o.reply.text) and not allowed("client-controls"):
                raise FuzzFinding(f"a local reply carries server control characters: "
                                  f"{o.reply!r}")
        self.results[ev.handle] = ev


def one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    flags, shell, chunk = data[0], data[1], data[2]
    wire = data[3:]
    c = ClientSession(_config(flags, shell), tls_active=bool(flags & 128))
    sent: dict[int, Envelope] = {}
    for env, content in _envelopes(shell):
        sent[c.send(env, content)] = env
    if shell & 128:
        c.quit()
    d = _Driver(c, shell, sent)
    d.drain()
    step = chunk or len(wire) or 1
    for i in range(0, len(wire), step):
        c.receive_data(wire[i : i + step])
        d.drain()
    if shell & 16:
        c.abort()
    else:
        c.receive_data(b"")
    d.drain()
    if not c.closed or d.closed != 1:
        raise FuzzFinding(f"session closed={c.closed}, Closed events {d.closed}")
    missing = set(sent) - set(d.results)
    if missing:
        raise FuzzFinding(f"messages {sorted(missing)} never got a result")


if __name__ == "__main__":
    from fuzzlib import main

    main("fuzz_client")

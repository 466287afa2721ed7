"""The client session's observer: every command line written and every reply read, with
its stage, in order, and never a password."""

from __future__ import annotations

import pytest

from mailgate.codes.reply import Reply
from mailgate.smtp import server as srv
from mailgate.smtp.client import (
    NEED_DATA,
    ClientConfig,
    ClientSession,
    Credentials,
    Envelope,
    Stage,
)

PASSWORD = "s3cret-pw"


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, Stage]] = []  # ("C", line, stage) / ("S", code, stage)

    def command(self, line: str, stage: Stage) -> None:
        self.seen.append(("C", line, stage))

    def reply(self, reply: Reply, stage: Stage) -> None:
        self.seen.append(("S", str(reply.code), stage))


def converse(cfg: ClientConfig, scfg: srv.SessionConfig) -> Recorder:
    rec = Recorder()
    client = ClientSession(cfg, observer=rec)
    server = srv.ServerSession(scfg)
    client.send(Envelope.make("a@client.example", ["b@mx.example"]), b"Subject: x\r\n\r\nhi\r\n")
    client.quit()
    server.greet()
    for _ in range(100):
        while (ev := server.next_event()) is not srv.NEED_DATA:
            if ev.needs_decision:
                server.respond(None)
        data = server.data_to_send()
        if data or server.closed:
            client.receive_data(data)  # b"": the server closed
        while client.next_event() is not NEED_DATA:
            pass
        if client.closed:
            return rec
        server.receive_data(client.data_to_send())
    raise AssertionError("the dialogue did not finish")


AUTH_SERVER = srv.SessionConfig(hostname="mx.example", auth=True, auth_requires_tls=False)


def test_observer_sees_each_command_and_reply_with_its_stage() -> None:
    cfg = ClientConfig(helo_name="relay.example", tls="never", auth_without_tls=True,
                       credentials=Credentials("user", PASSWORD))
    rec = converse(cfg, AUTH_SERVER)
    size = len(b"Subject: x\r\n\r\nhi\r\n")
    assert rec.seen == [
        ("S", "220", "greeting"),
        ("C", "EHLO relay.example", "ehlo"),
        ("S", "250", "ehlo"),
        ("C", "AUTH PLAIN *****", "auth"),
        ("S", "235", "auth"),
        ("C", f"MAIL FROM:<a@client.example> SIZE={size}", "mail"),
        ("C", "RCPT TO:<b@mx.example>", "rcpt"),
        ("C", "DATA", "data"),
        ("S", "250", "mail"),
        ("S", "250", "rcpt"),
        ("S", "354", "data"),
        ("S", "250", "end-of-data"),
        ("C", "QUIT", "quit"),
        ("S", "221", "quit"),
    ]


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_observer_never_sees_the_credentials(mech: str) -> None:
    cfg = ClientConfig(tls="never", auth_without_tls=True, auth_mechanisms=(mech,),
                       credentials=Credentials("user", PASSWORD))
    rec = converse(cfg, AUTH_SERVER)
    lines = [line for kind, line, stage in rec.seen if kind == "C" and stage == "auth"]
    assert lines == (["AUTH PLAIN *****"] if mech == "PLAIN" else ["AUTH LOGIN", "*****",
                                                                   "*****"])
    assert ("S", "235", "auth") in rec.seen


def test_observer_sees_bdat_lines_without_their_chunks() -> None:
    cfg = ClientConfig(tls="never", prefer_bdat=True, pipelining=False, bdat_chunk_size=10)
    rec = converse(cfg, srv.SessionConfig())
    bdat = [(kind, line) for kind, line, stage in rec.seen if stage == "bdat"]
    assert bdat == [("C", "BDAT 10"), ("S", "250"), ("C", "BDAT 8 LAST"), ("S", "250")]


def test_a_reply_to_no_command_is_seen_as_the_connection_s() -> None:
    rec = Recorder()
    client = ClientSession(ClientConfig(tls="never"), observer=rec)
    client.receive_data(b"220 mx.example ESMTP\r\n")
    client.receive_data(b"250 mx.example\r\n")  # answers EHLO
    client.receive_data(b"421 4.4.2 idle too long\r\n")
    assert rec.seen[-1] == ("S", "421", "connection")
    assert client.closed

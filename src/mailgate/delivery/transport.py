"""The asyncio shell around the sans-I/O ClientSession: one SMTP client connection.

It moves bytes, does the TLS handshake when the session says so, and keeps the clock
with RFC 5321's per-step timeouts; every protocol decision stays in the session. Used by
`mailgate send`, the delivery engine and `mailgate probe` (which taps the bytes, through
a `Tap`, to show every command and reply). The TLS contexts delivery and probe use are
made here too: opportunistic (`may`, `encrypt`) and verifying (`verify`, `probe --verify`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mailgate.smtp.client import (
    ClientSession,
    Closed,
    Envelope,
    Established,
    Event,
    Idle,
    MessageResult,
    StartTLS,
)
from mailgate.smtp.server import NEED_DATA

__all__ = ["STAGE_TIMEOUTS", "ClientRun", "ConnectError", "Tap", "close",
           "opportunistic_context", "run_client", "tls_failure", "verifying_context"]

# RFC 5321 4.5.3.2: the minimum time a client waits for each reply.
STAGE_TIMEOUTS: dict[str, float] = {
    "connection": 30.0,
    "greeting": 300.0,
    "ehlo": 300.0,
    "helo": 300.0,
    "starttls": 120.0,
    "tls": 60.0,
    "auth": 120.0,
    "rset": 120.0,
    "mail": 300.0,
    "rcpt": 300.0,
    "data": 120.0,
    "bdat": 600.0,
    "end-of-data": 600.0,
    "quit": 60.0,
}


class ConnectError(OSError):
    """No SMTP conversation could start: refused, unreachable, timed out, TLS failed.
    `tls` is True when the connection was made but its implicit TLS handshake failed."""

    def __init__(self, message: str, tls: bool = False) -> None:
        super().__init__(message)
        self.tls = tls


@dataclass
class ClientRun:
    """What happened on one connection."""

    established: Established | None = None
    results: list[MessageResult] = field(default_factory=list)
    closed: Closed | None = None
    tls: str | None = None  # "TLSv1.3 TLS_AES_256_GCM_SHA384"
    peer: str = ""


class Tap(Protocol):
    """Sees the raw conversation of a run_client connection (for `mailgate probe`).

    `sent` gets each chunk the session wrote, `received` each chunk read (not the
    end-of-file), `tls_up` the SSL object right after a STARTTLS handshake succeeded,
    before the session hears of it."""

    def sent(self, data: bytes) -> None: ...

    def received(self, data: bytes) -> None: ...

    def tls_up(self, ssl_object: Any) -> None: ...


def _tls_name(writer: asyncio.StreamWriter) -> str | None:
    obj = writer.get_extra_info("ssl_object")
    if obj is None:
        return None
    cipher = obj.cipher()
    return f"{obj.version()} {cipher[0] if cipher else ''}".strip()


async def run_client(
    host: str,
    port: int,
    session: ClientSession,
    messages: Sequence[tuple[Envelope, bytes]],
    *,
    tls_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    implicit_tls: bool = False,
    timeouts: dict[str, float] | None = None,
    local_address: str | None = None,
    on_event: Callable[[Event], None] | None = None,
    run: ClientRun | None = None,
    tap: Tap | None = None,
    unix_path: str | None = None,
) -> ClientRun:
    """Connect, hand the session every message, run it to the end, close.

    Raises ConnectError only when the TCP (or implicit TLS) connection cannot be made;
    anything after that is an outcome in the returned ClientRun. `run`, when given, is
    the ClientRun filled in as the conversation goes (an `on_event` callback may read
    it: the TLS in use, what EHLO offered). `timeouts` may also hold "close": how long to
    wait for the connection to go at the end (5 s otherwise). `tap` sees the bytes.
    `unix_path` connects to that Unix socket instead of host:port (LMTP; `host` is then
    only the name shown).
    """
    limits = {**STAGE_TIMEOUTS, **(timeouts or {})}
    ctx = tls_context or opportunistic_context()
    try:
        connecting = (
            asyncio.open_unix_connection(unix_path, limit=1 << 20) if unix_path is not None
            else asyncio.open_connection(
                host, port, ssl=ctx if implicit_tls else None,
                server_hostname=(server_hostname or host) if implicit_tls else None,
                local_addr=(local_address, 0) if local_address else None,
                limit=1 << 20,
            ))
        reader, writer = await asyncio.wait_for(connecting, limits["connection"])
    except ssl.SSLError as exc:
        raise ConnectError(f"TLS with {host} port {port} failed: {tls_failure(exc)}",
                           tls=True) from exc
    except (OSError, TimeoutError) as exc:
        where = unix_path if unix_path is not None else f"{host} port {port}"
        raise ConnectError(f"cannot connect to {where}: {exc or 'timed out'}") from exc
    run = run if run is not None else ClientRun()
    run.peer = unix_path if unix_path is not None else f"{host}:{port}"
    run.tls = _tls_name(writer) if implicit_tls else None
    for env, content in messages:
        session.send(env, content)
    tls_broken = False
    try:
        while True:
            while (ev := session.next_event()) is not NEED_DATA:
                if on_event is not None:
                    on_event(ev)
                if isinstance(ev, StartTLS):
                    await _flush(writer, session, tap)
                    try:
                        await asyncio.wait_for(
                            writer.start_tls(ctx, server_hostname=server_hostname or host),
                            limits["tls"],
                        )
                    except (OSError, ssl.SSLError, TimeoutError) as exc:
                        tls_broken = True
                        session.tls_failed(tls_failure(exc))
                    else:
                        run.tls = _tls_name(writer)
                        if tap is not None:
                            tap.tls_up(writer.get_extra_info("ssl_object"))
                        session.tls_established()
                elif isinstance(ev, Established):
                    run.established = ev
                elif isinstance(ev, MessageResult):
                    run.results.append(ev)
                elif isinstance(ev, Idle):
                    session.quit()
                elif isinstance(ev, Closed):
                    run.closed = ev
            await _flush(writer, session, tap)
            if session.closed:
                break
            stage = session.awaiting or "quit"
            try:
                data = await asyncio.wait_for(reader.read(65536), limits.get(stage, 300.0))
            except TimeoutError:
                session.abort()
                continue
            except (OSError, ssl.SSLError):
                data = b""
            if data and tap is not None:
                tap.received(data)
            session.receive_data(data)
    finally:
        await close(writer, tls_broken, limits.get("close", 5.0))
    return run


def tls_failure(exc: BaseException) -> str:
    """Why a TLS handshake failed, in words (some errors carry no message at all)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


async def close(writer: asyncio.StreamWriter, tls_broken: bool, grace: float) -> None:
    """Close a client connection, waiting at most `grace` seconds for it to go.

    After a failed start_tls the stream's own protocol is no longer attached, so
    wait_closed() would never finish: such a connection is dropped outright."""
    if tls_broken:
        writer.transport.abort()
        return
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), grace)


async def _flush(writer: asyncio.StreamWriter, session: ClientSession,
                 tap: Tap | None) -> None:
    out = session.data_to_send()
    if out:
        if tap is not None:
            tap.sent(out)
        writer.write(out)
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.drain()


@functools.cache
def opportunistic_context() -> ssl.SSLContext:
    """Opportunistic TLS, like Postfix's `may`: encrypt, but do not verify the peer.

    Made once and shared by every connection (an SSLContext is meant to be shared):
    create_default_context() loads the system's CA store, some 25 ms of CPU, which per
    connection cost more than the SMTP conversation itself."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def verifying_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """For `verify` (and `probe --verify`): the peer's chain must lead to a trusted CA
    (`ca_file`, or the system's store) and its certificate must name the host; TLS 1.2
    at least. OSError or ssl.SSLError when `ca_file` cannot be read as PEM CAs.

    Not cached here: each caller keeps the one it made (the engine for its lifetime)."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx

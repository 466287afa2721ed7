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

__all__ = ["STAGE_TIMEOUTS", "ClientRun", "ConnectError", "Kept", "Tap", "close",
           "opportunistic_context", "quit_client", "resume_client", "run_client",
           "tls_failure", "verifying_context"]

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
    first_handle: int = 1  # the session's handle of this run's first message
    reused: bool = False  # over a connection kept from an earlier run (resume_client)
    kept: bool = False  # the connection was kept open, idle, at the end


@dataclass(eq=False)
class Kept:
    """An open connection whose session is idle, kept for more mail (`resume_client`)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    session: ClientSession
    ctx: ssl.SSLContext
    server_hostname: str
    peer: str
    opened: float  # the event loop's clock when it connected
    tls: str | None = None
    established: Established | None = None
    tls_broken: bool = False
    uses: int = 1  # runs it carried
    messages: int = 0  # messages handed to it, in all its runs
    slot: str | None = None  # the delivery engine's cluster connection slot, held idle


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
    keep: Callable[[Kept], bool] | None = None,
) -> ClientRun:
    """Connect, hand the session every message, run it to the end, close.

    Raises ConnectError only when the TCP (or implicit TLS) connection cannot be made;
    anything after that is an outcome in the returned ClientRun. `run`, when given, is
    the ClientRun filled in as the conversation goes (an `on_event` callback may read
    it: the TLS in use, what EHLO offered). `timeouts` may also hold "close": how long to
    wait for the connection to go at the end (5 s otherwise). `tap` sees the bytes.
    `unix_path` connects to that Unix socket instead of host:port (LMTP; `host` is then
    only the name shown). `keep`, when given, is offered the connection once every
    message is done: when it takes it (True), the connection stays open, idle, for
    `resume_client`, and `run.kept` says so; otherwise the session says QUIT.
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
    conn = Kept(reader, writer, session, ctx, server_hostname or host, run.peer,
                asyncio.get_running_loop().time(), tls=run.tls)
    await _drive(conn, messages, limits, on_event, run, tap, keep)
    return run


async def resume_client(
    conn: Kept,
    messages: Sequence[tuple[Envelope, bytes]],
    *,
    timeouts: dict[str, float] | None = None,
    on_event: Callable[[Event], None] | None = None,
    run: ClientRun | None = None,
    keep: Callable[[Kept], bool] | None = None,
) -> ClientRun | None:
    """Carry `messages` over a connection `run_client` kept, as `run_client` would.

    The session first says RSET and waits for its 250: a connection the server closed
    while it was idle (or one it sent a 421 on) gives None, having been closed here, and
    the messages, never handed to the session, go over a new connection."""
    limits = {**STAGE_TIMEOUTS, **(timeouts or {})}
    session, reader, writer = conn.session, conn.reader, conn.writer
    alive = False
    if not writer.is_closing() and not session.closed:
        session.probe()
        await _flush(writer, session, None)
        while not alive and not session.closed:
            try:
                data = await asyncio.wait_for(reader.read(65536), limits["rset"])
            except TimeoutError:
                session.abort()
            except (OSError, ssl.SSLError):
                session.receive_data(b"")
            else:
                session.receive_data(data)
            while (ev := session.next_event()) is not NEED_DATA:
                alive = alive or isinstance(ev, Idle)
            await _flush(writer, session, None)
    if not alive:
        await close(writer, conn.tls_broken, limits.get("close", 5.0))
        return None
    run = run if run is not None else ClientRun()
    run.peer, run.tls, run.established = conn.peer, conn.tls, conn.established
    run.reused = True
    conn.uses += 1
    await _drive(conn, messages, limits, on_event, run, None, keep)
    return run


async def quit_client(conn: Kept, grace: float = 5.0) -> None:
    """Say QUIT on a kept connection and close it (no wait for the 221, as Postfix)."""
    conn.session.quit()
    await _flush(conn.writer, conn.session, None)
    await close(conn.writer, conn.tls_broken, grace)


async def _drive(conn: Kept, messages: Sequence[tuple[Envelope, bytes]],
                 limits: dict[str, float], on_event: Callable[[Event], None] | None,
                 run: ClientRun, tap: Tap | None,
                 keep: Callable[[Kept], bool] | None) -> None:
    """Run the session over `conn` until it closes (the connection is closed here) or,
    idle, `keep` takes the connection (left open)."""
    session, reader, writer = conn.session, conn.reader, conn.writer
    handles = [session.send(env, content) for env, content in messages]
    conn.messages += len(handles)
    if handles:
        run.first_handle = handles[0]
    try:
        while True:
            idle = False
            while (ev := session.next_event()) is not NEED_DATA:
                if on_event is not None:
                    on_event(ev)
                if isinstance(ev, StartTLS):
                    await _flush(writer, session, tap)
                    try:
                        await asyncio.wait_for(
                            writer.start_tls(conn.ctx, server_hostname=conn.server_hostname),
                            limits["tls"],
                        )
                    except (OSError, ssl.SSLError, TimeoutError) as exc:
                        conn.tls_broken = True
                        session.tls_failed(tls_failure(exc))
                    else:
                        run.tls = conn.tls = _tls_name(writer)
                        if tap is not None:
                            tap.tls_up(writer.get_extra_info("ssl_object"))
                        session.tls_established()
                elif isinstance(ev, Established):
                    run.established = conn.established = ev
                elif isinstance(ev, MessageResult):
                    run.results.append(ev)
                elif isinstance(ev, Idle):
                    idle = True
                elif isinstance(ev, Closed):
                    run.closed = ev
            await _flush(writer, session, tap)
            if session.closed:
                break
            if idle:
                if keep is not None and not conn.tls_broken and keep(conn):
                    run.kept = True
                    return
                session.quit()
                continue
            stage = session.awaiting or "quit"
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for makes a task for every
                # read, 8 % of the deliverer's time with many short messages.
                async with asyncio.timeout(limits.get(stage, 300.0)):
                    data = await reader.read(65536)
            except TimeoutError:
                session.abort()
                continue
            except (OSError, ssl.SSLError):
                data = b""
            if data and tap is not None:
                tap.received(data)
            session.receive_data(data)
    finally:
        if not run.kept:
            await close(writer, conn.tls_broken, limits.get("close", 5.0))


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

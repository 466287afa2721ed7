"""`mailgate serve`: put the queue, the listeners and local delivery together and run.

With `[server] workers = N > 1` the listening sockets are shared by N processes
(SO_REUSEPORT), each with its own event loop and its own group-committing writer to the
one SQLite queue: that is how a Python MTA uses more than one core.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mailgate.config import Config
from mailgate.delivery.engine import DeliveryEngine
from mailgate.delivery.local import LocalDelivery
from mailgate.dns import Resolver
from mailgate.queue import NewMessage
from mailgate.queue.sqlite import SQLiteQueue
from mailgate.server.listener import SMTPServer
from mailgate.server.policy import Policy
from mailgate.server.tls import ensure_self_signed, server_context
from mailgate.server.users import UserDB

__all__ = ["configure_logging", "run", "serve"]

log = logging.getLogger("mailgate")


def configure_logging(level: str) -> None:
    """One line per decision, Postfix style: `time mailgate[pid]: component: message`."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s mailgate[%(process)d]: %(name)s: %(message)s",
        datefmt="%b %d %H:%M:%S",
        stream=sys.stderr,
    )


def _tls(config: Config) -> tuple[ssl.SSLContext, Path, Path]:
    if config.tls.cert is not None:
        cert = config.tls.cert
        key = config.tls.key or cert
    else:
        cert, key = ensure_self_signed(config.data_dir, config.hostname)
    return server_context(cert, key), cert, key


def banner(config: Config, server: SMTPServer, cert: Path, workers: int) -> str:
    lines = [f"mailgate serving as {config.hostname} (pid {os.getpid()}, {workers} worker"
             f"{'s' if workers != 1 else ''})"]
    for role, host, port in server.sockets():
        shown = f"[{host}]" if ":" in host else host
        what = {"mx": "MX (port 25 role)", "submission": "submission (STARTTLS, AUTH)",
                "smtps": "submission over implicit TLS"}[role]
        lines.append(f"  listening  {shown}:{port}  {what}")
    d = config.data_dir
    lines += [
        f"  data       {d}",
        f"  queue      {d / 'queue.db'} (SQLite, WAL, synchronous=FULL)",
        f"  maildirs   {d / 'maildir'}/<domain>/<user>/",
        f"  TLS        {cert}" + (" (self-signed)" if config.tls.cert is None else ""),
        f"  local      {', '.join(config.domains.local)}"
        + ("" if config.domains.catch_all else " (known mailboxes only)"),
        f"  relay from {', '.join(str(n) for n in config.relay.networks) or 'nobody'}"
        " (others must AUTH on submission)",
        "  DNS        " + (", ".join(f"{h}:{p}" for h, p in config.dns.nameservers)
                           or "system resolver"),
        f"  users      {d / 'users.json'} (add with: mailgate user add NAME)",
    ]
    return "\n".join(lines)


async def serve(config: Config, *, reuse_port: bool = False, workers: int = 1,
                ready: Callable[[SMTPServer], None] | None = None,
                stop: asyncio.Event | None = None,
                policy_factory: Callable[[Config, Resolver, UserDB], Policy] = Policy,
                web: bool | None = None,
                ) -> None:
    """Run until SIGTERM/SIGINT (or `stop` is set), then shut down gracefully.

    `policy_factory` makes the policy (tests pass a subclass with decisions of their own).
    `web` says whether this process runs the web face (when `[web]` enables it); by
    default the one that prints the banner (`ready` None) does.
    """
    config.data_dir.mkdir(parents=True, exist_ok=True)
    queue = SQLiteQueue(config.data_dir / "queue.db")
    users = UserDB(config.data_dir / "users.json")
    resolver = Resolver(nameservers=list(config.dns.nameservers))
    tls_ctx, cert, _ = _tls(config)
    policy = policy_factory(config, resolver, users)

    def on_queued(qid: str, rcpts: list[str]) -> None:
        domains = {r.rpartition("@")[2] for r in rcpts}
        if any(config.domains.is_local(d) for d in domains):
            local.wake()
        if any(not config.domains.is_local(d) for d in domains):
            outbound.wake()

    async def enqueue(message: NewMessage) -> str:
        """Queue a message mailgate wrote itself (a bounce) and wake whoever delivers it."""
        qid = await queue.enqueue_async(message)
        on_queued(qid, [r.address for r in message.recipients])
        return qid

    local = LocalDelivery(config, queue, enqueue)
    outbound = DeliveryEngine(config, queue, resolver, enqueue)
    server = SMTPServer(config, policy, queue.enqueue_async, tls_ctx, on_queued=on_queued)
    await server.start(reuse_port=reuse_port)
    web_server, web_task, web_note = await _start_web(
        config, queue, server, outbound, local, first=ready is None if web is None else web)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    local_task = loop.create_task(local.run())
    outbound_task = loop.create_task(outbound.run())
    if ready is not None:
        ready(server)
    else:
        print(banner(config, server, cert, workers) + web_note, file=sys.stderr, flush=True)
    await stop.wait()
    log.info("shutting down: no new connections; finishing messages in flight")
    await server.shutdown(grace=30.0)
    if web_server is not None and web_task is not None:
        web_server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(web_task, 10.0)
    local.stop()
    outbound.stop()
    # Conversations under way get 30 s to finish; the outbound engine then gives back
    # what it claimed and did not record, so a restart resumes it at once (at-least-once:
    # a message cut off mid-DATA may go twice, none is lost). Local delivery gives back
    # the messages of its batch it has not started.
    for task in (local_task, outbound_task):
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 30.0)
    queue.close()
    log.info("stopped")


async def _start_web(config: Config, queue: SQLiteQueue, server: SMTPServer,
                     outbound: DeliveryEngine, local: LocalDelivery, first: bool,
                     ) -> tuple[Any, asyncio.Task[None] | None, str]:
    """The web page in this process's event loop (uvicorn); only the first worker runs it."""
    if not config.web.enabled or not first:
        return None, None, ""
    import uvicorn

    from mailgate.web.app import WebContext, create_app
    from mailgate.web.auth import AdminAuth

    auth = AdminAuth(config.data_dir)
    password = auth.ensure_password()

    def stats() -> dict[str, Any]:
        st = server.stats
        return {"connections_open": st.connections_open,
                "connections_total": st.connections_total, "accepted": st.accepted,
                "refused": st.refused}

    def on_due() -> None:
        local.wake()
        outbound.wake()

    ctx = WebContext(config=config, queue=queue, auth=auth, server_stats=stats, on_due=on_due)
    class Quiet(uvicorn.Server):
        """mailgate's own signal handlers stop everything; uvicorn must not take them."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    # uvicorn's HTTP protocol behind mailgate's connection limits (web/guard.py).
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    from mailgate.web import guard

    http = guard.Guard.factory(AutoHTTPProtocol, guard.Counter())
    uv = Quiet(uvicorn.Config(
        create_app(ctx), host=config.web.host, port=config.web.port, log_level="warning",
        access_log=False, lifespan="off", loop="none", http=http,  # type: ignore[arg-type]
        limit_concurrency=guard.MAX_CONNECTIONS + 1,  # + 1: uvicorn counts the asking one
        timeout_keep_alive=guard.KEEP_ALIVE_TIMEOUT,
    ))
    task = asyncio.get_running_loop().create_task(uv.serve())
    note = f"\n  web        http://{config.web.address}/ (codes, admin, /api, /metrics)"
    if password is not None:
        note += (f"\n  admin      password generated for this first start: {password}"
                 "\n             (change it with: mailgate admin set-password)")
    return uv, task, note


def _event_loop_policy() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run(config: Config) -> int:
    """Serve with `config.server.workers` processes; return the exit status."""
    configure_logging(config.log.level)
    _event_loop_policy()
    workers = max(1, config.server.workers)
    _tls(config)  # make the self-signed certificate once, before any worker needs it
    if workers == 1:
        asyncio.run(serve(config))
        return 0
    children: list[int] = []
    for i in range(workers):
        pid = os.fork()
        if pid == 0:  # child
            try:
                asyncio.run(serve(config, reuse_port=True, workers=workers,
                                  ready=(lambda s: None) if i else None))
            finally:
                os._exit(0)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for pid in children:
        _, st = os.waitpid(pid, 0)
        status = status or os.waitstatus_to_exitcode(st)
    return status

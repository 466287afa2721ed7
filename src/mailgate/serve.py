"""`mailgate serve`: put the queue, the listeners and local delivery together and run.

This is the composition root: the one module that imports the SMTP server, delivery and
the web face and wires them together, so none of them imports another
(docs/architecture.md).

With `[server] workers = N > 1` the listening sockets are shared by N processes
(SO_REUSEPORT), each with its own event loop and its own group-committing writer to the
one SQLite queue: that is how a Python MTA uses more than one core.

The delivery tasks (local, outbound) run under a supervisor: one that ends while the
server is not stopping (an exception, or a return) is logged with its traceback, counted
(mailgate_delivery_worker_restarts_total) and started again after a short backoff. At
start, before any worker claims work, the claims of processes that died (kill -9, a
crash, a reboot) are taken back (`Queue.recover_claims`), so their work is due at once
rather than when its lease (5 or 15 minutes) ends.

Started as root (`run`), it binds every port, forks the mailbox helper (one per worker
process; `delivery/helper.py`), gives the data directory to its user and drops root for
good (`privileges.py`) before it reads a byte from the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pwd
import signal
import socket
import ssl
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

from mailgate import metrics, privileges
from mailgate.config import Config, ConfigError, load_config
from mailgate.config.dkim import reload_keys, renew_keys
from mailgate.datadir import StartupError, prepare_data_dir
from mailgate.delivery.engine import DeliveryEngine
from mailgate.delivery.helper import HelperClient, start_helper
from mailgate.delivery.lmtp import LMTPDelivery, StoreRecipients
from mailgate.delivery.local import LocalDelivery
from mailgate.dns import Resolver
from mailgate.logformat import JSONFormatter, SafeFormatter
from mailgate.ports import Bound, bind_all, bind_socket, check_ports, connection_budget, hostport
from mailgate.queue import NewMessage, Queue, QueueError, domain_of
from mailgate.queue.backends import open_queue_patiently
from mailgate.queue.spool import clean as clean_spool
from mailgate.queue.spool import spool_dir
from mailgate.server.admission import Shared
from mailgate.server.dkimsign import sign_content
from mailgate.server.listener import SMTPServer
from mailgate.server.policy import Policy, SharedCounts
from mailgate.server.tls import ensure_self_signed, server_context
from mailgate.siblings import Board
from mailgate.users import UserDB
from mailgate.workers import Siblings, fork

__all__ = ["Bound", "StartupError", "bind_socket", "check_ports", "configure_logging", "run",
           "serve", "supervise"]

log = logging.getLogger("mailgate")


def configure_logging(level: str, stream: TextIO | None = None, fmt: str = "text") -> None:
    """One line per decision, Postfix style: `time mailgate[pid]: component: message`, on
    stderr (journald keeps it under systemd); with `fmt` "json", one JSON object a line.

    Log lines carry what clients chose (HELO names, addresses, ENVIDs, user names): the
    formatter shows their control characters as escapes, so none reaches a terminal
    tailing the log as itself, and none forges a line."""
    # A log line needs neither where the call was made (a walk up the stack for every
    # record) nor the thread's or the process's name (a lookup each): the format uses
    # the pid only. The logging HOWTO's "Optimization" section names these switches.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else SafeFormatter(
        "%(asctime)s mailgate[%(process)d]: %(name)s: %(message)s", "%b %d %H:%M:%S"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        handlers=[handler])


TLS = tuple[ssl.SSLContext, Path, Path]
# Hands over this process's AUTH failure counts, returns the others' (share_auth_failures).
Share = Callable[[Mapping[tuple[str, str], int], float], SharedCounts]


def _tls(config: Config) -> TLS:
    if config.tls.cert is not None:
        cert = config.tls.cert
        key = config.tls.key or cert
    else:
        cert, key = ensure_self_signed(config.data_dir, config.hostname)
    return server_context(cert, key), cert, key


def reload(tls_ctx: ssl.SSLContext, cert: Path, key: Path, users: UserDB,
           policy: Policy | None = None) -> None:
    """SIGHUP: read the certificate, the user file, the aliases and the DKIM keys again;
    no connection is dropped.

    The new certificate and key are checked in a context of their own first, so a
    half-copied or mismatched pair leaves the one in service untouched (and says so).
    Connections already in TLS keep their session; new handshakes get the new pair.
    Aliases (`[aliases]` and `[domains] aliases_file`) come from the configuration file
    read again whole: when it has a problem (a loop, say) the aliases in service stay.
    [dkim] comes from that file too: a new selector or signing domain signs from then on,
    one taken out no longer does, and a key rotated in place gives its new key. A key file
    that cannot be read keeps the key in service (and says so); when the file has a
    problem, the key files in service are read again (`reload_keys`). Mail queued from
    then on is signed with the new keys. Other settings take effect at the next start.
    """
    try:
        server_context(cert, key)
        tls_ctx.load_cert_chain(cert, key)
    except (ValueError, OSError, ssl.SSLError) as exc:
        log.error("SIGHUP: kept the certificate in service: %s", exc)
    else:
        log.info("SIGHUP: reloaded the TLS certificate %s", cert)
    try:
        users.reload()
    except (ValueError, OSError) as exc:
        log.error("SIGHUP: could not read the user file %s: %s", users.path, exc)
    else:
        log.info("SIGHUP: reloaded the user file (%d users)", len(users.names()))
    if policy is not None:
        fresh = _reload_aliases(policy)
        if policy.config.dkim or (fresh is not None and fresh.dkim):
            _reload_dkim(policy, fresh)


def _reload_dkim(policy: Policy, fresh: Config | None) -> None:
    if fresh is None:
        keys, problems = reload_keys(policy.config.dkim)
        problems = [f"kept the DKIM key in service: {problem}" for problem in problems]
    else:
        keys, problems = renew_keys(policy.config.dkim, fresh.dkim)
    for problem in problems:
        log.error("SIGHUP: %s", problem)
    policy.config = dataclasses.replace(policy.config, dkim=keys)
    log.info("SIGHUP: reloaded the DKIM keys (%d key(s) for %s; %d file(s) not read)",
             sum(len(k) for k in keys.values()),
             ", ".join(f"{d}: {', '.join(k.selector for k in ks)}" for d, ks in keys.items())
             or "no domain", len(problems))


def _reload_aliases(policy: Policy) -> Config | None:
    """The aliases of the configuration file read again; that configuration, or None
    (zero-config, or a file with a problem: then nothing of it is taken)."""
    source = policy.config.source
    if source is None:  # zero-config: the default aliases, nothing to read
        return None
    try:
        fresh = load_config(Path(source))
    except ConfigError as exc:
        log.error("SIGHUP: kept the aliases in service: %s", "; ".join(exc.problems))
        return None
    policy.config = dataclasses.replace(policy.config, aliases=fresh.aliases)
    log.info("SIGHUP: reloaded the aliases (%d entries)", len(fresh.aliases.table))
    return fresh


async def _siblings_listening(siblings: Siblings, stop: asyncio.Event
                              ) -> list[tuple[str, str, int]]:
    """The SMTP sockets of the other workers, asked until every one has answered (a
    worker answers once it listens; one that cannot start ends the server)."""
    while not stop.is_set():
        reports = await siblings.reports()
        if len(reports) == len(siblings.links):
            return list(dict.fromkeys((role, host, port) for r in reports
                                      for role, host, port in r.get("sockets", [])))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)
    return []


def banner(config: Config, listening: Sequence[tuple[str, str, int]], cert: Path,
           workers: int, pid: int | None = None) -> str:
    """What the server says when it is up: `listening` are the SMTP sockets (role, host,
    port). `pid`: the process to signal (with several workers the parent, whose SIGHUP
    and SIGTERM reach them all)."""
    lines = [f"mailgate serving as {config.hostname} (pid {pid or os.getpid()}, {workers}"
             f" worker{'s' if workers != 1 else ''})"]
    for role, host, port in listening:
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
        f"  local      {', '.join(config.domains.local)}" + _catch_all_note(config),
        f"  relay from {', '.join(str(n) for n in config.relay.networks) or 'nobody'}"
        " (others must AUTH on submission)",
        "  DNS        " + (", ".join(f"{h}:{p}" for h, p in config.dns.nameservers)
                           or "system resolver"),
        "  checks     " + _auth_checks_note(config),
        f"  users      {d / 'users.json'} (add with: mailgate user add NAME)"
        if config.auth.backend == "file" else
        f"  users      Dovecot's auth service at {config.auth.dovecot_socket}",
        f"  runs as    {_user_name()}",
    ]
    lmtp = [r.nexthop for d, r in config.routes.items() if config.lmtp_route(d)]
    if lmtp:
        lines.append(f"  LMTP       {', '.join(sorted(set(lmtp)))}")
    return "\n".join(lines)


def _auth_checks_note(config: Config) -> str:
    """What [auth_checks] verifies of strangers' mail (docs/authentication.md)."""
    c = config.auth_checks
    names = [n for n, on in (("SPF", c.spf), ("DKIM", c.dkim), ("DMARC", c.dmarc),
                             ("ARC", c.arc)) if on]
    if not names:
        return "none ([auth_checks] all off)"
    refuse = [r for r, on in (("DMARC p=reject", c.dmarc and c.dmarc_reject),
                              ("SPF fail", c.spf and c.spf_reject)) if on]
    return (f"{', '.join(names)} of strangers' mail; refused: "
            f"{', '.join(refuse) or 'nothing (reported only)'}")


def _catch_all_note(config: Config) -> str:
    domains = config.domains
    if domains.catch_all:
        return " (any local part)"
    if domains.catch_all_domains:
        return (" (known recipients only; any local part at "
                f"{', '.join(sorted(domains.catch_all_domains))})")
    return " (known recipients only: users, mailboxes, aliases)"


def _user_name() -> str:
    try:
        return f"{pwd.getpwuid(os.geteuid()).pw_name} (uid {os.geteuid()})"
    except KeyError:
        return f"uid {os.geteuid()}"


class Worker(Protocol):
    """A delivery task's object: `run` until `stop()`; `stopping` once asked to."""

    @property
    def stopping(self) -> bool: ...

    async def run(self) -> None: ...


RESTART_BACKOFF = 1.0  # seconds before the first restart, doubled each time, ...
RESTART_BACKOFF_MAX = 30.0  # ...up to this
STABLE_RUN = 60.0  # a task that ran this long before ending starts with the first backoff


async def supervise(name: str, worker: Worker, *, backoff: float | None = None,
                    backoff_max: float | None = None) -> None:
    """Run `worker.run()`, and again whenever it ends while the worker is not stopping:
    an exception or a return would otherwise end that kind of delivery for good, with
    mail piling up in the queue. A clean stop (`worker.stopping`) ends the supervision;
    cancelling it cancels the worker."""
    loop = asyncio.get_running_loop()
    backoff = RESTART_BACKOFF if backoff is None else backoff
    backoff_max = RESTART_BACKOFF_MAX if backoff_max is None else backoff_max
    delay = backoff
    while True:
        started = loop.time()
        try:
            await worker.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if worker.stopping:
                log.error("%s delivery failed while stopping", name, exc_info=exc)
                return
            log.error("%s delivery stopped by an unexpected error; restarting it in %g s",
                      name, delay, exc_info=exc)
        else:
            if worker.stopping:
                return
            log.error("%s delivery ended unexpectedly; restarting it in %g s", name, delay)
        metrics.worker_restart(name)
        if loop.time() - started >= STABLE_RUN:
            delay = backoff
        deadline = loop.time() + delay
        while not worker.stopping and loop.time() < deadline:
            await asyncio.sleep(min(0.1, deadline - loop.time()))
        if worker.stopping:
            return
        delay = min(delay * 2, backoff_max)


async def serve(config: Config, *, reuse_port: bool = False, workers: int = 1,
                ready: Callable[[SMTPServer], None] | None = None,
                stop: asyncio.Event | None = None,
                policy_factory: Callable[[Config, Resolver, UserDB], Policy] = Policy,
                web: bool | None = None,
                bound: Bound | None = None,
                helper: HelperClient | None = None,
                tls: TLS | None = None,
                siblings: Siblings | None = None,
                ) -> None:
    """Run until SIGTERM/SIGINT (or `stop` is set), then shut down gracefully.

    `policy_factory` makes the policy (tests pass a subclass with decisions of their own).
    `web` says whether this process runs the web face (when `[web]` enables it); by
    default the one that prints the banner (`ready` None) does. `bound`, `helper` and
    `tls` are what `run` prepared as root: the sockets, the mailbox helper, the TLS
    context (its key may be readable by root only). `siblings`: what this worker shares
    with the others (`run` with workers > 1; workers.py).
    """
    prepare_data_dir(config.data_dir)
    queue = await open_queue_patiently(config, log)
    users = UserDB(config.data_dir / "users.json")
    resolver = Resolver(nameservers=list(config.dns.nameservers))
    tls_ctx, cert, key = tls if tls is not None else _tls(config)
    policy = policy_factory(config, resolver, users)
    if any(config.lmtp_route(d) is not None for d in config.domains.local):
        policy.store_check = StoreRecipients(config.hostname).has

    # With several workers, the first delivers and takes no SMTP connection; the others
    # take mail in and ring the first's doorbell for each message (workers.py).
    listens = siblings is None or siblings.listens
    delivers = siblings is None or siblings.delivers

    def on_queued(qid: str, rcpts: list[str]) -> None:
        if not delivers and siblings is not None:
            siblings.doorbell.ring()
            return
        domains = {domain_of(r) for r in rcpts}
        if any(config.domains.is_local(d) for d in domains):
            local.wake()
            if lmtp is not None:
                lmtp.wake()
        if any(not config.domains.is_local(d) for d in domains):
            outbound.wake()

    async def enqueue(message: NewMessage) -> str:
        """Queue a message mailgate wrote itself (a bounce) and wake whoever delivers it;
        signed like its users' mail when [dkim] has keys for its From: domain."""
        dkim = policy.config.dkim  # the keys SIGHUP read last
        if dkim and message.spool is None:
            message = dataclasses.replace(message, content=await sign_content(
                bytes(message.content), dkim, "a notice mailgate wrote"))
        qid = await queue.enqueue_async(message)
        on_queued(qid, [r.address for r in message.recipients])
        return qid

    local = LocalDelivery(config, queue, enqueue, helper)
    # The LMTP target only when a local domain is routed "lmtp:".
    lmtp = LMTPDelivery(config, queue, enqueue, helper) if any(
        config.lmtp_route(d) for d in config.domains.local) else None
    outbound = DeliveryEngine(config, queue, resolver, enqueue,
                              slots=siblings.board if siblings and siblings.shares_queue
                              else None)
    loop = asyncio.get_running_loop()

    def wake_all() -> None:  # work queued or made due by another node of a cluster
        for worker in (local, lmtp, outbound):
            if worker is not None:
                worker.wake()

    def wake_soon() -> None:  # from the queue's thread
        loop.call_soon_threadsafe(wake_all)

    queue.watch(wake_soon)
    spool = spool_dir(config.data_dir)
    if workers == 1 and (left := clean_spool(spool)):  # with workers, a sibling's may be live
        log.info("removed %d spool files of messages a stopped server never accepted", left)
    budget = connection_budget(config)
    server = SMTPServer(config, policy, queue.enqueue_async, tls_ctx, on_queued=on_queued,
                        spool_dir=spool, max_connections=budget, admission=Shared(
                            siblings.board, budget, config.limits.connections_per_ip)
                        if siblings is not None else None)
    # Every port is bound before anything says the server is up (the banner, a new admin
    # password): a failure is one sentence naming the address, not a traceback later.
    try:
        try:
            if listens:
                await server.start(reuse_port=reuse_port,
                                   bound=bound.smtp if bound is not None else None)
        except OSError as exc:
            failed = config.listen[len(server.servers)]
            # asyncio words it "error while attempting to bind on address (...): ...".
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise StartupError(f"cannot listen on {hostport(failed.host, failed.port)} "
                               f"({failed.role}): {reason}.") from exc
        web_server, web_task, web_note = await _start_web(
            config, queue, server, outbound, local, siblings,
            first=ready is None if web is None else web,
            sock=bound.web if bound is not None else None)
    except BaseException:
        for listening in server.servers:
            listening.close()
        queue.close()
        raise
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, reload, tls_ctx, cert, key, users,
                                  policy)
    try:
        recovered = await asyncio.to_thread(queue.recover_claims)
    except QueueError as exc:
        log.error("could not take back the claims of ended processes (%s); their work is "
                  "due again when the claims' leases end", exc)
    else:
        if recovered:
            log.info("took back %d recipient(s) claimed by processes that ended (a crash "
                     "or kill); due now", recovered)
    if siblings is not None and delivers:
        siblings.doorbell.answer(loop, wake_all)
    purge_task = loop.create_task(purge_finished(queue, config, stop)) if delivers else None
    share_task = loop.create_task(share_auth_failures(
        siblings.board.share_counts if siblings and siblings.shares_queue
        else queue.share_counts, policy, stop))
    sibling_task = loop.create_task(siblings.answer(wake_all, lambda: {
        "stats": _stats(server), "samples": metrics.samples(),
        "sockets": server.sockets()})) if siblings else None
    local_task = loop.create_task(supervise("local", local)) if delivers else None
    lmtp_task = (loop.create_task(supervise("lmtp", lmtp))
                 if lmtp is not None and delivers else None)
    outbound_task = loop.create_task(supervise("outbound", outbound)) if delivers else None
    if ready is not None:
        ready(server)
    else:
        sockets = server.sockets()
        if siblings is not None:  # the listeners' sockets, once every one is listening
            sockets = await _siblings_listening(siblings, stop)
        parent = os.getppid() if siblings is not None else None
        print(banner(config, sockets, cert, workers, parent) + web_note, file=sys.stderr,
              flush=True)
    await stop.wait()
    log.info("shutting down: no new connections; finishing messages in flight")
    await server.shutdown(grace=30.0)
    policy.close()  # no session is left to ask its checks' threads
    if web_server is not None and web_task is not None:
        web_server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(web_task, 10.0)
    local.stop()
    if lmtp is not None:
        lmtp.stop()
    outbound.stop()
    # Conversations under way get 30 s to finish; the outbound engine then gives back
    # what it claimed and did not record, so a restart resumes it at once (at-least-once:
    # a message cut off mid-DATA may go twice, none is lost). Local delivery gives back
    # the messages of its batch it has not started.
    if sibling_task is not None:
        sibling_task.cancel()
    for task in (local_task, lmtp_task, outbound_task, purge_task, share_task, sibling_task):
        if task is None:
            continue
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 30.0)
    queue.close()
    log.info("stopped")


PURGE_EVERY = 600.0  # seconds between purges of finished records past keep_records


SHARE_EVERY = 1.0  # seconds between exchanges of AUTH failure counts with the cluster


async def share_auth_failures(share: Share, policy: Policy, stop: asyncio.Event) -> None:
    """Every SHARE_EVERY seconds, hand this process's AUTH failures to `share` and take
    the others' (`Queue.share_counts` on a cluster, `Board.share_counts` between the
    workers of one server): a client's failures count on every node and every worker,
    within a second or so. One process alone on SQLite has nothing to share."""
    while not stop.is_set():
        counts = policy.take_unshared()
        try:
            policy.others = await asyncio.to_thread(share, counts, policy.AUTH_FAIL_WINDOW)
        except QueueError as exc:
            policy.unshare(counts)  # tried again next time
            log.debug("could not share AUTH failure counts: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SHARE_EVERY)


async def purge_finished(queue: Queue, config: Config, stop: asyncio.Event) -> None:
    """Remove the records of messages finished more than `[queue] keep_records` ago, at
    start and every PURGE_EVERY seconds until `stop`; in batches of 1,000, so the queue's
    writer is never held for long. A failure is logged and tried again next time."""
    while not stop.is_set():
        total = 0
        try:
            cutoff = time.time() - config.queue.keep_records
            while not stop.is_set() and (n := await asyncio.to_thread(queue.purge, cutoff)):
                total += n
        except QueueError as exc:
            log.error("could not purge finished messages: %s", exc)
        if total:
            log.info("purged the records of %d finished message(s)", total)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PURGE_EVERY)


def _stats(server: SMTPServer) -> dict[str, Any]:
    st = server.stats
    return {"connections_open": st.connections_open,
            "connections_total": st.connections_total, "accepted": st.accepted,
            "refused": st.refused}


async def _start_web(config: Config, queue: Queue, server: SMTPServer,
                     outbound: DeliveryEngine, local: LocalDelivery,
                     siblings: Siblings | None, first: bool,
                     sock: socket.socket | None = None,
                     ) -> tuple[Any, asyncio.Task[None] | None, str]:
    """The web page in this process's event loop (uvicorn); only the first worker runs it.

    The socket is bound here (unless `sock` was bound already), before the admin
    password is made: uvicorn would bind it only once running, after the banner, and
    report a busy port with a traceback."""
    if not config.web.enabled or not first:
        if sock is not None:
            sock.close()
        return None, None, ""
    sock = sock if sock is not None else bind_socket(config.web.host, config.web.port)
    try:
        return await _run_web(config, queue, server, outbound, local, siblings, sock)
    except BaseException:
        sock.close()
        raise


async def _run_web(config: Config, queue: Queue, server: SMTPServer,
                   outbound: DeliveryEngine, local: LocalDelivery,
                   siblings: Siblings | None, sock: socket.socket,
                   ) -> tuple[Any, asyncio.Task[None] | None, str]:
    import uvicorn

    from mailgate.web.app import WebContext, create_app
    from mailgate.web.auth import AdminAuth

    auth = AdminAuth(config.data_dir)
    password = auth.ensure_password()

    def on_due() -> None:
        local.wake()
        outbound.wake()
        if siblings is not None:
            siblings.wake()

    ctx = WebContext(config=config, queue=queue, auth=auth,
                     server_stats=lambda: _stats(server), on_due=on_due)
    if siblings is not None:
        ctx.siblings = siblings.reports
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
    task = asyncio.get_running_loop().create_task(uv.serve(sockets=[sock]))
    host, port = sock.getsockname()[:2]
    note = f"\n  web        http://{hostport(host, port)}/ (codes, admin, /api, /metrics)"
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
    """Serve with `config.server.workers` processes; return the exit status.

    As root: bind the ports, fork a mailbox helper per worker, give the data directory
    to `server.user` and become it, then serve (docs/security.md)."""
    configure_logging(config.log.level, fmt=config.log.format)
    _event_loop_policy()
    workers = max(1, config.server.workers)
    prepare_data_dir(config.data_dir)
    tls = _tls(config)  # the self-signed certificate once, and the key read as root
    user = privileges.target_user(config)
    bound: list[Bound] | None = None
    helpers: list[HelperClient | None] = [None] * workers
    if os.geteuid() == 0:
        bound = bind_all(config, workers)
        ports = [sock for b in bound for sock in b.all()]
        # The mailbox helper, for the worker that delivers (the first); it keeps no port.
        helpers[0] = start_helper(config, ports)
        if user is not None:
            privileges.own_data_dir(config.data_dir, user)
            privileges.drop(user)
        else:
            privileges.warn_root()
    if workers == 1:
        asyncio.run(serve(config, bound=bound[0] if bound else None, helper=helpers[0],
                          tls=tls))
        return 0
    if bound is None:
        check_ports(config, reuse_port=True)
    clean_spool(spool_dir(config.data_dir))  # before the workers: none of theirs is live yet

    def run_worker(siblings: Siblings) -> int:
        i = siblings.index
        try:
            for j, other in enumerate(helpers):
                if j != i and other is not None:
                    other.close()
            for j, others in enumerate(bound or ()):  # each worker its own sockets
                if j != i:
                    for sock in others.all():
                        sock.close()
            asyncio.run(serve(config, reuse_port=bound is None, workers=workers,
                              ready=(lambda s: None) if i else None,
                              bound=bound[i] if bound else None,
                              helper=helpers[i], tls=tls, siblings=siblings))
            return 0
        except StartupError as exc:
            print(f"mailgate: {exc}", file=sys.stderr, flush=True)
        except BaseException:
            traceback.print_exc()
        return 1

    def in_parent() -> None:
        for helper in helpers:
            if helper is not None:
                helper.close()
        for mine in bound or ():
            for sock in mine.all():
                sock.close()

    # What the workers share: connections (all backends); connection slots and AUTH
    # failure counts too on SQLite, whose queue sees one process only (siblings.py).
    board = Board(workers, config.limits.connections,
                  slots=workers * config.delivery.concurrency,
                  window=Policy.AUTH_FAIL_WINDOW)
    return fork(board, config.queue.backend == "sqlite", run_worker, in_parent)

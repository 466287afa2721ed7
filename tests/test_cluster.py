"""Bad days of a cluster: three `mailgate serve` processes sharing one PostgreSQL queue
(a private cluster, tests/support/postgres.py), mail sent to all three at once and
delivered through a relayhost that is a recording sink (aiosmtpd), where every delivery
is counted by Message-ID.

- a node killed with SIGKILL under load: every message any node acknowledged is
  delivered, the dead node's claims taken back by the others once its heartbeat is stale;
- PostgreSQL restarting under load: sessions in DATA get 451 4.3.0, never 250 for a
  message not committed; nodes reconnect by themselves; nothing acknowledged is lost;
- PostgreSQL unreachable at start: one sentence naming the host (never the password),
  tried again with a backoff until it answers;
- no message is delivered by two nodes (claims), counted at the sink.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import re
import signal
import smtplib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fakemx import FakeMX
from tests.support.postgres import PgCluster
from tests.support.smtpwire import wait_until
from tests.test_server_durability import Serve, free_port, free_ports, write_config

pytest_plugins = ["tests.support.postgres"]

TIMEOUT = 120.0


@dataclasses.dataclass
class Outcomes:
    """What the senders were told, by Message-ID."""

    accepted: set[str] = dataclasses.field(default_factory=set)
    replies: list[tuple[int, str]] = dataclasses.field(default_factory=list)  # to DATA
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


def sender(port: int, n: int, out: Outcomes, stop: threading.Event, limit: int = 10_000
           ) -> None:
    """Messages back to back on one connection (a new one after an error) until `stop`."""
    i = 0
    client: smtplib.SMTP | None = None
    while not stop.is_set() and i < limit:
        try:
            if client is None:
                client = smtplib.SMTP("127.0.0.1", port, timeout=30)
                client.ehlo(f"sender{n}.test")
            i += 1
            mid = f"<c-{port}-{n}-{i}@cluster.test>"
            content = (f"From: s{n}@example.org\r\nTo: r{n}@example.net\r\n"
                       f"Message-ID: {mid}\r\nSubject: {i}\r\n\r\nhello\r\n").encode()
            client.mail(f"s{n}@example.org")
            client.rcpt(f"r{n}@example.net")
            code, text = client.data(content)
            with out.lock:
                out.replies.append((code, text.decode(errors="replace")))
                if code == 250:
                    out.accepted.add(mid)
            if code != 250:
                client.rset()
        except (OSError, smtplib.SMTPException):
            with contextlib.suppress(Exception):
                if client is not None:
                    client.close()
            client = None
            time.sleep(0.1)
    if client is not None:
        with contextlib.suppress(Exception):
            client.quit()


def delivered(sink: FakeMX) -> collections.Counter[str]:
    """Deliveries the sink received, by Message-ID."""
    counts: collections.Counter[str] = collections.Counter()
    for message in list(sink.received):
        found = re.search(rb"^Message-ID: (<[^>]+>)", message.content, re.M)
        if found:
            counts[found.group(1).decode()] += 1
    return counts


class Cluster:
    """Three nodes on one database, relaying to one sink."""

    def __init__(self, root: Path, dsn: str, sink: FakeMX, nodes: int = 3) -> None:
        self.root, self.dsn, self.sink = root, dsn, sink
        self.ports = free_ports(nodes)
        self.configs = [self._config(i) for i in range(nodes)]
        self.nodes: list[Serve] = []

    def _config(self, i: int) -> Path:
        folder = self.root / f"node{i}"
        folder.mkdir(parents=True, exist_ok=True)
        return write_config(folder, self.ports[i],
                            relayhost=f"[127.0.0.1]:{self.sink.port}",
                            queue={"backend": "postgresql", "dsn": self.dsn,
                                   "node": f"node{i}"})

    def start(self) -> Cluster:
        for i, config in enumerate(self.configs):
            self.nodes.append(Serve(config, self.ports[i], config.parent / "serve.log"))
        return self

    def logs(self) -> str:
        return "\n".join(f"--- node{i}\n{n.logs()[-3000:]}" for i, n in enumerate(self.nodes))

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


def claims_of(dsn: str, node: str) -> int:
    """Recipients the node named `node` holds claimed right now."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM recipients r JOIN nodes n ON "
                           "r.claim_owner = n.id WHERE n.name = %s", (node,)).fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def sink() -> Iterator[FakeMX]:
    mx = FakeMX("127.0.0.1", free_port(), name="sink.test").start()
    try:
        yield mx
    finally:
        mx.stop()


@contextlib.contextmanager
def load(ports: list[int], out: Outcomes, per_node: int = 3) -> Iterator[threading.Event]:
    stop = threading.Event()
    threads = [threading.Thread(target=sender, args=(port, n, out, stop), daemon=True)
               for port in ports for n in range(per_node)]
    for t in threads:
        t.start()
    try:
        yield stop
    finally:
        stop.set()
        for t in threads:
            t.join(60)


def all_delivered(out: Outcomes, sink: FakeMX) -> collections.Counter[str] | None:
    got = delivered(sink)
    return got if out.accepted <= set(got) else None


def test_three_nodes_deliver_every_message_once(tmp_path: Path, pg_dsn: str,
                                                sink: FakeMX) -> None:
    cluster = Cluster(tmp_path, pg_dsn, sink).start()
    try:
        out = Outcomes()
        with load(cluster.ports, out):
            wait_until("300 accepted messages", lambda: len(out.accepted) >= 300 or None,
                       TIMEOUT)
        got = wait_until("every accepted message at the sink",
                         lambda: all_delivered(out, sink), TIMEOUT, 0.2)
        twice = {mid: n for mid, n in got.items() if n > 1}
        assert twice == {}, f"delivered more than once: {twice}"
        assert set(got) == out.accepted
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()


def test_a_node_killed_under_load_loses_nothing_it_acknowledged(
        tmp_path: Path, pg_dsn: str, sink: FakeMX) -> None:
    gate = threading.Event()
    sink.ehlo_gate = gate  # deliveries wait at EHLO: every node holds claims when one dies
    cluster = Cluster(tmp_path, pg_dsn, sink).start()
    try:
        out = Outcomes()
        with load(cluster.ports, out):
            wait_until("150 accepted messages", lambda: len(out.accepted) >= 150 or None,
                       TIMEOUT)
            # On a loaded machine node1 may not have claimed anything yet: then there is
            # nothing to take back, and the test would prove nothing.
            wait_until("node1 holding claims", lambda: claims_of(pg_dsn, "node1") or None,
                       TIMEOUT, 0.1)
            victim = cluster.nodes[1]
            os.kill(victim.proc.pid, signal.SIGKILL)
            victim.proc.wait(30)
            time.sleep(1)
        gate.set()
        got = wait_until("every message any node acknowledged, at the sink",
                         lambda: all_delivered(out, sink), TIMEOUT, 0.2)
        assert victim.proc.returncode == -signal.SIGKILL
        twice = {mid: n for mid, n in got.items() if n > 1}
        # At most what the dead node had in flight (it was stuck at EHLO: none).
        assert len(twice) <= 64, twice
        assert any("took back" in n.logs() for n in cluster.nodes if n is not victim), \
            "the live nodes should say they took back the dead node's claims"
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()


def test_postgresql_restarting_under_load(tmp_path: Path, pg_cluster: PgCluster,
                                          pg_dsn: str, sink: FakeMX) -> None:
    cluster = Cluster(tmp_path, pg_dsn, sink).start()
    try:
        out = Outcomes()
        with load(cluster.ports, out):
            wait_until("60 accepted messages", lambda: len(out.accepted) >= 60 or None,
                       TIMEOUT)
            pg_cluster.stop()  # immediate: as a crash looks to the clients
            try:
                wait_until("a 451 during the outage",
                           lambda: any(c == 451 for c, _ in out.replies) or None, TIMEOUT)
            finally:
                pg_cluster.start()
            before = len(out.accepted)
            wait_until("nodes accepting again after the restart",
                       lambda: len(out.accepted) >= before + 60 or None, TIMEOUT)
        refusals = {(c, t.split(" ", 1)[0]) for c, t in out.replies if c != 250}
        assert refusals == {(451, "4.3.0")}, refusals
        got = wait_until("every acknowledged message at the sink",
                         lambda: all_delivered(out, sink), TIMEOUT, 0.2)
        assert out.accepted <= set(got)
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()


def test_unreachable_at_start_says_where_and_waits_for_it(
        tmp_path: Path, pg_cluster: PgCluster, sink: FakeMX) -> None:
    dsn = pg_cluster.createdb().replace("postgres@", "postgres:pw-s3cret@")
    pg_cluster.stop("fast")
    cluster = Cluster(tmp_path, dsn, sink, nodes=1)
    log = cluster.configs[0].parent / "serve.log"
    try:
        started = threading.Thread(target=cluster.start)  # greets once PostgreSQL is up
        started.start()
        where = f"127.0.0.1:{pg_cluster.port}/"
        wait_until("two tries named in the log",
                   lambda: (log.exists() and log.read_text().count("trying again") >= 2)
                   or None, 60, 0.1)
    finally:
        pg_cluster.start()
    started.join(TIMEOUT)
    try:
        text = log.read_text()
        assert where in text and "cannot reach the queue database" in text
        assert "pw-s3cret" not in text and "Traceback" not in text
        assert cluster.nodes and cluster.nodes[0].proc.poll() is None
    finally:
        cluster.stop()


class SlowSink:
    """An SMTP sink that takes its time over each message and counts how many
    connections it has open at once (the most it ever had: `peak`)."""

    def __init__(self, delay: float = 0.15) -> None:
        import socketserver

        sink = self
        self.delay = delay
        self.lock = threading.Lock()
        self.open = 0
        self.peak = 0
        self.ids: collections.Counter[str] = collections.Counter()

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                with sink.lock:
                    sink.open += 1
                    sink.peak = max(sink.peak, sink.open)
                try:
                    sink.converse(self.rfile, self.wfile)
                finally:
                    with sink.lock:
                        sink.open -= 1

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def converse(self, rfile: Any, wfile: Any) -> None:
        wfile.write(b"220 slow.test ESMTP\r\n")
        while line := rfile.readline(4096):
            verb = line[:4].upper()
            if verb == b"EHLO":
                wfile.write(b"250-slow.test\r\n250 PIPELINING\r\n")
            elif verb == b"DATA":
                wfile.write(b"354 go on\r\n")
                body = b""
                while (piece := rfile.readline(65536)) not in (b".\r\n", b""):
                    body += piece
                time.sleep(self.delay)
                found = re.search(rb"^Message-ID: (<[^>]+>)", body, re.M)
                if found:
                    with self.lock:
                        self.ids[found.group(1).decode()] += 1
                wfile.write(b"250 2.0.0 taken\r\n")
            elif verb == b"QUIT":
                wfile.write(b"221 2.0.0 bye\r\n")
                return
            else:
                wfile.write(b"250 2.0.0 ok\r\n")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_concurrency_per_destination_is_the_cluster_s(tmp_path: Path, pg_dsn: str) -> None:
    slow = SlowSink()
    cluster = Cluster(tmp_path, pg_dsn, slow)  # type: ignore[arg-type]
    for config in cluster.configs:  # 2 connections to the relayhost from all three nodes
        text = config.read_text().replace("[delivery]\n",
                                          "[delivery]\nconcurrency_per_destination = 2\n")
        config.write_text(text)
    cluster.start()
    try:
        out = Outcomes()
        with load(cluster.ports, out, per_node=2):
            wait_until("240 accepted", lambda: len(out.accepted) >= 240 or None, TIMEOUT)
        wait_until("every message at the sink",
                   lambda: out.accepted <= set(slow.ids) or None, TIMEOUT, 0.2)
        assert 1 <= slow.peak <= 2, slow.peak
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()
        slow.stop()


def test_auth_failures_on_one_node_are_refused_on_another(tmp_path: Path, pg_dsn: str) -> None:
    """Two nodes (servers in this process) on one database: a client that used up its
    AUTH failures on node a is refused by node b (421 4.7.0) even with the right
    password, within a second or so; another client on node b is not."""
    import base64

    from mailgate.config import QueueConfig
    from mailgate.server.policy import Policy
    from mailgate.users import UserDB
    from tests.support.live import LiveServer, live_config
    from tests.support.smtpwire import Wire

    bad = base64.b64encode(b"\0carol\0wrong").decode()
    good = base64.b64encode(b"\0carol\0correct horse battery").decode()
    configs = []
    for node in ("a", "b"):
        config = live_config(tmp_path / node, queue=QueueConfig(
            backend="postgresql", dsn=pg_dsn, node=node))
        UserDB(config.data_dir / "users.json").set_password("carol", "correct horse battery")
        configs.append(config)
    with LiveServer(configs[0]) as a, LiveServer(configs[1]) as b:
        failed = 0
        while failed < Policy.AUTH_FAILS_PER_IP:
            with Wire(a.port("smtps"), tls=True, source="127.0.0.51", timeout=20) as w:
                w.greeting()
                w.ehlo()
                for _ in range(Policy.AUTH_FAILS_PER_CONNECTION):
                    reply = w.cmd(f"AUTH PLAIN {bad}")
                    failed += 1
                    if not reply.startswith("535"):
                        break

        def refused_on_b() -> bool | None:
            # The right password: a success adds no failure of node b's own, so only
            # node a's failures can make node b refuse it.
            with Wire(b.port("smtps"), tls=True, source="127.0.0.51", timeout=20) as w:
                w.greeting()
                w.ehlo()
                reply = w.cmd(f"AUTH PLAIN {good}")
                assert reply.startswith(("235", "421 4.7.0")), reply
                return reply.startswith("421 4.7.0") or None

        wait_until("node b refusing the client that failed on node a", refused_on_b, 30, 0.3)
        with Wire(b.port("smtps"), tls=True, source="127.0.0.52", timeout=20) as w:
            w.greeting()
            w.ehlo()
            assert w.cmd(f"AUTH PLAIN {bad}").startswith("535")

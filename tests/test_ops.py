"""Running mailgate as a service: the default certificate, SIGHUP, the unit file.

Each test drives the real thing: a TLS handshake that checks the name, `mailgate
serve` as a child process sent a real SIGHUP, systemd's own verifier.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from mailgate.server.tls import ensure_self_signed, server_context
from tests.support.needs import need_tool
from tests.support.smtpwire import Wire, wait_until
from tests.support.tlscerts import TestCA
from tests.test_server_durability import Serve, free_port, write_config

ROOT = Path(__file__).resolve().parent.parent


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, name: str) -> None:
    """A real TLS handshake over a socket pair; raises what the client's check raises."""
    a, b = socket.socketpair()
    errors: list[BaseException] = []

    def serve_side() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                s.recv(1)
        except (OSError, ssl.SSLError) as exc:
            errors.append(exc)

    t = threading.Thread(target=serve_side, daemon=True)
    t.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=name) as c:
            c.sendall(b"x")
    finally:
        t.join(10)
        a.close()
        b.close()


def test_the_self_signed_certificate_names_localhost_too(tmp_path: Path) -> None:
    """Local programs connect to `localhost` and check the name even when told to trust
    the certificate (git send-email, msmtp with tls_trust_file): the default certificate
    of a server named mx.example.test must also be valid for localhost and 127.0.0.1."""
    cert, key = ensure_self_signed(tmp_path, "mx.example.test")
    server = server_context(cert, key)
    for name in ("mx.example.test", "localhost", "127.0.0.1"):
        client = ssl.create_default_context(cafile=str(cert))
        _handshake(server, client, name)
    client = ssl.create_default_context(cafile=str(cert))
    try:
        _handshake(server, client, "other.example.test")
    except ssl.SSLCertVerificationError:
        pass
    else:
        raise AssertionError("the certificate must not be valid for any name at all")


def _peer_cert(w: Wire) -> bytes:
    sock = w.sock
    assert isinstance(sock, ssl.SSLSocket)
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_sighup_reloads_the_certificate_without_dropping_connections(tmp_path: Path) -> None:
    ca = TestCA.create(tmp_path / "ca")
    live_cert, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    old_cert, old_key = ca.issue("localhost")  # issue() names its files after the host:
    shutil.copy(old_cert, live_cert)           # copy each pair before the next one
    shutil.copy(old_key, live_key)
    old_der = ssl.PEM_cert_to_DER_cert(live_cert.read_text())
    new_cert, new_key = ca.issue("localhost")
    port = free_port()
    config = write_config(tmp_path, port, tls={"cert": str(live_cert), "key": str(live_key)})
    log = tmp_path / "serve.log"
    with Serve(config, port, log) as srv:
        before = Wire(port)
        before.greeting()
        before.ehlo()
        assert before.cmd("STARTTLS").startswith("220")
        before.starttls()
        first = _peer_cert(before)
        assert first == old_der

        # A broken pair (the new certificate with the old key) is refused and the
        # certificate in service stays: a half-finished copy must not take TLS down.
        shutil.copy(new_cert, live_cert)
        os.kill(srv.proc.pid, signal.SIGHUP)
        wait_until("the refusal in the log", lambda: "kept the certificate" in srv.logs())
        with Wire(port) as w:
            w.greeting()
            w.ehlo()
            assert w.cmd("STARTTLS").startswith("220")
            w.starttls()
            assert _peer_cert(w) == first

        shutil.copy(new_key, live_key)
        os.kill(srv.proc.pid, signal.SIGHUP)
        wait_until("the reload in the log", lambda: "reloaded the TLS certificate" in srv.logs())
        with Wire(port) as w:
            w.greeting()
            w.ehlo()
            assert w.cmd("STARTTLS").startswith("220")
            w.starttls()
            assert _peer_cert(w) == ssl.PEM_cert_to_DER_cert(new_cert.read_text())
        # The session opened before both signals is still there, still in TLS.
        assert before.cmd("EHLO client.test").startswith("250")
        assert before.cmd("NOOP").startswith("250")
        assert before.cmd("QUIT").startswith("221")
        before.close()
        assert srv.proc.poll() is None, srv.logs()


def test_the_systemd_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    analyze = need_tool("systemd-analyze", "systemd")
    unit = ROOT / "contrib" / "mailgate.service"
    text = unit.read_text()
    # The unit names /usr/local/bin/mailgate; verify checks that ExecStart exists, so a
    # copy points at this environment's own `mailgate` instead.
    exe = shutil.which("mailgate")
    assert exe is not None, "mailgate is not on PATH: install the package (pip install -e .)"
    copy = tmp_path / "mailgate.service"
    copy.write_text(text.replace("/usr/local/bin/mailgate", exe))
    run = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                         timeout=60, check=False)
    problems = [line for line in (run.stdout + run.stderr).splitlines()
                if "mailgate.service" in line]
    assert run.returncode == 0 and not problems, run.stdout + run.stderr
    for needed in ("ExecReload=/bin/kill -HUP $MAINPID", "NoNewPrivileges=yes",
                   "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "ProtectSystem=strict"):
        assert needed in text, needed


def test_log_format_json_gives_one_object_per_line(tmp_path: Path) -> None:
    """`--log-format json`: every line of the log parses as JSON, with the fields a log
    pipeline indexes; a client's control characters stay escaped inside the string."""
    import json

    port = free_port()
    config = write_config(tmp_path, port)
    log = tmp_path / "serve.log"
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailgate", "serve", "--config", str(config),
             "--log-format", "json"], stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        def greets() -> bool:
            try:
                with Wire(port, timeout=2) as w:
                    return w.greeting().startswith("220 ")
            except OSError:
                return False

        wait_until("the server to greet", greets)
        with Wire(port) as w:
            w.greeting()
            w.cmd("EHLO evil\x1b[31m.test")
            w.cmd("QUIT")
    finally:
        proc.terminate()
        proc.wait(30)
    lines = [line for line in log.read_text().splitlines()
             if line.startswith("{")]
    assert lines, log.read_text()
    for line in lines:
        doc = json.loads(line)
        assert {"time", "level", "logger", "pid", "message"} <= doc.keys(), doc
        assert "\x1b" not in line
    assert any(json.loads(line)["message"].startswith("shutting down") for line in lines)


def test_pages_survive_a_reinstall_under_the_running_server(tmp_path: Path) -> None:
    """`pip install` of a new version replaces the package's files under a running
    server. The web pages must keep working until the restart: templates, static
    files and prose are read once at start. (Before, every page became a 500.)"""
    import urllib.request

    site = tmp_path / "site"
    shutil.copytree(ROOT / "src" / "mailgate", site / "mailgate",
                    ignore=shutil.ignore_patterns("__pycache__"))
    smtp_port, web_port = free_port(), free_port()
    config = write_config(tmp_path, smtp_port)
    text = config.read_text().replace('[web]\naddress = ""',
                                      f'[web]\naddress = "127.0.0.1:{web_port}"')
    config.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(site)}
    log = tmp_path / "serve.log"
    with log.open("ab") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mailgate", "serve", "--config",
                                 str(config)], stdin=subprocess.DEVNULL, stdout=err,
                                stderr=err, env=env, cwd=tmp_path)
    base = f"http://127.0.0.1:{web_port}"
    pages = ["/", "/codes/556", "/compare/221/556", "/static/style.css",
             "/admin/login", "/?lang=zh"]
    # A provider's reply, first asked for after the reinstall: vendors' meanings too
    # must have been read at start, not at the first paste.
    paste = "/explain?q=550+5.1.10+RESOLVER.ADR.RecipientNotFound%3B+not+found&lang=zh"

    def get(path: str) -> int:
        req = urllib.request.Request(base + path, headers={"Host": "127.0.0.1"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def up() -> bool:
        try:
            return get("/") == 200
        except OSError:
            return False

    try:
        wait_until("the web page", up, 30)
        assert {p: get(p) for p in pages} == dict.fromkeys(pages, 200)
        # What a reinstall does to the old version's files: they are gone.
        for folder in ("web/templates", "web/static", "codes/data"):
            shutil.rmtree(site / "mailgate" / folder)
        assert {p: get(p) for p in pages} == dict.fromkeys(pages, 200), log.read_text()
        req = urllib.request.Request(base + paste, headers={"Host": "127.0.0.1"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert b"Microsoft" in resp.read()  # the provider's own meaning was found
    finally:
        proc.terminate()
        proc.wait(30)


def test_sighup_reloads_the_aliases_and_keeps_them_when_the_file_has_a_loop(
        tmp_path: Path) -> None:
    """`[domains] aliases_file` is read again on SIGHUP: a new alias is accepted at once,
    with no connection dropped; a file with a loop leaves the aliases in service."""
    aliases = tmp_path / "aliases"
    aliases.write_text("sales: bob\n")
    port = free_port()
    config = write_config(tmp_path, port, domains={"local": ["localhost"],
                                                   "aliases_file": str(aliases)})
    with Serve(config, port, tmp_path / "serve.log") as srv, Wire(port) as w:
        w.greeting()
        w.ehlo()
        assert w.cmd("MAIL FROM:<a@client.test>").startswith("250")
        assert w.cmd("RCPT TO:<sales@localhost>").startswith("250")
        assert w.cmd("RCPT TO:<support@localhost>").startswith("550 5.1.1")

        aliases.write_text("sales: bob\nsupport: bob, sales\n")
        os.kill(srv.proc.pid, signal.SIGHUP)
        wait_until("the reload in the log", lambda: "reloaded the aliases" in srv.logs())
        assert w.cmd("RCPT TO:<support@localhost>").startswith("250")

        aliases.write_text("sales: support\nsupport: sales\n")  # a loop: refused
        os.kill(srv.proc.pid, signal.SIGHUP)
        wait_until("the refusal in the log", lambda: "kept the aliases" in srv.logs())
        assert w.cmd("RCPT TO:<support@localhost>").startswith("250")
        assert w.cmd("RSET").startswith("250")
        assert w.cmd("QUIT").startswith("221")
        assert srv.proc.poll() is None, srv.logs()


def test_sighup_reloads_the_dkim_keys_and_keeps_one_that_does_not_load(
        tmp_path: Path) -> None:
    """A key rotated in place (same selector, new key in the file [dkim] names) signs the
    mail queued after `kill -HUP`, not before; a key file that no longer loads leaves
    the key in service, and the log names the file. Each message is checked by dkimpy
    against the record of the key it must be signed with, and not the other."""

    import dkim

    from mailgate.config.dkim import generate_key, load_key, public_record
    from tests.test_dkim_live import Receiver

    key_file = tmp_path / "s1.key"
    key_file.write_bytes(generate_key("rsa-sha256"))
    old = load_key(key_file, "rsa-sha256", "example.org", "s1")
    new_pem = generate_key("rsa-sha256")
    port = free_port()
    with Receiver() as rx:
        config = write_config(tmp_path, port, relayhost=f"[127.0.0.1]:{rx.port}", **{
            'dkim."example.org"': {"selector": "s1", "key_file": str(key_file)}})
        with Serve(config, port, tmp_path / "serve.log") as srv:
            def send(n: int) -> bytes:
                return _send_signed(port, rx, n)

            before = send(1)
            key_file.write_bytes(new_pem)  # rotated on disk: no signal yet
            unsignalled = send(2)
            os.kill(srv.proc.pid, signal.SIGHUP)
            wait_until("the reload in the log", lambda: "reloaded the DKIM keys" in srv.logs())
            after = send(3)
            key_file.write_text("not a key\n")  # a bad copy: the new key stays
            os.kill(srv.proc.pid, signal.SIGHUP)
            wait_until("the refusal in the log", lambda: "kept the DKIM key" in srv.logs())
            kept = send(4)
            assert srv.proc.poll() is None, srv.logs()
            logs = srv.logs()
    refusal = next(line for line in logs.splitlines() if "kept the DKIM key" in line)
    assert str(key_file) in refusal and "not a private key" in refusal, refusal
    new = load_key(_write(tmp_path / "new.key", new_pem), "rsa-sha256", "example.org", "s1")

    def verifies(msg: bytes, key: Any) -> bool:
        record = public_record(key).encode()
        return bool(dkim.verify(msg, dnsfunc=lambda name, timeout=5: record))

    for msg in (before, unsignalled):
        assert msg.count(b"DKIM-Signature:") == 1
        assert verifies(msg, old) and not verifies(msg, new)
    for msg in (after, kept):
        assert msg.count(b"DKIM-Signature:") == 1
        assert verifies(msg, new) and not verifies(msg, old)


def test_sighup_takes_a_new_dkim_selector_and_drops_a_domain_taken_out(
        tmp_path: Path) -> None:
    """[dkim] is read again from the configuration file on SIGHUP: switched to a new
    selector with a new key file, the server signs with it from then on (dkimpy checks
    it against that selector's record, and the old one no longer verifies it); with the
    domain's [dkim] taken out, it signs nothing."""

    import dkim

    from mailgate.config.dkim import generate_key, load_key, public_record
    from tests.test_dkim_live import Receiver

    s1 = _write(tmp_path / "s1.key", generate_key("rsa-sha256"))
    s2 = _write(tmp_path / "s2.key", generate_key("ed25519-sha256"))
    port = free_port()
    with Receiver() as rx:
        def configure(table: dict[str, str] | None) -> Path:
            dkim_section = {} if table is None else {'dkim."example.org"': table}
            return write_config(tmp_path, port, relayhost=f"[127.0.0.1]:{rx.port}",
                                **dkim_section)

        config = configure({"selector": "s1", "key_file": str(s1)})
        with Serve(config, port, tmp_path / "serve.log") as srv:
            def send(n: int) -> bytes:
                return _send_signed(port, rx, n)

            def hup(n: int) -> None:
                os.kill(srv.proc.pid, signal.SIGHUP)
                wait_until("the reload in the log",
                           lambda: srv.logs().count("reloaded the DKIM keys") >= n)

            first = send(1)
            configure({"selector": "s2", "key_file": str(s2), "algorithm": "ed25519-sha256"})
            hup(1)
            second = send(2)
            configure(None)  # no [dkim] left
            hup(2)
            third = send(3)
            assert srv.proc.poll() is None, srv.logs()
            logs = srv.logs()
    assert "example.org: s2" in logs
    keys = {"s1": load_key(s1, "rsa-sha256", "example.org", "s1"),
            "s2": load_key(s2, "ed25519-sha256", "example.org", "s2")}

    def verifies(msg: bytes, selector: str) -> bool:
        record = public_record(keys[selector]).encode()
        return bool(dkim.verify(msg, dnsfunc=lambda name, timeout=5: record))

    assert b"s=s1;" in first and verifies(first, "s1")
    assert b"s=s2;" in second and verifies(second, "s2") and not verifies(second, "s1")
    assert b"DKIM-Signature:" not in third


def _send_signed(port: int, rx: Any, n: int) -> bytes:
    """Message `n` from alice@example.org (a signing domain) through the server on
    `port`, as the receiver `rx` got it."""
    import smtplib

    from tests.test_dkim_live import message

    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("alice@example.org", ["bob@example.net"], message(
            "alice@example.org", "bob@example.net", b"message %d\r\n" % n))
    wait_until(f"message {n} at the receiver", lambda: len(rx.accepted) >= n, 30)
    return bytes(rx.accepted[n - 1])


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path

"""A real Dovecot for tests: its own instance, configured in a temporary folder.

`Dovecot(folder, users)` writes a dovecot.conf whose base_dir, state, log, passwd-file
and sockets are all in `folder`, with IMAP on a free loopback port, LMTP on a Unix
socket and an auth-client socket for mailgate, and runs `dovecot -F -c FILE` until
`stop()`. The system's /etc/dovecot is never read or touched. Needs root (Dovecot's
master runs as root to switch to each mail user) and the Debian packages dovecot-core,
dovecot-imapd and dovecot-lmtpd (`need_dovecot`).
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.needs import need, need_tool

__all__ = ["Dovecot", "MailUser", "ensure_system_user", "need_dovecot"]

TEST_USER = "mailgate-test"  # the system user that owns the test mailboxes


def need_dovecot() -> str:
    """dovecot's path; skip (locally) or fail (CI) without it, its IMAP and LMTP."""
    path = need_tool("dovecot", "dovecot-core")
    need(Path("/usr/lib/dovecot/imap").exists(), "Dovecot's IMAP server (Debian package "
         "dovecot-imapd)")
    need(Path("/usr/lib/dovecot/lmtp").exists(), "Dovecot's LMTP server (Debian package "
         "dovecot-lmtpd)")
    need(os.geteuid() == 0, "root (Dovecot's master switches to each mail user)")
    return path


def ensure_system_user(name: str) -> pwd.struct_passwd:
    """The system user `name`, made (as .ci/run does) when running as root."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    if os.geteuid() == 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", name], check=True, capture_output=True)
        return pwd.getpwnam(name)
    need(False, f"the system user {name} (useradd --system --no-create-home {name})")
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class MailUser:
    """A Dovecot user: name and password for IMAP/AUTH, its uid/gid and home."""

    name: str
    password: str
    uid: int
    gid: int
    home: Path

    @property
    def maildir(self) -> Path:
        return self.home / "Maildir"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Dovecot:
    """One Dovecot instance in `folder`; a context manager."""

    def __init__(self, folder: Path, users: list[MailUser]) -> None:
        self.folder = folder
        self.users = users
        self.imap_port = free_port()
        self.run_dir = folder / "run"
        self.lmtp_socket = folder / "lmtp"
        self.auth_socket = folder / "auth-mailgate"
        self.log = folder / "dovecot.log"
        self.conf = folder / "dovecot.conf"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        passwd = self.folder / "passwd"
        passwd.write_text("".join(
            f"{u.name}:{{PLAIN}}{u.password}:{u.uid}:{u.gid}::{u.home}::\n"
            for u in self.users))
        os.chmod(passwd, 0o600)
        with contextlib.suppress(KeyError):  # the auth process runs as "dovecot"
            owner = pwd.getpwnam("dovecot")
            os.chown(passwd, owner.pw_uid, owner.pw_gid)
        (self.folder / "state").mkdir(exist_ok=True)
        self.conf.write_text(f"""\
base_dir = {self.run_dir}
state_dir = {self.folder / "state"}
log_path = {self.log}
info_log_path = {self.log}
instance_name = mailgate-test-{os.getpid()}-{self.imap_port}
protocols = imap lmtp
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_format = %Ln
auth_failure_delay = 0
first_valid_uid = 100
first_valid_gid = 100
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {passwd}
}}
userdb {{
  driver = passwd-file
  args = {passwd}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  unix_listener {self.lmtp_socket} {{
    mode = 0666
  }}
}}
service auth {{
  unix_listener {self.auth_socket} {{
    mode = 0666
  }}
}}
""")

    def start(self) -> Dovecot:
        self.write_config()
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(["dovecot", "-F", "-c", str(self.conf)],
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dovecot exited {self.proc.returncode}:\n"
                                     f"{self.logs()}")
            if self.lmtp_socket.exists() and self.auth_socket.exists() and self._imap_up():
                return self
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"dovecot did not start:\n{self.logs()}")

    def _imap_up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.imap_port), timeout=1):
                return True
        except OSError:
            return False

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fetch_all(self, user: MailUser) -> list[tuple[bytes, int]]:
        """Every message in the user's INBOX over IMAP: (its bytes, RFC822.SIZE)."""
        imap = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=20)
        try:
            imap.login(user.name, user.password)
            status, data = imap.select("INBOX", readonly=True)
            assert status == "OK", data
            count = int(data[0] or b"0")
            out: list[tuple[bytes, int]] = []
            for n in range(1, count + 1):
                status, parts = imap.fetch(str(n), "(RFC822.SIZE BODY.PEEK[])")
                assert status == "OK", parts
                first = parts[0]
                assert isinstance(first, tuple), parts
                head, body = first
                size = int(head.split(b"RFC822.SIZE ")[1].split()[0])
                out.append((bytes(body), size))
            return out
        finally:
            with contextlib.suppress(Exception):
                imap.logout()

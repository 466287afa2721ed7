"""Whose Maildir it is: [maildir] entries, the mailbox helper that writes as the owner,
and whom `serve` runs as (privileges.py)."""

from __future__ import annotations

import dataclasses
import errno
import os
import pwd
import smtplib
import stat
from pathlib import Path

import pytest

from mailgate.config import ConfigError, MaildirOwner, ServerConfig, parse_config
from mailgate.datadir import StartupError
from mailgate.delivery.helper import start_helper
from mailgate.delivery.maildir import MaildirError, NoMailbox, mailbox_for
from mailgate.privileges import RunAs, own_data_dir, target_user
from mailgate.queue.sqlite import SQLiteQueue
from tests.support.dovecot import free_port
from tests.support.live import LiveServer, live_config
from tests.support.needs import need
from tests.support.smtpwire import wait_until

NOBODY = pwd.getpwnam("nobody")  # an unprivileged user every Debian has


def test_templates_put_the_domain_and_local_part_below_a_base_the_admin_owns() -> None:
    root = Path("/data/maildir")
    box = mailbox_for(MaildirOwner("example.org", uid=5000, gid=5000,
                                   path="/var/vmail/%d/%n"), root, "Bob@Example.org")
    assert (box.base, box.parts, box.uid, box.gid) == (
        Path("/var/vmail"), ("example.org", "bob"), 5000, 5000)
    box = mailbox_for(MaildirOwner("example.org", uid=5000, gid=5000,
                                   path="/srv/%d/%n/Maildir"), root, "../x@example.org")
    assert box.base == Path("/srv") and box.parts == ("example.org", "=2E.=2Fx", "Maildir")
    default = mailbox_for(None, root, "bob@localhost")
    assert default.path == root / "localhost" / "bob" and default.uid is None


def test_a_named_owner_gets_its_home_maildir() -> None:
    box = mailbox_for(MaildirOwner("localhost", user="nobody"), Path("/d"), "x@localhost")
    assert (box.base, box.parts) == (Path(NOBODY.pw_dir), ("Maildir",))
    assert (box.uid, box.gid, box.user) == (NOBODY.pw_uid, NOBODY.pw_gid, "nobody")


def test_system_users_own_their_mail_and_nobody_else_does() -> None:
    system = MaildirOwner("localhost", system=True)
    box = mailbox_for(system, Path("/d"), "nobody@localhost")
    assert box.uid == NOBODY.pw_uid and box.parts == ("Maildir",)
    with pytest.raises(NoMailbox) as unknown:
        mailbox_for(system, Path("/d"), "no-such-user-here@localhost")
    assert unknown.value.permanent
    with pytest.raises(NoMailbox, match="never writes mail as root"):
        mailbox_for(system, Path("/d"), "root@localhost")


def test_a_maildir_entry_for_an_lmtp_domain_is_an_error() -> None:
    with pytest.raises(ConfigError, match="is delivered by LMTP"):
        parse_config('[routes]\n"localhost" = "lmtp:unix:/run/lmtp"\n'
                     '[maildir]\n"bob@localhost" = { owner = "bob" }\n', "m.toml")


@pytest.mark.parametrize(("entry", "why"), [
    ('"example.org" = "system"', "example.org is not one of domains.local"),
    ('"localhost" = { owner = "0:5" }', "must not be root"),
    ('"localhost" = { owner = "root" }', "must not be root"),
    ('"localhost" = { owner = "5000:5000" }', "an owner given as uid:gid has no home"),
    ('"localhost" = { owner = "vmail", path = "var/mail" }', "must be an absolute path"),
    ('"localhost" = { owner = "vmail", path = "/v/%u" }', "%u is not a placeholder"),
    ('"localhost" = { owner = "vmail", path = "/v/../etc" }', 'must not contain ".."'),
    ('"localhost" = { path = "/v" }', "missing"),
    ('"localhost" = "everyone"', 'must be "system"'),
])
def test_bad_maildir_entries_say_why(entry: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[maildir]\n{entry}\n", "m.toml")
    assert why in str(caught.value), caught.value


def test_auth_and_server_user_settings() -> None:
    config = parse_config('[auth]\nbackend = "dovecot"\ndovecot_socket = "/run/d/auth"\n'
                          'timeout = "3s"\n[server]\nuser = "mail-gate"\n', "m.toml")
    assert (config.auth.backend, str(config.auth.dovecot_socket), config.auth.timeout) == (
        "dovecot", "/run/d/auth", 3.0)
    assert config.server.user == "mail-gate"
    with pytest.raises(ConfigError, match=r'auth\.dovecot_socket: is set but auth\.backend'):
        parse_config('[auth]\ndovecot_socket = "/run/d/auth"\n', "m.toml")
    with pytest.raises(ConfigError, match=r"auth\.dovecot_socket"):
        parse_config('[auth]\nbackend = "dovecot"\ndovecot_socket = "run/auth"\n', "m.toml")


# --- the mailbox helper ------------------------------------------------------------


def _owned_by_nobody(folder: Path) -> Path:
    os.chmod(folder, 0o755)
    base = folder / "vmail"
    base.mkdir()
    os.chown(base, NOBODY.pw_uid, NOBODY.pw_gid)
    return base


def test_the_helper_writes_as_the_owner_and_only_what_an_entry_names(tmp_path: Path) -> None:
    need(os.geteuid() == 0, "root (the helper switches to each mailbox's owner)")
    folder = Path(os.path.realpath(tmp_path))
    # pytest's folders are root's only; the owner must reach the base itself.
    for parent in (folder, *folder.parents):
        if parent == Path("/tmp"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o011)
    base = _owned_by_nobody(folder)
    config = dataclasses.replace(live_config(folder / "data"), maildir={
        "bob@localhost": MaildirOwner("bob@localhost", user="nobody", path=f"{base}/%n")})
    helper = start_helper(config)
    try:
        path = helper.deliver("Bob@localhost", b"Subject: hi\r\n\r\nhello\r\n", "mx.test")
        st = path.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
            NOBODY.pw_uid, NOBODY.pw_gid, 0o600)
        assert path.read_bytes() == b"Subject: hi\n\nhello\n"
        assert path.parent == base / "bob" / "new"
        assert (base / "bob").stat().st_uid == NOBODY.pw_uid
        with pytest.raises(MaildirError) as refused:
            helper.deliver("carol@localhost", b"x\r\n", "mx.test")  # no entry: not its own
        assert refused.value.errno == errno.EPERM
        # A link below the base is not followed, as the owner writes it either.
        (base / "eve").symlink_to("/etc")
        config2 = dataclasses.replace(config, maildir={
            "eve@localhost": MaildirOwner("eve@localhost", user="nobody",
                                          path=f"{base}/%n")})
        helper2 = start_helper(config2)
        try:
            with pytest.raises(MaildirError, match="symbolic link"):
                helper2.deliver("eve@localhost", b"x\r\n", "mx.test")
        finally:
            helper2.close()
    finally:
        helper.close()
    os.waitpid(helper.pid, 0)  # it ends once its socket closes


def test_without_a_helper_another_owners_maildir_is_deferred_saying_why(
        tmp_path: Path) -> None:
    other = NOBODY if os.geteuid() != NOBODY.pw_uid else pwd.getpwnam("daemon")
    config = dataclasses.replace(live_config(tmp_path / "data"), maildir={
        "bob@localhost": MaildirOwner("bob@localhost", uid=other.pw_uid, gid=other.pw_gid,
                                      path=f"{tmp_path}/vmail/%n")})
    with LiveServer(config) as live:
        with smtplib.SMTP("127.0.0.1", live.port("mx"), timeout=10) as client:
            client.sendmail("a@example.org", ["bob@localhost"], b"Subject: x\r\n\r\nx\r\n")
        with SQLiteQueue(config.data_dir / "queue.db") as queue:
            text = wait_until("bob deferred", lambda: next(
                (r.last_text for m in queue.list() for r in m.recipients
                 if r.last_code == 451), None), 20)
    assert "no mailbox helper" in text and "start mailgate as root" in text


# --- whom serve runs as ------------------------------------------------------------


def test_root_drops_to_mailgate_by_default_and_stays_root_only_when_told() -> None:
    base = live_config(Path("/nonexistent"))
    named = dataclasses.replace(base, server=ServerConfig(user="nobody"))
    assert target_user(named, euid=0) == RunAs("nobody", NOBODY.pw_uid, NOBODY.pw_gid)
    told = dataclasses.replace(base, server=ServerConfig(user="root"))
    assert target_user(told, euid=0) is None
    missing = dataclasses.replace(base, server=ServerConfig(user="no-such-user-x"))
    with pytest.raises(StartupError, match="useradd --system"):
        target_user(missing, euid=0)
    try:
        pwd.getpwnam("mailgate")
    except KeyError:
        with pytest.raises(StartupError, match="'mailgate'"):
            target_user(base, euid=0)
    else:
        user = target_user(base, euid=0)
        assert user is not None and user.name == "mailgate" and user.uid != 0


def test_only_root_can_switch_users() -> None:
    base = live_config(Path("/nonexistent"))
    assert target_user(base, euid=NOBODY.pw_uid) is None  # runs as who started it
    same = dataclasses.replace(base, server=ServerConfig(user="nobody"))
    assert target_user(same, euid=NOBODY.pw_uid) is None
    other = dataclasses.replace(base, server=ServerConfig(user="daemon"))
    with pytest.raises(StartupError, match="only root can switch users"):
        target_user(other, euid=NOBODY.pw_uid)


def test_the_data_directory_is_given_to_the_user_without_following_links(
        tmp_path: Path) -> None:
    need(os.geteuid() == 0, "root (chown)")
    data = tmp_path / "data"
    (data / "maildir" / "localhost" / "bob").mkdir(parents=True)
    (data / "queue.db").write_text("")
    outside = tmp_path / "outside"
    outside.write_text("")
    (data / "link").symlink_to(outside)
    user = RunAs("nobody", NOBODY.pw_uid, NOBODY.pw_gid)
    assert own_data_dir(data, user) == 6
    for path in (data, data / "queue.db", data / "maildir" / "localhost" / "bob"):
        assert path.stat().st_uid == NOBODY.pw_uid
    assert os.lstat(data / "link").st_uid == NOBODY.pw_uid
    assert outside.stat().st_uid == 0  # what the link points to is not touched
    assert own_data_dir(data, user) == 0


def test_serve_as_root_with_no_such_user_is_one_sentence(tmp_path: Path) -> None:
    need(os.geteuid() == 0, "root (serve drops root only when started as root)")
    import subprocess
    import sys

    config = tmp_path / "m.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[[listen]]\nrole = "mx"\n'
                      f'address = "127.0.0.1:{free_port()}"\n[web]\naddress = ""\n'
                      '[server]\nuser = "no-such-user-x"\n')
    src = str(Path(__file__).resolve().parent.parent / "src")
    done = subprocess.run([sys.executable, "-m", "mailgate", "serve", "--config",
                           str(config)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": src}, check=False)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("mailgate: ") and "'no-such-user-x'" in line
    assert "useradd --system" in line and "Traceback" not in done.stderr

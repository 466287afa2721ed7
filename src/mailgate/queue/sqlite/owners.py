"""Who holds a claim: the processes that claim work (claim owners).

A claim names its owner, so a restarted server can tell a dead process's claims from a
live one's and take them back at once (`SQLiteQueue.recover_claims`) instead of waiting
out the lease. `boot` is the kernel's boot id (a reboot ends every process) and
`started` the process's start time, so a pid reused by another process is not taken for
the old one.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ClaimOwner"]


def _boot_id() -> str:
    """The kernel's boot id (Linux): differs after every reboot; "" where unknown."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_started(pid: int) -> str:
    """When process `pid` started, in clock ticks since boot (Linux /proc/PID/stat field
    22); "" where unknown. With the boot id it tells a reused pid from the old process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) is in parentheses and may hold spaces or parentheses.
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


@dataclass(frozen=True, slots=True)
class ClaimOwner:
    """The process that claims work through one SQLiteQueue: a random id per queue
    object, registered in the `owners` table with what tells whether it still runs."""

    id: str
    host: str
    pid: int
    started: str
    boot: str

    @classmethod
    def this_process(cls) -> ClaimOwner:
        pid = os.getpid()
        # os.uname's node name is what socket.gethostname() returns, without loading
        # socket (the `queue` commands open a queue too); os.urandom is secrets.token_hex's.
        return cls(os.urandom(8).hex(), os.uname().nodename, pid, _process_started(pid),
                   _boot_id())

    def register(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO owners (id, host, pid, started, boot, registered_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (self.id, self.host, self.pid, self.started, self.boot, time.time()))

    def outlived(self, host: str, pid: int, started: str, boot: str) -> bool:
        """Whether the owner with these particulars has certainly ended. Only an owner on
        this host can be checked; one elsewhere (a shared disk) waits for its leases."""
        if host != self.host:
            return False
        if boot and self.boot and boot != self.boot:
            return True  # the machine rebooted since
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, another user's
        now = _process_started(pid)
        return bool(started and now and started != now)  # the pid was reused

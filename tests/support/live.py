"""A real mailgate server for tests: `serve()` in a thread with its own event loop.

The server is the production code path (config, queue, policy, listeners, local
delivery); only the listening ports are ephemeral (port 0) and the data directory is a
temporary one. Use the `live_server` fixture, or `LiveServer(config)` as a context
manager for custom settings; `pytest_plugins = ["tests.support.live"]` makes the fixture visible.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailgate.config import AuthChecks, Config, Listener
from mailgate.dns import Resolver
from mailgate.serve import serve
from mailgate.server.listener import SMTPServer
from mailgate.server.policy import Policy
from mailgate.users import UserDB

__all__ = ["LiveServer", "live_config", "live_server", "mailgate_cli"]


def live_config(data_dir: Path, **changes: Any) -> Config:
    """Zero-config defaults on ephemeral loopback ports, no DNS checks unless asked
    (null MX, and [auth_checks]: SPF, DKIM, DMARC, ARC are off)."""
    base = Config(
        data_dir=data_dir,
        listen=(Listener("mx", "127.0.0.1", 0), Listener("submission", "127.0.0.1", 0),
                Listener("smtps", "127.0.0.1", 0)),
    )
    changes.setdefault("policy", dataclasses.replace(
        base.policy, sender_null_mx_check=False, recipient_null_mx_check=False))
    changes.setdefault("auth_checks", AuthChecks(spf=False, dkim=False, dmarc=False,
                                                 arc=False))
    return dataclasses.replace(base, **changes)


class LiveServer:
    """Start on enter, stop (gracefully) on exit; `port(role)` gives the bound port.

    `policy` makes the server's policy from (config, resolver, users): a Policy
    subclass with decisions of its own, for tests that need them. `web` True runs the web
    face too, on `config.web` (give it a free port: by default it is 8025)."""

    def __init__(self, config: Config,
                 policy: Callable[[Config, Resolver, UserDB], Policy] = Policy,
                 web: bool = False) -> None:
        self.config = config
        self.policy = policy
        self.web = web
        self.server: SMTPServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mailgate-live", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def ready(server: SMTPServer) -> None:
                self.server = server
                self._ready.set()

            await serve(self.config, ready=ready, stop=self._stop,
                        policy_factory=self.policy, web=self.web)

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def __enter__(self) -> LiveServer:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"mailgate did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(60)

    def port(self, role: str) -> int:
        assert self.server is not None
        for r, _, port in self.server.sockets():
            if r == role:
                return port
        raise KeyError(role)

    @property
    def maildir(self) -> Path:
        return self.config.data_dir / "maildir"


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    with LiveServer(live_config(tmp_path / "data")) as srv:
        yield srv


def mailgate_cli(data_dir: Path, *args: str, input: str | None = None,
                 ) -> subprocess.CompletedProcess[str]:
    """`python -m mailgate ARGS --config FILE` as an administrator runs it, FILE naming
    only `data_dir` (written beside it); the caller checks the exit status."""
    config = data_dir.parent / f"{data_dir.name}-cli.toml"
    config.write_text(f'data_dir = "{data_dir}"\n')
    return subprocess.run([sys.executable, "-m", "mailgate", *args, "--config", str(config)],
                          input=input, capture_output=True, text=True, timeout=60,
                          check=False)

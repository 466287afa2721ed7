"""What every part of the web app shares: the templates, the static folder, the session
lifetime and `WebContext`, the running server as the pages see it.

The pages (`public`, `admin`, `openapi`, `metrics`) import this module and nothing of
`web/app.py`; `app.py` imports the pages and assembles them. So the arrows inside `web/`
point one way: app -> openapi -> admin, public -> lang -> context.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from starlette.templating import Jinja2Templates

from mailgate.config import Config
from mailgate.queue import Queue
from mailgate.web.auth import AdminAuth

__all__ = ["HERE", "SESSION_MAX_AGE", "STATIC_FILES", "WebContext", "static_version",
           "templates"]

HERE = Path(__file__).parent
SESSION_MAX_AGE = 8 * 3600  # an admin session expires after eight hours


def _read_folder(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by its path relative to it ("admin/queue.html")."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# Templates and static files are read into memory once, when the web app is imported
# at start: a `pip install` of a new version under a running server replaces (or
# removes) these files, and a page must not turn into a 500 until the restart.
TEMPLATE_SOURCES = {name: data.decode("utf-8")
                    for name, data in _read_folder(HERE / "templates").items()}
STATIC_FILES = _read_folder(HERE / "static")
templates = Jinja2Templates(env=jinja2.Environment(
    loader=jinja2.DictLoader(TEMPLATE_SOURCES), autoescape=jinja2.select_autoescape(),
    auto_reload=False))


def static_version(name: str) -> str:
    """A short content hash of a file in /static, so a changed one is fetched again."""
    data = STATIC_FILES.get(name)
    return hashlib.sha256(data).hexdigest()[:10] if data is not None else "0"


async def _no_siblings() -> list[dict[str, Any]]:
    return []


@dataclass
class WebContext:
    """What the pages need from the running server; shared by every request."""

    config: Config
    queue: Queue | None
    auth: AdminAuth
    # Counters of the running server (connections, accepted, refused, ...); empty when
    # the web app runs without a server (tests, docs).
    server_stats: Callable[[], dict[str, Any]] = dict
    # Called after an admin action that makes work due (retry, release): wake delivery.
    on_due: Callable[[], None] = lambda: None
    # With `[server] workers = N`, what the other workers report when asked (serve.py):
    # each a dict with "stats" (as server_stats) and "samples" (metrics.samples()).
    siblings: Callable[[], Awaitable[list[dict[str, Any]]]] = _no_siblings
    started: float = field(default_factory=time.time)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking queue call off the event loop."""
        return await asyncio.to_thread(fn, *args)

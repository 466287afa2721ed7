"""`/metrics`: the Prometheus text of mailgate.metrics, with queue sizes read at scrape time."""

from __future__ import annotations

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mailgate.metrics import exposition, set_queue_counts

__all__ = ["metrics_endpoint", "routes"]


async def metrics_endpoint(request: Request) -> Response:
    ctx = getattr(request.app.state, "ctx", None)
    queue = getattr(ctx, "queue", None)
    if ctx is not None and queue is not None:
        set_queue_counts(await ctx.run(queue.counts))
    reports = await ctx.siblings() if ctx is not None else []
    body = exposition(r["samples"] for r in reports if isinstance(r, dict) and "samples" in r)
    return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)


def routes() -> list[BaseRoute]:
    return [Route("/metrics", metrics_endpoint, name="metrics")]

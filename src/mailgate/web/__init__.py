"""The web face: the reply-code reference, the queue admin, a JSON API and /metrics."""

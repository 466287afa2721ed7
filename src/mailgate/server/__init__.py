"""The asyncio server: listeners, TLS, AUTH users, and the policy behind every reply."""

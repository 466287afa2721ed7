"""Delivery: local Maildirs now; the outbound SMTP engine, retries and bounces next."""

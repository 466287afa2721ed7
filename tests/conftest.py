"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_TSV = ROOT.parent / "shared" / "data" / "smtp-codes.tsv"
VENDORED_TSV = ROOT / "tests" / "data" / "smtp-codes.tsv"

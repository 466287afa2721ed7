"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

# The fixture plugins (pytest_plugins = [...] in the test files) are also imported as
# modules by the files that use their helpers, which can happen first: registered here,
# before any test file is imported, their asserts are rewritten whichever comes first.
pytest.register_assert_rewrite("tests.support.dnsserver", "tests.support.fakemx",
                               "tests.support.live", "tests.support.postgres")

ROOT = Path(__file__).resolve().parent.parent
SHARED_TSV = ROOT.parent / "shared" / "data" / "smtp-codes.tsv"
VENDORED_TSV = ROOT / "tests" / "data" / "smtp-codes.tsv"

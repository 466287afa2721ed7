"""Replay the fuzz corpora through the harnesses, without atheris.

Every file under bench/fuzz/corpus/<target>/ (seeds) and bench/fuzz/regressions/<target>/
(inputs that once broke an invariant, since fixed) must pass `fuzz_<target>.one_input`.
Files under bench/fuzz/known/<target>/ break an invariant on the current code and are
expected to fail (strictly: once fixed, the test says so; move the file to regressions/).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "bench" / "fuzz"


def _inputs(kind: str) -> list[Path]:
    return sorted(p for p in (FUZZ / kind).glob("*/*") if p.is_file())


def _harness(target: str) -> Callable[[bytes], None]:
    if str(FUZZ) not in sys.path:
        sys.path.insert(0, str(FUZZ))
    fn: Callable[[bytes], None] = importlib.import_module(f"fuzz_{target}").one_input
    return fn


def _id(p: Path) -> str:
    return f"{p.parent.name}/{p.name}"


def test_every_target_has_seeds() -> None:
    harnesses = {p.stem.removeprefix("fuzz_") for p in FUZZ.glob("fuzz_*.py")}
    seeded = {p.name for p in (FUZZ / "corpus").iterdir() if any(p.iterdir())}
    assert harnesses and harnesses <= seeded


@pytest.mark.parametrize("target", sorted(p.name for p in (FUZZ / "corpus").iterdir()))
def test_corpus_replays_clean(target: str) -> None:
    one_input = _harness(target)
    files = sorted((FUZZ / "corpus" / target).iterdir())
    assert files
    for path in files:
        try:
            one_input(path.read_bytes())
        except Exception as exc:
            raise AssertionError(f"{_id(path)}: {type(exc).__name__}: {exc}") from exc


@pytest.mark.parametrize("path", _inputs("regressions"), ids=_id)
def test_regression_input_passes(path: Path) -> None:
    _harness(path.parent.name)(path.read_bytes())


@pytest.mark.parametrize("path", _inputs("known"), ids=_id)
@pytest.mark.xfail(strict=True, reason="a known finding, not fixed yet (see bench/fuzz/README.md)")
def test_known_finding_still_fails(path: Path) -> None:
    _harness(path.parent.name)(path.read_bytes())

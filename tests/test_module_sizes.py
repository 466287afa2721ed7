"""mailgate stays in modules a reader can hold: none over 700 lines (issue 13).

`web/admin.py`, `config.py`, `smtp/client.py`, `delivery/diagnose.py` and others had
grown to 1,000 lines and more before they were split (docs/architecture.md says how each
is cut and why).
"""

from __future__ import annotations

from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "mailgate"
MAX_LINES = 700


def too_long(root: Path, limit: int = MAX_LINES) -> dict[str, int]:
    """The modules under `root` longer than `limit` lines, with their length."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > limit:
            out[str(path.relative_to(root))] = n
    return out


def test_no_module_is_over_700_lines() -> None:
    assert too_long(SRC) == {}


def test_the_check_sees_a_long_module(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    (tmp_path / "short.py").write_text("x = 1\n" * MAX_LINES)
    assert too_long(tmp_path) == {"pkg/long.py": MAX_LINES + 1}

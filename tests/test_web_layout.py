"""The web face stays in modules a reader can hold: none over 700 lines.

`web/admin.py` and `web/public.py` had grown to 1,270 and 930 lines before they became
the packages `web/admin/` and `web/public/` (docs/architecture.md says how they are cut).
"""

from __future__ import annotations

from pathlib import Path

WEB = Path(__file__).resolve().parent.parent / "src" / "mailgate" / "web"
MAX_LINES = 700


def too_long(root: Path, limit: int = MAX_LINES) -> dict[str, int]:
    """The modules under `root` longer than `limit` lines, with their length."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > limit:
            out[str(path.relative_to(root))] = n
    return out


def test_no_web_module_is_over_700_lines() -> None:
    assert too_long(WEB) == {}


def test_the_check_sees_a_long_module(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    (tmp_path / "short.py").write_text("x = 1\n" * MAX_LINES)
    assert too_long(tmp_path) == {"pkg/long.py": MAX_LINES + 1}

"""Prose is data: a language is a folder under codes/data/, and no Python holds prose.

The fake language `xx` is a copy of the English folder with a few strings changed, in
a copy of the data root that `MAILGATE_CODES_DATA` points at: the CLI, the web pages,
bounce notices and `mailgate check`'s words must all pick it up with no code change.
"""

from __future__ import annotations

import email
import email.header
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.codes import registry as reg
from mailgate.delivery.bounce import recipient_from_attempt
from tests import test_bounce as tb

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "mailgate"

# What the fake language changes in its copy of the English files: (file, old, new).
XX_CHANGES = [
    ("ui.toml", 'name = "English"', 'name = "Xish"'),
    ("ui.toml", 'html_lang = "en"', 'html_lang = "xx"'),
    ("basic.toml", 'title = "Domain Does Not Accept Mail"', 'title = "Xish: No Mail Here"'),
    ("web.toml", 'skip = "Skip to content"', 'skip = "Xish skip"'),
    ("notices.toml", "wrap = true", "wrap = false"),
    ("notices.toml", 'heading = ""', 'heading = "== Xish =="'),
    ("notices.toml", 'greeting = "This is the mail system at {mta}."',
     'greeting = "Xish greeting from {mta}."'),
    ("diagnostics.toml", 'domain = "Domain"', 'domain = "Xdomain"'),
]


@pytest.fixture
def xx_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A data root with en, zh and the fake xx, in force for this process and children."""
    root = tmp_path / "data"
    shutil.copytree(reg.DATA, root)
    shutil.copytree(root / "en", root / "xx")
    for name, old, new in XX_CHANGES:
        path = root / "xx" / name
        text = path.read_text(encoding="utf-8")
        assert text.count(old) == 1, (name, old)
        path.write_text(text.replace(old, new), encoding="utf-8")
    monkeypatch.setenv(reg.DATA_ENV, str(root))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    reg.clear_caches()
    yield root
    monkeypatch.undo()
    reg.clear_caches()


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    full["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=120, check=False, env=full, cwd=ROOT)


def test_registry_lists_a_new_folder_as_a_language(xx_root: Path) -> None:
    assert reg.languages() == ("en", "xx", "zh")
    assert reg.prose("xx")["556"].title == "Xish: No Mail Here"
    assert reg.words("xx", "web")["skip"] == "Xish skip"
    # A folder without every language file is not a language.
    shutil.copytree(xx_root / "en", xx_root / "yy")
    (xx_root / "yy" / "notices.toml").unlink()
    reg.clear_caches()
    assert reg.languages() == ("en", "xx", "zh")
    with pytest.raises(reg.DataError):
        reg.ui("yy")


def test_cli_explains_in_the_new_language(xx_root: Path) -> None:
    r = _run("-m", "mailgate", "explain", "556", "--lang", "xx", "--format", "json")
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert (body["lang"], body["title"]) == ("xx", "Xish: No Mail Here")
    # The locale picks it too, and --help lists it.
    r = _run("-m", "mailgate", "explain", "556", "--format", "json",
             env={"LC_ALL": "", "LC_MESSAGES": "", "LANG": "xx_XX.UTF-8"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["title"] == "Xish: No Mail Here"
    r = _run("-m", "mailgate", "explain", "--help")
    assert "xx" in r.stdout


_WEB = """
import json, sys, tempfile
from pathlib import Path
from tests.test_web_public import make_client
with make_client(Path(tempfile.mkdtemp())) as c:
    page = c.get("/codes/556?lang=xx")
    first = c.get("/codes/556", headers={"accept-language": "xx-YY, en;q=0.5"})
    api = c.get("/api/codes/556?lang=xx")
json.dump({"status": [page.status_code, first.status_code, api.status_code],
           "content_language": page.headers["content-language"],
           "page": page.text, "first": first.text, "api": api.json()}, sys.stdout)
"""


def test_web_pages_in_the_new_language(xx_root: Path) -> None:
    r = _run("-c", _WEB)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["status"] == [200, 200, 200]
    assert got["content_language"] == "xx"
    page = got["page"]
    assert '<html lang="xx"' in page
    assert "Xish: No Mail Here" in page, page
    assert "Xish skip" in page
    assert all(name in page for name in ("Xish", "English", "中文"))  # the language switch
    assert "Xish: No Mail Here" in got["first"]  # from Accept-Language: xx-YY
    assert got["api"]["title"] == "Xish: No Mail Here"


def _text_part(raw: bytes) -> str:
    msg = email.message_from_bytes(raw)
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            assert part["Content-Language"] == "en, xx"
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode("utf-8")
    raise AssertionError("no text part")


def test_bounce_in_the_new_language(xx_root: Path) -> None:
    m = tb.message(tb.rcpt("bob@example.org"))
    r = recipient_from_attempt(tb.rcpt("bob@example.org"), tb.attempt())
    raw = tb.dsn(m, [r], lang="xx")
    text = _text_part(raw).replace("\r\n", "\n")
    assert text.startswith("This is the mail system at ")  # English comes first
    assert "\n== Xish ==\n\nXish greeting from " in text
    assert "Undelivered Mail Returned to Sender / Undelivered" in str(
        email.header.make_header(email.header.decode_header(
            email.message_from_bytes(raw)["Subject"])))


def test_diagnostics_in_the_new_language(xx_root: Path) -> None:
    from mailgate.delivery import diagnostics as diagnose

    assert diagnose._label("xx", "domain") == "Xdomain: "
    assert diagnose._label("zh", "domain") == "域名："


def test_no_prose_in_python() -> None:
    """No module under src/mailgate holds CJK text: prose lives in codes/data/<lang>/.

    idn.py is allowed its examples of full-width characters that host names map from."""
    cjk = re.compile("[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
                     "\uff00-\uffef]")
    allowed = {SRC / "idn.py"}
    found = [
        f"{path.relative_to(SRC)}:{n}: {line.strip()[:60]}"
        for path in sorted(SRC.rglob("*.py")) if path not in allowed
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if cjk.search(line)
    ]
    assert not found, "\n".join(found)
    # The allowance is for full-width examples only, not for Chinese words.
    assert not re.search("[\u4e00-\u9fff]", (SRC / "idn.py").read_text(encoding="utf-8"))

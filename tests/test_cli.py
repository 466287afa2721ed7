"""The CLI as a user runs it: real processes, exit codes, languages, formats."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mailgate.cli import default_lang, main


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG"))}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mailgate.cli", *args], capture_output=True, text=True,
        env=full_env, timeout=60, check=False,
    )


def test_compare_221_556_in_a_real_process() -> None:
    p = run("compare", "221", "556")
    assert p.returncode == 0, p.stderr
    assert "SMTP 221 Closing Connection vs 556 Domain Does Not Accept Mail" in p.stdout
    assert "Key differences" in p.stdout and "When to use which" in p.stdout
    assert p.stderr == ""


def test_locale_selects_chinese() -> None:
    p = run("compare", "221", "556", env={"LANG": "zh_CN.UTF-8"})
    assert p.returncode == 0, p.stderr
    for heading in ("描述", "何时出现", "如何修复", "主要区别", "何时使用哪个"):
        assert heading in p.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["explain", "999"], "999 is not an SMTP reply code"),
        (["explain", "5.99.1"], "subject 99"),
        (["explain", "abc"], "'abc' is not a reply code"),
        (["compare", "221", "999"], "999 is not an SMTP reply code"),
    ],
)
def test_bad_codes_give_one_line_and_exit_2(args: list[str], message: str) -> None:
    p = run(*args)
    assert p.returncode == 2
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("mailgate: ")


def test_usage_errors_exit_2() -> None:
    assert run("compare", "221").returncode == 2
    assert run("explain").returncode == 2
    assert run("explain", "556", "--format", "yaml").returncode == 2


def test_explain_several_codes_as_json() -> None:
    r = CliRunner().invoke(main, ["explain", "556", "5.1.10", "--format", "json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert [d["code"] for d in data] == ["556", "5.1.10"]


def test_explain_reply_line_markdown_and_html() -> None:
    r = CliRunner().invoke(
        main, ["explain", "556 5.1.10 Recipient address has null MX", "--format", "markdown"]
    )
    assert r.exit_code == 0
    assert r.output.startswith("# SMTP Reply: 556 5.1.10 Recipient address has null MX")
    r = CliRunner().invoke(main, ["compare", "421", "221", "--format", "html", "--lang", "zh"])
    assert r.exit_code == 0 and "<h2>主要区别</h2>" in r.output


@pytest.mark.parametrize(
    ("env", "lang"),
    [({"LANG": "zh_CN.UTF-8"}, "zh"), ({"LANG": "en_US.UTF-8"}, "en"), ({}, "en"),
     ({"LANG": "en_US.UTF-8", "LC_ALL": "zh_TW.UTF-8"}, "zh"),
     ({"LANG": "zh_CN.UTF-8", "LC_MESSAGES": "C"}, "en")],
)
def test_default_lang(env: dict[str, str], lang: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert default_lang() == lang

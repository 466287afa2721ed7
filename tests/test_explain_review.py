"""The errors an RFC review of the knowledge base found (issue 12, section 1), each with
the test that would have caught it. The walks cover every code in every language."""

from __future__ import annotations

import re

import pytest

from mailgate.codes import registry as reg
from mailgate.codes.compare import compare
from mailgate.codes.explain import ReplyExplanation, explain, explain_code
from mailgate.codes.reply import ReplyError

LANGS = ("en", "zh")
ENHANCED = sorted(k for k, v in reg.registry().items() if v.kind == "enhanced")
BASIC = sorted(k for k, v in reg.registry().items() if v.kind == "basic")
# A class named in advice: "4.x.x", "5.X.X", "4.1.1", "2.0.0" (the first digit is the class).
CLASS_MENTION = re.compile(r"(?<![0-9.])([245])\.(?:x|X|[0-9]{1,3})\.(?:x|X|[0-9]{1,3})(?![0-9])")


def _other_classes(text: str, klass: int) -> list[str]:
    return [m.group(0) for m in CLASS_MENTION.finditer(text) if int(m.group(1)) != klass]


def _fix_line(lang: str, a: str, b: str) -> str:
    c = compare(a, b, lang)
    prefix = str(reg.ui(lang)["templates"]["diff_fix"]).split("{", 1)[0]
    return next(d for d in c.differences if d.startswith(prefix))


# --- Advice chosen for the class of the code at hand --------------------------------

@pytest.mark.parametrize("lang", LANGS)
def test_advice_for_each_class_names_only_its_own_class(lang: str) -> None:
    wrong = []
    for key in ENHANCED:
        for klass in (2, 4, 5):
            code = f"{klass}{key[1:]}"
            e = explain_code(code, lang)
            found = _other_classes(e.fix, klass)
            if found:
                wrong.append(f"{code}: fix names {found}: {e.fix[:90]}")
            # what compare shows, beside a code of the other non-success class
            other = "550" if klass == 4 else "421"
            line = _fix_line(lang, code, other)
            shown = line.split(other, 1)[0]
            found = _other_classes(shown, klass)
            if found:
                wrong.append(f"compare {code}: names {found}: {shown[:90]}")
    assert not wrong, "\n".join(wrong)


def test_the_review_examples() -> None:
    line = _fix_line("en", "421", "5.7.1")
    assert "4.x.x" not in line and "greylisting" not in line
    line = _fix_line("en", "4.7.0", "5.0.0")
    assert "2.x.x" not in line and "As 2" not in line
    assert "2.0.0" not in _fix_line("zh", "4.7.0", "5.0.0")


def test_registry_form_keeps_the_advice_for_every_class() -> None:
    # X.7.1 has no class: its advice may (and does) speak of each.
    assert {"4.x.x", "5.x.x"} <= set(CLASS_MENTION.findall(explain_code("X.7.1").fix)) | {
        m.group(0) for m in CLASS_MENTION.finditer(explain_code("X.7.1").fix)}


def test_class_fields_are_consistent_across_languages() -> None:
    for key in ENHANCED:
        en, zh = reg.prose("en")[key], reg.prose("zh")[key]
        assert set(en.fix_by_class) == set(zh.fix_by_class), key


# --- "needs action" is never followed by a sentence that says nothing is needed ----------

NO_ACTION = re.compile(
    r"nothing (?:needs|is needed|to (?:fix|do|change))|no (?:action|change) (?:is )?needed"
    r"|\u65e0\u9700|\u4e0d\u9700\u8981|\u4e0d\u7528|\u4e0d\u5fc5"
)


@pytest.mark.parametrize("lang", LANGS)
def test_needs_action_is_never_contradicted(lang: str) -> None:
    label = "needs action" if lang == "en" else "\u9700\u8981\u5904\u7406"
    codes = BASIC + [f"{k}{key[1:]}" for key in ENHANCED for k in "245"]
    wrong = []
    for code in codes:
        other = "550" if code.startswith("4") else "421"
        for d in compare(code, other, lang).differences:
            for m in re.finditer(re.escape(label), d):
                clause = re.split(r"(?<=[.。])\s*|(?<=\S) — |——", d[m.end():], maxsplit=1)[0]
                if NO_ACTION.search(clause):
                    wrong.append(f"{code}: {d[:140]}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("lang", LANGS)
def test_the_fix_line_shows_each_codes_own_advice(lang: str) -> None:
    line = _fix_line(lang, "421", "5.7.1")
    assert explain_code("421", lang).fix.split(".")[0].split("。")[0][:20] in line
    assert explain_code("5.7.1", lang).fix[:15] in line


# --- RFC facts --------------------------------------------------------------------------

def test_502_does_not_call_vrfy_optional() -> None:
    # RFC 5321 4.5.1: VRFY is in the minimum implementation; 7.3: a site that disables
    # it answers 252, not 502.
    for lang in LANGS:
        e = explain_code("502", lang)
        text = " ".join((e.description, e.when, e.fix))
        assert "252" in text, lang
    e = explain_code("502")
    text = " ".join((e.description, e.when, e.fix))
    assert not re.search(r"optional commands?[^.]*VRFY", text, re.IGNORECASE)
    assert "7.3" in text and "252" in text
    assert "VRFY" in text and "RFC5321 §4.5.1" in e.rfcs and "RFC5321 §7.3" in e.rfcs


@pytest.mark.parametrize("lang", LANGS)
def test_552_after_rcpt_is_treated_as_452(lang: str) -> None:
    # RFC 5321 4.5.3.1.10: a 552 in reply to RCPT (too many recipients, as RFC 821 had
    # it) is to be treated as 452 by the client; "never retry a 552" contradicts it.
    c = compare("452", "552", lang)
    prefix = str(reg.ui(lang)["templates"]["diff_client"]).split("{", 1)[0]
    client = next(d for d in c.differences if d.startswith(prefix))
    after_552 = client.split("552", 1)[1]
    assert "452" in after_552 and "4.5.3.1.10" in after_552, client
    e = explain_code("552", lang)
    assert any("452" in n and "4.5.3.1.10" in n for n in e.notes)
    assert "RFC5321 §4.5.3.1.10" in e.rfcs


@pytest.mark.parametrize("lang", LANGS)
def test_a_closing_reply_is_not_said_to_let_the_session_go_on(lang: str) -> None:
    goes_on = re.compile(
        r"next command|may send|\u4e0b\u4e00\u6761\u547d\u4ee4|\u7ee7\u7eed\u53d1\u9001")
    for code in BASIC:
        e = explain_code(code, lang)
        if e.closes:
            assert not goes_on.search(e.class_meaning), (code, e.class_meaning)
    assert explain_code("221", lang).closes


@pytest.mark.parametrize("lang", LANGS)
def test_not_given_is_not_rendered_as_any(lang: str) -> None:
    anyone = str(reg.ui(lang)["templates"]["when_enhanced_any"])
    for code in ("4.4.7", "4.2.2", "5.4.7"):
        key = "X" + code[1:]
        if reg.registry()[key].associated != "not given":
            continue
        c = compare("421", code, lang)
        prefix = str(reg.ui(lang)["templates"]["diff_when"]).split("{", 1)[0]
        when = next(d for d in c.differences if d.startswith(prefix))
        assert anyone not in when, when
    # and "Any" still is
    c = compare("250", "2.0.0", lang)
    assert any(anyone in d for d in c.differences)


# --- Input ------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["5.01.1", "5.1.01", "4.00.0", "2.0.000", "X.01.10"])
def test_leading_zeros_are_refused(text: str) -> None:
    with pytest.raises(ReplyError, match="leading zero"):
        explain(text)


def test_leading_zero_enhanced_code_in_a_reply_stays_text() -> None:
    x = explain("550 5.01.1 no such user")
    assert isinstance(x, ReplyExplanation) and x.reply.enhanced is None
    assert len(x.notes) == 1 and "leading zeros" in x.notes[0] and "match" not in x.notes[0]


@pytest.mark.parametrize(("typed", "code"), [
    ("\uff15\uff15\uff16", "556"), ("\uff15.\uff11.\uff11\uff10", "5.1.10"),
    ("\u3000556\u3000", "556"), ("\uff38.\uff11.\uff11\uff10", "X.1.10"),
])
def test_full_width_input_is_normalised(typed: str, code: str) -> None:
    x = explain(typed)
    assert not isinstance(x, ReplyExplanation) and x.code == code


def test_full_width_reply_keeps_its_text() -> None:
    text = "\u7528\u6237\u4e0d\u5b58\u5728\uff0c\u8bf7\u6838\u5bf9"  # with a full-width comma
    x = explain("\uff15\uff15\uff10\u3000\uff15.\uff11.\uff11\u3000" + text)
    assert isinstance(x, ReplyExplanation)
    assert (x.reply.code, x.reply.enhanced) == (550, "5.1.1")
    assert x.reply.text == text


@pytest.mark.parametrize("text", ["9" * 100_000, "a" * 100_000, "550" + "x" * 100_000,
                                  "5." + "1" * 100_000, "5.1.1 " + "y" * 100_000],
                         ids=["digits", "letters", "code-then-text", "dotted", "enhanced-text"])
def test_a_long_input_is_not_echoed_whole(text: str) -> None:
    for lang in LANGS:
        with pytest.raises(ReplyError) as info:
            explain(text, lang)
        assert len(str(info.value)) < 300, str(info.value)[:300]


@pytest.mark.parametrize("text", ["999", "5.01.1", "abc", "", "5.9.1", "1234", "550x oops"])
def test_errors_are_in_the_language_asked_for(text: str) -> None:
    with pytest.raises(ReplyError) as en:
        explain(text, "en")
    with pytest.raises(ReplyError) as zh:
        explain(text, "zh")
    assert str(en.value) != str(zh.value)
    assert re.search(r"[\u4e00-\u9fff]", str(zh.value)), str(zh.value)
    assert not re.search(r"[\u4e00-\u9fff]", str(en.value))


def test_compare_errors_are_in_the_language_asked_for() -> None:
    with pytest.raises(ReplyError) as zh:
        compare("556", "5.01.1", "zh")
    assert re.search(r"[\u4e00-\u9fff]", str(zh.value))


def test_cli_errors_in_chinese_and_cut_short() -> None:
    from click.testing import CliRunner

    from mailgate.cli import main

    r = CliRunner().invoke(main, ["explain", "--lang", "zh", "5.01.1"])
    assert r.exit_code == 2 and "\u524d\u5bfc\u96f6" in r.output  # leading zero
    r = CliRunner().invoke(main, ["explain", "--lang", "zh", "a" * 100_000])
    assert r.exit_code == 2 and len(r.output) < 300
    r = CliRunner().invoke(main, ["explain", "\uff15\uff15\uff16"])
    assert r.exit_code == 0 and "556" in r.output


# --- zh entries that said something else than en -----------------------------------------

FACT = re.compile(
    r"(?<![0-9.\u00a7])(?:[2-5][0-9][0-9]|[245X]\.[0-9]{1,3}\.[0-9]{1,3}|\u00a7[0-9.]*[0-9])"
    r"(?![0-9])")


def _facts(p: reg.Prose) -> set[str]:
    return set(FACT.findall(" ".join((p.description, p.when, p.fix, *p.fix_by_class.values()))))


@pytest.mark.parametrize("key", ["211", "221", "534", "X.6.9"])
def test_zh_says_what_en_says(key: str) -> None:
    # The codes and RFC sections each language cites are the same.
    en, zh = reg.prose("en")[key], reg.prose("zh")[key]
    assert _facts(en) == _facts(zh), (_facts(en) ^ _facts(zh))


def test_zh_no_longer_contradicts_en() -> None:
    zh = reg.prose("zh")
    assert "214" in zh["211"].description  # RFC 5321 lists 211 with 214 for HELP
    # not "permanent": another mechanism may work
    assert "\u6c38\u4e45" not in zh["534"].description
    assert "554" not in zh["X.6.9"].description  # the registry pairs X.6.9 with 550


# --- Terminal colour ------------------------------------------------------------------

def _run_on_a_pty(*args: str, env: dict[str, str]) -> str:
    """`python -m mailgate ARGS` with its output on a pseudo-terminal, as a person runs it."""
    import os
    import pty
    import subprocess
    import sys

    master, slave = pty.openpty()
    full = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    full.update(env)
    proc = subprocess.Popen([sys.executable, "-m", "mailgate", *args], stdout=slave,
                            stderr=slave, stdin=subprocess.DEVNULL, env=full)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) == 0
    return b"".join(chunks).decode("utf-8", "replace")


def test_colour_appears_on_a_terminal() -> None:
    out = _run_on_a_pty("explain", "556", env={"TERM": "xterm-256color"})
    assert "\x1b[" in out and "556" in out


def test_no_colour_when_asked_or_piped() -> None:
    import subprocess
    import sys

    out = _run_on_a_pty("explain", "556", env={"TERM": "xterm-256color", "NO_COLOR": "1"})
    assert "\x1b[" not in out and "556" in out
    piped = subprocess.run([sys.executable, "-m", "mailgate", "explain", "556"],
                           capture_output=True, text=True, check=True, timeout=60)
    assert "\x1b[" not in piped.stdout


def test_render_colour_switch() -> None:
    from mailgate.codes.render import render

    e = explain_code("556")
    assert "\x1b[" in render(e, "text", color=True)
    assert "\x1b[" not in render(e, "text", color=False)


# --- Chinese comparisons read as a person writes them -------------------------------------

def test_zh_comparisons_do_not_read_as_machine_made() -> None:
    chained = re.compile("\u4f5c\u4e3a\u5bf9 \\S+ \u7684\u56de\u590d\u6216")  # "as reply to X or"
    keys = BASIC + [f"5{k[1:]}" for k in ENHANCED]
    for code in keys:
        c = compare(code, "421" if code.startswith("5") else "550", "zh")
        text = " ".join(c.differences)
        assert not chained.search(text), text
        assert not re.search(r"[0-9], [0-9]", text), text  # lists of codes use the zh comma
        assert "\u9700\u8981\u5904\u7406\uff1a" not in text  # no "needs action:" label
        # the class line does not say the same thing twice ("permanent failure, i.e.
        # permanent failure")
        first = c.differences[0]
        for word in reg.ui("zh")["outcome"].values():
            assert first.count(str(word)) <= 2, first
    assert "MAIL FROM\u3001RCPT TO" in " ".join(compare("452", "552", "zh").differences)


@pytest.mark.parametrize("key", ["421", "451", "250", "501", "552"])
def test_zh_cites_what_en_cites_for_replies_mailgate_sends(key: str) -> None:
    # Basic codes mailgate sends itself: zh names every enhanced code and RFC section
    # that en names (zh may say more).
    en, zh = reg.prose("en")[key], reg.prose("zh")[key]
    assert _facts(en) <= _facts(zh), _facts(en) - _facts(zh)


def test_an_error_without_its_template_is_still_one_sentence(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shutil
    from pathlib import Path

    root = Path(str(tmp_path)) / "data"
    shutil.copytree(reg.DATA, root)
    ui = root / "en" / "ui.toml"
    ui.write_text(ui.read_text(encoding="utf-8").replace("\nline_no_code = ", "\nx_gone = "),
                  encoding="utf-8")
    monkeypatch.setenv(reg.DATA_ENV, str(root))
    monkeypatch.setenv("XDG_CACHE_HOME", str(Path(str(tmp_path)) / "cache"))
    reg.clear_caches()
    try:
        with pytest.raises(ReplyError, match="line_no_code"):
            explain("x" * 1000 + " y")
    finally:
        monkeypatch.undo()
        reg.clear_caches()


@pytest.mark.parametrize("fmt", ["text", "markdown", "html", "json"])
def test_a_hostile_reply_text_cannot_command_the_terminal(fmt: str) -> None:
    from mailgate.codes.render import render

    evil = "550 5.1.1 no\x1b]0;owned\x07 user\x1b[2J\u202e\x9b"
    for color in (False, True):
        out = render(explain(evil), fmt, color=color)
        styled = re.sub(r"\x1b\[[0-9;]*m", "", out) if color and fmt == "text" else out
        assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]", styled), repr(out[:200])
        assert "\\x1b" in out or "\\u001b" in out  # shown, not dropped

"""The vendor knowledge is valid data: every entry has its sources, its words in every
language, a pattern that compiles, and example lines that it explains."""

from __future__ import annotations

import re
import string

import pytest

from mailgate.codes import registry as reg
from mailgate.codes import vendors
from mailgate.codes.paste import read_paste

LANGS = reg.languages()
HAN = re.compile(r"[\u4e00-\u9fff]")


def _placeholders(s: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(s) if name}


def test_there_is_vendor_knowledge() -> None:
    ids = {e.id for e in vendors.entries()}
    for required in ("microsoft-recipient-not-found", "microsoft-edge-blocking",
                     "gmail-dmarc", "yahoo-deferred", "apple-local-policy",
                     "proofpoint-reputation", "mimecast-anti-spoofing", "spamhaus",
                     "greylisting", "dmarc-failure", "spf-failure", "dkim-failure",
                     "wild-101", "wild-111", "wild-200", "wild-422", "wild-432"):
        assert required in ids, required
    assert len(ids) >= 50


def test_every_pattern_compiles() -> None:
    vendors.check()


@pytest.mark.parametrize("entry", vendors.entries(), ids=lambda e: e.id)
def test_entry_is_complete(entry: vendors.Entry) -> None:
    assert entry.sources, f"{entry.id}: no source"
    for url in entry.sources:
        assert re.fullmatch(r"https?://[^\s\"'<>]+", url), (entry.id, url)
    assert entry.codes or entry.enhanced or entry.text is not None, entry.id
    assert entry.actors and set(entry.actors) <= set(vendors.ACTORS), entry.id
    assert entry.provider == vendors.ANY or entry.provider in vendors.providers(), entry.id
    if entry.registry:
        assert entry.registry in reg.registry(), (entry.id, entry.registry)
    for key in entry.related:
        assert key in reg.registry(), (entry.id, key)
    for lang in LANGS:
        w = vendors.words(lang)
        prose = w["entries"].get(entry.id)
        assert prose is not None, f"{entry.id} has no {lang} words"
        for field in ("title", "meaning", "fix"):
            assert str(prose.get(field, "")).strip(), (lang, entry.id, field)
        # "differs" is said exactly where the entry replaces a registry meaning.
        assert bool(str(prose.get("differs", "")).strip()) == bool(entry.registry), (
            lang, entry.id)
        assert entry.provider in w["providers"], (lang, entry.provider)
        if lang == "zh":
            assert HAN.search(prose["meaning"] + prose["fix"]), entry.id


@pytest.mark.parametrize("entry", vendors.entries(), ids=lambda e: e.id)
def test_examples_are_explained_by_their_entry(entry: vendors.Entry) -> None:
    assert entry.examples, f"{entry.id}: no example line"
    for line in entry.examples:
        p = read_paste(line)
        found = vendors.match(p.code, p.enhanced, p.text, p.host)
        assert found, (entry.id, line)
        best = found[0][0]
        assert entry.id in [e.id for s, e, _ in found if s == best], (
            entry.id, line, [(s, e.id) for s, e, _ in found])


def test_no_words_without_an_entry() -> None:
    ids = {e.id for e in vendors.entries()}
    for lang in LANGS:
        assert set(vendors.words(lang)["entries"]) == ids, lang


def test_languages_share_vendor_word_keys_and_placeholders() -> None:
    base = vendors.words("en")
    for lang in LANGS:
        other = vendors.words(lang)
        for table in ("actors", "labels", "parts", "forms", "notes", "providers", "commands"):
            assert set(other[table]) == set(base[table]), (lang, table)
            for k, v in base[table].items():
                assert _placeholders(str(other[table][k])) == _placeholders(str(v)), (
                    lang, table, k)
    assert set(base["actors"]) == set(vendors.ACTORS)
    # Every command the paste reader can name has its words.
    from mailgate.codes.paste import _COMMANDS

    assert set(_COMMANDS.values()) <= set(base["commands"])


def test_a_bad_pattern_is_a_data_error(tmp_path: pytest.TempPathFactory,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    from pathlib import Path

    root = Path(str(tmp_path)) / "data"
    shutil.copytree(reg.DATA, root)
    with (root / "vendors" / "wild.toml").open("a", encoding="utf-8") as f:
        f.write("\n[entries.broken]\ntext = '(unclosed'\nactors = [\"sender\"]\n")
    monkeypatch.setenv(reg.DATA_ENV, str(root))
    monkeypatch.setenv("XDG_CACHE_HOME", str(Path(str(tmp_path)) / "cache"))
    reg.clear_caches()
    vendors.clear_caches()
    try:
        with pytest.raises(reg.DataError, match="broken"):
            vendors.check()
    finally:
        monkeypatch.undo()
        reg.clear_caches()
        vendors.clear_caches()


def test_a_provider_entry_needs_the_provider_s_hand() -> None:
    """A bare 550 5.7.1 from anyone is not Gmail's; with "- gsmtp" or from
    Google's MX it is."""
    def ids(text: str, host: str | None = None) -> list[str]:
        return [e.id for _, e, _ in vendors.match(550, "5.7.1", text, host)]

    assert "gmail-policy" not in ids("Message rejected")
    assert "gmail-policy" in ids("Message rejected - gsmtp")
    assert "gmail-policy" in ids("Message rejected", host="gmail-smtp-in.l.google.com")
    assert "yahoo-dmarc" not in ids("Rejected per DMARC policy")
    assert ids("Rejected per DMARC policy")[0] == "dmarc-failure"

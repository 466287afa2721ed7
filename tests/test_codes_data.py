"""The knowledge base covers every code of the shared list, in every language, fully."""

from __future__ import annotations

import csv
import re
import string

import pytest

from mailgate.codes import registry as reg
from tests.conftest import SHARED_TSV, VENDORED_TSV

PHASES = {
    "connect", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "end-of-data", "BDAT", "RSET", "NOOP",
    "QUIT", "VRFY", "EXPN", "HELP", "STARTTLS", "AUTH", "ETRN", "ATRN", "any", "report",
}
NON_STANDARD = ["510", "511", "512", "513", "420", "431", "441", "442", "446", "447", "449",
                "471", "541", "571"]


def _tsv_rows() -> list[dict[str, str]]:
    path = SHARED_TSV if SHARED_TSV.exists() else VENDORED_TSV
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if not ln.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t"))


def _key(row: dict[str, str]) -> str:
    code = row["code"]
    if row["kind"] == "class":
        return code[0] + ".X.X"
    if row["kind"] == "subject":
        return "X." + code.split(".")[1] + ".X"
    return code


def test_vendored_list_matches_shared_list() -> None:
    if not SHARED_TSV.exists():
        pytest.skip("../shared is not beside this checkout; the vendored copy is used")
    assert VENDORED_TSV.read_bytes() == SHARED_TSV.read_bytes()


def test_shared_list_has_the_expected_rows() -> None:
    kinds = [r["kind"] for r in _tsv_rows()]
    assert (kinds.count("basic"), kinds.count("class"), kinds.count("subject"),
            kinds.count("enhanced")) == (44, 3, 8, 81)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_every_listed_code_is_explained_with_no_empty_field(lang: str) -> None:
    registry = reg.registry()
    prose = reg.prose(lang)
    for row in _tsv_rows():
        key = _key(row)
        assert key in registry, f"{key} missing from the registry"
        assert registry[key].kind == row["kind"]
        assert registry[key].reference_text == row["title"]
        p = prose.get(key)
        assert p is not None, f"{key} has no {lang} prose"
        for f in reg.PROSE_FIELDS:
            assert getattr(p, f).strip(), f"{key}: {lang} {f} is empty"


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_prose_and_registry_have_the_same_keys(lang: str) -> None:
    assert set(reg.prose(lang)) == set(reg.registry())


def test_non_standard_codes_point_to_standard_ones() -> None:
    registry = reg.registry()
    for code in NON_STANDARD:
        info = registry[code]
        assert not info.standard and info.see, code
        for s in info.see:
            assert s in registry and registry[s].standard, (code, s)


def test_registry_facts_are_consistent() -> None:
    registry = reg.registry()
    for key, info in registry.items():
        for other in (*info.related, *info.see):
            assert other in registry, f"{key} refers to unknown {other}"
        assert set(info.phases) <= PHASES, key
        for ref in info.rfcs:
            assert re.match(r"(RFC\d+|IANA|draft-)", ref), (key, ref)
        if info.kind == "basic":
            assert info.phases, f"{key} has no phases"
            assert info.related, f"{key} has no related codes"


def test_key_facts_from_the_rfcs() -> None:
    registry = reg.registry()
    assert registry["221"].closes and registry["421"].closes and registry["521"].closes
    assert not registry["556"].closes and not registry["250"].closes
    assert "QUIT" in registry["221"].phases
    assert "RCPT" in registry["556"].phases
    assert registry["X.1.10"].associated_codes == ("556",)
    assert "550" in registry["X.7.27"].associated_codes


def _placeholders(s: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(s) if name}


def test_languages_share_ui_keys_and_placeholders() -> None:
    langs = reg.languages()
    assert {"en", "zh"} <= set(langs)
    base = reg.ui("en")
    for lang in langs:
        other = reg.ui(lang)
        for section, values in base.items():
            if not isinstance(values, dict):
                continue
            assert set(other[section]) == set(values), (lang, section)
            for k, v in values.items():
                assert _placeholders(str(other[section][k])) == _placeholders(str(v)), (
                    lang, section, k)


@pytest.mark.parametrize("name", reg.WORD_FILES)
def test_languages_share_word_keys_and_placeholders(name: str) -> None:
    """web.toml, notices.toml, diagnostics.toml: every language has every English key,
    with the same {placeholders}, and the same settings (mailgate does not fall back)."""
    base_file = reg.word_file("en", name)
    base = reg.words("en", name)
    assert base
    for lang in reg.languages():
        other_file = reg.word_file(lang, name)
        assert set(other_file) == set(base_file), (lang, name)
        for k, v in base_file.items():
            if k != "words":
                assert type(other_file[k]) is type(v), (lang, name, k)
        other = reg.words(lang, name)
        assert set(other) == set(base), (lang, name, set(other) ^ set(base))
        for k, v in base.items():
            assert _placeholders(other[k]) == _placeholders(v), (lang, name, k)


def test_chinese_prose_is_chinese() -> None:
    han = re.compile(r"[\u4e00-\u9fff]")
    for key, p in reg.prose("zh").items():
        assert han.search(p.title + p.description), key

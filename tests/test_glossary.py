"""The Chinese data use one word per term: the glossary (data/zh/glossary.toml) says
which, and every string of every TOML file in data/zh/ is checked against it."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.codes import registry as reg

ZH = reg.DATA / "zh"
GLOSSARY = ZH / "glossary.toml"


def _strings(value: object, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{where}[{i}]")


def _terms() -> dict[str, dict[str, object]]:
    with GLOSSARY.open("rb") as f:
        return dict(tomllib.load(f)["terms"])


def test_the_glossary_is_well_formed() -> None:
    terms = _terms()
    assert {"reply", "authentication", "null_mx"} <= set(terms)
    for name, t in terms.items():
        assert isinstance(t["en"], str) and isinstance(t["zh"], str) and t["zh"], name
        avoid = t["avoid"]
        assert isinstance(avoid, list) and avoid, name
        assert t["zh"] not in avoid, name
    assert reg.glossary("zh")["reply"] == "\u56de\u590d"  # the loader gives term -> word


@pytest.mark.parametrize("path", sorted(p.name for p in ZH.glob("*.toml")
                                        if p != GLOSSARY))
def test_every_zh_file_follows_the_glossary(path: str) -> None:
    with (ZH / path).open("rb") as f:
        data = tomllib.load(f)
    wrong = []
    for name, t in _terms().items():
        allow = [str(a) for a in t.get("allow", [])]  # type: ignore[attr-defined]
        for where, raw in _strings(data, ""):
            text = raw
            for phrase in allow:
                text = text.replace(phrase, "")
            for variant in t["avoid"]:  # type: ignore[attr-defined]
                if variant in text:
                    wrong.append(f"{path} {where}: {variant!r} (use {t['zh']!r} for {name})")
    assert not wrong, "\n".join(wrong)


def test_the_check_would_catch_a_variant(tmp_path: Path) -> None:
    # The test above is only as good as its matching: a variant in a nested table
    # or a list must be found.
    data = {"words": {"a": {"b": ["x \u5e94\u7b54 y"]}}}  # "reply" written the avoided way
    found = [w for w, s in _strings(data, "") if "\u5e94\u7b54" in s]
    assert found == ["words.a.b[0]"]

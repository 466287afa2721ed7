"""Every reply mailgate itself can send is explained, with its pairing, in every language.

The replies are not listed here: they are read from the source, so that a reply added
later (a new policy refusal, an LMTP answer, a DMARC rejection) fails this test until
the knowledge base explains it. What counts as a reply mailgate sends:

- a call with a reply code and an enhanced code as neighbouring constant arguments:
  `Reply.make(550, "5.1.1", ...)`, `R(554, "5.7.1", ...)`, `Reply(421, "4.7.0", (...))`,
  `_address_reply(exc, 501, "5.1.7", ...)`;
- the keywords `code=` and `enhanced=` in one call (`Attempt(code=451, enhanced="4.3.0")`);
- `Reply.make(451, self.enhanced, ...)` in a method: the class's default for `enhanced`
  and every enhanced code passed to the class's constructor (dns.TempFail, PermFail);
- a string that starts with a reply the way the wire has it: `"550 5.7.1 ..."`;
- an enhanced code alone as a string (`"5.0.0"`: a DSN Status) is checked on its own.
"""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest

from mailgate.codes import registry as reg
from mailgate.codes.explain import ReplyExplanation, explain, explain_code
from mailgate.codes.reply import ReplyError

SRC = Path(__file__).resolve().parents[1] / "src" / "mailgate"
ENHANCED = re.compile(r"[245]\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\Z")
WIRE = re.compile(r"\A([2-5][0-9][0-9])[ -]([245]\.[0-9]{1,3}\.[0-9]{1,3})(?=[ ]|\Z)")
# Replies whose enhanced code is computed, so no scan can see them: each with why.
COMPUTED = {
    # delivery/engine.py _auth_soft_bounce: a relayhost's 535 5.7.8 becomes 451 4.7.8.
    (451, "4.7.8"): "delivery/engine.py:_auth_soft_bounce",
}


def _code(node: ast.AST) -> int | None:
    if (isinstance(node, ast.Constant) and isinstance(node.value, int)
            and not isinstance(node.value, bool) and 200 <= node.value <= 599):
        return node.value
    return None


def _enhanced(node: ast.AST) -> str | None:
    if (isinstance(node, ast.Constant) and isinstance(node.value, str)
            and ENHANCED.match(node.value)):
        return node.value
    return None


def _is_self_enhanced(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "enhanced"
            and isinstance(node.value, ast.Name) and node.value.id == "self")


Found = set[tuple[int, str, str]]


def _self_enhanced_classes(tree: ast.Module) -> tuple[dict[str, set[int]], dict[str, set[str]]]:
    """Classes whose methods send `Reply.make(<code>, self.enhanced, ...)`: their codes,
    and the default of their `enhanced` field."""
    codes: dict[str, set[int]] = {}
    defaults: dict[str, set[str]] = {}
    for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
        for node in ast.walk(cls):
            if isinstance(node, ast.Call):
                for a, b in itertools.pairwise(node.args):
                    code = _code(a)
                    if code is not None and _is_self_enhanced(b):
                        codes.setdefault(cls.name, set()).add(code)
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and node.target.id == "enhanced" and node.value is not None):
                enh = _enhanced(node.value)
                if enh is not None:
                    defaults.setdefault(cls.name, set()).add(enh)
    return codes, defaults


def _scan(tree: ast.Module, where: str, pairs: Found, alone: set[tuple[str, str]]) -> None:
    self_enhanced, defaults = _self_enhanced_classes(tree)
    for node in ast.walk(tree):
        at = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Call):
            for a, b in itertools.pairwise(node.args):
                code, enh = _code(a), _enhanced(b)
                if code is not None and enh is not None:
                    pairs.add((code, enh, at))
            kw = {k.arg: k.value for k in node.keywords if k.arg}
            if "code" in kw and "enhanced" in kw:
                code, enh = _code(kw["code"]), _enhanced(kw["enhanced"])
                if code is not None and enh is not None:
                    pairs.add((code, enh, at))
            name = node.func.id if isinstance(node.func, ast.Name) else ""
            for value in [*node.args, *(k.value for k in node.keywords)]:
                enh = _enhanced(value)
                for code in self_enhanced.get(name, ()):
                    if enh is not None:
                        pairs.add((code, enh, at))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = WIRE.match(node.value)
            if m and ENHANCED.match(m.group(2)):
                pairs.add((int(m.group(1)), m.group(2), at))
            elif ENHANCED.match(node.value):
                alone.add((node.value, at))
    for name, codes in self_enhanced.items():
        for enh in defaults.get(name, ()):
            for code in codes:
                pairs.add((code, enh, f"{where}:{name}"))


def sent_replies() -> tuple[dict[tuple[int, str], list[str]], dict[str, list[str]]]:
    """(code, enhanced) -> where in the source; enhanced codes used alone -> where."""
    pairs: set[tuple[int, str, str]] = set()
    alone: set[tuple[str, str]] = set()
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("codes/"):
            continue  # the knowledge base itself: its examples are what it explains
        _scan(ast.parse(path.read_text(encoding="utf-8")), rel, pairs, alone)
    out: dict[tuple[int, str], list[str]] = {}
    for (code, enh), where in COMPUTED.items():
        pairs.add((code, enh, where))
    for code, enh, where in sorted(pairs):
        out.setdefault((code, enh), []).append(where)
    single: dict[str, list[str]] = {}
    for enh, where in sorted(alone):
        single.setdefault(enh, []).append(where)
    return out, single


SENT, ALONE = sent_replies()


def test_the_scan_finds_the_replies_it_must() -> None:
    # The scan itself: the replies the issue names, and each way a reply is written.
    for pair in [(421, "4.7.0"), (554, "5.7.1"), (451, "4.7.4"), (451, "4.7.5"),
                 (550, "5.1.1"), (556, "5.1.10"), (451, "4.4.3"), (550, "5.4.4"),
                 (550, "5.1.2"), (250, "2.0.0"), (501, "5.1.7")]:
        assert pair in SENT, pair
    pairs: Found = set()
    alone: set[tuple[str, str]] = set()
    _scan(ast.parse(
        'X = Reply.make(550, "5.7.23", "SPF fail")\n'
        'Y = Reply(550, "5.7.26", ("DMARC",))\n'
        'Z = "550 5.7.1 Message rejected by DMARC policy"\n'
        'W = Attempt(code=451, enhanced="4.7.24", host="")\n'
        'class F:\n    enhanced: str = "4.4.3"\n'
        '    def reply(self):\n        return Reply.make(451, self.enhanced, "x")\n'
        'F("d", "r", "4.7.99")\n'
    ), "new.py", pairs, alone)
    assert {(c, e) for c, e, _ in pairs} == {
        (550, "5.7.23"), (550, "5.7.26"), (550, "5.7.1"), (451, "4.7.24"), (451, "4.4.3"),
        (451, "4.7.99")}


def _registered_pairing(code: int, enhanced: str) -> tuple[bool, str]:
    key = "X." + enhanced.split(".", 1)[1]
    info = reg.registry()[key]
    listed = info.listed_with(f"{code:03d}")
    return bool(listed), key


def problems(code: int, enhanced: str, lang: str, where: str = "?") -> list[str]:
    """What is missing for the reply `code enhanced` to be explained with its pairing."""
    try:
        x = explain(f"{code} {enhanced} Text", lang)
    except ReplyError as exc:
        return [f"{code} {enhanced} (sent at {where}) is not a valid reply: {exc}"]
    assert isinstance(x, ReplyExplanation)
    basic, enh = x.parts
    out = []
    if not basic.registered:
        out.append(f"{code} (sent at {where}) is not in the knowledge base")
    if not enh.registered:
        out.append(f"{enhanced} (sent at {where}) is not in the knowledge base")
        return out
    listed, key = _registered_pairing(code, enhanced)
    if listed:
        return out  # the IANA entry pairs them: its explanation covers this reply
    # Sent with a basic code the IANA entry does not list: the registry must say that
    # servers pair them (used_with), and the prose of this language what it means.
    if f"{code}" not in reg.registry()[key].used_with:
        out.append(f"{code} {enhanced} (sent at {where}): the IANA entry of {key} does not "
                   f"list {code}; add it to used_with in registry-enhanced-*.toml, with a "
                   f"sentence under [codes.\"{key}\".pairings] in every language")
        return out
    sentence = reg.prose(lang)[key].pairings.get(f"{code}", "")
    if f"{code}" not in sentence or sentence not in x.notes:
        out.append(f"{code} {enhanced}: no {lang} sentence for this pairing")
    return out


@pytest.mark.parametrize("lang", reg.languages())
@pytest.mark.parametrize(("code", "enhanced"), sorted(SENT))
def test_every_reply_mailgate_sends_is_explained_with_its_pairing(
    code: int, enhanced: str, lang: str,
) -> None:
    found = problems(code, enhanced, lang, ", ".join(SENT[(code, enhanced)][:3]))
    assert not found, "\n".join(found)


def test_a_reply_added_without_words_is_caught() -> None:
    # What a new reply in the source would meet: an unregistered code, a pairing the
    # registry does not list (DMARC's 550 5.7.1 is listed; 554 5.7.26 is not).
    assert problems(550, "5.7.99", "en")
    assert any("used_with" in p for p in problems(554, "5.7.26", "en"))
    assert any("used_with" in p for p in problems(421, "4.2.2", "zh"))
    assert not problems(550, "5.7.26", "en") and not problems(550, "5.1.1", "zh")


@pytest.mark.parametrize("lang", reg.languages())
@pytest.mark.parametrize("enhanced", sorted(ALONE))
def test_every_enhanced_code_mailgate_uses_is_explained(enhanced: str, lang: str) -> None:
    e = explain_code(enhanced, lang)
    assert e.registered, f"{enhanced} (at {ALONE[enhanced][:3]}) is not in the knowledge base"


def test_used_with_has_words_in_every_language() -> None:
    for key, info in reg.registry().items():
        for lang in reg.languages():
            p = reg.prose(lang).get(key)
            assert p is not None
            assert set(p.pairings) == set(info.used_with), (key, lang)
            for code in info.used_with:
                assert not info.listed_with(code), (key, code, "already listed by IANA")


@pytest.mark.parametrize("lang", reg.languages())
def test_outbound_tls_failures_are_explained_as_tls(lang: str) -> None:
    tls = "TLS"
    for reply in ("451 4.7.4 TLS is required, but was not offered by the server",
                  "451 4.7.5 TLS handshake failed"):
        x = explain(reply, lang)
        assert isinstance(x, ReplyExplanation)
        assert any(tls in n and "451" in n for n in x.notes), (reply, x.notes)
    e = explain_code("4.7.5", lang)
    assert tls in " ".join((e.description, e.when, e.fix))


def test_421_4_7_0_and_554_5_7_1_are_explained() -> None:
    x = explain("421 4.7.0 Too many connections, try again later")
    assert isinstance(x, ReplyExplanation)
    assert any("421" in n for n in x.notes)
    assert "421" in explain_code("X.7.0").used_with
    x = explain("554 5.7.1 Relay access denied")
    assert isinstance(x, ReplyExplanation)
    assert any("554" in n for n in x.notes)

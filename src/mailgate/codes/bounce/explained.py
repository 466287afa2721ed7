"""A bounce explained in words: per failed or delayed recipient, the status, the remote
reply, what it means, who must act and what to do, in one language.

The words are data (`data/<lang>/bounce.toml`; the actors' names are the vendors'
words). The provider's reading of a reply (`vendors.explain_vendor`) and the status
code's registry title are added where they exist. `bounce_json` is the contract of
`mailgate explain --bounce --format json` (docs/cli.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mailgate.codes import registry as reg
from mailgate.codes.bounce import Bounce, Recipient
from mailgate.codes.bounce import reasons as rs
from mailgate.codes.bounce.mime import MAX_BOUNCE

if TYPE_CHECKING:  # the layout is imported when text is asked for: JSON does not pay
    from mailgate.codes.render import Doc

__all__ = ["bounce_doc", "bounce_json", "reason_words"]


def _w(lang: str) -> dict[str, str]:
    return reg.words(lang, "bounce")


def reason_words(reason: str, lang: str) -> dict[str, str]:
    """A reason's title, meaning, fix and who must act, in `lang`."""
    from mailgate.codes import vendors

    w = _w(lang)
    actor_names = vendors.words(lang).get("actors", {})
    keys = rs.tables()["actors"].get(reason, ())
    sep = w["list_sep"]
    return {
        "title": w.get(f"reasons.{reason}.title", reason),
        "meaning": w.get(f"reasons.{reason}.meaning", ""),
        "fix": w.get(f"reasons.{reason}.fix", ""),
        "actors": sep.join(str(actor_names.get(k, k)) for k in keys),
    }


def _status_title(status: str | None, lang: str) -> str:
    if not status:
        return ""
    from mailgate.codes.explain import explain_code
    from mailgate.codes.reply import ReplyError

    try:
        e = explain_code(status, lang)
    except (ReplyError, KeyError, ValueError):
        return ""
    return e.title


def _vendor(r: Recipient, lang: str) -> tuple[str, str, str, str]:
    """(heading, meaning, who must act, fix) of the provider's own reading of the reply,
    or empties."""
    if not r.reply or r.code is None:
        return "", "", "", ""
    from mailgate.codes import vendors

    found = vendors.explain_vendor(r.code, r.status, r.reply, lang, host=r.remote_mta,
                                   limit=1)
    if not found or found[0].provider == vendors.ANY:
        return "", "", "", ""
    v = found[0]
    w = _w(lang)
    heading = w["provider"].format(provider=v.provider_name)
    return (heading, w["provider_line"].format(title=v.title, meaning=v.meaning),
            w["list_sep"].join(v.actor_names), v.fix)


def _action_word(r: Recipient, lang: str) -> str:
    actions = {k.split(".", 1)[1]: v for k, v in _w(lang).items() if k.startswith("actions.")}
    if r.action is None:
        return actions["complained" if r.reason == "feedback" else "auto-replied"]
    return actions.get(r.action, r.action)


def bounce_doc(b: Bounce, lang: str = "en", name: str | None = None) -> Doc:
    """The layout: what the message is, then one section per failed or delayed recipient."""
    from mailgate.codes.render import Doc

    w = _w(lang)
    doc = Doc(title=w["title"], lang=lang)
    doc.heading(doc.title, 1)
    facts = []
    if name is not None:
        facts.append((w["file"], name))
    facts += [(w["kind_label"], w[f"kinds.{b.kind}"]),
              (w["subject"], b.subject),
              (w["reporting_mta"], b.reporting_mta or "")]
    if b.kind in ("dsn", "bounce", "success"):
        facts.append((w["form_label"], w["form_text"] if b.form == "text" else b.form))
    doc.fields(facts)
    if b.truncated:
        doc.para(w["truncated"].format(limit=MAX_BOUNCE))
    shown = [r for r in b.recipients if r.failed]
    if b.kind in ("complaint", "auto-reply"):
        shown = list(b.recipients[:1])
    if not shown:
        doc.para(w["none_failed"])
    for r in shown:
        words = reason_words(r.reason, lang)
        doc.heading(w["recipient"].format(address=r.address, action=_action_word(r, lang)), 2)
        status = r.status or ""
        title = _status_title(r.status, lang)
        if status and title:
            status = w["status_line"].format(status=status, title=title)
        doc.fields([(w["status"], status), (w["reply"], r.reply or ""),
                    (w["remote_mta"], r.remote_mta or ""), (w["command"], r.command or ""),
                    (w["reason"], w["reason_line"].format(name=r.reason, title=words["title"]))])
        doc.fields([(w["meaning"], words["meaning"])])
        heading, meaning, actors, fix = _vendor(r, lang)
        if heading:  # the provider's reading is the more precise: its actors and fix
            doc.fields([(heading, meaning)])
        doc.fields([(w["actors"], actors or words["actors"]), (w["fix"], fix or words["fix"])])
    others = [r.address for r in b.recipients if not r.failed and r not in shown]
    if others:
        doc.para(w["others"].format(list=w["list_sep"].join(others[:20])))
    return doc


def bounce_json(b: Bounce, name: str, lang: str = "en") -> dict[str, Any]:
    """One file's object of `explain --bounce --format json`: `file`, `recipients` (each
    with address, action, status, reply, reason, remote_mta, and the reason's words)."""
    recips = []
    for r in b.recipients:
        item: dict[str, Any] = r.to_json()
        words = reason_words(r.reason, lang)
        item["explanation"] = {"title": words["title"], "meaning": words["meaning"],
                               "actors": list(rs.tables()["actors"].get(r.reason, ())),
                               "actors_text": words["actors"], "fix": words["fix"]}
        recips.append(item)
    data = b.to_json()
    data["recipients"] = recips
    return {"schema": "mailgate.bounce/1", "file": name, "lang": lang, **data}

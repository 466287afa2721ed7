"""`mailgate explain` and `mailgate compare`: the knowledge base on the command line."""

from __future__ import annotations

import sys

import click

from mailgate.cli._common import (
    _format_option,
    _lang_option,
    _print,
    default_lang,
    fail,
    main,
)


@main.command()
@click.argument("codes", nargs=-1, required=True)
@_lang_option
@_format_option
def explain(codes: tuple[str, ...], lang: str | None, fmt: str) -> None:
    """Explain reply codes: 556, 5.1.10, a whole reply line, or what you paste.

    Also a log or bounce line holding a reply (Postfix, Exim, Exchange, a
    Diagnostic-Code or Status field); `-` reads the text from stdin.

    \b
    mailgate explain 556
    mailgate explain 5.1.10 --lang zh
    mailgate explain "556 5.1.10 Recipient address has null MX"
    mailgate explain "host mx[192.0.2.1] said: 550 5.1.1 <u@example.com>: User unknown"
    """
    from mailgate.codes.pasted import explain_text, render_any
    from mailgate.codes.reply import ReplyError

    lang = lang or default_lang()
    results = []
    for arg in codes:
        text = _read_stdin() if arg == "-" else arg
        try:
            results.append(explain_text(text, lang))
        except ReplyError as exc:
            fail(str(exc))
    color = None if fmt == "text" and sys.stdout.isatty() else False
    if fmt == "json" and len(results) > 1:
        import json

        items = [json.loads(render_any(r, "json")) for r in results]
        sys.stdout.write(json.dumps(items, ensure_ascii=False, indent=2) + "\n")
        return
    for i, r in enumerate(results):
        if i and fmt in ("text", "markdown"):
            sys.stdout.write("\n")
        sys.stdout.write(render_any(r, fmt, color=color))


def _read_stdin() -> str:
    from mailgate.codes.paste import MAX_PASTE

    return sys.stdin.read(MAX_PASTE + 1)


@main.command()
@click.argument("code_a")
@click.argument("code_b")
@_lang_option
@_format_option
def compare(code_a: str, code_b: str, lang: str | None, fmt: str) -> None:
    """Compare two codes side by side: mailgate compare 221 556."""
    from mailgate.codes.compare import compare as do_compare
    from mailgate.codes.reply import ReplyError

    try:
        result = do_compare(code_a, code_b, lang or default_lang())
    except ReplyError as exc:
        fail(str(exc))
    _print(result, fmt)

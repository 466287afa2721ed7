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
    """Explain reply codes: 556, 5.1.10, or a whole reply line.

    \b
    mailgate explain 556
    mailgate explain 5.1.10 --lang zh
    mailgate explain "556 5.1.10 Recipient address has null MX"
    """
    from mailgate.codes.explain import explain as do_explain
    from mailgate.codes.reply import ReplyError

    lang = lang or default_lang()
    results = []
    for code in codes:
        try:
            results.append(do_explain(code, lang))
        except ReplyError as exc:
            fail(str(exc))
    if fmt == "json" and len(results) > 1:
        import json

        from mailgate.codes.render import render

        items = [json.loads(render(r, "json")) for r in results]
        sys.stdout.write(json.dumps(items, ensure_ascii=False, indent=2) + "\n")
        return
    for i, r in enumerate(results):
        if i and fmt in ("text", "markdown"):
            sys.stdout.write("\n")
        _print(r, fmt)


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

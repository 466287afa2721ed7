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
@click.option("--bounce", is_flag=True,
              help="Read each argument as a file holding a whole bounce (- for stdin).")
@_lang_option
@_format_option
def explain(codes: tuple[str, ...], bounce: bool, lang: str | None, fmt: str) -> None:
    """Explain reply codes: 556, 5.1.10, a whole reply line, or what you paste.

    Also a log or bounce line holding a reply (Postfix, Exim, Exchange, a
    Diagnostic-Code or Status field); `-` reads the text from stdin. With
    --bounce, each argument is a file holding a whole bounce message (a DSN,
    an NDR, a text bounce): for each failed or delayed recipient, the status,
    the remote reply, why, who must act and what to do.

    \b
    mailgate explain 556
    mailgate explain 5.1.10 --lang zh
    mailgate explain "556 5.1.10 Recipient address has null MX"
    mailgate explain "host mx[192.0.2.1] said: 550 5.1.1 <u@example.com>: User unknown"
    mailgate explain --bounce bounce.eml --format json
    """
    if bounce:
        _explain_bounces(codes, lang or default_lang(), fmt)
        return
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


def _read_bounce_file(name: str) -> bytes:
    """At most MAX_BOUNCE + 1 bytes of a file (or stdin): a longer bounce is cut."""
    from mailgate.codes.bounce import MAX_BOUNCE

    if name == "-":
        return sys.stdin.buffer.read(MAX_BOUNCE + 1)
    with open(name, "rb") as f:
        return f.read(MAX_BOUNCE + 1)


def _explain_bounces(files: tuple[str, ...], lang: str, fmt: str) -> None:
    """`explain --bounce`: one document per file; JSON Lines when several and json."""
    import json

    from mailgate.codes import registry as reg
    from mailgate.codes.bounce import BounceError, read_bounce
    from mailgate.codes.bounce.explained import bounce_doc, bounce_json

    words = reg.words(lang, "bounce")
    color = None if fmt == "text" and sys.stdout.isatty() else False
    failed = False
    for i, name in enumerate(files):
        shown = "stdin" if name == "-" else name
        problem: str | None = None
        try:
            b = read_bounce(_read_bounce_file(name))
        except OSError as exc:
            problem = words["errors.no_file"].format(file=shown, why=exc.strerror or exc)
            failed = True
        except BounceError as exc:
            problem = f"{shown}: " + words.get(f"errors.{exc.key}", str(exc)).format(**exc.values)
            failed = True
        if fmt == "json":
            data = ({"schema": "mailgate.bounce/1", "file": shown, "lang": lang,
                     "error": problem, "recipients": []} if problem is not None
                    else bounce_json(b, shown, lang))
            indent = 2 if len(files) == 1 else None
            sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=indent) + "\n")
            continue
        if problem is not None:
            click.echo(f"mailgate: {problem}", err=True)
            continue
        from mailgate.codes.render import to_html, to_markdown, to_text

        if i and fmt in ("text", "markdown"):
            sys.stdout.write("\n")
        doc = bounce_doc(b, lang, name=shown)
        out = (to_markdown(doc) if fmt == "markdown" else to_html(doc) if fmt == "html"
               else to_text(doc, color=color))
        sys.stdout.write(out)
    if failed:
        sys.exit(2)


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

"""The `mailgate` command: parse arguments, call the library, print.

Imports of anything heavy happen inside the commands, so that `mailgate explain`
does not pay for the server or the web stack.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import click

EXIT_USAGE = 2


def default_lang() -> str:
    """`zh` when the locale says Chinese (LC_ALL, then LC_MESSAGES, then LANG), else `en`."""
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(var, "")
        if value:
            return "zh" if value.lower().startswith("zh") else "en"
    return "en"


def fail(message: str) -> NoReturn:
    """One line on stderr naming the problem, and exit status 2."""
    click.echo(f"mailgate: {message}", err=True)
    sys.exit(EXIT_USAGE)


_lang_option = click.option(
    "--lang",
    type=click.Choice(["en", "zh"]),
    default=None,
    help="Language of the explanation (default: from the locale; LANG=zh_CN.UTF-8 gives zh).",
)
_format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "markdown", "json", "html"]),
    default="text",
    show_default=True,
    help="Output format; json follows the schema in docs/json.md.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mailgate")
def main() -> None:
    """mailgate: a mail transfer agent that explains every SMTP reply."""


def _print(result: object, fmt: str) -> None:
    from mailgate.codes.render import render

    color = None if fmt == "text" and sys.stdout.isatty() else False
    out = render(result, fmt, color=color)  # type: ignore[arg-type]
    sys.stdout.write(out)


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


if __name__ == "__main__":  # pragma: no cover
    main()

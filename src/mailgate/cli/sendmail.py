"""`mailgate-sendmail`: the sendmail command line that cron, PHP's mail(), Git, logwatch
and most Unix programs hand their mail to (link it as /usr/sbin/sendmail; invoked as
`mailq` it lists the queue, as `newaliases` it checks the aliases).

The options are Postfix's sendmail(1): -t, -i / -oi, -f / -r, -F, -bm, -bp, -bi / -I, -q,
-C FILE, -N, -R, -V, -B, and the ones kept for compatibility and ignored (-Am -Ac -bh -bH
-G -h N -L label -m -n -O opt=val -o7 -o8 -om -odb -odi -oem -oee -U -v -X file ...).

How a message is queued: over SMTP to the server's own submission listener (the first
`submission` listener in the configuration, else the first `mx` one; a wildcard address
is reached on loopback), as a trusted local client: trusted because it connects from
loopback, which the default `[relay] networks` lets relay without AUTH. When nothing
listens there (the server is stopped), the message goes straight into the queue
(`sendmail_queue.queue_directly`), so cron jobs lose nothing while the server is down;
the server delivers it when it starts.

The configuration is -C FILE, else $MAILGATE_CONFIG, else /etc/mailgate/mailgate.toml
when it exists, else the zero-config defaults. Exit status: sysexits.h, as sendmail's.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

    from mailgate.cli.sendmail_queue import Submission
    from mailgate.config import Config, QueueSettings
    from mailgate.queue import Queue

_T = TypeVar("_T")

__all__ = ["Options", "UsageError", "main", "parse_args"]

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_OSERR = 71
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_CONFIG = 78

SYSTEM_CONFIG = Path("/etc/mailgate/mailgate.toml")
TIMEOUT = 60.0  # seconds per SMTP step

# Options that take a value (attached, -fbob, or the next argument, -f bob), and those
# of them that are accepted and ignored; flags, and ignored flags.
_WITH_VALUE = set("BCFLNOVXRfhrpo")
_IGNORED_VALUE = set("LOXhp")
_FLAGS = set("GIUimntv")


class UsageError(Exception):
    """A command line sendmail cannot act on (EX_USAGE)."""


@dataclass
class Options:
    mode: str = "m"  # m: deliver, p: list the queue, q: flush it, i: check the aliases
    extract: bool = False  # -t
    dot_ends: bool = True  # a line holding only "." ends the message (not with -i, -oi)
    sender: str | None = None  # -f / -r
    full_name: str | None = None  # -F
    config: Path | None = None  # -C
    notify: tuple[str, ...] | None = None  # -N
    ret: str | None = None  # -R
    envid: str | None = None  # -V
    verbose: bool = False  # -v
    flush_id: str | None = None  # -qI<queue id>
    recipients: list[str] = field(default_factory=list)


def parse_args(args: list[str], prog: str = "sendmail") -> Options:
    """sendmail's command line (getopt style: options first, then recipients)."""
    opts = Options()
    name = Path(prog).name
    if name == "mailq":
        opts.mode = "p"
    elif name == "newaliases":
        opts.mode = "i"
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            break
        if not arg.startswith("-") or arg == "-":
            i -= 1
            break
        letter, rest = arg[1], arg[2:]
        if letter in ("b", "A", "q"):
            _mode(opts, letter, rest)
        elif letter in _WITH_VALUE:
            if not rest:
                if i >= len(args):
                    raise UsageError(f"option -{letter} needs a value")
                rest = args[i]
                i += 1
            _value(opts, letter, rest)
        elif letter in _FLAGS:
            for flag in arg[1:]:
                if flag not in _FLAGS:
                    raise UsageError(f"unknown option -{flag}")
                if flag == "t":
                    opts.extract = True
                elif flag == "i":
                    opts.dot_ends = False
                elif flag == "v":
                    opts.verbose = True
                elif flag == "I":
                    opts.mode = "i"
        else:
            raise UsageError(f"unknown option -{letter}")
    opts.recipients = list(args[i:])
    return opts


def _mode(opts: Options, letter: str, rest: str) -> None:
    if letter == "A":
        if rest not in ("m", "c"):
            raise UsageError("-A takes m or c")
        return  # ignored, as in Postfix: one configuration for every submission
    if letter == "q":
        # -q: deliver everything queued; -qI<id>: that message; -qR<site>, -q<interval>:
        # as Postfix, the same as -q, and ignored.
        opts.mode = "q"
        if rest.startswith("I") and len(rest) > 1:
            opts.flush_id = rest[1:]
        elif rest and rest[0].isdigit():
            opts.mode = "-"  # an interval: nothing to do
        return
    modes = {"m": "m", "p": "p", "i": "i", "h": "-", "H": "-"}
    if rest in modes:
        opts.mode = modes[rest]
        return
    if rest in ("d", "D", "l"):
        raise UsageError(f"-b{rest} (daemon mode) is `mailgate serve`")
    raise UsageError(f"-b{rest} is not supported; use -bm (send), -bp (list the queue) "
                     "or -bi (check the aliases)")


def _value(opts: Options, letter: str, value: str) -> None:
    if letter in _IGNORED_VALUE:
        return
    if letter == "o":
        if value == "i":
            opts.dot_ends = False
        return  # -om, -o7, -o8, -odi, -oem, -oA..., ...: ignored
    if letter in ("f", "r"):
        opts.sender = value
    elif letter == "F":
        opts.full_name = value
    elif letter == "C":
        opts.config = Path(value)
    elif letter == "N":
        words = tuple(w.strip().upper() for w in value.replace(",", " ").split() if w.strip())
        if not words or not (words == ("NEVER",) or set(words) <= {"SUCCESS", "FAILURE",
                                                                      "DELAY"}):
            raise UsageError(f"-N {value!r}: give never, or some of success, failure, delay")
        opts.notify = words
    elif letter == "R":
        if value.lower() not in ("full", "hdrs"):
            raise UsageError(f"-R {value!r}: give full or hdrs")
        opts.ret = value.upper()
    elif letter == "V":
        opts.envid = value
    elif letter == "B" and value.upper() not in ("7BIT", "8BITMIME"):
        raise UsageError(f"-B {value!r}: give 7BIT or 8BITMIME")


def _say(prog: str, message: str) -> None:
    print(f"{prog}: {message}", file=sys.stderr)


def _exit(prog: str, status: int, message: str) -> NoReturn:
    _say(prog, message)
    sys.exit(status)


def _config_path(opts: Options) -> Path | None:
    """-C, else $MAILGATE_CONFIG, else the system file when there is one."""
    path = opts.config
    if path is None and os.environ.get("MAILGATE_CONFIG"):
        path = Path(os.environ["MAILGATE_CONFIG"])
    if path is None and SYSTEM_CONFIG.is_file():
        path = SYSTEM_CONFIG
    return path


def _config(opts: Options, prog: str) -> Config:
    from mailgate.config import load_config

    return _loaded(load_config, _config_path(opts), prog)


def _queue_settings(opts: Options, prog: str) -> QueueSettings:
    """Where the queue is, as the `queue` commands read it: -bp and -q only read or
    touch the queue, and a mistake in another section does not stop them."""
    from mailgate.config import load_queue_settings

    return _loaded(load_queue_settings, _config_path(opts), prog)


def _loaded(load: Callable[[Path | None], _T], path: Path | None, prog: str) -> _T:
    from mailgate.config import ConfigError

    try:
        return load(path)
    except ConfigError as exc:
        _exit(prog, EX_CONFIG, str(exc))
    except OSError as exc:
        _exit(prog, EX_CONFIG, f"cannot read the configuration file {path}: {exc.strerror}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    prog = Path(argv[0]).name if argv else "sendmail"
    try:
        opts = parse_args(argv[1:], prog)
    except UsageError as exc:
        _exit(prog, EX_USAGE, str(exc))
    try:
        if opts.mode == "p":
            return _mailq(_queue_settings(opts, prog), prog)
        if opts.mode == "q":
            return _flush(_queue_settings(opts, prog), opts, prog)
        config = _config(opts, prog)
        if opts.mode in ("i", "-"):
            return EX_OK  # the configuration (aliases included) loaded: nothing else to do
        return _send(config, opts, prog)
    except KeyboardInterrupt:
        return EX_TEMPFAIL
    except MemoryError:
        _exit(prog, EX_OSERR, "out of memory")
    except Exception as exc:  # a bug: one line and EX_SOFTWARE, never a traceback
        _exit(prog, EX_SOFTWARE, f"internal error: {type(exc).__name__}: {exc}")


def _open_queue(config: Config | QueueSettings, prog: str) -> Queue | None:
    from mailgate.cli.sendmail_queue import become_queue_owner
    from mailgate.queue import NoQueue, QueueError
    from mailgate.queue.backends import open_queue

    try:
        become_queue_owner(config.data_dir)
        return open_queue(config, create=False)
    except NoQueue:
        return None
    except (QueueError, OSError) as exc:
        _exit(prog, EX_UNAVAILABLE, f"cannot read the queue: {exc}")


def _mailq(config: Config | QueueSettings, prog: str) -> int:
    from mailgate.queue import QueueError
    from mailgate.queue.report import mailq

    queue = _open_queue(config, prog)
    if queue is None:
        print("Mail queue is empty")
        return EX_OK
    try:
        for piece in mailq(queue):
            sys.stdout.write(piece)
    except QueueError as exc:
        _exit(prog, EX_UNAVAILABLE, f"cannot read the queue: {exc}")
    finally:
        queue.close()
    return EX_OK


def _flush(config: Config | QueueSettings, opts: Options, prog: str) -> int:
    """-q: everything deferred is due now (-qI<id>: that message); the server's workers
    take it on their next round."""
    import time

    from mailgate.queue import NotFound, QueueError

    queue = _open_queue(config, prog)
    if queue is None:
        return EX_OK
    try:
        queue.retry(opts.flush_id, time.time())
    except NotFound as exc:
        _exit(prog, EX_USAGE, str(exc))
    except QueueError as exc:
        _exit(prog, EX_TEMPFAIL, f"cannot flush the queue: {exc}")
    finally:
        queue.close()
    return EX_OK


def _send(config: Config, opts: Options, prog: str) -> int:
    from mailgate.cli.sendmail_queue import InputError, Submission, TooBig, read_message

    try:
        raw = read_message(sys.stdin.buffer, opts.dot_ends, config.limits.message_size)
    except TooBig as exc:
        _exit(prog, EX_DATAERR, str(exc))
    except OSError as exc:
        _exit(prog, EX_IOERR, f"cannot read the message: {exc.strerror or exc}")
    try:
        message = Submission.build(raw, config, recipients=opts.recipients,
                                   extract=opts.extract, sender=opts.sender,
                                   full_name=opts.full_name)
    except InputError as exc:
        _exit(prog, EX_USAGE if "no recipient" in str(exc) else EX_DATAERR, str(exc))
    message.notify, message.ret, message.envid = opts.notify, opts.ret, opts.envid
    return _submit_or_queue(config, message, opts, prog)


def _listener(config: Config) -> tuple[str, int] | None:
    """Where the server takes local submissions: its submission listener, else its MX;
    one reachable on loopback first (a wildcard address, or a loopback one), since
    loopback is what makes this client trusted."""
    import ipaddress

    def reach(host: str) -> str:
        return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)

    found = [(not ipaddress.ip_address(reach(lst.host)).is_loopback, rank, index)
             for rank, role in enumerate(("submission", "mx"))
             for index, lst in enumerate(config.listen) if lst.role == role]
    if not found:
        return None
    chosen = config.listen[min(found)[2]]
    return reach(chosen.host), chosen.port


def _submit_or_queue(config: Config, message: Submission, opts: Options, prog: str) -> int:
    import asyncio

    from mailgate.delivery.transport import ConnectError

    where = _listener(config)
    if where is not None:
        try:
            return asyncio.run(_smtp(config, message, where, opts, prog))
        except ConnectError as exc:
            if opts.verbose:
                _say(prog, f"the server is not running ({exc}); queueing directly")
    return _direct(config, message, opts, prog)


async def _smtp(config: Config, message: Submission, where: tuple[str, int], opts: Options,
                prog: str) -> int:
    from mailgate.delivery.transport import STAGE_TIMEOUTS, run_client
    from mailgate.smtp.address import parse_path
    from mailgate.smtp.client import ClientConfig, ClientSession, Envelope
    from mailgate.smtp.client_events import Recipient

    envelope = Envelope(
        parse_path(f"<{message.sender}>", utf8=True, allow_null=True),
        tuple(Recipient(parse_path(f"<{r}>", utf8=True, allow_postmaster=True),
                        notify=message.notify) for r in message.recipients),
        ret=message.ret,  # type: ignore[arg-type]
        envid=message.envid,
    )
    # Over loopback TLS protects nothing and costs a handshake per cron mail.
    loopback = where[0] in ("127.0.0.1", "::1") or where[0].startswith("127.")
    session = ClientSession(ClientConfig(helo_name=config.hostname,
                                         tls="never" if loopback else "may"))
    run = await run_client(*where, session, [(envelope, message.content)],
                           timeouts=dict.fromkeys(STAGE_TIMEOUTS, TIMEOUT))
    results = [(str(r.recipient.address), r.outcome.reply)
               for res in run.results for r in res.results]
    if not results:
        reason = run.closed.reason.reply if run.closed and run.closed.reason else "no reply"
        _exit(prog, EX_TEMPFAIL, f"the server at {where[0]}:{where[1]} did not take the "
              f"message: {reason}")
    codes: set[int] = set()
    for rcpt, reply in results:
        if reply.is_success:
            if opts.verbose:
                _say(prog, f"<{rcpt}>: {reply}")
            continue
        _say(prog, f"<{rcpt}>: {reply}")
        if reply.is_permanent:
            codes.add(EX_NOUSER if str(reply.enhanced or "").startswith("5.1.")
                      else EX_UNAVAILABLE)
        else:
            codes.add(EX_TEMPFAIL)
    # A refusal for good outranks a temporary one: the caller should not send again
    # what the others already have.
    for code in (EX_NOUSER, EX_UNAVAILABLE, EX_TEMPFAIL):
        if code in codes:
            return code
    return EX_OK


def _direct(config: Config, message: Submission, opts: Options, prog: str) -> int:
    from mailgate.cli.sendmail_queue import UnknownRecipients, queue_directly
    from mailgate.datadir import StartupError
    from mailgate.queue import QueueError, QueueFull

    try:
        qid = queue_directly(config, message)
    except UnknownRecipients as exc:
        for rcpt in exc.unknown:
            _say(prog, f"<{rcpt}>: 550 5.1.1 No such user here")
        return EX_NOUSER
    except QueueFull as exc:
        _exit(prog, EX_TEMPFAIL, str(exc))
    except (QueueError, PermissionError, StartupError) as exc:
        _exit(prog, EX_CANTCREAT, f"the server is not running and the queue cannot be "
              f"written ({exc}); start `mailgate serve`, or run this as its user")
    except OSError as exc:
        _exit(prog, EX_OSERR, f"the server is not running and the queue cannot be "
              f"written: {exc.strerror or exc}")
    if opts.verbose:
        _say(prog, f"queued as {qid} (the server delivers it when it starts)")
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())

"""The package's import graph, read from the source: no cycles, and arrows point down.

Every module under `src/mailgate` is parsed with `ast`; every `import mailgate...` and
`from mailgate... import ...` (relative ones resolved) is an arrow, wherever it is
written: at the top, inside a function, under `if TYPE_CHECKING`. A lazy import is
still a dependency; it only moves the moment it is paid for.

Two rules (docs/architecture.md draws the result):

- no module reaches itself through its imports (no cycle, inside a package either);
- an arrow from one top-level part to another goes to a lower layer of `LAYERS`.
  Parts on the same layer do not import each other (`server` and `delivery` are wired
  together by `serve`, not by each other).

A new top-level module must be given a layer here: the test fails until it is.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "mailgate"

# The layer of each top-level part of `mailgate`, lowest first, and why it is there.
LAYERS: Mapping[str, int] = {
    # 0: leaves. They import nothing of mailgate (codes only itself), so anything may
    # use them.
    "__init__": 0,  # the package's version string
    "codes": 0,  # what replies mean: data and pure functions
    "idn": 0,  # one canonical form for domains
    "textsafe": 0,  # client text made safe for terminals and logs
    "secretfile": 0,  # private files written atomically
    "datadir": 0,  # the data directory checked and made
    "metrics": 0,  # counters the server, delivery, DNS and web all bump
    "siblings": 0,  # shared memory and links between the workers of one serve
    # 1: pure protocol and settings, built on the leaves.
    "smtp": 1,  # sans-I/O SMTP sessions: replies (codes), addresses (idn)
    "config": 1,  # TOML -> settings: domains in canonical form (idn)
    "logformat": 1,  # the server's log lines, made printable (textsafe)
    # 2: services with state or I/O that the faces above share.
    "dns": 2,  # where mail goes (codes for replies, metrics)
    "queue": 2,  # the durable queue (codes to explain, textsafe, config)
    "users": 2,  # AUTH users and the admin password: for server (AUTH) and web (login)
    "hashing": 2,  # the password-check thread pool: for server (AUTH) and web (login)
    "dovecot_auth": 2,  # AUTH asked of Dovecot's auth service: for server (AUTH)
    "privileges": 2,  # whom serve runs as: the user switch, the data directory's owner
    # 3: the SMTP faces: receiving and sending. Neither knows the other.
    "server": 3,  # listeners and policy: smtp, queue, dns, users, hashing
    "delivery": 3,  # local and outbound delivery: smtp, queue, dns
    # 4: the HTTP face over the queue and the codes; nothing below knows about HTTP.
    "web": 4,
    "ports": 4,  # the ports serve binds and the descriptors they may use
    "workers": 4,  # the worker processes of serve and what they share (siblings)
    # 5: the composition root: the one place that builds and wires everything.
    "serve": 5,
    # 6: the commands, one of which is `serve`.
    "cli": 6,
    "__main__": 7,  # `python -m mailgate` is the CLI
}

Graph = dict[str, set[str]]


def modules(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found: dict[str, Path] = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """The package's modules that module `name` imports, anywhere in its text."""
    known = set(known)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            # `from mailgate.web import admin`: the arrow goes to the module `admin`;
            # `from mailgate.queue import Queue`: to the package `queue`.
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source
                       for a in node.names]
        else:
            continue
        for dotted in targets:
            # `import mailgate.smtp.server` names a module; a dotted name of something
            # else resolves to the longest module it starts with.
            target = dotted
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.split(".")[0] == PACKAGE and target != name:
                out.add(target)
    return out


def import_graph(src: Path = SRC) -> Graph:
    found = modules(src)
    return {name: _imports(name, path, found) for name, path in found.items()}


def part(module: str) -> str:
    """The top-level part a module belongs to: `mailgate.web.admin` -> `web`."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def cycles(graph: Graph) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def upward(graph: Graph, layers: Mapping[str, int] = LAYERS) -> list[str]:
    """Arrows between parts that do not go to a strictly lower layer."""
    bad = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            a, b = part(source), part(target)
            if a != b and layers[b] >= layers[a]:
                bad.append(f"{source} ({a}, layer {layers[a]}) -> "
                           f"{target} ({b}, layer {layers[b]})")
    return bad


def test_every_part_has_a_layer() -> None:
    unplaced = sorted({part(m) for m in modules()} - set(LAYERS))
    assert not unplaced, f"give these a layer in LAYERS (and docs/architecture.md): {unplaced}"


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_arrows_point_down() -> None:
    bad = upward(import_graph())
    assert not bad, "arrows not pointing down:\n" + "\n".join(bad)


def test_the_graph_is_read_from_the_code() -> None:
    """Some arrows known to exist, of each kind the reader must see."""
    graph = import_graph()
    assert "mailgate.codes.reply" in graph["mailgate.smtp.server"]  # from ... import
    assert "mailgate.smtp.replies" in graph["mailgate.smtp.server"]  # from pkg import mod
    assert "mailgate.cli" in graph["mailgate.__main__"]
    assert "mailgate.serve" in graph["mailgate.cli.run"]  # inside a function


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """A made-up package with a cycle inside `web` and an arrow up from `server`."""
    pkg = tmp_path / PACKAGE
    for folder in ("web", "server"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "web" / "app.py").write_text("from mailgate.web import admin\n")
    (pkg / "web" / "admin.py").write_text("def f():\n    from . import app\n")
    (pkg / "server" / "app.py").write_text("import mailgate.web.app\n")
    graph = import_graph(tmp_path)
    assert cycles(graph) == [["mailgate.web.admin", "mailgate.web.app"]]
    assert upward(graph) == ["mailgate.server.app (server, layer 3) -> "
                             "mailgate.web.app (web, layer 4)"]
    with pytest.raises(KeyError):  # a part without a layer
        upward({"mailgate.new": {"mailgate.codes"}})


def test_metrics_spells_the_queue_states() -> None:
    """metrics is a leaf, so it keeps its own copy of the queue's state names."""
    from mailgate import metrics
    from mailgate.queue import RecipientState

    assert tuple(s.value for s in RecipientState) == metrics.QUEUE_STATES


def test_the_two_sessions_do_not_import_each_other() -> None:
    """What both need is in smtp/_common.py; neither reaches into the other's privates."""
    graph = import_graph()
    assert "mailgate.smtp.server" not in graph["mailgate.smtp.client"]
    assert "mailgate.smtp.client" not in graph["mailgate.smtp.server"]

"""The package's layers, read from the source: each folder of src/icow imports only
what its docstring's "May import:" line allows, and no import cycle exists anywhere
(imports inside functions and under TYPE_CHECKING count too)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "src" / "icow"
BASE = {"icow._wire", "icow._plane", "icow._proto", "icow._version"}  # compiled or generated: any layer
ASSEMBLY = {"icow", "icow.__main__", "icow.cli", "icow.server"}  # the top: may import everything


def module_name(path: Path) -> str:
    parts = ("icow", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, str]:
    return {module_name(p): p.read_text() for p in sorted(ROOT.rglob("*.py")) if "_proto" not in p.parts}


def imports(name: str, source: str, known: Iterable[str]) -> set[str]:
    """The icow modules that ``source`` (module ``name``) imports, anywhere in it."""
    known = set(known)
    package = name if _is_package(name) else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "icow")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != "icow":
                continue
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known or _is_package(sub) or _owner(sub) in BASE else base)
    return {_owner(m) for m in found}


def _is_package(name: str) -> bool:
    return (ROOT.parent / name.replace(".", "/") / "__init__.py").is_file()


def _owner(module: str) -> str:
    """``icow._proto.inference_pb2`` belongs to ``icow._proto``; the rest is itself."""
    for base in BASE:
        if module == base or module.startswith(base + "."):
            return base
    return module


def layer(module: str) -> str:
    """The folder a module lives in (``icow.runtime.model`` -> ``icow.runtime``)."""
    return module if module in ASSEMBLY or module in BASE else ".".join(module.split(".")[:2])


def allowed(docstring: str) -> set[str]:
    """The layers a folder's docstring allows it to import ("May import: icow.a, icow.b")."""
    match = re.search(r"^May import:(.*?)(?:\(|$)", docstring, re.M | re.S)
    assert match, "no 'May import:' line"
    return set(re.findall(r"icow\.\w+", match.group(1)))


def violations(modules: dict[str, str]) -> list[str]:
    """Every import of a module from a layer its folder may not import."""
    rules = {m: allowed(ast.get_docstring(ast.parse(s)) or "") for m, s in modules.items()
             if _is_package(m) and m not in ASSEMBLY and m not in BASE}
    found = []
    for name, source in modules.items():
        own = layer(name)
        if own in ASSEMBLY:
            continue
        for target in imports(name, source, modules):
            other = layer(target)
            if other not in (own, *BASE) and other not in rules.get(own, set()):
                found.append(f"{name} imports {target} ({own} may import {sorted(rules.get(own, ()))})")
    return found


def cycles(modules: dict[str, str]) -> list[list[str]]:
    """Import cycles among icow's own modules (Tarjan's strongly connected components)."""
    graph = {m: sorted(t for t in imports(m, s, modules) if t in modules and t != m) for m, s in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return found


def test_every_folder_says_what_it_may_import() -> None:
    folders = [m for m in sources() if _is_package(m) and m not in ASSEMBLY and m not in BASE]
    assert {f.split(".")[1] for f in folders} >= {"client", "codecs", "protocol", "repository", "runtime",
                                                    "services", "shm"}
    for folder in folders:
        allowed(ast.get_docstring(ast.parse((ROOT.parent / folder.replace(".", "/") / "__init__.py")
                                            .read_text())) or "")


def test_every_module_opens_with_a_docstring() -> None:
    missing = [m for m, s in sources().items() if m not in ("icow.__main__", "icow._version")
               and not ast.get_docstring(ast.parse(s))]
    assert not missing


def test_no_layer_imports_one_above_it() -> None:
    assert violations(sources()) == []


def test_the_runtime_imports_no_front_end_codec_or_client() -> None:
    runtime = {m: s for m, s in sources().items() if layer(m) == "icow.runtime"}
    assert runtime
    for name, source in runtime.items():
        assert not {layer(t) for t in imports(name, source, sources())} & {
            "icow.services", "icow.codecs", "icow.client", "icow.repository", "icow.shm"}, name


def test_no_import_cycle() -> None:
    assert cycles(sources()) == []


@pytest.mark.parametrize("line", ["from ..services.oip import InferenceService",
                                  "def late():\n    from ..codecs import native\n",
                                  "import icow.client.sync"])
def test_the_check_sees_a_forbidden_import(line: str) -> None:
    """The checks above can fail: a runtime module importing upward is reported."""
    modules = sources()
    modules["icow.runtime.model"] += "\n" + line + "\n"
    assert any(v.startswith("icow.runtime.model imports") for v in violations(modules))


def test_the_check_sees_a_cycle() -> None:
    modules = sources()
    modules["icow.protocol.errors"] += "\nfrom .tensors import to_raw\n"  # tensors imports errors
    assert ["icow.protocol.errors", "icow.protocol.tensors"] in cycles(modules)

"""Flag private (leading-underscore) names used across modules of a package.

A module may use its own private helpers freely; another module of the same package
must not reach into them. Flagged:

* ``from <intra-package module> import _name`` (relative or absolute import);
* ``module._name`` where ``module`` is bound by an import of an intra-package module
  (``from . import heat`` / ``import xsciml.heat as heat`` then ``heat._helper``).

Importing public names from private *modules* (``from ._utils import check_positive_int``)
is fine, as are dunder names and ``from . import _private_module`` (a module, not a
helper). Aliasing a public name to a private local (``import x as _x``) is fine.

Usage: ``python tools/check_private_imports.py [PACKAGE_DIR ...]`` (default ``xsciml``).
Exits 1 and lists offenders as ``path:line: message`` when any are found.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_name(path: Path, root: Path) -> list[str]:
    """Dotted module parts of ``path`` inside package ``root`` (``__init__`` -> package)."""
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return parts


def _resolve(node: ast.ImportFrom, current: list[str], is_package: bool) -> list[str] | None:
    """Absolute module parts named by ``from ... import`` (``None`` when outside reach)."""
    if node.level == 0:
        return node.module.split(".") if node.module else None
    base = current if is_package else current[:-1]
    if node.level > 1:
        if node.level - 1 > len(base):
            return None
        base = base[: len(base) - (node.level - 1)]
    return base + (node.module.split(".") if node.module else [])


def _submodules(root: Path) -> set[tuple[str, ...]]:
    mods: set[tuple[str, ...]] = set()
    for path in root.rglob("*.py"):
        mods.add(tuple(_module_name(path, root)))
    return mods


def check_file(path: Path, root: Path, modules: set[tuple[str, ...]]) -> list[str]:
    """Offending uses of private names from other modules in ``path``."""
    pkg = root.name
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    current = _module_name(path, root)
    is_package = path.name == "__init__.py"
    problems: list[str] = []
    # names bound to intra-package *modules* by imports in this file
    module_aliases: dict[str, str] = {}

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(node, current, is_package)
            if not target or target[0] != pkg:
                continue
            for alias in node.names:
                as_module = tuple(target + [alias.name])
                if as_module in modules:  # ``from . import heat``: a module, not a name
                    module_aliases[alias.asname or alias.name] = ".".join(as_module)
                    continue
                if _is_private(alias.name) and target != current:
                    problems.append(
                        f"{path}:{node.lineno}: imports private name {alias.name!r} "
                        f"from {'.'.join(target)}"
                    )
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] != pkg:
                    continue
                if alias.asname:
                    module_aliases[alias.asname] = alias.name
                else:
                    module_aliases[parts[0]] = parts[0]

    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
            continue
        # rebuild a dotted chain ``a.b.c`` ending at the private attribute
        chain: list[str] = []
        value: ast.expr = node.value
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if not isinstance(value, ast.Name) or value.id not in module_aliases:
            continue
        owner = ".".join([module_aliases[value.id], *reversed(chain)])
        if tuple(owner.split(".")) in modules and owner.split(".") != current:
            problems.append(f"{path}:{node.lineno}: uses private name {node.attr!r} of {owner}")
    return problems


def main(argv: list[str]) -> int:
    roots = [Path(a) for a in argv] or [Path("xsciml")]
    problems: list[str] = []
    for root in roots:
        root = root.resolve()
        modules = _submodules(root)
        for path in sorted(root.rglob("*.py")):
            problems.extend(
                p.replace(str(root.parent) + "/", "") for p in check_file(path, root, modules)
            )
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} private name(s) used across modules", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

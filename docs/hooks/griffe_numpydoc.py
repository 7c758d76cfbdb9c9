"""Griffe extension: xsciml's numpydoc docstrings rendered as Markdown by mkdocstrings.

The docstrings are written for Sphinx-style tools and for ``help()``: numpydoc sections
with reStructuredText roles. mkdocstrings' numpy style parses the sections but renders
the text as Markdown, where the roles would print literally. Before mkdocstrings parses
a docstring, this extension rewrites, in the docstring text only (the source files are
untouched):

* ``:func:`x```, ``:class:``, ``:meth:``, ``:attr:``, ``:mod:``, ``:data:``,
  ``:obj:``, ``:exc:`` (with or without ``py:``, ``~`` and ``title <target>``) to code
  that links to the target's entry in the API reference when the target is a documented
  xsciml object (an optional autorefs cross-reference), and to plain code otherwise;
* ``:math:`…``` to inline math ``\\(…\\)`` and ``.. math::`` blocks to display math
  ``\\[…\\]`` (pymdownx.arithmatex, generic mode, rendered by MathJax);
* ```` `text <url>`_ ```` links to Markdown links and ``::`` literal blocks to fenced
  code.

It also decides what the API reference shows. A module inside a subpackage that lists
its exports (``xsciml.models``, ``xsciml.downscale``, ``xsciml.inverse``, ``xsciml.nn``)
shows only the names the subpackage exports; a top-level module shows its ``__all__``
(mkdocstrings' ``filters: public``). Everything else is internal.

Enabled in ``mkdocs.yml`` under ``plugins: mkdocstrings: handlers: python: options:
extensions``.
"""

from __future__ import annotations

import ast
import html
import re
import textwrap
from pathlib import Path
from typing import Any

import griffe

from xsciml._docs import expand as expand_shared  # the text shared between docstrings

PACKAGE = "xsciml"

_ROLE = re.compile(
    r":(?:py:)?(?P<role>func|class|meth|attr|mod|data|obj|exc|const):`(?P<body>[^`]+)`"
)
_MATH_ROLE = re.compile(r":math:`(?P<body>[^`]+)`")
_RST_LINK = re.compile(r"`(?P<text>[^`<]+?)\s*<(?P<url>[^>`]+)>`__?")
_MATH_DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\. math::\s*(?P<rest>.*)$")
_LITERAL_INTRO = re.compile(r"^(?P<head>.*\S)::\s*$")


# --------------------------------------------------------------------------- exports
def _static_exports(init_file: Path) -> set[str] | None:
    """Names in a subpackage's ``__all__``, read from its ``__init__.py`` without importing.

    Handles a literal list or tuple and ``sorted(D)`` / ``list(D)`` of a literal dict.
    """
    try:
        tree = ast.parse(init_file.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return None
    literals: dict[str, Any] = {}
    names: set[str] | None = None
    for node in tree.body:
        if not isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            continue
        target = node.targets[0] if isinstance(node, ast.Assign) else node.target
        if not isinstance(target, ast.Name) or node.value is None:
            continue
        value: Any = None
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            call = node.value
            if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                    and call.func.id in {"sorted", "list", "tuple"} and len(call.args) == 1
                    and isinstance(call.args[0], ast.Name) and call.args[0].id in literals):
                value = list(literals[call.args[0].id])
        if value is None:
            continue
        if target.id == "__all__":
            names = (names or set()) | set(value) if isinstance(node, ast.AugAssign) else set(value)
        else:
            literals[target.id] = value
    return names


def _restrict_to_subpackage_exports(pkg: griffe.Module) -> None:
    """Mark module members that their subpackage does not export as not public."""
    for sub in pkg.modules.values():
        if sub.name.startswith("_") or not isinstance(sub.filepath, Path) \
                or sub.filepath.name != "__init__.py":
            continue
        exported = _static_exports(Path(sub.filepath))
        if not exported:
            continue
        for module in sub.modules.values():
            for name, member in module.members.items():
                if member.is_alias or member.is_module:
                    continue
                if name not in exported:
                    member.public = False


# --------------------------------------------------------------------------- roles
def _lookup(collection: Any, path: str) -> Any:
    try:
        obj = collection[path]
    except (KeyError, ValueError, AttributeError, griffe.AliasResolutionError):
        return None
    try:
        return obj.final_target if obj.is_alias else obj
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _resolve(name: str, ctx: griffe.Object, collection: Any) -> Any:
    """The xsciml object ``name`` refers to from the docstring of ``ctx``, or None."""
    name = name.strip().lstrip(".").removesuffix("()")
    if not name:
        return None
    head, _, tail = name.partition(".")
    candidates = [name]
    scope: Any = ctx
    while scope is not None:
        try:
            resolved = scope.resolve(head)
        except (griffe.NameResolutionError, AttributeError, KeyError):
            resolved = None
        if resolved:
            candidates.append(f"{resolved}.{tail}" if tail else resolved)
            break
        scope = scope.parent
    candidates += [f"{ctx.module.path}.{name}", f"{PACKAGE}.{name}"]
    for path in candidates:
        if path.split(".")[0] != PACKAGE:
            continue
        obj = _lookup(collection, path)
        if obj is not None:
            return obj
    return None


def _documented(obj: Any) -> bool:
    """Whether the API reference renders ``obj`` (so a link to it can resolve)."""
    node = obj
    while node is not None:
        if node.name.startswith("_") and not (node.name.startswith("__") and node.name.endswith("__")):
            return False
        if node.parent is not None and node.parent.is_module and not node.is_module and not node.is_public:
            return False
        node = node.parent
    return True


#: path of an object defined in a private module -> the path of its documented re-export
#: (``xsciml.models._pca.PCA`` -> ``xsciml.models.amortized.PCA``), filled by the extension
_PUBLIC_PATHS: dict[str, str] = {}


def _collect_public_paths(pkg: griffe.Module) -> None:
    """Fill :data:`_PUBLIC_PATHS` from the aliases in the ``__all__`` of documented modules
    (not packages: their re-exports are rendered on the defining modules' pages)."""
    modules = [pkg]
    while modules:
        module = modules.pop()
        modules.extend(module.modules.values())
        if module.is_init_module or not _documented(module):
            continue
        reexported = {str(getattr(e, "name", e)) for e in (module.exports or ())}
        for name, member in module.members.items():
            if not member.is_alias or name not in reexported or not member.is_public:
                continue
            try:
                target = member.final_target
            except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                continue
            if target.path.split(".")[0] == PACKAGE and not _documented(target):
                _PUBLIC_PATHS.setdefault(target.path, f"{module.path}.{name}")


def _public_path(path: str) -> str | None:
    """The documented path of the object at ``path`` (or of its member), through a re-export."""
    parts = path.split(".")
    for n in range(len(parts), 1, -1):
        head = ".".join(parts[:n])
        if head in _PUBLIC_PATHS:
            return ".".join([_PUBLIC_PATHS[head], *parts[n:]])
    return None


def _role_replacer(ctx: griffe.Object, collection: Any):
    def replace(match: re.Match) -> str:
        body = match["body"].strip()
        explicit = re.match(r"^(?P<title>.+?)\s*<(?P<target>[^>]+)>$", body)
        if explicit:
            title, target = explicit["title"], explicit["target"]
        else:
            target = body.lstrip("!")
            short = target.startswith("~")
            target = target.lstrip("~")
            title = target.rsplit(".", 1)[-1] if short else target
        code = f"<code>{html.escape(title)}</code>"
        obj = _resolve(target.lstrip("~"), ctx, collection)
        path = None if obj is None else obj.path if _documented(obj) else _public_path(obj.path)
        if path is None:
            return code
        return f'<autoref identifier="{path}" optional>{code}</autoref>'

    return replace


# --------------------------------------------------------------------------- blocks
def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block(lines: list[str], start: int, base: int) -> tuple[list[str], int]:
    """Lines after ``start`` indented deeper than ``base`` (blank lines included)."""
    body, i = [], start
    while i < len(lines) and (not lines[i].strip() or _indent_of(lines[i]) > base):
        body.append(lines[i])
        i += 1
    while body and not body[-1].strip():
        body.pop()
        i -= 1
    return body, i


def _convert_blocks(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        math = _MATH_DIRECTIVE.match(line)
        if math:
            indent = math["indent"]
            body, i = _block(lines, i + 1, len(indent))
            content = textwrap.dedent("\n".join(body)).strip("\n").splitlines()
            if math["rest"].strip():
                content.insert(0, math["rest"].strip())
            if out and out[-1].strip():
                out.append("")
            out += [f"{indent}\\[", *(f"{indent}{c}" if c.strip() else "" for c in content),
                    f"{indent}\\]"]
            if i < len(lines) and lines[i].strip():
                out.append("")
            continue
        literal = _LITERAL_INTRO.match(line)
        if literal and not line.lstrip().startswith(".. ") and i + 1 < len(lines):
            body, j = _block(lines, i + 1, _indent_of(line))
            if body and any(b.strip() for b in body):
                indent = " " * _indent_of(line)
                head = literal["head"]
                out.append(head[:-1] + ":" if head.endswith(":") else head + ":")
                out.append("")
                code = textwrap.dedent("\n".join(body)).strip("\n").splitlines()
                out += [f"{indent}```text", *(f"{indent}{c}" for c in code), f"{indent}```"]
                i = j
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


#: numpydoc sections whose entries griffe parses itself (their layout must stay as is)
_ITEM_SECTIONS = {"parameters", "other parameters", "returns", "yields", "receives", "raises",
                  "warns", "attributes", "functions", "methods", "classes", "modules",
                  "type parameters", "type aliases", "examples"}
_LIST_ITEM = re.compile(r"^\s*(?:[*+-]|\d+[.)])\s")


def _convert_definition_lists(text: str) -> str:
    """reST definition lists (a term, then its indented definition) as Markdown bullets.

    Markdown would render the indented definition as a code block. Only text outside the
    sections griffe parses is touched.
    """
    lines = text.splitlines()
    out: list[str] = []
    section = None
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and re.fullmatch(r"\s*-{3,}\s*", nxt) and _indent_of(nxt) == _indent_of(line):
            section = line.strip().lower()
            out += [line, nxt]
            i += 2
            continue
        base = _indent_of(line)
        is_term = (section not in _ITEM_SECTIONS and line.strip() and nxt.strip()
                   and _indent_of(nxt) >= base + 2 and not _LIST_ITEM.match(line)
                   and not line.rstrip().endswith(("::", "```")) and (not out or not out[-1].strip()
                                                                  or out[-1].lstrip().startswith("* **")
                                                                  or _indent_of(out[-1]) > base))
        if not is_term:
            out.append(line)
            i += 1
            continue
        body, j = _block(lines, i + 1, base)
        pad = " " * base
        dedented = textwrap.dedent("\n".join(body)).splitlines()
        first, rest = (dedented[0], dedented[1:]) if dedented else ("", [])
        out.append(f"{pad}* **{line.strip()}** — {first.strip()}")
        out += [f"{pad}    {r}" if r.strip() else "" for r in rest]
        i = j
    return "\n".join(out)


_ALIGNED = re.compile(r"^(?P<ind>\s*)(?P<key>``[^`]+``)\s{2,}(?P<value>\S.*)$")


def _convert_aligned_pairs(text: str) -> str:
    """Two-column layouts (````key````, spaces, value, wrapped lines aligned) as bullets."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _ALIGNED.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        column = len(lines[i]) - len(m["value"])
        value = [m["value"]]
        i += 1
        while i < len(lines) and lines[i].strip() and _indent_of(lines[i]) >= column:
            value.append(lines[i].strip())
            i += 1
        out.append(f"{m['ind']}* {m['key']} — {' '.join(value)}")
    return "\n".join(out)


def convert(text: str, ctx: griffe.Object, collection: Any) -> str:
    """The docstring ``text`` of ``ctx`` with reST roles, math and links as Markdown."""
    text = _convert_blocks(text)
    text = _convert_aligned_pairs(text)
    text = _convert_definition_lists(text)
    text = _MATH_ROLE.sub(lambda m: f"\\({m['body']}\\)", text)
    text = _RST_LINK.sub(lambda m: f"[{m['text'].strip()}]({m['url'].strip()})", text)
    return _ROLE.sub(_role_replacer(ctx, collection), text)


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if member.is_alias:
            continue
        yield from _walk(member)


class NumpydocMarkdown(griffe.Extension):
    """Rewrite xsciml's docstrings for mkdocstrings (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != PACKAGE:
            return
        _restrict_to_subpackage_exports(pkg)
        _PUBLIC_PATHS.clear()
        _collect_public_paths(pkg)
        for obj in _walk(pkg):
            if obj.docstring is not None and obj.docstring.value:
                obj.docstring.value = convert(expand_shared(obj.docstring.value), obj, loader.modules_collection)

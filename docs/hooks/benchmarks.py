"""MkDocs hook: benchmark pages built from the tables the benchmarks printed.

Every table a benchmark script prints (``benchmarks/_common.print_table``) is also
recorded in ``benchmarks/results/NAME.tables.json`` (full run) or
``NAME.quick.tables.json`` (``--quick`` smoke run), cell by cell as printed. A page
of ``docs/benchmarks/`` places a benchmark's results with

``<!-- benchmark NAME -->`` (under a heading with the anchor ``{ #NAME }``)
    the tables of the last full run of ``benchmarks/NAME.py``, with its command line,
    date and machine; when there is none, a note saying that the benchmark has not been
    run and the command that runs it. A smoke run's tables, when present, follow in a
    collapsed box (their sizes are too small for the numbers to mean anything).

``<!-- benchmark-index -->``
    one row per benchmark script: its page and the state of its results.

A benchmark script that no page places is an error (a warning, which
``mkdocs build --strict`` turns into a failure), and so is an unknown name.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import posixpath
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.benchmarks")

ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = ROOT / "benchmarks"
RESULTS_DIR = Path(os.environ.get("XSCIML_BENCH_RESULTS", BENCH_DIR / "results"))
PAGES_DIR = ROOT / "docs" / "benchmarks"

_DIRECTIVE = re.compile(r"<!--\s*benchmark\s+(?P<name>[\w-]+)\s*-->")
_INDEX = re.compile(r"<!--\s*benchmark-index\s*-->")

#: benchmark name -> docs page (src uri) that places it
PAGES: dict[str, str] = {}


def scripts() -> list[str]:
    """Names of the benchmark scripts (``benchmarks/NAME.py``, helpers excluded)."""
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.name.startswith("_") and p.name != "run.py")


def summary(name: str) -> str:
    """First line of a benchmark script's docstring."""
    try:
        doc = ast.get_docstring(ast.parse((BENCH_DIR / f"{name}.py").read_text(encoding="utf-8"))) or ""
    except (OSError, SyntaxError):
        return ""
    line = doc.strip().splitlines()[0] if doc.strip() else ""
    return re.sub(r"^Benchmark:\s*", "", line).rstrip(".").replace("``", "`")


def load(name: str, quick: bool) -> dict | None:
    path = RESULTS_DIR / f"{name}{'.quick' if quick else ''}.tables.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("benchmark results %s unreadable: %s", path, err)
        return None


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ") or " "


def tables_markdown(record: dict) -> str:
    out = []
    for table in record.get("tables", []):
        if table.get("title"):
            out.append(f"**{_cell(table['title'])}**\n")
        cols = table["columns"]
        out.append("| " + " | ".join(_cell(c) for c in cols) + " |")
        out.append("|" + "|".join("---" for _ in cols) + "|")
        out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table["rows"]]
        out.append("")
    return "\n".join(out)


def _run_line(record: dict) -> str:
    cmd = " ".join(["python", record.get("script", "?"), *record.get("argv", [])])
    machine = record.get("machine", {})
    where = ", ".join(str(v) for v in (machine.get("platform"), f"{machine.get('cpu_count')} CPUs") if v)
    return f"`{cmd}`, started {record.get('started', '?')}, finished {record.get('finished', '?')} ({where})."


def section(name: str) -> str:
    full, quick = load(name, quick=False), load(name, quick=True)
    out = []
    if full is not None:
        out += [f"Results of {_run_line(full)}", "", tables_markdown(full)]
    else:
        out += ['!!! warning "Not run"',
                f"    This benchmark has not been run where these pages were built. "
                f"`python benchmarks/{name}.py` runs it and records its tables in "
                f"`benchmarks/results/{name}.tables.json`, which this page then shows.", ""]
    if quick is not None:
        body = tables_markdown(quick).splitlines()
        out += ['??? note "Smoke run (`--quick`): sizes too small for the numbers to mean anything"',
                f"    {_run_line(quick)}", ""]
        out += [f"    {line}" if line else "" for line in body]
        out.append("")
    return "\n".join(out)


def on_pre_build(config: Any) -> None:
    PAGES.clear()
    for page in sorted(PAGES_DIR.glob("*.md")):
        for match in _DIRECTIVE.finditer(page.read_text(encoding="utf-8")):
            PAGES[match["name"]] = f"benchmarks/{page.name}"
    known = set(scripts())
    for name in sorted(set(PAGES) - known):
        log.warning("%s places benchmark %r, but there is no benchmarks/%s.py", PAGES[name], name, name)
    for name in sorted(known - set(PAGES)):
        log.warning("benchmarks/%s.py is placed on no page of docs/benchmarks/ "
                    "(add <!-- benchmark %s --> to one)", name, name)


def index_markdown(page: Any) -> str:
    here = posixpath.dirname(page.file.src_uri)
    rows = ["| benchmark | what it measures | results shown |", "|---|---|---|"]
    for name in scripts():
        full, quick = load(name, False), load(name, True)
        state = (f"full run, {full.get('started', '?')[:10]}" if full else
                 "smoke run only" if quick else "not run")
        link = posixpath.relpath(PAGES.get(name, ""), here) if name in PAGES else ""
        anchor = f"[`{name}`]({link}#{name})" if link else f"`{name}`"
        rows.append(f"| {anchor} | {_cell(summary(name))} | {state} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    markdown = _INDEX.sub(lambda m: index_markdown(page), markdown)
    return _DIRECTIVE.sub(lambda m: section(m["name"]), markdown)

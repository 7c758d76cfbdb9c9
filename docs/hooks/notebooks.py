"""MkDocs hook: the notebooks of ``notebooks/`` as pages, with the outputs of one execution.

The notebooks are executed once, by ``make test`` (``tests/test_notebooks.py``), which
writes executed copies to ``build/notebooks/`` with the SHA-256 of the source notebook in
their metadata. This hook never executes anything. For each ``notebooks/NAME.ipynb`` it
adds the page ``notebooks/NAME.ipynb`` (rendered by mkdocs-jupyter) from

* the executed copy, when there is one made from this exact version of the notebook;
* otherwise the source notebook, with a note at the top saying that the outputs are
  not shown and how to produce them.

Pages can also show a notebook's figure or a cell's code. A code cell tagged
``docs:NAME`` (cell metadata ``tags``) is addressed as ``NOTEBOOK:NAME``:

``<!-- notebook-figure 04_forecast:forecast | caption -->``
    the first PNG the cell printed (``NAME-2`` the second, ...), as a figure with the
    caption; without an executed copy, a note naming the notebook and the command that
    produces the figure;
``<!-- notebook-code 00_getting_started:forecast -->``
    the cell's source as a Python code block (always available), followed by what the
    cell printed (stdout) when there is an executed copy.

An unknown notebook or tag is an error (a warning, which ``mkdocs build --strict``
turns into a failure).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.notebooks")

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIR = ROOT / "notebooks"
EXECUTED_DIR = Path(os.environ.get("XSCIML_NOTEBOOKS_OUT", ROOT / "build" / "notebooks"))
STAGING_DIR = ROOT / "build" / "docs-staging" / "notebooks"
TAG_PREFIX = "docs:"
RUN_COMMAND = "make notebooks"

_FIGURE = re.compile(r"<!--\s*notebook-figure\s+(?P<nb>[\w.-]+):(?P<tag>[\w.-]+)\s*(?:\|\s*(?P<caption>.*?))?\s*-->")
_CODE = re.compile(r"<!--\s*notebook-code\s+(?P<nb>[\w.-]+):(?P<tag>[\w.-]+)\s*-->")

#: notebook stem -> {"executed": bool, "reason": str, "cells": {tag: cell}, "figures": {tag: uri}}
NOTEBOOKS: dict[str, dict[str, Any]] = {}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _executed_copy(source: Path) -> tuple[Path | None, str]:
    """The executed copy of ``source`` if it matches the source, and why not otherwise."""
    copy = EXECUTED_DIR / source.name
    if not copy.exists():
        return None, "not executed"
    try:
        meta = json.loads(copy.read_text(encoding="utf-8")).get("metadata", {}).get("xsciml", {})
    except (OSError, ValueError):
        return None, "executed copy unreadable"
    if meta.get("source_sha256") != _sha256(source):
        return None, "executed copy is of another version of the notebook"
    return copy, f"executed {meta.get('executed_at', '?')} in {meta.get('execution_seconds', '?')} s"


def _unexecuted_copy(source: Path, reason: str) -> Path:
    nb = json.loads(source.read_text(encoding="utf-8"))
    note = (
        "!!! note \"Outputs not shown\"\n"
        f"    This page shows the notebook without its outputs ({reason}). "
        f"`{RUN_COMMAND}` (or `make test`) executes it; `make docs` then shows the "
        "executed copy with its figures."
    )
    cell = {"cell_type": "markdown", "metadata": {}, "source": note}
    if (nb.get("nbformat"), nb.get("nbformat_minor", 0)) >= (4, 5):
        cell["id"] = "xsciml-outputs-not-shown"
    nb["cells"].insert(0, cell)
    STAGING_DIR.mkdir(parents=True, exist_ok=True)
    path = STAGING_DIR / source.name
    path.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    return path


def _tags(cell: dict) -> list[str]:
    return [t[len(TAG_PREFIX):] for t in cell.get("metadata", {}).get("tags", []) if t.startswith(TAG_PREFIX)]


def _pngs(cell: dict) -> list[bytes]:
    pngs = []
    for out in cell.get("outputs", []):
        png = out.get("data", {}).get("image/png")
        if png is not None:
            pngs.append(base64.b64decode("".join(png) if isinstance(png, list) else png))
    return pngs


@event_priority(100)  # before mkdocs-jupyter, which turns .ipynb files into pages
def on_files(files: Files, config: Any) -> Files:
    NOTEBOOKS.clear()
    for source in sorted(SOURCE_DIR.glob("*.ipynb")):
        copy, reason = _executed_copy(source)
        if copy is not None:
            STAGING_DIR.mkdir(parents=True, exist_ok=True)
            path = STAGING_DIR / source.name
            path.write_bytes(copy.read_bytes())
        else:
            path = _unexecuted_copy(source, reason)
        nb = json.loads(path.read_text(encoding="utf-8"))
        entry: dict[str, Any] = {"executed": copy is not None, "reason": reason, "cells": {},
                                 "figures": {}}
        for cell in nb["cells"]:
            for tag in _tags(cell):
                entry["cells"][tag] = cell
                for k, png in enumerate(_pngs(cell) if copy is not None else [], start=1):
                    name = tag if k == 1 else f"{tag}-{k}"
                    uri = f"images/notebooks/{source.stem}/{name}.png"
                    files.append(File.generated(config, uri, content=png))
                    entry["figures"][name] = uri
        NOTEBOOKS[source.stem] = entry
        # a plain File rooted so that src_uri is notebooks/NAME.ipynb (mkdocs-jupyter wraps
        # the file and reads it from src_dir, which a File.generated one does not have)
        files.append(File(f"notebooks/{source.name}", src_dir=str(STAGING_DIR.parent),
                          dest_dir=config["site_dir"], use_directory_urls=config["use_directory_urls"]))
        log.info("notebook %s: %s", source.name, reason)
    return files


def _relative(uri: str, page: Any) -> str:
    return posixpath.relpath(uri, posixpath.dirname(page.file.src_uri) or ".")


def _entry(nb: str, tag: str, page: Any) -> tuple[dict | None, dict | None]:
    entry = NOTEBOOKS.get(nb)
    if entry is None:
        log.warning("%s: no notebook %r in notebooks/", page.file.src_uri, nb)
        return None, None
    cell = entry["cells"].get(tag) or entry["cells"].get(re.sub(r"-\d+$", "", tag))
    if cell is None:
        log.warning("%s: notebook %s has no cell tagged %r", page.file.src_uri, nb, TAG_PREFIX + tag)
    return entry, cell


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    def figure(match: re.Match) -> str:
        nb, tag, caption = match["nb"], match["tag"], (match["caption"] or "").strip()
        entry, cell = _entry(nb, tag, page)
        if cell is None:
            return ""
        link = _relative(f"notebooks/{nb}.ipynb", page)
        if tag in entry["figures"]:
            src = _relative(entry["figures"][tag], page)
            cap = f"{caption} (notebook [{nb}]({link}))" if caption else f"From notebook [{nb}]({link})."
            return (f'<figure markdown="span">\n  ![{caption or nb}]({src})\n'
                    f"  <figcaption markdown>{cap}</figcaption>\n</figure>")
        if entry["executed"]:
            log.warning("%s: the cell of %s tagged %r printed no figure %r", page.file.src_uri, nb,
                        TAG_PREFIX + re.sub(r"-\d+$", "", tag), tag)
        what = f"*{caption}*" if caption else "This figure"
        return (f'!!! info "Figure not built"\n    {what} is an output of notebook '
                f"[{nb}]({link}) ({entry['reason']}); `{RUN_COMMAND}` before `make docs` "
                "puts it here.")

    def code(match: re.Match) -> str:
        _, cell = _entry(match["nb"], match["tag"], page)
        if cell is None:
            return ""
        src = cell["source"]
        src = "".join(src) if isinstance(src, list) else src
        block = f"```python\n{src.rstrip()}\n```"
        printed = "".join("".join(o["text"]) if isinstance(o["text"], list) else o["text"]
                          for o in cell.get("outputs", [])
                          if o.get("output_type") == "stream" and o.get("name") == "stdout")
        if printed.strip():  # what the cell printed in the executed copy (stdout only)
            block += f"\n\n```text\n{printed.rstrip()}\n```"
        return block

    return _CODE.sub(code, _FIGURE.sub(figure, markdown))

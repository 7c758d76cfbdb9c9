"""Every notebook in ``notebooks/`` runs to the end, and its executed copy is kept for the docs.

Each notebook runs once, in a fresh kernel started from ``notebooks/`` (so the notebooks
find ``../shared/data`` as they do in Jupyter), at its default (small) settings. A cell
error fails the test. The executed notebook, outputs and figures included, is written
to ``build/notebooks/`` (or ``$XSCIML_NOTEBOOKS_OUT``) with the SHA-256 of its source in
its metadata: ``mkdocs build`` shows that copy, and shows the source notebook without
outputs when the copy is missing or was made from another version of the notebook. The
notebooks are therefore executed once per CI run, by ``make test``, never by the docs
build.

``make notebooks`` runs only this file.
"""

from __future__ import annotations

import hashlib
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
OUT_DIR = Path(os.environ.get("XSCIML_NOTEBOOKS_OUT", ROOT / "build" / "notebooks"))
#: seconds a single cell may run (the notebooks' small settings take minutes in all)
CELL_TIMEOUT = 900
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def source_sha256(path: Path) -> str:
    """SHA-256 of a notebook file as stored (the docs build compares it)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # figures are captured only with the inline backend; `make test` sets MPLBACKEND=Agg
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("XSCIML_PROGRESS", "0")
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    monkeypatch.setenv("PYTHONPATH", pythonpath)  # this checkout's package, from notebooks/

    sha = source_sha256(path)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, when a cell fails
    seconds = time.perf_counter() - start

    nb.metadata["xsciml"] = {
        "source": f"notebooks/{path.name}",
        "source_sha256": sha,
        "executed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "execution_seconds": round(seconds, 1),
    }
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    tmp = OUT_DIR / f".{path.name}.tmp"
    nbformat.write(nb, tmp)
    tmp.replace(OUT_DIR / path.name)  # the docs never see a half-written notebook

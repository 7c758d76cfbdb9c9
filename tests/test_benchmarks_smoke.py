"""Every benchmark's ``--quick`` mode runs to the end (exit status 0) in a subprocess.

The quick runs check that the scripts still work with the package, not their numbers.
All are marked ``bench``: ``make test`` leaves them out and ``make bench-smoke`` (run by
CI after the tests) runs them. Those that take more than about half a minute on two
CPU cores are also marked ``slow``.
Benchmarks that read ``../shared/data`` print "skipped" and exit 0 when it is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"

#: quick runs measured at over ~30 s on two shared CPU cores
SLOW = {"downscale", "_suite_downscale", "gap_fill", "gappy", "inverse_heat", "ot_scale", "scale", "smooth_dynamics",
        "suite", "tensors"}


#: suite sections that also run on their own (``python benchmarks/_suite_NAME.py --quick``)
SECTIONS = {"_suite_downscale"}


def _scripts() -> list[str]:
    scripts = {p.stem for p in BENCH_DIR.glob("*.py") if not p.name.startswith("_") and p.name != "run.py"}
    return sorted(scripts | {s for s in SECTIONS if (BENCH_DIR / f"{s}.py").exists()})


def _param(name: str):
    marks = [pytest.mark.bench] + ([pytest.mark.slow] if name in SLOW else [])
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", [_param(n) for n in _scripts()])
def test_benchmark_quick_mode_runs(name, tmp_path):
    env = {**os.environ, "XSCIML_PROGRESS": "0", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(BENCH_DIR.parent), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, str(BENCH_DIR / f"{name}.py"), "--quick"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])

"""Run every benchmark script in this folder, one subprocess each, and summarise.

Each ``benchmarks/*.py`` (except ``_common.py`` and this file) runs in turn with the
interpreter running this script, from the repository root; its tables print as it goes.
``--quick`` is passed through to the scripts that accept it (those built on
``_common.make_parser`` or declaring ``--quick``); the others run with their defaults,
which the summary says. The exit code is 1 when any script failed.

Usage::

    python benchmarks/run.py                  # every benchmark, full size
    python benchmarks/run.py --quick          # smoke run
    python benchmarks/run.py tensors --quick  # only the named ones
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from _common import BENCH_DIR, REPO_ROOT, Timer, make_parser, print_table

SKIP = {"_common.py", "run.py"}


def discover(directory: Path = BENCH_DIR) -> list[Path]:
    """Benchmark scripts in ``directory``, sorted by name (``_common.py`` and this runner excluded).

    Examples
    --------
    >>> "tensors" in [p.stem for p in discover()]  # doctest: +SKIP
    True
    """
    return sorted(p for p in directory.glob("*.py") if p.name not in SKIP and not p.name.startswith("_"))


def accepts_quick(script: Path) -> bool:
    """Whether a script takes the shared ``--quick`` flag (read from its source)."""
    text = script.read_text(encoding="utf-8")
    return "make_parser" in text or '"--quick"' in text or "'--quick'" in text


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("names", nargs="*", help="benchmarks to run (file stems); default all")
    args = parser.parse_args(argv)
    scripts = discover()
    if args.names:
        known = {p.stem: p for p in scripts}
        unknown = [n for n in args.names if n.removesuffix(".py") not in known]
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; available: {sorted(known)}")
        scripts = [known[n.removesuffix(".py")] for n in args.names]
    env = dict(os.environ)
    env.setdefault("XSCIML_PROGRESS", "0")
    env.setdefault("MPLBACKEND", "Agg")

    summary = []
    for script in scripts:
        quick = args.quick and accepts_quick(script)
        cmd = [sys.executable, str(script)] + (["--quick"] if quick else [])
        header = f"benchmarks/{script.name}" + (" --quick" if quick else "")
        print(f"\n{'#' * 78}\n# {header}\n{'#' * 78}", flush=True)
        with Timer() as t:
            rc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=False).returncode
        note = "" if quick or not args.quick else "no --quick flag: ran with its defaults"
        summary.append({"benchmark": script.stem, "quick": quick, "seconds": t.seconds,
                        "status": "ok" if rc == 0 else f"FAILED (exit {rc})", "note": note})
    print()
    print_table(summary, title="benchmarks", floatfmt=".1f")
    return 0 if all(r["status"] == "ok" for r in summary) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Code shared by the benchmark scripts in this folder.

Every benchmark is a plain script, ``python benchmarks/NAME.py [--quick]``, that
computes its baseline in the same run and prints fixed-width tables. This module holds
what they share:

* :func:`make_parser` -- an :class:`argparse.ArgumentParser` with the ``--quick`` flag
  (smaller sizes, for smoke runs and ``benchmarks/run.py --quick``);
* :func:`format_table` / :func:`print_table` -- list of dict rows to aligned columns;
  every table printed is also recorded in ``benchmarks/results/NAME[.quick].tables.json``
  (:func:`record_table`), from which the docs' benchmark pages are built;
* :class:`Timer` -- wall-clock of a block;
* :func:`run_isolated` -- run a function in a fresh ``spawn`` subprocess and measure its
  wall-clock and peak resident memory above the baseline of an idle child that imported
  the same modules;
* :data:`DATA_DIR` and :func:`have_data` -- the real files in ``../shared/data``.

Benchmarks import it as ``from _common import ...``: Python puts the script's folder
first on ``sys.path``, and spawned children inherit that path.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BENCH_DIR",
    "DATA_DIR",
    "REPO_ROOT",
    "Measurement",
    "Timer",
    "format_table",
    "have_data",
    "make_parser",
    "peak_rss_mb",
    "baseline_rss_mb",
    "coarsest_within",
    "print_table",
    "ratio",
    "record_table",
    "results_path",
    "relative_mse",
    "run_isolated",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DATA_DIR = (REPO_ROOT / ".." / "shared" / "data").resolve()

# ru_maxrss is in kilobytes on Linux and in bytes on macOS.
_MAXRSS_TO_MB = 1.0 / 1024.0 if sys.platform != "darwin" else 1.0 / 1024.0**2


# --------------------------------------------------------------------------- data
def have_data(name: str) -> bool:
    """Whether the real data file ``name`` exists in :data:`DATA_DIR`.

    Benchmarks that need a real file skip (with a message) when it is absent.

    Examples
    --------
    >>> have_data("no-such-file.nc")
    False
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty file name string, got {name!r}")
    return (DATA_DIR / name).is_file()


# --------------------------------------------------------------------------- CLI
def make_parser(description: str | None = None) -> argparse.ArgumentParser:
    """An argument parser with the benchmarks' shared ``--quick`` flag.

    ``--quick`` asks for a small problem, a smoke run; every benchmark
    accepts it so that ``benchmarks/run.py --quick`` can run them all as a smoke test.

    Examples
    --------
    >>> make_parser("demo").parse_args(["--quick"]).quick
    True
    """
    first_line = (description or "").strip().splitlines()
    parser = argparse.ArgumentParser(description=first_line[0] if first_line else None)
    parser.add_argument("--quick", action="store_true",
                        help="small problem sizes: a smoke run that finishes quickly")
    return parser


# --------------------------------------------------------------------------- tables
def _cell(value: Any, floatfmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return format(value, floatfmt)
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], title: str | None = None,
                 columns: Sequence[str] | None = None, floatfmt: str = ".3g") -> str:
    """Format dict rows as a fixed-width text table.

    Text columns are left-aligned, numbers right-aligned; floats use ``floatfmt``,
    integers get thousands separators and ``None`` prints as ``-``.

    Parameters
    ----------
    rows
        One mapping per row, column name -> value.
    title
        Printed above the table, underlined.
    columns
        Column order (default: the keys in order of first appearance).
    floatfmt
        :func:`format` spec for floats.

    Examples
    --------
    >>> print(format_table([{"mode": "eager", "s": 1.5}, {"mode": "chunked", "s": 12.25}]))
    mode        s
    -------  ----
    eager     1.5
    chunked  12.2
    """
    if isinstance(rows, Mapping) or not all(isinstance(r, Mapping) for r in rows):
        raise TypeError("rows must be a sequence of mappings (one dict per row)")
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_cell(r.get(c), floatfmt) for c in columns] for r in rows]
    numeric = [bool(rows) and all(isinstance(r.get(c), (int, float, type(None))) for r in rows)
               for c in columns]
    widths = [max([len(str(c))] + [len(row[j]) for row in cells]) for j, c in enumerate(columns)]

    def line(items: Sequence[str]) -> str:
        return "  ".join(s.rjust(w) if num else s.ljust(w)
                         for s, w, num in zip(items, widths, numeric, strict=True)).rstrip()

    out = []
    if title:
        out += [title, "=" * len(title)]
    out.append(line([str(c) for c in columns]))
    out.append("  ".join("-" * w for w in widths))
    out += [line(row) for row in cells]
    return "\n".join(out)


def print_table(rows: Sequence[Mapping[str, Any]], title: str | None = None,
                columns: Sequence[str] | None = None, floatfmt: str = ".3g") -> None:
    """Print :func:`format_table` followed by a blank line (flushed at once).

    Examples
    --------
    >>> print_table([{"a": 1}], title="T")
    T
    =
    a
    -
    1
    <BLANKLINE>
    """
    print(format_table(rows, title, columns, floatfmt) + "\n", flush=True)
    record_table(rows, title, columns, floatfmt)


# --------------------------------------------------------------------------- results
_RECORD: dict[str, Any] = {}


def results_path(script: str | Path | None = None, quick: bool | None = None) -> Path | None:
    """Where the tables printed by a benchmark script are recorded, or ``None``.

    ``benchmarks/results/NAME.tables.json`` for a full run of ``benchmarks/NAME.py`` and
    ``NAME.quick.tables.json`` for a ``--quick`` run (by default: the running script and
    its command line). ``None`` when the running program is not a benchmark script of
    this folder (a doctest, an import from elsewhere) or ``XSCIML_BENCH_RECORD=0``.

    Examples
    --------
    >>> results_path(BENCH_DIR / "dino_heat.py", quick=True).name
    'dino_heat.quick.tables.json'
    """
    script = Path(sys.argv[0] if script is None else script)
    if os.environ.get("XSCIML_BENCH_RECORD", "1") == "0" or script.suffix != ".py":
        return None
    script = script.resolve()
    if script.parent != BENCH_DIR or script.name.startswith("_") or script.name == "run.py":
        return None
    quick = ("--quick" in sys.argv[1:]) if quick is None else quick
    return BENCH_DIR / "results" / f"{script.stem}{'.quick' if quick else ''}.tables.json"


def record_table(rows: Sequence[Mapping[str, Any]], title: str | None = None,
                 columns: Sequence[str] | None = None, floatfmt: str = ".3g") -> Path | None:
    """Add a printed table to the running benchmark's results file (see :func:`results_path`).

    The file holds the command line, the start time, the machine and every table printed
    so far, each cell as the text that was printed; it is rewritten after every table, so
    a run that stops early keeps what it printed. The docs' benchmark pages are built
    from these files.
    """
    path = results_path()
    if path is None:
        return None
    if not _RECORD:
        import platform

        _RECORD.update({
            "script": f"benchmarks/{path.name.split('.')[0]}.py",
            "argv": sys.argv[1:],
            "quick": path.name.endswith(".quick.tables.json"),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "cpu_count": os.cpu_count(), "python": platform.python_version()},
            "tables": [],
        })
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    _RECORD["tables"].append({
        "title": title,
        "columns": [str(c) for c in columns],
        "rows": [[_cell(r.get(c), floatfmt) for c in columns] for r in rows],
    })
    _RECORD["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_RECORD, indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)
    return path


def relative_mse(pred: Any, truth: Any, space: Sequence[str] = ("y", "x")) -> float:
    """``Σ (pred − truth)² / Σ (truth − its mean over space)²`` of two xarray objects.

    The honest score of decaying fields: a zero forecast scores 1 whatever the amplitude.

    Examples
    --------
    >>> import xarray as xr
    >>> t = xr.DataArray([[1.0, -1.0]], dims=("y", "x"))
    >>> relative_mse(0 * t, t), relative_mse(t, t)
    (1.0, 0.0)
    """
    den = ((truth - truth.mean(tuple(space))) ** 2).sum()
    return float(((pred - truth) ** 2).sum() / den)


def coarsest_within(rows: Sequence[Mapping[str, Any]], target: float, *, step: str = "dt",
                    error: str = "error") -> Mapping[str, Any] | None:
    """The row of a solver step sweep with the largest ``step`` whose ``error`` is at most
    ``target`` (a solver's cheapest run at that accuracy), or ``None`` when none is.

    Examples
    --------
    >>> rows = [{"dt": 0.1, "error": 0.2}, {"dt": 0.05, "error": 0.04}, {"dt": 0.01, "error": 0.001}]
    >>> coarsest_within(rows, 0.05)["dt"], coarsest_within(rows, 1e-4)
    (0.05, None)
    """
    ok = [r for r in rows if r[error] <= target]
    return max(ok, key=lambda r: r[step]) if ok else None


def ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference``, or ``None`` when either is missing or the reference is 0.

    Examples
    --------
    >>> ratio(3.0, 2.0), ratio(1.0, 0.0)
    (1.5, None)
    """
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


# --------------------------------------------------------------------------- timing
class Timer:
    """Context manager measuring wall-clock seconds with :func:`time.perf_counter`.

    Examples
    --------
    >>> with Timer() as t:
    ...     _ = sum(range(1000))
    >>> t.seconds >= 0
    True
    """

    def __init__(self) -> None:
        self.seconds = float("nan")
        self._start = 0.0

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


# --------------------------------------------------------------------------- memory
def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _MAXRSS_TO_MB


@dataclass
class Measurement:
    """What :func:`run_isolated` measured.

    Attributes
    ----------
    result
        The function's return value (must be picklable).
    seconds
        Wall-clock of the call in the child (imports and spawning excluded).
    peak_mb
        Peak RSS of the child over the call minus ``baseline_mb``.
    baseline_mb
        Peak RSS of an idle child that imported the same modules.
    raw_peak_mb
        The child's peak RSS, baseline included.
    """

    result: Any
    seconds: float
    peak_mb: float
    baseline_mb: float
    raw_peak_mb: float


def _noop() -> None:
    return None


def _child(fn: Callable[..., Any], args: tuple, kwargs: dict, imports: Sequence[str],
           conn: Any) -> None:
    try:
        import importlib

        for name in imports:
            importlib.import_module(name)
        with Timer() as t:
            result = fn(*args, **kwargs)
        conn.send(("ok", result, t.seconds, peak_rss_mb()))
    except BaseException as err:  # report every failure to the parent, then exit
        conn.send(("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}", 0.0, 0.0))
    finally:
        conn.close()


def _spawn(fn: Callable[..., Any], args: tuple, kwargs: dict, imports: Sequence[str],
           timeout: float | None) -> tuple[Any, float, float]:
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, args, kwargs, tuple(imports), send))
    proc.start()
    send.close()
    try:
        if not recv.poll(timeout):
            raise TimeoutError(f"{getattr(fn, '__name__', fn)} did not finish within {timeout} s")
        status, payload, seconds, peak = recv.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(
            f"the child running {getattr(fn, '__name__', fn)} died (exit code {proc.exitcode}); "
            "out of memory?"
        ) from None
    finally:
        if proc.is_alive():
            proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        recv.close()
    if status != "ok":
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} failed in its subprocess:\n{payload}")
    return payload, seconds, peak


_BASELINES: dict[tuple[str, ...], float] = {}


def baseline_rss_mb(imports: Sequence[str] = ()) -> float:
    """Peak RSS (MB) of an idle spawned child that imported ``imports`` (cached)."""
    key = tuple(imports)
    if key not in _BASELINES:
        _, _, peak = _spawn(_noop, (), {}, key, None)
        _BASELINES[key] = peak
    return _BASELINES[key]


def run_isolated(fn: Callable[..., Any], *args: Any, imports: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, timeout: float | None = 600.0,
                 **kwargs: Any) -> Measurement:
    """Run ``fn(*args, **kwargs)`` in a fresh ``spawn`` subprocess; time it and its memory.

    The child imports ``imports`` (and, being spawned, the calling script's top-level
    imports) before the call, so the reported ``peak_mb`` is the child's peak RSS
    minus that of an idle child with the same imports: the memory the call itself
    needed. ``fn`` must be importable (a module-level function) and its arguments and
    result picklable.

    Parameters
    ----------
    fn
        Module-level function to run.
    *args, **kwargs
        Its arguments.
    imports
        Module names imported in both children before timing starts.
    env
        Extra environment variables for this child only (e.g. allocator settings read
        at process start); the baseline child runs without them.
    timeout
        Seconds to wait for the result before giving up (``None``: forever).

    Returns
    -------
    Measurement

    Examples
    --------
    >>> m = run_isolated(sum, [1, 2, 3])  # doctest: +SKIP
    >>> m.result, m.peak_mb < 5  # doctest: +SKIP
    (6, True)
    """
    if not callable(fn):
        raise TypeError(f"fn must be a module-level function, got {type(fn).__name__}")
    baseline = baseline_rss_mb(imports)
    saved = {k: os.environ.get(k) for k in (env or {})}
    try:
        os.environ.update(env or {})  # a spawned child starts with the parent's environment
        result, seconds, peak = _spawn(fn, args, kwargs, imports, timeout)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Measurement(result, seconds, max(peak - baseline, 0.0), baseline, peak)

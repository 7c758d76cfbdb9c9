"""Resumable batch jobs: a saved model applied to a zarr store, written region by region.

:func:`run_job` (and ``xsciml run TASK ...`` on the command line) opens the input store
lazily, builds the lazy result of a *task* (``"predict"`` now; ``"forecast"`` and
``"downscale"`` plug in through :func:`register_task`), creates the output store once
(metadata and coordinates, no data) and then computes and writes it one region at a
time along one dimension. After each region's data are written, the region is
recorded in a small manifest, ``xsciml_job.json`` inside the output store. A job that
is killed and started again with the same arguments skips the recorded regions and
finishes with the same output as an uninterrupted run; a region that was being written
when the job died is simply written again.

The job's fingerprint covers the model's digest, the task and its options, the regions,
the input's layout *and its coordinate values*; the manifest also records a digest of
the input data each finished region read. A resumed job whose input changed (other
coordinates, or other values under a finished region) is refused instead of mixing two
inputs in one output; ``overwrite=True`` (``--overwrite``) starts it over.

Any Dask scheduler runs the regions: the default (threads), ``"processes"``, a
``distributed.Client``, or the address of a running scheduler (a ``LocalCluster``, an
HPC cluster from dask-jobqueue, a cloud cluster).

Examples
--------
>>> from xsciml.jobs import run_job
>>> report = run_job("predict", "field.xsciml", "grid.zarr", "prediction.zarr",
...                  scheduler="tcp://10.0.0.5:8786")    # doctest: +SKIP
>>> report.computed, report.skipped                      # doctest: +SKIP
([3, 4, 5, 6, 7], [0, 1, 2])
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ._utils import check_positive_int
from .base import Forecaster, Predictor, Transformer, registered_estimators

__all__ = ["run_job", "register_task", "registered_tasks", "JobReport", "read_manifest",
           "MANIFEST_NAME"]

log = logging.getLogger(__name__)

#: File name of the manifest inside the output store.
MANIFEST_NAME = "xsciml_job.json"
_MANIFEST_FORMAT = "xsciml-job"
_MANIFEST_VERSION = 1
#: Default number of regions a job is split into (when ``region_size`` is not given).
DEFAULT_REGIONS = 16

TaskBuilder = Callable[..., "xr.Dataset | xr.DataArray"]
_TASKS: dict[str, TaskBuilder] = {}


# ----------------------------------------------------------------------------------
# tasks
# ----------------------------------------------------------------------------------
def register_task(name: str) -> Callable[[TaskBuilder], TaskBuilder]:
    """Register a batch-job task: ``builder(model, ds, **task_kwargs) -> lazy result``.

    The builder receives the loaded estimator and the lazily opened input Dataset and
    returns a lazy Dataset (or DataArray) — typically by calling one of the
    estimator's inference methods, which run per chunk (:mod:`xsciml.parallel`).

    Parameters
    ----------
    name
        Task name used by :func:`run_job` and ``xsciml run NAME``.

    Examples
    --------
    >>> @register_task("doc-sample")
    ... def _sample(model, ds, n=10, **kwargs):
    ...     return model.sample(n, ds, **kwargs)
    >>> "doc-sample" in registered_tasks()
    True
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}.")

    def decorator(builder: TaskBuilder) -> TaskBuilder:
        if not callable(builder):
            raise TypeError(f"a task builder must be callable, got {type(builder).__name__}.")
        _TASKS[name] = builder
        return builder

    return decorator


def registered_tasks() -> list[str]:
    """Names of the tasks :func:`run_job` knows.

    Examples
    --------
    >>> "predict" in registered_tasks()
    True
    """
    return sorted(_TASKS)


def task_builder(name: str) -> TaskBuilder:
    """The builder registered for task ``name`` (``KeyError`` when none is)."""
    return _TASKS[name]


#: The protocol (:mod:`xsciml.base`) a model needs for each built-in model task, and
#: the call the task makes.
_TASK_PROTOCOLS: dict[str, tuple[type, str]] = {
    "predict": (Predictor, "predict(target)"),
    "forecast": (Forecaster, "forecast(ds_init, lead=...)"),
    "transform": (Transformer, "transform(obj)"),
}


def _wrong_model(model: Any, task: str, problem: str) -> TypeError:
    """The error of a model task given a model without the protocol it needs.

    It says which protocol the task needs and which registered estimators have it,
    and which task the model can run instead (when it has another of the protocols).
    """
    name = type(model).__name__
    protocol, call = _TASK_PROTOCOLS[task]
    examples = sorted(n for n, cls in registered_estimators().items() if issubclass(cls, protocol))
    hint = f" (e.g. a saved {' or '.join(examples[:3])})" if examples else ""
    message = (f"a {name} {problem}; choose another task (known: {registered_tasks()}). The {task!r} task "
               f"needs an xsciml.base.{protocol.__name__}, a model with {call}{hint}; ")
    others = [(t, p.__name__) for t, (p, _) in _TASK_PROTOCOLS.items() if t != task and isinstance(model, p)]
    if others:
        message += "this one is " + " and ".join(f"a {p}: run the {t!r} task" for t, p in others) + "."
    else:
        names = [p.__name__ for p, _ in _TASK_PROTOCOLS.values()]
        message += (f"a {name} is none of {', '.join(names[:-1])} or {names[-1]} (the models of the "
                    f"{', '.join(repr(t) for t in _TASK_PROTOCOLS)} tasks): pass one of those, or register "
                    "a task for it (xsciml.jobs.register_task).")
    return TypeError(message)


@register_task("predict")
def _predict_task(model: Any, ds: xr.Dataset, **kwargs: Any) -> xr.Dataset | xr.DataArray:
    """``model.predict(ds, **kwargs)``: e.g. a neural field on the input's coordinates."""
    if not isinstance(model, Predictor):
        raise _wrong_model(model, "predict", "has no predict()")
    return model.predict(ds, **kwargs)


def _parse_lead(lead: Any) -> Any:
    """Lead times from a job option: numbers, or timedelta strings such as ``"6h"``."""
    if lead is None:
        raise ValueError("the forecast task needs lead times: pass lead=[...] "
                         "(e.g. -k 'lead=[0, 1, 2]' or -k 'lead=[\"6h\", \"1D\"]').")
    values = list(lead) if isinstance(lead, (list, tuple, np.ndarray)) else [lead]
    if values and all(isinstance(v, str) for v in values):
        import pandas as pd

        try:
            return pd.to_timedelta(values).to_numpy()
        except ValueError as err:
            raise ValueError(f"lead {values!r}: strings must be timedeltas such as '6h' or '1D'") from err
    return np.asarray(values)


@register_task("forecast")
def _forecast_task(model: Any, ds: xr.Dataset, lead: Any = None, **kwargs: Any) -> xr.Dataset | xr.DataArray:
    """``model.forecast(ds, lead=lead, **kwargs)``: initial states in, forecasts out.

    The input holds the initial states (chunked along the state dims, e.g.
    ``trajectory``, each chunk holding whole fields); ``lead`` is a list of numbers or
    timedelta strings.
    """
    if not isinstance(model, Forecaster):
        raise _wrong_model(model, "forecast", "cannot forecast")
    return model.forecast(ds, lead=_parse_lead(lead), **kwargs)


@register_task("transform")
def _transform_task(model: Any, ds: xr.Dataset, variable: str | None = None,
                    **kwargs: Any) -> xr.Dataset | xr.DataArray:
    """``model.transform(ds[variable], **kwargs)``: e.g. debiasing coarse model output."""
    if not isinstance(model, Transformer):
        raise _wrong_model(model, "transform", "has no transform()")
    return model.transform(ds if variable is None else ds[variable], **kwargs)


@register_task("downscale")
def _downscale_task(model: Any, ds: xr.Dataset, variable: str | None = None,
                    debias: Any = None, **kwargs: Any) -> xr.Dataset | xr.DataArray:
    """``downscale(ds[variable], model, debias=..., **kwargs)`` with a diffusion prior.

    ``model`` is the :class:`~xsciml.downscale.diffusion.DiffusionPrior`; ``debias`` the
    path of a saved :class:`~xsciml.downscale.ot.Debias` (or one already loaded), applied
    to the coarse input first. The input is chunked along ``time`` with whole fields.
    """
    from .downscale.pipeline import downscale
    from .io import load

    if isinstance(debias, (str, os.PathLike)):
        debias = load(debias)
    coarse = ds if variable is None else ds[variable]
    return downscale(coarse, model, debias=debias, **kwargs)


# ----------------------------------------------------------------------------------
# manifest
# ----------------------------------------------------------------------------------
def _is_url(store: str) -> bool:
    return "://" in store


def _manifest_location(store: str) -> str:
    return store.rstrip("/") + "/" + MANIFEST_NAME


def read_manifest(output_store: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The job manifest of an output store, ``None`` when it has none.

    Keys: ``format``, ``version``, ``fingerprint`` (digest of the job's model, input,
    task, options and output layout), ``task``, ``region_dim``, ``region_size``,
    ``n_regions``, ``done`` (sorted region indices), ``updated``.

    Examples
    --------
    >>> read_manifest("prediction.zarr")["done"]  # doctest: +SKIP
    [0, 1, 2]
    """
    store = os.fspath(output_store)
    loc = _manifest_location(store)
    try:
        if _is_url(store):
            import fsspec

            with fsspec.open(loc, "r") as fh:
                text = fh.read()
        else:
            text = Path(loc).read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"the job manifest {loc!r} is corrupted ({err}); delete the output "
                         "store (or pass overwrite=True) and run the job again.") from err
    if not isinstance(data, dict) or data.get("format") != _MANIFEST_FORMAT:
        raise ValueError(f"{loc!r} is not an xsciml job manifest.")
    return data


def _write_manifest(store: str, data: dict[str, Any]) -> None:
    """Write the manifest atomically (a crash leaves the old or the new one)."""
    data = {**data, "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    text = json.dumps(data, indent=1)
    loc = _manifest_location(store)
    if _is_url(store):
        import fsspec

        fs, path = fsspec.core.url_to_fs(loc)
        fs.pipe_file(path, text.encode())  # object stores replace objects atomically
        return
    path = Path(loc)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _store_fingerprint(store: str) -> str | None:
    """The ``xsciml_job`` attribute of an existing zarr store (``None`` if unreadable)."""
    try:
        import zarr

        value = zarr.open_group(store, mode="r").attrs.get("xsciml_job")
    except Exception:  # not a zarr store, or one left half-written
        return None
    return value if isinstance(value, str) else None


def _store_exists(store: str) -> bool:
    if _is_url(store):
        import fsspec

        fs, path = fsspec.core.url_to_fs(store)
        return bool(fs.exists(path))
    p = Path(store)
    return p.exists() and (not p.is_dir() or any(p.iterdir()))


# ----------------------------------------------------------------------------------
# scheduler
# ----------------------------------------------------------------------------------
_LOCAL_SCHEDULERS = ("threads", "threading", "processes", "multiprocessing", "synchronous",
                     "sync", "single-threaded")


@contextlib.contextmanager
def _use_scheduler(scheduler: Any) -> Iterator[Any]:
    """Make ``scheduler`` the one ``dask.compute`` uses inside the block."""
    import dask

    if scheduler is None:
        yield None
        return
    if isinstance(scheduler, str) and scheduler in _LOCAL_SCHEDULERS:
        with dask.config.set(scheduler=scheduler):
            yield scheduler
        return
    try:
        from distributed import Client
    except ImportError as err:  # pragma: no cover - distributed is a dependency
        raise ImportError("a scheduler address needs dask.distributed: pip install distributed") from err
    if isinstance(scheduler, Client):
        with scheduler.as_current():
            yield scheduler
        return
    if isinstance(scheduler, str):
        client = Client(scheduler)
        try:
            with client.as_current():
                yield client
        finally:
            client.close()
        return
    raise TypeError(
        f"scheduler must be None, a distributed.Client, a scheduler address "
        f"('tcp://host:8786') or one of {_LOCAL_SCHEDULERS}, got {type(scheduler).__name__}."
    )


# ----------------------------------------------------------------------------------
# the job
# ----------------------------------------------------------------------------------
@dataclass
class JobReport:
    """What :func:`run_job` did.

    Attributes
    ----------
    output : str
        The output store.
    region_dim : str
        Dimension the job was split along.
    region_size : int
        Length of each region along ``region_dim`` (the last may be shorter).
    n_regions : int
        Number of regions.
    computed : list of int
        Regions computed and written by this call.
    skipped : list of int
        Regions already recorded as done by an earlier, interrupted run.
    seconds : float
        Wall time of this call.
    """

    output: str
    region_dim: str
    region_size: int
    n_regions: int
    computed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    seconds: float = 0.0


def _as_store(value: Any, argname: str) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{argname} must be a path or URL string, got {type(value).__name__}.")
    store = os.fspath(value)
    return store if _is_url(store) else str(Path(store).expanduser().resolve())


def _regular_chunks(ds: xr.Dataset) -> xr.Dataset:
    """One set of chunks per dim, regular (zarr's rule: equal chunks but the last)."""
    ds = ds.unify_chunks()
    fix = {}
    for d, c in ds.chunksizes.items():
        if len(c) > 1 and (len(set(c[:-1])) > 1 or c[-1] > c[0]):
            fix[d] = max(c)
    return ds.chunk(fix) if fix else ds


def _clean_encoding(ds: xr.Dataset) -> xr.Dataset:
    """Keep only CF time encoding: chunking/compression of the input must not leak."""
    ds = ds.copy()
    for v in ds.variables.values():
        v.encoding = {k: e for k, e in v.encoding.items() if k in ("units", "calendar")}
    return ds


def _layout(ds: xr.Dataset) -> dict[str, Any]:
    return {str(k): [list(map(str, v.dims)), list(v.shape), str(v.dtype),
                     [list(c) for c in v.chunks] if v.chunks else None]
            for k, v in ds.variables.items()}


_NETCDF_MAGIC = (b"\x89HDF\r\n\x1a\n", b"CDF\x01", b"CDF\x02", b"CDF\x05")


def _open_input(src: str, chunks: Any) -> xr.Dataset:
    """Open the input lazily: a zarr store with ``open_zarr``, a netCDF file with dask."""
    chunks = chunks if chunks is not None else {}
    if not _is_url(src):
        path = Path(src)
        if not path.exists():
            raise FileNotFoundError(2, "input not found", src)
        if path.is_file():
            with path.open("rb") as fh:
                head = fh.read(8)
            if head.startswith(_NETCDF_MAGIC) or path.suffix in (".nc", ".nc4", ".netcdf", ".h5"):
                return xr.open_dataset(path, chunks=chunks)
            raise ValueError(f"input {src!r} is a file but neither a netCDF file nor a zarr store; "
                             "give a zarr store (directory) or a netCDF file.")
    elif src.endswith((".nc", ".nc4")):
        raise ValueError(f"input {src!r}: netCDF inputs must be local files; convert it to zarr "
                         "(xr.open_dataset(...).to_zarr(...)) for a remote job.")
    try:
        return xr.open_zarr(src, chunks=chunks)
    except Exception as err:
        if type(err).__name__ in ("GroupNotFoundError", "PathNotFoundError", "FileNotFoundError"):
            raise ValueError(f"input {src!r} is not a zarr store ({type(err).__name__}); give a "
                             "zarr store or a netCDF file.") from err
        raise


def _fingerprint(**parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _array_hash(values: Any) -> str:
    """Digest of an array's dtype, shape and values (object arrays by their text)."""
    arr = np.asarray(values)
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([str(arr.dtype), list(arr.shape)]).encode())
    if arr.dtype.hasobject:
        h.update(json.dumps([str(v) for v in arr.ravel()]).encode())
    else:
        # numpy's stubs give ndarray the buffer protocol (__buffer__) for Python >= 3.12 only
        h.update(np.ascontiguousarray(arr).view(np.uint8).reshape(-1) if arr.size else b"")  # type: ignore[arg-type]
    return h.hexdigest()


def _coords_digest(ds: xr.Dataset) -> dict[str, str]:
    """Digest of every coordinate's values (they are small, and read here)."""
    return {str(k): _array_hash(v.values) for k, v in sorted(ds.coords.items(), key=lambda kv: str(kv[0]))}


def _content_tasks(ds: xr.Dataset) -> list[Any]:
    """Delayed digests of every data variable's blocks (run on the job's scheduler)."""
    import dask

    tasks = []
    for name in sorted(ds.data_vars, key=str):
        data = ds[name].data
        if hasattr(data, "to_delayed"):  # a dask array: one digest per block
            tasks += [dask.delayed(_array_hash)(b) for b in data.to_delayed().ravel()]
        else:
            tasks.append(dask.delayed(_array_hash)(np.asarray(data)))
    return tasks


def _combine(names: list[str], digests: Any) -> str:
    return _fingerprint(names=names, blocks=list(digests))


def _region_input(ds: xr.Dataset, dim: Hashable, sl: slice, n_out: int) -> xr.Dataset:
    """The part of the input a region reads: the same slice when the output keeps the dim."""
    if dim in ds.dims and int(ds.sizes[dim]) == n_out:
        return ds.isel({dim: sl})
    return ds


def _choose_regions(result: xr.Dataset, region_dim: Hashable | None, region_size: int | None
                    ) -> tuple[Hashable, int, int]:
    data_vars = [v for v in result.data_vars]
    if not data_vars:
        raise ValueError("the task returned a Dataset without data variables; nothing to write.")
    dims = list(result[data_vars[0]].dims)
    if region_dim is None:
        if not dims:
            raise ValueError("the result is scalar; there is nothing to split into regions.")
        chunked = [d for d in dims if len(result.chunksizes.get(d, (0,))) > 1]
        region_dim = chunked[0] if chunked else dims[0]
    if region_dim not in result.dims:
        raise KeyError(f"region_dim {region_dim!r} is not a dimension of the output; its dims "
                       f"are {tuple(result.dims)}.")
    n = int(result.sizes[region_dim])
    chunks = result.chunksizes.get(region_dim, (n,))
    step = int(chunks[0])
    if region_size is None:
        per = max(1, -(-len(chunks) // DEFAULT_REGIONS))
        region_size = step * per
    else:
        region_size = check_positive_int(region_size, "region_size")
        if region_size % step and region_size < n:
            raise ValueError(
                f"region_size={region_size} is not a multiple of the output's chunk size along "
                f"{region_dim!r} ({step}); regions must cover whole zarr chunks so that no two "
                f"regions write into the same chunk. Use e.g. region_size={step * max(1, region_size // step)}."
            )
    return region_dim, min(region_size, n), max(1, -(-n // region_size))


def run_job(task: str, model_path: str | os.PathLike[str], input_store: Any,
            output_store: str | os.PathLike[str], *, scheduler: Any = None,
            region_dim: Hashable | None = None, region_size: int | None = None,
            progress: bool | None = None, overwrite: bool = False,
            input_chunks: Mapping[Hashable, int] | str | None = None,
            on_region: Callable[[int, int], None] | None = None, **task_kwargs: Any) -> JobReport:
    """Run a saved model over a zarr store, writing a zarr store region by region; resumable.

    1. The model is loaded (on the CPU of this process: workers load their own copy on
       their device) and the input opened lazily with :func:`xarray.open_zarr`.
    2. The task builds the lazy result (for ``"predict"``: ``model.predict(ds,
       **task_kwargs)``), one task per chunk.
    3. The output store is created once: metadata, coordinates and the job's
       fingerprint (the ``xsciml_job`` attribute), no data; then the manifest
       (``xsciml_job.json`` in the store).
    4. Regions of ``region_size`` along ``region_dim`` are computed on ``scheduler``
       and written with ``to_zarr(region=...)``; after each, the manifest records it.

    Started again with the same arguments after a crash or kill, the job skips the
    recorded regions. Different arguments (model, input, task options, regions) on an
    existing output are refused unless ``overwrite=True``, and so is an input that
    changed since the job started: its coordinate values are part of the fingerprint,
    and the data each finished region read is digested when the region is written and
    checked again on resume (reading those regions' input once more).

    Parameters
    ----------
    task
        ``"predict"`` (see :func:`registered_tasks`).
    model_path
        File written by ``est.save``.
    input_store
        Zarr store (path or URL) opened with :func:`xarray.open_zarr`, a local netCDF
        file opened lazily with ``xr.open_dataset(path, chunks={})``, or a Dataset.
    output_store
        Zarr store to write (local or shared-filesystem path, or an fsspec URL).
    scheduler
        ``None`` (dask's current scheduler: the active ``distributed`` client if any,
        else threads), ``"threads"``, ``"processes"``, ``"synchronous"``, a
        ``distributed.Client``, or a scheduler address such as ``"tcp://host:8786"``.
    region_dim
        Dimension to split the output along (default: the first chunked dim of the
        first output variable, e.g. ``time``).
    region_size
        Length of a region along ``region_dim``: a multiple of the output chunk size
        there. Default: about 16 regions. Larger regions give the cluster more chunks
        at once; smaller ones lose less work to a crash.
    progress
        Show a tqdm bar over regions (``None`` follows ``XSCIML_PROGRESS``).
    overwrite
        Replace an output store written by something else or by a different job.
    input_chunks
        ``chunks`` for opening the input (default: the store's or file's chunks).
    on_region
        Called as ``on_region(index, n_regions)`` after each region is written and
        recorded (monitoring; tests use it to interrupt a job).
    **task_kwargs
        Passed to the task (``predict``: ``batch_size``, ``device``, ``time``...).

    Returns
    -------
    JobReport

    Raises
    ------
    KeyError
        For an unknown task or ``region_dim``.
    FileExistsError
        When the output store exists, holds no job manifest and ``overwrite=False``.
    ValueError
        When the output store belongs to a different job or the input changed under
        finished regions and ``overwrite=False``, or ``region_size`` does not cover
        whole chunks.

    Examples
    --------
    >>> report = run_job("predict", "field.xsciml", "grid.zarr", "pred.zarr",
    ...                  region_size=24, device="auto")     # doctest: +SKIP
    >>> xr.open_zarr("pred.zarr")                           # doctest: +SKIP
    """
    from . import io
    from ._utils import progress_bar

    start = time.perf_counter()
    if task not in _TASKS:
        raise KeyError(f"unknown task {task!r}; known tasks: {registered_tasks()}.")
    model_path = Path(os.fspath(model_path)).expanduser()
    model = io.load(model_path, device="cpu")
    model_digest = io.read_header(model_path)[0]["sha256"]
    out = _as_store(output_store, "output_store")

    if not _is_url(out) and Path(out).is_file():
        raise FileExistsError(
            f"output_store {out!r} is a regular file, not a zarr store; choose another output "
            "path (a directory name such as 'prediction.zarr'). It is never replaced, even with "
            "--overwrite (overwrite=True)."
        )
    if isinstance(input_store, xr.Dataset):
        ds, input_id = input_store, "<Dataset>"
    else:
        src = _as_store(input_store, "input_store")
        ds = _open_input(src, input_chunks)
        input_id = src
    result = _TASKS[task](model, ds, **task_kwargs)
    if isinstance(result, xr.DataArray):
        result = result.to_dataset(name=result.name if result.name is not None else task)
    if not isinstance(result, xr.Dataset):
        raise TypeError(f"task {task!r} returned a {type(result).__name__}, not an xarray object.")
    result = _clean_encoding(_regular_chunks(result))
    dim, size, n_regions = _choose_regions(result, region_dim, region_size)

    parts = {
        "task": _fingerprint(task=task),
        "model": model_digest,
        "input": _fingerprint(
            input=input_id, coords=_coords_digest(ds),
            layout={str(k): [list(map(str, v.dims)), list(v.shape), str(v.dtype)]
                    for k, v in ds.variables.items()}),
        "task options": _fingerprint(kwargs=task_kwargs),
        "regions": _fingerprint(region_dim=str(dim), region_size=size, output=_layout(result)),
    }
    fingerprint = _fingerprint(**parts)
    manifest = read_manifest(out)
    if manifest is not None and manifest.get("fingerprint") != fingerprint:
        if not overwrite:
            old = manifest.get("parts") or {}
            diff = [k for k in parts if old.get(k) != parts[k]] if old else []
            what = (f"its {', '.join(diff)} differ" if diff
                    else "model, input, task options or regions differ")
            hint = (" (the input's coordinates, variables or shapes changed since the job "
                    "started)" if "input" in diff else "")
            raise ValueError(
                f"{out!r} holds the output of a different job: {what}{hint}. Choose another "
                "output path, or pass --overwrite (overwrite=True) to start over."
            )
        manifest = None
    elif (manifest is None and not overwrite and _store_exists(out)
          and _store_fingerprint(out) != fingerprint):  # same job killed during its set-up: redo it
        raise FileExistsError(
            f"{out!r} exists and was not written by an xsciml job; choose another output path or "
            "pass overwrite=True to replace it."
        )
    result = result.assign_attrs(xsciml_job=fingerprint)
    if manifest is None:
        # metadata, coordinates and the job's fingerprint (attrs); no data is computed
        result.to_zarr(out, mode="w", compute=False)
        manifest = {"format": _MANIFEST_FORMAT, "version": _MANIFEST_VERSION,
                    "fingerprint": fingerprint, "parts": parts, "task": task,
                    "model": str(model_path), "input": input_id, "region_dim": str(dim),
                    "region_size": size, "n_regions": n_regions, "done": [], "inputs": {}}
        _write_manifest(out, manifest)

    done = set(manifest["done"])
    inputs: dict[str, str] = dict(manifest.get("inputs") or {})
    n_out = int(result.sizes[dim])
    names = sorted(map(str, ds.data_vars))

    def region_slice(i: int) -> slice:
        return slice(i * size, min((i + 1) * size, n_out))
    report = JobReport(out, str(dim), size, n_regions, skipped=sorted(done))
    log.info("job %s: model %s (%s, digest %s), input %s (%s), output %s; %d regions of %d "
             "along %r, %d already done; scheduler %s; options %s", task, model_path,
             type(model).__name__, str(model_digest)[:12], input_id,
             ", ".join(f"{k}={v}" for k, v in ds.sizes.items()), out, n_regions, size, str(dim),
             len(done), _scheduler_name(scheduler), task_kwargs or "none")
    static = [k for k, v in result.variables.items() if dim not in v.dims]  # written at init
    with _use_scheduler(scheduler):
        if done:  # what the finished regions read must still be the input
            import dask

            checked = sorted(i for i in done if str(i) in inputs)
            now = dask.compute(*[dask.delayed(_combine)(names, _content_tasks(
                _region_input(ds, dim, region_slice(i), n_out))) for i in checked])
            changed = [i for i, d in zip(checked, now, strict=True) if d != inputs[str(i)]]
            if changed:
                raise ValueError(
                    f"the input data read by finished region(s) {changed} of {out!r} changed "
                    "since they were written (same coordinates and shapes, other values); "
                    "resuming would mix two inputs in one output. Restore the input, or pass "
                    "--overwrite (overwrite=True) to compute the whole job again."
                )
        bar = progress_bar(total=n_regions, desc=f"xsciml {task}", progress=progress, unit="region",
                           initial=len(done))
        with bar:
            for i in range(n_regions):
                if i in done:
                    continue
                import dask

                sl = region_slice(i)
                t_region = time.perf_counter()
                # xarray's stubs key region by str; dimension names are any Hashable
                write = result.drop_vars(static).isel({dim: sl}).to_zarr(out, region={dim: sl},  # type: ignore[call-overload]
                                                                         compute=False)
                # the region's input digests are computed in the same graph as the region,
                # so the input chunks are read once
                _, *digests = dask.compute(write, *_content_tasks(_region_input(ds, dim, sl, n_out)))
                inputs[str(i)] = _combine(names, digests)
                done.add(i)
                manifest["done"] = sorted(done)
                manifest["inputs"] = inputs
                _write_manifest(out, manifest)
                report.computed.append(i)
                log.info("job %s: region %d/%d (%s %d:%d) written in %.3g s", task, i + 1,
                         n_regions, str(dim), sl.start, sl.stop, time.perf_counter() - t_region)
                bar.update(1)
                if on_region is not None:
                    on_region(i, n_regions)
    report.seconds = round(time.perf_counter() - start, 3)
    log.info("job %s: done in %.3g s: %d regions computed, %d skipped (done earlier); output %s",
             task, report.seconds, len(report.computed), len(report.skipped), out)
    return report


def _scheduler_name(scheduler: Any) -> str:
    """The scheduler, in words, for the log."""
    if scheduler is None:
        return "dask's current one"
    if isinstance(scheduler, str):
        return scheduler
    address = getattr(getattr(scheduler, "scheduler", None), "address", None)
    return f"{type(scheduler).__name__}({address})" if address else type(scheduler).__name__

"""Per-chunk torch inference on Dask: the model sent once, run where the data are.

Every estimator's inference entry point (``predict``, ``sample``, ``decode``, ...) takes
dask-backed input and returns a lazy labeled result built by the helpers of this
module. Computing it runs **one task per output chunk**, on any Dask scheduler
(threads, processes, a ``distributed`` cluster: local, HPC via dask-jobqueue, cloud).

How a model reaches the workers
-------------------------------
1. :func:`model_to_graph` serialises the estimator to bytes (:func:`xsciml.io.save_bytes`:
   safetensors + JSON config, no pickle) and puts them into the graph **once**, under a
   single key named after the model's digest. Every task of the computation depends on
   that key, so a ``distributed`` worker receives the bytes once, however many chunks
   it computes; nothing large is pickled into the tasks.
2. On the worker, :func:`load_model` rebuilds the estimator from the bytes on the first
   task, on the worker's device (``device="auto"``: its GPU when it has one), puts its
   modules in eval mode and caches it in a small per-process LRU keyed by
   ``(digest, device)``; later tasks reuse it.
3. :func:`blockwise_model` / :func:`apply_model` run a *kernel* ``func(model, *blocks,
   device=..., **kwargs)`` per chunk under :func:`torch.inference_mode`. Kernels work in
   minibatches bounded by a memory budget (:func:`subblocks`), copy read-only chunk
   arrays before handing them to torch (:func:`as_tensor`), accept empty chunks, and
   dask is given ``meta`` so it never calls a kernel on fake inputs.

Operations that need the whole spatial field of a snapshot refuse input chunked
along the spatial dims, with the rechunking to apply, or rechunk when asked
(:func:`check_core_chunks`).

Examples
--------
>>> import numpy as np, xarray as xr, xsciml                    # doctest: +SKIP
>>> from distributed import Client, LocalCluster                 # doctest: +SKIP
>>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))  # doctest: +SKIP
>>> target = xr.open_zarr("fine_grid.zarr")                      # doctest: +SKIP
>>> pred = field.predict(target)          # lazy, one task per chunk of the target  # doctest: +SKIP
>>> pred.to_zarr("prediction.zarr")       # computed on the cluster, chunk by chunk  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

if TYPE_CHECKING:
    import dask.array
    import torch
    from dask.delayed import Delayed

    from .base import Estimator

__all__ = [
    "model_to_graph",
    "load_model",
    "model_cache_info",
    "clear_model_cache",
    "blockwise_model",
    "apply_model",
    "check_core_chunks",
    "is_dask_backed",
    "subblocks",
    "as_tensor",
    "TargetBlocks",
    "target_blocks",
    "block_shape",
    "block_dataset",
]

#: Key prefix of the graph entries holding serialised models.
MODEL_KEY_PREFIX = "xsciml-model-"

_CACHE: OrderedDict[tuple[str, str], Any] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_LOADS: Counter[tuple[str, str]] = Counter()
_HITS: Counter[tuple[str, str]] = Counter()


def _cache_size() -> int:
    try:
        return max(1, int(os.environ.get("XSCIML_MODEL_CACHE_SIZE", "4")))
    except ValueError:
        return 4


# ----------------------------------------------------------------------------------
# the model in the graph, and on the worker
# ----------------------------------------------------------------------------------
def _check_device(device: Any) -> Any:
    """Validate a device argument on the client without touching CUDA."""
    import torch

    if device is None or (isinstance(device, str) and device == "auto"):
        return "auto"
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device={device!r} is not a torch device; use 'auto' (the worker's GPU when it "
            "has one), 'cpu' or 'cuda'."
        ) from err
    return device


def _digest(blob: bytes) -> str:
    from .io import header_from_bytes

    return header_from_bytes(blob)["sha256"]


def model_to_graph(model: Estimator | bytes) -> Delayed:
    """Put a fitted estimator into a Dask graph once, as serialised bytes under one key.

    The key is ``"xsciml-model-<digest>"``: the same model always gets the same key, so
    several lazy results built from it share the entry. Pass the returned object to
    :func:`blockwise_model` / :func:`apply_model` (they call this function themselves
    when given an estimator).

    Parameters
    ----------
    model
        A fitted, saveable estimator, or the output of :func:`xsciml.io.save_bytes`.

    Returns
    -------
    dask.delayed.Delayed
        A one-key delayed object whose value is the model's bytes.

    Examples
    --------
    >>> handle = model_to_graph(field)  # doctest: +SKIP
    >>> handle.key  # doctest: +SKIP
    'xsciml-model-3f2a...'
    """
    import dask

    from .base import Estimator
    from .io import save_bytes

    if isinstance(model, Estimator):
        blob = save_bytes(model)
    elif isinstance(model, (bytes, bytearray, memoryview)):
        blob = bytes(model)
    else:
        raise TypeError(
            f"model must be a fitted xsciml Estimator or bytes from xsciml.io.save_bytes, got "
            f"{type(model).__name__}."
        )
    return dask.delayed(blob, name=MODEL_KEY_PREFIX + _digest(blob)[:32], pure=True)


def _place(estimator: Any, device: torch.device) -> None:
    """Move the estimator's torch modules to ``device``, in eval mode, frozen."""
    import torch

    for value in vars(estimator).values():
        if isinstance(value, torch.nn.Module):
            value.to(device).eval()
            value.requires_grad_(False)


def load_model(blob: bytes, device: Any = "auto") -> Estimator:
    """The estimator serialised in ``blob``, built once per process and device (cached).

    Runs on Dask workers: the first task of a worker rebuilds the estimator on the
    worker's device and later tasks reuse it. ``device="auto"`` resolves *here*, so
    each worker uses its own GPU when it has one. The cache is a small LRU keyed by
    ``(digest, device)`` (size ``XSCIML_MODEL_CACHE_SIZE``, default 4).

    Parameters
    ----------
    blob
        Output of :func:`xsciml.io.save_bytes`.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...

    Returns
    -------
    Estimator
        Shared by the tasks of this process: treat it as read-only. Its torch modules
        are on ``device``, in eval mode, with gradients off.

    Examples
    --------
    >>> from xsciml.io import save_bytes
    >>> est = load_model(save_bytes(field), "cpu")  # doctest: +SKIP
    >>> est is load_model(save_bytes(field), "cpu")  # doctest: +SKIP
    True
    """
    from ._utils import resolve_device
    from .io import load_bytes

    dev = resolve_device(device)
    key = (_digest(blob), str(dev))
    with _CACHE_LOCK:
        est = _CACHE.get(key)
        if est is not None:
            _CACHE.move_to_end(key)
            _HITS[key] += 1
            return est
        est = load_bytes(blob, device=dev)
        _place(est, dev)
        _CACHE[key] = est
        _LOADS[key] += 1
        while len(_CACHE) > _cache_size():
            _CACHE.popitem(last=False)
    return est


def model_cache_info() -> dict[str, Any]:
    """What :func:`load_model` holds and did in this process.

    Returns
    -------
    dict
        ``cached``: list of ``"digest@device"`` in the cache; ``loads`` and ``hits``:
        ``{"digest@device": count}`` since the process started (or the last
        :func:`clear_model_cache`).

    Examples
    --------
    >>> info = model_cache_info()
    >>> sorted(info)
    ['cached', 'hits', 'loads']
    >>> # on a cluster: client.run(xsciml.parallel.model_cache_info)
    """
    with _CACHE_LOCK:
        name = "{0[0]}@{0[1]}".format
        return {"cached": [name(k) for k in _CACHE], "loads": {name(k): n for k, n in _LOADS.items()},
                "hits": {name(k): n for k, n in _HITS.items()}}


def clear_model_cache() -> None:
    """Empty the model cache of this process and reset its counters.

    Examples
    --------
    >>> clear_model_cache()
    >>> model_cache_info()["cached"]
    []
    """
    with _CACHE_LOCK:
        _CACHE.clear()
        _LOADS.clear()
        _HITS.clear()


# ----------------------------------------------------------------------------------
# small kernel helpers
# ----------------------------------------------------------------------------------
def subblocks(shape: Sequence[int], max_points: int) -> Iterator[tuple[slice, ...]]:
    """Split an array shape into rectangular pieces of at most ``max_points`` elements.

    Pieces are C-ordered slabs: the leading axes are taken one index at a time and
    the first axis whose trailing block fits the budget is cut into runs. When a
    single row of the last axis exceeds the budget it is cut too, so every piece
    holds at most ``max(1, max_points)`` elements. Empty shapes give no piece.

    Parameters
    ----------
    shape
        Shape of the block.
    max_points
        Memory budget, in elements.

    Yields
    ------
    tuple of slice
        One slice per axis.

    Examples
    --------
    >>> [tuple((s.start, s.stop) for s in sl) for sl in subblocks((2, 3), 4)]
    [((0, 1), (0, 3)), ((1, 2), (0, 3))]
    >>> sum(1 for _ in subblocks((4, 5, 6), 60))
    2
    """
    shape = tuple(int(n) for n in shape)
    from ._utils import check_positive_int

    max_points = check_positive_int(max_points, "max_points")
    if any(n == 0 for n in shape):
        return
    if not shape:
        yield ()
        return
    # first axis k whose trailing product fits the budget
    k = len(shape) - 1
    for a in range(len(shape)):
        if math.prod(shape[a + 1:]) <= max_points:
            k = a
            break
    step = max(1, max_points // math.prod(shape[k + 1:]))
    for lead in np.ndindex(*shape[:k]):
        head = tuple(slice(i, i + 1) for i in lead)
        tail = tuple(slice(0, n) for n in shape[k + 1:])
        for a in range(0, shape[k], step):
            yield head + (slice(a, min(a + step, shape[k])),) + tail


def as_tensor(block: Any, dtype: Any = None, device: Any = "cpu") -> torch.Tensor:
    """A chunk as a torch tensor on ``device``, copying read-only or odd arrays first.

    Chunks read from zarr/netCDF are often read-only or non-contiguous; torch would
    warn (or write into shared memory). This copies only when needed.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.arange(3.0); a.flags.writeable = False
    >>> as_tensor(a).tolist()
    [0.0, 1.0, 2.0]
    """
    import torch

    arr = np.asarray(block)
    if not arr.flags.writeable or not arr.flags.c_contiguous or not arr.dtype.isnative:
        arr = np.array(arr, dtype=arr.dtype.newbyteorder("="), order="C", copy=True)
    t = torch.from_numpy(arr)
    return t.to(device=device, dtype=dtype) if (dtype is not None or str(device) != "cpu") else t


def is_dask_backed(obj: Any) -> bool:
    """True for a DataArray/Dataset with at least one dask-backed data variable.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> da = xr.DataArray(np.zeros(4), dims="x")
    >>> is_dask_backed(da), is_dask_backed(da.chunk(2))
    (False, True)
    """
    if isinstance(obj, xr.DataArray):
        return obj.chunks is not None
    if isinstance(obj, xr.Dataset):
        return any(obj[v].chunks is not None for v in obj.data_vars)
    return False


def check_core_chunks(obj: xr.DataArray | xr.Dataset, dims: Sequence[Hashable], *,
                      rechunk: bool = False, argname: str = "obj",
                      why: str = "the operation needs each whole field") -> Any:
    """Refuse (or fix) dask input split into several chunks along ``dims``.

    Encoding a snapshot, downscaling it or inverting it needs the whole spatial field
    in one chunk; other dims (time, member...) can be chunked freely.

    Parameters
    ----------
    obj
        DataArray or Dataset.
    dims
        Dims that must be one chunk each.
    rechunk
        Rechunk them to one chunk instead of raising.
    argname
        Name of the argument in the error message.
    why
        Reason given in the error message.

    Returns
    -------
    obj, rechunked when asked.

    Raises
    ------
    ValueError
        When a dim of ``dims`` is split and ``rechunk=False``; the message gives the
        ``.chunk({...: -1})`` call that fixes it.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> da = xr.DataArray(np.zeros((2, 4, 4)), dims=("time", "lat", "lon")).chunk({"lat": 2})
    >>> check_core_chunks(da, ("lat", "lon"), argname="da")
    Traceback (most recent call last):
    ...
    ValueError: da is split into several dask chunks along ['lat']; the operation needs each whole field, so ('lat', 'lon') must be one chunk each. Rechunk first: da.chunk({'lat': -1, 'lon': -1}) (other dims can stay chunked), or pass rechunk=True.
    >>> check_core_chunks(da, ("lat", "lon"), rechunk=True).chunks
    ((2,), (4,), (4,))
    """  # noqa: E501
    dims = tuple(dims)
    if not isinstance(obj, (xr.DataArray, xr.Dataset)):
        raise TypeError(f"{argname} must be an xarray DataArray or Dataset, got {type(obj).__name__}.")
    missing = [d for d in dims if d not in obj.dims]
    if missing:
        raise KeyError(f"{argname} has no dimension(s) {missing}; its dims are {tuple(obj.dims)}.")
    if obj.chunks is None or (isinstance(obj, xr.Dataset) and not obj.chunks):
        return obj
    sizes = obj.chunksizes
    split = [d for d in dims if d in sizes and len(sizes[d]) > 1]
    if not split:
        return obj
    if rechunk:
        return obj.chunk({d: -1 for d in dims})
    fix = {d: -1 for d in dims}
    raise ValueError(
        f"{argname} is split into several dask chunks along {split}; {why}, so {dims} must be "
        f"one chunk each. Rechunk first: {argname}.chunk({fix}) (other dims can stay chunked), "
        "or pass rechunk=True."
    )


# ----------------------------------------------------------------------------------
# running kernels per chunk
# ----------------------------------------------------------------------------------
def _run_block(*blocks: Any, _xsciml_func: Callable[..., Any], _xsciml_model: Any,
               _xsciml_device: Any, **kwargs: Any) -> Any:
    """The task body: cached model on this worker, inference mode, the kernel."""
    import torch

    from ._utils import resolve_device
    from .base import Estimator

    if isinstance(_xsciml_model, Estimator):  # eager call: a cached copy, never the user's
        from .io import save_bytes

        _xsciml_model = save_bytes(_xsciml_model)
    model = load_model(_xsciml_model, _xsciml_device)
    with torch.inference_mode():
        return _xsciml_func(model, *blocks, device=resolve_device(_xsciml_device), **kwargs)


def blockwise_model(func: Callable[..., np.ndarray], model: Estimator | Delayed, out_ind: str,
                    *argpairs: Any, dtype: Any, new_axes: Mapping[str, int] | None = None,
                    adjust_chunks: Mapping[str, Any] | None = None, device: Any = "auto",
                    name: str | None = None, **kwargs: Any) -> dask.array.Array:
    """:func:`dask.array.blockwise` with a model: ``func(model, *blocks, device=, **kwargs)``.

    The model enters the graph once (:func:`model_to_graph`) and is rebuilt once per
    worker and device (:func:`load_model`); ``func`` runs under
    :func:`torch.inference_mode` and must return a NumPy array of the output block's
    shape (zero-size blocks included). ``func`` should be a module-level function
    (pickled by reference), never a closure over an estimator.

    Parameters
    ----------
    func
        Kernel ``func(model, *blocks, device, **kwargs) -> np.ndarray``.
    model
        A fitted estimator, or :func:`model_to_graph` output (to share one entry
        between several arrays).
    out_ind
        Output index string, as in :func:`dask.array.blockwise`.
    argpairs
        Arrays alternating with their index strings, as in :func:`dask.array.blockwise`
        (``None`` indices pass an argument through).
    new_axes
        As in :func:`dask.array.blockwise`.
    adjust_chunks
        As in :func:`dask.array.blockwise`.
    dtype
        Output dtype (``meta`` is built from it: the kernel is never called on fake
        inputs).
    device
        ``"auto"`` (resolved on each worker), ``"cpu"``, ``"cuda"``...
    name
        Prefix of the task names (default ``"xsciml-<func name>"``).
    **kwargs
        Passed to ``func``; keep them small (they are part of every task).

    Returns
    -------
    dask.array.Array
        One task per output chunk.

    Examples
    --------
    >>> def kernel(model, x, device):
    ...     return model.transform(x)                    # doctest: +SKIP
    >>> out = blockwise_model(kernel, est, "ij", x, "ij", dtype="f4")  # doctest: +SKIP
    """
    import dask.array as dsa
    from dask.delayed import Delayed

    handle = model if isinstance(model, Delayed) else model_to_graph(model)
    ndim = len(out_ind)
    return dsa.blockwise(
        _run_block, out_ind, *argpairs, dtype=dtype, meta=np.empty((0,) * ndim, dtype=dtype),
        new_axes=dict(new_axes or {}), adjust_chunks=adjust_chunks, concatenate=True,
        token=name or f"xsciml-{getattr(func, '__name__', 'kernel').strip('_')}",
        _xsciml_func=func, _xsciml_model=handle, _xsciml_device=_check_device(device), **kwargs,
    )


def apply_model(func: Callable[..., Any], model: Estimator, *args: xr.DataArray,
                input_core_dims: Sequence[Sequence[Hashable]],
                output_core_dims: Sequence[Sequence[Hashable]] = ((),),
                output_dtypes: Sequence[Any], output_sizes: Mapping[Hashable, int] | None = None,
                device: Any = "auto", kwargs: Mapping[str, Any] | None = None,
                rechunk: bool = False, keep_attrs: bool = False,
                ) -> xr.DataArray | tuple[xr.DataArray, ...]:
    """:func:`xarray.apply_ufunc` for a model kernel, lazy on dask input.

    ``func(model, *arrays, device=, **kwargs)`` gets NumPy arrays with the core dims
    last (as in ``apply_ufunc``) and returns one array (or a tuple, one per entry of
    ``output_core_dims``). On dask input each task gets one chunk of the loop dims; the
    core dims must be one chunk each (refused with a rechunking hint, or rechunked
    with ``rechunk=True``). The model is sent once (see :func:`blockwise_model`); on
    NumPy input the kernel runs here, on a cached copy of the model.

    Parameters
    ----------
    func
        Module-level kernel.
    model
        Fitted estimator.
    *args
        DataArrays.
    input_core_dims
        As in :func:`xarray.apply_ufunc`.
    output_core_dims
        As in :func:`xarray.apply_ufunc`.
    output_dtypes
        As in :func:`xarray.apply_ufunc`.
    output_sizes
        Sizes of output core dims that are not input core dims.
    device
        ``"auto"`` (resolved on each worker), ``"cpu"``, ``"cuda"``...
    kwargs
        Passed to ``func``.
    rechunk
        Rechunk core dims split across chunks instead of raising.
    keep_attrs
        Keep the first argument's attrs.

    Returns
    -------
    DataArray, or a tuple of them for several outputs.

    Examples
    --------
    >>> def encode(model, x, device):                     # x: [..., lat, lon]
    ...     return model.encode_array(x)                  # doctest: +SKIP
    >>> z = apply_model(encode, pca, sst, input_core_dims=[["lat", "lon"]],
    ...                 output_core_dims=[["latent"]], output_dtypes=["f8"],
    ...                 output_sizes={"latent": 16})     # doctest: +SKIP
    """
    import dask.array as dsa

    from .base import Estimator

    if not isinstance(model, Estimator):
        raise TypeError(f"model must be a fitted xsciml Estimator, got {type(model).__name__}.")
    if len(input_core_dims) != len(args):
        raise ValueError(
            f"input_core_dims has {len(input_core_dims)} entries for {len(args)} arguments; give one "
            "list of core dims per argument."
        )
    args = tuple(check_core_chunks(a, core, rechunk=rechunk, argname=f"argument {i}")
                 if isinstance(a, (xr.DataArray, xr.Dataset)) else a
                 for i, (a, core) in enumerate(zip(args, input_core_dims, strict=True)))
    n_out = len(output_core_dims)
    if len(output_dtypes) != n_out:
        raise ValueError(f"output_dtypes has {len(output_dtypes)} entries for {n_out} outputs.")
    device = _check_device(device)
    kw = dict(kwargs or {})
    reserved = sorted(set(kw) & {"dtype", "meta", "name", "output_dtypes", "output_sizes",
                                 "signature", "vectorize", "axes", "axis", "keepdims"})
    if reserved:
        raise ValueError(f"kernel kwargs {reserved} clash with dask.array.apply_gufunc's own "
                         "arguments (dask would swallow them); rename them")
    letters: dict[Hashable, str] = {}

    def sig(dims: Sequence[Hashable]) -> str:
        return "(" + ",".join(letters.setdefault(d, f"d{len(letters)}") for d in dims) + ")"

    signature = (",".join(sig(c) for c in input_core_dims) + "->"
                 + ",".join(sig(c) for c in output_core_dims))
    sizes = {letters[d]: int(n) for d, n in (output_sizes or {}).items() if d in letters}
    state: dict[str, Any] = {}

    def dispatch(*arrays: Any) -> Any:
        if any(isinstance(a, dsa.Array) for a in arrays):
            if "handle" not in state:
                state["handle"] = model_to_graph(model)
            return dsa.apply_gufunc(
                _run_block, signature, *arrays, output_dtypes=list(output_dtypes) if n_out > 1
                else output_dtypes[0], output_sizes=sizes, vectorize=False, allow_rechunk=False,
                _xsciml_func=func, _xsciml_model=state["handle"], _xsciml_device=device, **kw)
        return _run_block(*arrays, _xsciml_func=func, _xsciml_model=model, _xsciml_device=device, **kw)

    return xr.apply_ufunc(dispatch, *args, input_core_dims=[list(c) for c in input_core_dims],
                          output_core_dims=[list(c) for c in output_core_dims], dask="allowed",
                          keep_attrs=keep_attrs)


# ----------------------------------------------------------------------------------
# coordinate targets, chunk by chunk
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetBlocks:
    """A prediction target split into dask chunks: what each task needs, and the labels.

    Built by :func:`target_blocks`. ``arrays[i]`` holds variable ``names[i]`` (a
    coordinate or a condition variable) over ``var_dims[i]``, chunked like the output
    (``dims``/``chunks``); ``coords`` label the output.
    """

    dims: tuple[Hashable, ...]
    chunks: tuple[tuple[int, ...], ...]
    coords: dict[Hashable, xr.Variable]
    names: tuple[str, ...]
    var_dims: tuple[tuple[Hashable, ...], ...]
    arrays: tuple[Any, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(sum(c) for c in self.chunks)

    def argpairs(self, index: Mapping[Hashable, str]) -> list[Any]:
        """``[array, "ij", ...]`` for :func:`blockwise_model`, with ``index[dim]`` letters."""
        out: list[Any] = []
        for arr, dims in zip(self.arrays, self.var_dims, strict=True):
            out += [arr, "".join(index[d] for d in dims)]
        return out

    def layout(self) -> dict[str, Any]:
        """The small static description a kernel needs (see :func:`block_dataset`)."""
        return {"names": self.names, "var_dims": self.var_dims, "dims": self.dims}


def block_shape(blocks: Sequence[np.ndarray], var_dims: Sequence[Sequence[Hashable]],
                dims: Sequence[Hashable]) -> tuple[int, ...]:
    """Shape, over ``dims``, of one chunk given its per-variable blocks.

    Examples
    --------
    >>> import numpy as np
    >>> block_shape([np.zeros(2), np.zeros(3)], [("y",), ("x",)], ("y", "x"))
    (2, 3)
    """
    sizes: dict[Hashable, int] = {}
    for b, vd in zip(blocks, var_dims, strict=True):
        for d, n in zip(vd, np.shape(b), strict=True):
            sizes[d] = int(n)
    return tuple(sizes[d] for d in dims)


def block_dataset(blocks: Sequence[np.ndarray], names: Sequence[str],
                  var_dims: Sequence[Sequence[Hashable]], dims: Sequence[Hashable],
                  region: tuple[slice, ...] | None = None,
                  data_names: Sequence[str] = ()) -> xr.Dataset:
    """Rebuild (a region of) one chunk of a target as a Dataset, dims in ``dims`` order.

    Used inside kernels to call the tensor-conversion layer (e.g.
    :func:`xsciml.tensors.target_points`) on one chunk. ``data_names`` become data
    variables (condition variables), the other names coordinates. A zero-strided
    ``__block__`` data variable spanning ``dims`` comes first, so that the Dataset's
    dim order (which ``target_points`` follows) is ``dims``.

    Examples
    --------
    >>> import numpy as np
    >>> ds = block_dataset([np.array([0.0, 1.0]), np.array([5.0, 6.0, 7.0])], ["y", "x"],
    ...                    [("y",), ("x",)], ("y", "x"))
    >>> dict(ds.sizes), list(ds.coords)
    ({'y': 2, 'x': 3}, ['y', 'x'])
    """
    region = region or tuple(slice(0, n) for n in block_shape(blocks, var_dims, dims))
    where = dict(zip(dims, region, strict=True))
    sizes = tuple(where[d].stop - where[d].start for d in dims)
    # a zero-strided first variable fixes the dim order of the Dataset
    ds = xr.Dataset({"__block__": (tuple(dims), np.broadcast_to(np.int8(0), sizes))})
    for b, n, vd in zip(blocks, names, var_dims, strict=True):
        piece = np.asarray(b)[tuple(where[d] for d in vd)]
        if n in data_names:
            ds[n] = (tuple(vd), piece)
        else:
            ds = ds.assign_coords({n: (tuple(vd), piece)})
    return ds


def _as_target_dataset(target: Any) -> xr.Dataset | None:
    import pandas as pd

    if isinstance(target, xr.DataArray):
        return target.to_dataset(name=target.name if target.name is not None else "__target__")
    if isinstance(target, xr.Dataset):
        return target
    if isinstance(target, pd.DataFrame):
        ds = xr.Dataset.from_dataframe(target.reset_index(drop=True).rename_axis("point"))
        return ds.set_coords(list(ds.data_vars))
    if isinstance(target, Mapping):
        coords = {}
        for k, v in target.items():
            arr = np.asarray(v.values if isinstance(v, xr.DataArray) else v)
            if arr.ndim != 1:
                return None  # let the eager path raise its error
            coords[k] = xr.Variable((k,), arr)
        return xr.Dataset(coords=coords)
    return None


def target_blocks(target: Any, names: Sequence[str], *, data_names: Sequence[str] = (),
                  time_name: str | None = None, time: Any = None, force: bool = False,
                  exclude_dims: Sequence[Hashable] = ()) -> TargetBlocks | None:
    """Split a dask-backed prediction target into per-chunk coordinate arrays.

    The output dims are the target's dims spanned by ``names`` (in the target's
    order); their chunks are those of the target's dask-backed data variables (a dim
    none of them chunks is one chunk). Coordinates are sliced per chunk, so each task
    carries only its own piece.

    Parameters
    ----------
    target
        A Dataset/DataArray (a dict of 1-D coordinates or a DataFrame with
        ``force=True``).
    names
        Coordinates (and condition variables) the model reads.
    data_names
        Those of ``names`` that are condition data variables.
    time_name
        Name of the time dimension.
    time
        Times added as a new dimension (one chunk) when the target lacks ``time_name``.
    force
        Build blocks even when nothing in ``target`` is dask-backed (one chunk per dim
        unless the target is chunked).
    exclude_dims
        Dims dropped from the target first (e.g. a sample dim, by taking index 0).

    Returns
    -------
    TargetBlocks, or ``None`` when the target is not dask-backed (and not ``force``) or
    lacks one of ``names`` (the eager path then raises its own clear error).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> t = xr.Dataset({"v": (("y", "x"), np.zeros((4, 6)))},
    ...                coords={"y": np.arange(4.0), "x": np.arange(6.0)}).chunk({"y": 2})
    >>> tb = target_blocks(t, ["y", "x"])
    >>> tb.dims, tb.chunks
    (('y', 'x'), ((2, 2), (6,)))
    """
    import dask.array as dsa

    ds = _as_target_dataset(target)
    if ds is None or not (force or is_dask_backed(ds)):
        return None
    for d in exclude_dims:
        if d in ds.dims:
            ds = ds.isel({d: 0}, drop=True)
    if time_name and time_name not in ds.variables and time is not None:
        tv = np.atleast_1d(np.asarray(time))
        ds = ds.expand_dims({time_name: tv}).assign_coords({time_name: (time_name, tv)})
    names = list(names)
    if any(n not in ds.variables for n in names):
        return None
    dims = tuple(d for d in ds.dims if any(d in ds[n].dims for n in names))
    chunk_of: dict[Hashable, tuple[int, ...]] = {}
    for v in ds.data_vars:
        da = ds[v]
        if da.chunks is not None:
            for d, c in zip(da.dims, da.chunks, strict=True):
                if d in dims:
                    chunk_of.setdefault(d, tuple(int(n) for n in c))
    chunks = tuple(chunk_of.get(d, (int(ds.sizes[d]),)) for d in dims)
    by_dim = dict(zip(dims, chunks, strict=True))
    from .tensors import decode_variable

    arrays = []
    var_dims = []
    for n in names:
        var = decode_variable(ds[n]).variable
        want = tuple(by_dim[d] for d in var.dims)
        data = var.data
        if isinstance(data, dsa.Array):
            arr = data.rechunk(want)
        else:
            arr = dsa.from_array(np.asarray(data), chunks=want)
        arrays.append(arr)
        var_dims.append(tuple(var.dims))
    coords = {k: c.variable for k, c in ds.coords.items() if set(c.dims) <= set(dims)}
    return TargetBlocks(dims, chunks, coords, tuple(names), tuple(var_dims), tuple(arrays))

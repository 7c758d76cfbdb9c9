"""Coordinate-based training data (:class:`CoordinateData`) and :func:`to_tensors`."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import xarray as xr

from .._utils import check_numeric, check_positive_int
from ..coords import CoordinateEncoder, time_kind
from ..parallel import is_dask_backed

if TYPE_CHECKING:
    import torch
from ._labels import (
    check_data_numeric,
    check_time_axis,
    decode_variable,
    default_space,
    default_time,
    gather_coord,
    get_variable,
    prepare_variables,
    resolve_space_time,
)
from ._points import PointLayout, PointSet, Scaler, TargetPoints, block_stats, combine_stats, target_points


# =========================================================================== training data
class CoordinateData(PointSet):
    """Coordinate-based tensors ``x [N, Ds]``, ``t [N]``, ``y [N, Dy]`` of valid points.

    Build with :func:`to_tensors` / ``ds.sciml.to_tensors``. For in-memory data the
    tensors are built at once; for dask-backed data nothing is loaded until asked:
    :meth:`batches` streams minibatches chunk by chunk (peak memory O(chunk)), while
    touching :attr:`features`/:attr:`y` materialises every valid point.

    Attributes
    ----------
    variables : list of str
        The predicted variables (columns of ``y``).
    encoder : CoordinateEncoder
        The fitted coordinate encoding (saved with models).
    scaler : Scaler
        Mean/std of each variable over valid points (models train on standardised ``y``).
    layout : PointLayout
        Dims, shape, coordinates and valid-point indices of the source data.
    """

    def __init__(self, ds: xr.Dataset, variables: list[str], encoder: CoordinateEncoder,
                 condition: list[str], dtype, attrs: dict[str, dict]):
        import torch

        self._ds = ds
        self.variables = variables
        self.condition = condition
        self.encoder = encoder
        self.dtype = dtype if dtype is not None else torch.float32
        self.var_attrs = attrs
        first = ds[variables[0]]
        self.dims = tuple(first.dims)
        self.shape = tuple(first.shape)
        self.is_lazy = any(is_dask_backed(ds[v]) for v in variables + condition)
        self._features = None
        self._y: torch.Tensor | None = None
        self._valid: np.ndarray | None = None
        #: How the last :meth:`split_indices` chose its held-out points.
        self.split_info: dict[str, Any] = {"pattern": "random"}
        self.scaler: Scaler
        self.condition_scaler: Scaler | None = None
        coord_names = [n for n in list(encoder.space) + ([encoder.time] if encoder.time else [])]
        keep = {}
        for k, c in ds.coords.items():
            if set(c.dims) <= set(self.dims):
                keep[k] = c.variable
        for n in coord_names:  # coordinates stored as data variables (e.g. drifter lon/lat)
            keep.setdefault(n, ds[n].variable)
        self._coords = xr.Dataset(coords=keep)
        self._fit_statistics()
        if not self.is_lazy:
            self._materialise()

    # -- statistics (one pass, dask-aware) ------------------------------------------
    def _fit_statistics(self) -> None:
        """Moments, infinities and counts of every variable in one pass over the blocks.

        Each block gives ``(count, mean, M2, n_inf, n_finite)`` per variable at jointly
        valid points (one fused task per block, so at most a few blocks' temporaries are
        alive); blocks are combined with Chan's parallel formula.
        """
        import dask

        names = self.variables + self.condition
        arrays = [self._ds[v].transpose(*self.dims).data for v in names]
        if any(is_dask_backed(self._ds[v]) for v in names):
            import dask.array as dsa

            ref = next(a for a in arrays if hasattr(a, "numblocks"))
            arrays = [a if hasattr(a, "numblocks") else dsa.from_array(np.asarray(a), chunks=ref.chunks)
                      for a in arrays]
            arrays = list(dsa.core.unify_chunks(*[x for a in arrays for x in (a, tuple(range(a.ndim)))])[1])
            tasks = [dask.delayed(block_stats)(*[a.blocks[idx] for a in arrays])
                     for idx in np.ndindex(*arrays[0].numblocks)]
            parts = dask.compute(*tasks)
        else:
            parts = [block_stats(*arrays)]
        stats = combine_stats(parts)
        means: list[float] = []
        stds: list[float] = []
        cmeans: list[float] = []
        cstds: list[float] = []
        for i, v in enumerate(names):
            n, mean, m2, n_inf, n_fin = stats[i]
            role = "variable" if v in self.variables else "condition variable"
            if n_inf > 0:
                raise ValueError(
                    f"{role} {v!r} contains {int(n_inf)} infinite value(s); if they mark missing "
                    f"data, replace them first: ds[{v!r}] = ds[{v!r}].where(np.isfinite(ds[{v!r}]))"
                )
            if n_fin == 0:
                raise ValueError(f"{role} {v!r} is all-NaN: there is no observation to learn from")
            if n == 0:
                raise ValueError(
                    f"{role} {v!r} has no point where all requested variables are valid together"
                )
            (means if v in self.variables else cmeans).append(mean)
            (stds if v in self.variables else cstds).append(math.sqrt(max(m2 / n, 0.0)))
        self._n_valid = int(stats[0][0])
        self.scaler = Scaler.from_moments(means, stds)
        if self.condition:
            self.condition_scaler = Scaler.from_moments(cmeans, cstds)

    # -- materialising --------------------------------------------------------------
    def _np_dtype(self):
        import torch

        return torch.empty((), dtype=self.dtype).numpy().dtype

    def _points_of_block(self, block: xr.Dataset | dict, offsets, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(flat indices within the block, features, y) for one block, in the tensor dtype.

        ``block`` is a Dataset or a dict of raw arrays (already in ``self.dims`` order).
        Intermediates are freed as soon as possible: streaming memory is a few times the
        chunk size, not tens of times.
        """
        dt = self._np_dtype()
        names = self.variables + self.condition
        vals = []
        valid: np.ndarray | None = None
        for v in names:
            a = block[v] if isinstance(block, dict) else np.asarray(block[v].transpose(*self.dims).values)
            a = np.asarray(a).reshape(-1)
            vals.append(a)
            fin = np.isfinite(a)
            valid = fin if valid is None else np.logical_and(valid, fin, out=valid)
        assert valid is not None  # names holds at least one variable
        flat = np.flatnonzero(valid)
        del valid
        feats, ok = self._features_at(flat, shape, offsets, dt)
        if not ok.all():
            flat, feats = flat[ok], feats[ok]
        nv = len(self.variables)
        y = np.empty((flat.size, nv), dtype=dt)
        for i in range(nv):
            y[:, i] = vals[i][flat]
        if self.condition:
            c = np.stack([vals[nv + i][flat] for i in range(len(self.condition))], -1)
            assert self.condition_scaler is not None  # fitted with the condition variables
            feats = np.concatenate([feats, self.condition_scaler.transform(c).astype(dt)], axis=-1)
        return flat, feats, y

    def _features_at(self, flat, shape, offsets, dtype=np.float64):
        enc = self.encoder
        space = {n: gather_coord(self._coords, n, self.dims, shape, flat, offsets).astype(np.float64)
                 for n in enc.space}
        time = None
        ok = np.ones(flat.shape, dtype=bool)
        for n in enc.space:
            ok &= np.isfinite(space[n])
        if enc.time is not None:
            time = gather_coord(self._coords, enc.time, self.dims, shape, flat, offsets)
            if time_kind(time) == "datetime64":
                ok &= ~np.isnat(time)
            elif time_kind(time) == "numeric":
                ok &= np.isfinite(time)
        return enc.transform(space, time).astype(dtype, copy=False), ok

    def _materialise(self) -> None:
        import torch

        flat, feats, y = self._points_of_block(self._ds, None, self.shape)
        self._valid = flat
        self._features = torch.from_numpy(feats)
        self._y = torch.from_numpy(y)

    def load(self) -> CoordinateData:
        """Materialise all valid points of lazy (dask-backed) data in memory."""
        if self._features is None:
            self._materialise()
        return self

    @property
    def features(self):
        """Encoded inputs ``[N, F]``: space, time, cyclical time, then condition columns."""
        if self._features is None:
            self._materialise()
        return self._features

    @property
    def y(self):
        """Observed values ``[N, Dy]`` in physical units, one column per variable."""
        if self._y is None:
            self._materialise()
        return self._y

    @property
    def c(self):
        """Standardised condition variables ``[N, Dc]`` (``None`` without ``condition``)."""
        if not self.condition:
            return None
        return self.features[:, self.encoder.n_features:]

    @property
    def feature_names(self) -> list[str]:
        return self.encoder.feature_names + list(self.condition)

    @property
    def layout(self) -> PointLayout:
        if self._valid is None:
            self._materialise()
        return PointLayout(self.dims, self.shape, self._coords, self._valid)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        n = "lazy" if self._features is None else f"N={len(self)}"
        return (f"<CoordinateData {n} variables={self.variables} space={self.encoder.space} "
                f"time={self.encoder.time!r} features={self.feature_names}>")

    @property
    def raw_coords(self) -> dict[str, np.ndarray]:
        """Raw (unencoded) coordinate values of each valid point."""
        flat = self.layout.valid
        out = {n: gather_coord(self._coords, n, self.dims, self.shape, flat) for n in self.encoder.space}
        if self.encoder.time:
            out[self.encoder.time] = gather_coord(self._coords, self.encoder.time, self.dims, self.shape, flat)
        return out

    # -- minibatches ---------------------------------------------------------------
    def _blocks(self) -> list[tuple[slice, ...]]:
        arr = self._ds[self.variables[0]].transpose(*self.dims)
        chunks = arr.chunks
        if chunks is None:
            return [tuple(slice(0, s) for s in self.shape)]
        starts = [np.concatenate([[0], np.cumsum(c)]) for c in chunks]
        import itertools

        return [tuple(slice(int(st[i]), int(st[i + 1])) for st, i in zip(starts, idx, strict=True))
                for idx in itertools.product(*[range(len(c)) for c in chunks])]

    def batches(self, batch_size: int = 4096, shuffle: bool = True, seed: int = 0,
                drop_last: bool = False, prefetch: bool = True) -> Iterator[tuple[Any, Any]]:
        """Iterate over ``(features, y)`` minibatches.

        In-memory data is permuted as a whole. Dask-backed data is streamed: chunks are
        visited in a random order (``shuffle``), each is loaded, its valid points are
        shuffled and cut into batches (leftovers carried into the next chunk), and the
        next chunk is loaded in a background thread meanwhile. Peak memory is about two
        chunks, whatever the dataset size.

        Parameters
        ----------
        batch_size
            Points per batch.
        shuffle
            Random order (chunks and points); ``False`` gives the storage order.
        seed
            Seed of the order, so an epoch is reproducible.
        drop_last
            Drop a final batch smaller than ``batch_size``.
        prefetch
            Load the next chunk in a background thread while the current one is used.

        Examples
        --------
        >>> import xsciml.datasets as xd  # doctest: +SKIP
        >>> data = ds.sciml.to_tensors("u", space=("y", "x"), time="time")  # doctest: +SKIP
        >>> for features, y in data.batches(1024, seed=0):  # doctest: +SKIP
        ...     pass
        """
        import torch

        batch_size = check_positive_int(batch_size, "batch_size")
        rng = np.random.default_rng(seed)
        if self._features is not None and not self.is_lazy:
            n = len(self)
            order = rng.permutation(n) if shuffle else np.arange(n)
            order_t = torch.as_tensor(order)
            stop = n - (n % batch_size) if drop_last else n
            assert self._y is not None  # materialised together with _features
            for i in range(0, stop, batch_size):
                idx = order_t[i:i + batch_size]
                yield self._features[idx], self._y[idx]
            return
        yield from self._stream(batch_size, shuffle, rng, drop_last, prefetch)

    def _read_block(self, sl) -> dict[str, np.ndarray]:
        """Raw values of one block (the I/O part, run in the prefetch thread)."""
        block = self._ds[self.variables + self.condition].isel(dict(zip(self.dims, sl, strict=True)))
        return {v: np.asarray(block[v].transpose(*self.dims).values) for v in self.variables + self.condition}

    def _stream(self, batch_size, shuffle, rng, drop_last, prefetch):
        import torch

        blocks = self._blocks()
        order = rng.permutation(len(blocks)) if shuffle else np.arange(len(blocks))
        pool = None
        if prefetch and len(blocks) > 1:
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(max_workers=1)
        try:
            pending = None
            carry_f = carry_y = None
            for k, b in enumerate(order):
                sl = blocks[b]
                raw = pending.result() if pending is not None else self._read_block(sl)
                pending = None
                if pool is not None and k + 1 < len(order):
                    pending = pool.submit(self._read_block, blocks[order[k + 1]])
                shape = tuple(x.stop - x.start for x in sl)
                _, feats, y = self._points_of_block(raw, [x.start for x in sl], shape)
                del raw
                n = len(y)
                perm = rng.permutation(n) if shuffle else None
                start = 0
                if carry_y is not None and len(carry_y):  # complete the carried partial batch
                    need = batch_size - len(carry_y)
                    take = perm[:need] if perm is not None else np.arange(min(need, n))
                    carry_f = np.concatenate([carry_f, feats[take]])
                    carry_y = np.concatenate([carry_y, y[take]])
                    start = len(take)
                    if len(carry_y) == batch_size:
                        yield torch.from_numpy(carry_f), torch.from_numpy(carry_y)
                        carry_f = carry_y = None
                    else:
                        continue
                n_full = start + ((n - start) // batch_size) * batch_size
                for i in range(start, n_full, batch_size):
                    if perm is not None:
                        idx = perm[i:i + batch_size]
                        yield torch.from_numpy(feats[idx]), torch.from_numpy(y[idx])
                    else:
                        yield (torch.from_numpy(feats[i:i + batch_size].copy()),
                               torch.from_numpy(y[i:i + batch_size].copy()))
                rest = perm[n_full:] if perm is not None else np.arange(n_full, n)
                carry_f, carry_y = feats[rest], y[rest]
                del feats, y
            if carry_y is not None and len(carry_y) and not drop_last:
                yield torch.from_numpy(carry_f), torch.from_numpy(carry_y)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def n_batches(self, batch_size: int) -> int:
        """Number of batches per epoch (computed from the valid-point count)."""
        return math.ceil(self.n_valid / batch_size)

    @property
    def n_valid(self) -> int:
        """Number of valid points (for lazy data, counted in the statistics pass before
        points with NaN coordinates — rare — are dropped)."""
        if self._y is not None:
            return int(self._y.shape[0])
        return self._n_valid

    # -- splitting -------------------------------------------------------------------
    def split(self, fraction: float = 0.1, seed: int = 0) -> tuple[tuple, tuple]:
        """Random ``(features, y)`` train/validation split of the valid points."""
        ti, vi = self.split_indices(fraction, seed)
        return (self.features[ti], self.y[ti]), (self.features[vi], self.y[vi])

    def split_indices(self, fraction: float = 0.1, seed: int = 0, pattern: str = "random"):
        """Indices ``(train, validation)`` of a train/validation split of the valid points.

        Parameters
        ----------
        fraction
            Share of the points held out for validation.
        seed
            Seed of the split.
        pattern
            ``"random"``: random points (the split of :meth:`split`). ``"auto"``: on
            gridded data whose gaps are organised (clouds, swaths), disks of points
            that lie as far from the remaining observations as the gap points lie
            from the observations (:func:`xsciml._holdout.gap_shaped_holdout`);
            random points otherwise. The choice is in :attr:`split_info`.
        """
        import torch

        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        if pattern not in ("random", "auto"):
            raise ValueError(f"pattern must be 'random' or 'auto', got {pattern!r}")
        self.split_info = {"pattern": "random"}
        if pattern == "auto":
            from .._holdout import gap_shaped_holdout

            space_dims = {d for n in self.encoder.space for d in self._coords[n].dims}
            if self.encoder.time is not None and set(self._coords[self.encoder.time].dims) & space_dims:
                self.split_info["reason"] = "scattered points (time varies along the spatial dims)"
            else:
                valid = cast(np.ndarray, self.layout.valid)  # CoordinateData lists its valid points
                held, self.split_info = gap_shaped_holdout(
                    valid, self.dims, self.shape, sorted(space_dims, key=str), fraction, seed)
                if held is not None:
                    return torch.from_numpy(np.flatnonzero(~held)), torch.from_numpy(np.flatnonzero(held))
        n = len(self)
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(n, generator=g)
        n_val = max(1, int(round(fraction * n)))
        return perm[n_val:], perm[:n_val]

    # -- back to labeled data ---------------------------------------------------------
    def to_dataarray(self, values, variable: str | None = None, name: str | None = None,
                     sample_dim: str = "sample") -> xr.DataArray:
        """One column of predictions back onto the original coordinates.

        Parameters
        ----------
        values
            ``[N]``, ``[N, Dy]`` or ``[S, N, Dy]`` (samples) tensor or array.
        variable
            Which variable's column (and attrs) to use; default the first.
        name
            Name of the result (default the variable's).
        sample_dim
            Name of the leading dimension for ``[S, N, Dy]`` input.
        """
        variable = variable or self.variables[0]
        if variable not in self.variables:
            raise KeyError(f"variable {variable!r} is not one of {self.variables}")
        from .._utils import to_numpy

        v = to_numpy(values)
        j = self.variables.index(variable)
        if v.ndim >= 2 and v.shape[-1] == len(self.variables) and v.shape[-2] == len(self):
            v = v[..., j]
        elif v.ndim == 1 or (v.ndim == 2 and v.shape[-1] == len(self)):
            pass
        else:
            raise ValueError(
                f"values of shape {v.shape} do not match N={len(self)} points and "
                f"Dy={len(self.variables)} variables"
            )
        lead = (sample_dim,) if v.ndim == 2 else ()
        return self.layout.unflatten(v, name or variable, self.var_attrs.get(variable, {}), lead)

    def to_dataset(self, values, suffix: str = "", sample_dim: str = "sample") -> xr.Dataset:
        """All columns ``[N, Dy]`` (or ``[S, N, Dy]``) back to a Dataset of the variables."""
        return xr.Dataset({f"{v}{suffix}": self.to_dataarray(values, v, f"{v}{suffix}", sample_dim)
                           for v in self.variables})

    def target(self, target: Any = None, time: Any = None) -> TargetPoints:
        """Encode new coordinates with this data's encoder (see :func:`target_points`)."""
        return target_points(self.encoder, self if target is None else target, time=time,
                             dtype=self.dtype, condition=self.condition,
                             condition_scaler=self.condition_scaler)


def to_tensors(  # noqa: C901 - one branch per input layout, kept together
    obj: xr.Dataset | xr.DataArray,
    variables: str | Sequence[str] | None = None,
    *,
    space: str | Sequence[str] | None = None,
    time: str | None = "auto",
    condition: str | Sequence[str] = (),
    sphere: bool | str = "auto",
    time_units: str = "days",
    time_origin: str = "1970-01-01",
    time_features: Any = (),
    encoder: CoordinateEncoder | None = None,
    dtype: Any = None,
) -> CoordinateData:
    """Coordinate-based tensors ``{(x_n, t_n), y_n}`` of every valid observation.

    Every variable (and condition variable) is decoded (CF packing), broadcast against
    its coordinates, and flattened; points where any of them is NaN — or where a
    coordinate is NaN — are dropped, never filled. Works for regular grids (any dim
    order, descending latitude), 2-D curvilinear coordinates (``lat(y, x)``), and
    scattered observations (``obs`` with ``lon(obs)``, ``lat(obs)``, ``time(obs)``;
    coordinates may also be data variables).

    Parameters
    ----------
    obj
        Dataset (or DataArray) — in memory or dask-backed.
    variables
        Variable name(s) to predict; several give ``y`` columns ``Dy > 1``.
    space
        Space coordinate names, e.g. ``("lat", "lon")``. Default: CF latitude/longitude
        when present, otherwise the dimension coordinates other than time.
    time
        Time coordinate name, ``None`` for a static field, ``"auto"`` for ``"time"`` when
        present. Datetime64 and cftime (any CF calendar) become float ``time_units since
        time_origin`` in the data's calendar; a time *dimension* must be unique and sorted.
    condition
        Extra variables given to the network as inputs (conditional fields ``f(x, t, μ)``),
        standardised; appended after the coordinate features.
    sphere
        Coordinate encoding, see :class:`~xsciml.coords.CoordinateEncoder`.
    time_units
        Coordinate encoding, see :class:`~xsciml.coords.CoordinateEncoder`.
    time_origin
        Coordinate encoding, see :class:`~xsciml.coords.CoordinateEncoder`.
    time_features
        Coordinate encoding, see :class:`~xsciml.coords.CoordinateEncoder`.
    encoder
        A fitted encoder to reuse (e.g. a model's) instead of fitting a new one.
    dtype
        torch dtype of the tensors (default ``torch.float32``).

    Returns
    -------
    CoordinateData
        ``.x [N, Ds]``, ``.t [N]``, ``.y [N, Dy]``, ``.features [N, F]``, ``.batches()``,
        and ``.to_dataset(pred)`` to go back to labeled data.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"sst": (("lat", "lon"), [[1.0, np.nan], [3.0, 4.0]])},
    ...                 coords={"lat": [10.0, 0.0], "lon": [0.0, 1.0]})
    >>> data = to_tensors(ds, "sst", time=None)
    >>> data.y.squeeze(-1).tolist(), tuple(data.x.shape)
    ([1.0, 3.0, 4.0], (3, 2))
    >>> data.to_dataarray(data.y).values.tolist()
    [[1.0, nan], [3.0, 4.0]]
    """
    ds, variables = prepare_variables(obj, variables)
    condition = [condition] if isinstance(condition, str) else list(condition)
    for v in variables:
        get_variable(ds, v)
    for c in condition:
        get_variable(ds, c, "condition variable")
    dup = set(variables) & set(condition)
    if dup:
        raise ValueError(f"{sorted(dup)} given both as variables and as condition")
    decoded = {v: decode_variable(ds[v]) for v in variables + condition}
    for v, da in decoded.items():
        check_data_numeric(da, v, "variable" if v in variables else "condition variable")
    dims = decoded[variables[0]].dims
    for v in variables[1:]:
        if set(decoded[v].dims) != set(dims):
            raise ValueError(
                f"variables {variables[0]!r} {tuple(dims)} and {v!r} {decoded[v].dims} have different "
                "dimensions; predict them separately or broadcast them first"
            )
    for c in condition:
        extra = set(decoded[c].dims) - set(dims)
        if extra:
            raise ValueError(
                f"condition variable {c!r} has dimension(s) {sorted(map(str, extra))} that "
                f"{variables[0]!r} {tuple(dims)} does not have"
            )
    ds = ds.assign({v: da.transpose(*[d for d in dims if d in da.dims]) for v, da in decoded.items()})
    for c in condition:
        ds[c] = ds[c].broadcast_like(ds[variables[0]]).transpose(*dims)
    ds[variables[0]] = ds[variables[0]].transpose(*dims)
    for v in variables[1:]:
        ds[v] = ds[v].transpose(*dims)

    if encoder is not None:
        space, time = encoder.space, encoder.time
        resolve_space_time(ds, space, time)
    else:
        if time == "auto":
            time = default_time(ds, dims)
        if space is None:
            space = default_space(ds, dims, time)
        space, time = resolve_space_time(ds, space, time)
    for name in list(space) + ([time] if time else []):
        coord = ds[name]
        extra_dims = [d for d in coord.dims if d not in dims]
        if extra_dims:
            raise ValueError(
                f"coordinate {name!r} has dimension(s) {extra_dims} that variable {variables[0]!r} "
                f"{tuple(dims)} does not have; select or broadcast first"
            )
        if name in space:
            coord = decode_variable(coord)
            check_numeric(coord, f"space coordinate {name!r}")
            ds = ds.assign_coords({name: coord}) if name in ds.coords else ds.assign({name: coord})
    for name in list(space) + ([time] if time else []):
        if is_dask_backed(ds[name]):
            computed = {name: ds[name].compute()}
            ds = ds.assign_coords(computed) if name in ds.coords else ds.assign(computed)
    if time is not None:
        time_kind(ds[time].values)  # clear error for non-time dtypes
        check_time_axis(ds, time, space)
    if encoder is None:
        encoder = CoordinateEncoder(space=space, time=time, sphere=sphere, time_units=time_units,
                                    time_origin=time_origin, time_features=time_features)
        encoder.fit({n: ds[n].values for n in space},
                    ds[time].values if time else None,
                    coord_meta={n: ds[n] for n in space})
    attrs = {v: dict(ds[v].attrs) for v in variables}
    return CoordinateData(ds, variables, encoder, condition, dtype, attrs)

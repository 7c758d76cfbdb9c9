"""Property-based tests of the data path: random small Datasets with the oddities real
files have (NaN, inf, descending or duplicated coordinates, int16 packing, non-standard
calendars, 2-D coordinates) either give a clear error naming a variable or coordinate,
or finite values wherever the input was valid."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import xsciml  # noqa: E402,F401
from xsciml.models.field import fit_field  # noqa: E402
from xsciml.tensors import to_tensors  # noqa: E402

CLEAR = (ValueError, KeyError, TypeError)
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _axis(draw, n: int, name: str) -> np.ndarray:
    kind = draw(st.sampled_from(["ascending", "descending", "duplicated"]))
    v = np.linspace(50.0, 50.0 + n - 1, n) if name in ("lat", "y") else np.linspace(-5.0, n - 6.0, n)
    if kind == "descending":
        v = v[::-1].copy()
    elif kind == "duplicated":
        v[1] = v[0]
    return v


def _times(draw, nt: int) -> np.ndarray:
    cal = draw(st.sampled_from(["standard", "noleap", "360_day"]))
    dup = nt > 1 and draw(st.sampled_from([False, False, False, True]))
    if cal == "standard":
        t = np.array([np.datetime64("2001-02-27") + np.timedelta64(i, "D") for i in range(nt)])
    else:
        import cftime

        t = np.array([cftime.datetime(2001, 2, 27 + i if cal == "360_day" else 26 + i,
                                      calendar=cal) for i in range(nt)], dtype=object)
    if dup:
        t[1] = t[0]
    return t


@st.composite
def datasets(draw) -> xr.Dataset:
    nt = draw(st.integers(1, 3))
    ny, nx = draw(st.integers(3, 6)), draw(st.integers(3, 6))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    vals = 280.0 + 5.0 * rng.standard_normal((nt, ny, nx))
    n_bad = draw(st.integers(0, 3))
    bad = draw(st.sampled_from([np.nan, np.nan, np.nan, np.inf, -np.inf]))
    for _ in range(n_bad):
        vals[rng.integers(nt), rng.integers(ny), rng.integers(nx)] = bad
    time = _times(draw, nt)
    two_d = draw(st.booleans())
    if two_d:
        y, x = np.arange(ny, dtype=float), np.arange(nx, dtype=float)
        lat2, lon2 = np.meshgrid(_axis(draw, ny, "lat"), _axis(draw, nx, "lon"), indexing="ij")
        lat2 = lat2 + 0.1 * lon2
        if draw(st.sampled_from([False, False, True])):  # a missing 2-D coordinate value
            lat2[0, -1] = np.nan
        coords = {"time": time, "y": y, "x": x, "lat": (("y", "x"), lat2), "lon": (("y", "x"), lon2)}
        dims = ("time", "y", "x")
    else:
        coords = {"time": time, "lat": _axis(draw, ny, "lat"), "lon": _axis(draw, nx, "lon")}
        dims = ("time", "lat", "lon")
    attrs: dict = {"units": "K"}
    if draw(st.booleans()):  # int16 packing, left undecoded (as with mask_and_scale=False)
        unsigned = draw(st.booleans())
        scale, offset = 0.01, 280.0
        counts = np.round((np.where(np.isfinite(vals), vals, offset) - offset) / scale)
        fill = -1 if unsigned else -32768
        if unsigned:
            counts = counts + 2000  # all within 0..32767 as unsigned
            offset = offset - 2000 * scale
        counts[~np.isfinite(vals)] = fill
        vals = counts.astype(np.int16)
        attrs.update(scale_factor=scale, add_offset=offset, _FillValue=np.int16(fill))
        if unsigned:
            attrs["_Unsigned"] = "true"
    return xr.Dataset({"t2m": (dims, vals, attrs)}, coords=coords)


def _names(ds: xr.Dataset) -> list[str]:
    return [str(n) for n in ds.variables]


def _clear(err: Exception, ds: xr.Dataset) -> bool:
    msg = str(err)
    return isinstance(err, CLEAR) and any(f"'{n}'" in msg or f"{n!r}" in msg or n in msg.split()
                                          for n in _names(ds))


def _valid_coords(ds: xr.Dataset) -> xr.DataArray:
    ok = xr.ones_like(ds["t2m"], dtype=bool)
    for n in ("lat", "lon"):
        ok = ok & np.isfinite(ds[n])
    return ok


@SETTINGS
@given(datasets())
def test_to_tensors_clear_error_or_finite(ds):
    try:
        data = to_tensors(ds, "t2m")
    except Exception as err:  # noqa: BLE001 - the property is about the type and message
        assert _clear(err, ds), f"unclear {type(err).__name__}: {err}"
        return
    assert np.isfinite(data.features.numpy()).all()
    assert np.isfinite(data.y.numpy()).all()


@SETTINGS
@given(datasets())
def test_fit_and_predict_clear_error_or_finite(ds):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            field = fit_field(ds, "t2m", steps=2, residual="none", progress=False, seed=0)
        except Exception as err:  # noqa: BLE001
            assert _clear(err, ds), f"unclear {type(err).__name__}: {err}"
            return
        try:
            pred = field.predict(ds)
        except Exception as err:  # noqa: BLE001
            assert _clear(err, ds), f"unclear {type(err).__name__}: {err}"
            return
    mean = pred["t2m_mean"].transpose(*ds["t2m"].dims)
    std = pred["t2m_std"].transpose(*ds["t2m"].dims)
    ok = _valid_coords(ds).transpose(*ds["t2m"].dims).values
    assert np.isfinite(mean.values[ok]).all()
    assert np.isfinite(std.values[ok]).all() and (std.values[ok] > 0).all()

"""Coordinate encodings: time to float (cftime-safe), affine scaling, the sphere.

Every neural field in xsciml sees its coordinates through a :class:`CoordinateEncoder`,
fitted once on the training data and saved with the model, so prediction applies the
same transformation:

* each space coordinate is mapped affinely to ``[-1, 1]`` over the training range;
* latitude/longitude can instead be embedded on the unit sphere,
  ``(cos φ cos λ, cos φ sin λ, sin φ)``, so the 0/360 seam and the poles are not edges;
* time is turned into a float ``units since origin`` in the data's own calendar
  (``"days since 1970-01-01"`` by default), then mapped affinely to ``[-1, 1]``;
* optional cyclical time features (hour of day, day of year, or any period) add
  ``sin``/``cos`` pairs.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

__all__ = [
    "CoordinateEncoder",
    "time_kind",
    "time_calendar",
    "time_to_float",
    "float_to_time",
    "is_latitude",
    "is_longitude",
    "horizontal_dims",
    "STANDARD_CALENDARS",
    "warn_outside",
]

STANDARD_CALENDARS = frozenset({"standard", "gregorian", "proleptic_gregorian"})
KNOWN_CALENDARS = STANDARD_CALENDARS | {
    "noleap",
    "365_day",
    "all_leap",
    "366_day",
    "360_day",
    "julian",
}
_CAL_ALIASES = {"365_day": "noleap", "366_day": "all_leap", "gregorian": "standard"}
_UNIT_SECONDS = {
    "seconds": 1.0,
    "minutes": 60.0,
    "hours": 3600.0,
    "days": 86400.0,
}
_LAT_NAMES = {"lat", "latitude", "nav_lat", "lat_rho", "xlat", "rlat_deg"}
_LON_NAMES = {"lon", "longitude", "nav_lon", "lon_rho", "xlong", "long"}
_LAT_UNITS = {"degrees_north", "degree_north", "degree_n", "degrees_n", "degreen", "degreesn"}
_LON_UNITS = {"degrees_east", "degree_east", "degree_e", "degrees_e", "degreee", "degreese"}


# --------------------------------------------------------------------------- lat / lon
def _attr(coord: Any, key: str) -> str:
    attrs = getattr(coord, "attrs", {}) or {}
    return str(attrs.get(key, "")).strip().lower()


def is_latitude(name: str, coord: Any = None) -> bool:
    """Whether a coordinate is a latitude (CF ``standard_name``/``units`` or its name)."""
    if coord is not None:
        if _attr(coord, "standard_name") == "latitude" or _attr(coord, "units") in _LAT_UNITS:
            return True
    return name.lower() in _LAT_NAMES


def is_longitude(name: str, coord: Any = None) -> bool:
    """Whether a coordinate is a longitude (CF ``standard_name``/``units`` or its name)."""
    if coord is not None:
        if _attr(coord, "standard_name") == "longitude" or _attr(coord, "units") in _LON_UNITS:
            return True
    return name.lower() in _LON_NAMES


def horizontal_dims(obj: Any) -> tuple[Hashable, Hashable]:
    """The two horizontal dims ``(y, x)`` of a gridded DataArray or Dataset.

    Latitude and longitude are found as :func:`~xsciml.tensors.to_tensors` finds them
    (:func:`is_latitude` / :func:`is_longitude`: CF ``standard_name`` or ``units``,
    then the usual names such as ``lat``/``latitude``); their dims are returned (for
    2-D curvilinear coordinates, the data's two dims they span, in the data's order).
    Without latitude and longitude, the dims whose coordinates have the CF ``axis``
    ``"Y"`` and ``"X"`` are used, then dims named ``y`` and ``x``.

    Parameters
    ----------
    obj
        A DataArray or Dataset.

    Returns
    -------
    (y_dim, x_dim)

    Raises
    ------
    KeyError
        When no pair of horizontal dims is found (the message lists the dims).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> da = xr.DataArray(np.zeros((2, 3, 4)), dims=("time", "latitude", "longitude"))
    >>> horizontal_dims(da)
    ('latitude', 'longitude')
    """
    dims = list(obj.dims)
    coords = dict(obj.coords)

    def found(test: Any) -> list[tuple[Any, ...]]:
        """The dims of each coordinate (or coordinate-less dim) passing ``test``."""
        named = [tuple(c.dims) for n, c in coords.items() if c.ndim > 0
                 and set(c.dims) <= set(dims) and test(str(n), c)]
        return named + [(d,) for d in dims if d not in coords and test(str(d))]

    lat, lon = found(is_latitude), found(is_longitude)
    if lat and lon:
        la, lo = lat[0], lon[0]
        if len(la) == 1 and len(lo) == 1 and la != lo:
            return la[0], lo[0]
        if len(la) == 2 and set(la) == set(lo):
            ordered = [d for d in dims if d in la]
            return ordered[0], ordered[1]
    by_axis = {str(c.attrs.get("axis", "")).upper(): c.dims[0] for c in coords.values()
               if c.ndim == 1 and c.dims[0] in dims}
    if "Y" in by_axis and "X" in by_axis and by_axis["Y"] != by_axis["X"]:
        return by_axis["Y"], by_axis["X"]
    if "y" in dims and "x" in dims:
        return "y", "x"
    raise KeyError(
        f"cannot tell the horizontal dims among {tuple(map(str, dims))}: no latitude/longitude "
        "coordinates (CF standard_name or units degrees_north/degrees_east, or names such as "
        "lat/lon), no coordinates with axis Y/X, no dims y/x; pass dims=(y_dim, x_dim)"
    )


def _wrap_longitude(lon: np.ndarray, center: float) -> np.ndarray:
    """Represent longitudes within ``center ± 180`` (so 350°E and -10°E agree)."""
    return (lon - center + 180.0) % 360.0 - 180.0 + center


def longitude_arc(lon: np.ndarray) -> tuple[float | None, float]:
    """Where longitudes sit on the circle: ``(start, extent)`` in degrees.

    The extent is 360° minus the largest gap between neighbouring longitudes on the
    circle, so a regional box that crosses the seam of its own numbering (a Europe box
    in 0..360, 350..360 ∪ 0..20) has a small extent, and a global grid (0..357.5, a
    Gaussian grid) one close to 360°. ``start`` is the first longitude of the arc when
    the largest gap lies *inside* ``[min, max]`` (the box crosses the seam of the
    values' range), given in -180..180, else ``None`` (``min .. max`` already is the arc).

    Examples
    --------
    >>> import numpy as np
    >>> longitude_arc(np.r_[350.0, 355.0, np.arange(0.0, 25.0, 5.0)])
    (-10.0, 30.0)
    >>> longitude_arc(np.arange(0.0, 360.0, 2.5))
    (None, 357.5)
    """
    u = np.unique(np.mod(np.asarray(lon, dtype=np.float64).ravel(), 360.0))
    if u.size < 2:
        return None, 0.0
    inner = np.diff(u)
    wrap = u[0] + 360.0 - u[-1]  # the gap across 0/360 in the reduced values
    lo, hi = float(np.min(lon)), float(np.max(lon))
    k = int(np.argmax(inner))
    tol = 1e-9 * 360.0
    if inner[k] > wrap + tol:  # the largest gap is inside 0..360
        start, extent = float(u[k + 1]), 360.0 - float(inner[k])
    else:
        start, extent = float(u[0]), 360.0 - float(wrap)
    if extent >= (hi - lo) - tol:  # min .. max is the arc (no seam inside the box)
        return None, extent
    return float(_wrap_longitude(np.asarray(start), 0.0)), extent  # the start in -180..180


# --------------------------------------------------------------------------- time
def time_kind(values: np.ndarray) -> str:
    """``"datetime64"``, ``"cftime"`` or ``"numeric"`` for an array of time values.

    Raises
    ------
    ValueError
        For timedeltas, strings or anything else that is not a time axis.
    """
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.datetime64):
        return "datetime64"
    if np.issubdtype(values.dtype, np.number) and not np.issubdtype(values.dtype, np.complexfloating):
        return "numeric"
    if values.dtype == object:
        flat = values.ravel()
        sample = next((v for v in flat if v is not None), None)
        try:
            import cftime

            if isinstance(sample, cftime.datetime):
                return "cftime"
        except ImportError:  # pragma: no cover
            pass
    raise ValueError(
        f"time values of dtype {values.dtype} are not a time axis: expected datetime64, "
        "cftime datetimes or numbers. Decode times with xr.decode_cf / use_cftime=True, "
        "or pass time=None."
    )


def _normalise_calendar(cal: str | None) -> str:
    cal = (cal or "standard").lower()
    return _CAL_ALIASES.get(cal, cal)


def time_calendar(values: np.ndarray) -> str:
    """Calendar of a time array: ``"proleptic_gregorian"`` for datetime64, the cftime
    calendar otherwise (normalised: ``365_day`` → ``noleap``), ``"none"`` for numbers."""
    kind = time_kind(values)
    if kind == "datetime64":
        return "proleptic_gregorian"
    if kind == "numeric":
        return "none"
    flat = np.asarray(values).ravel()
    cals = {_normalise_calendar(v.calendar) for v in flat if v is not None}
    if len(cals) != 1:
        raise ValueError(f"time values mix several calendars: {sorted(cals)}")
    cal = cals.pop()
    if cal not in {_normalise_calendar(c) for c in KNOWN_CALENDARS}:
        raise ValueError(
            f"unknown calendar {cal!r}; supported calendars are {sorted(KNOWN_CALENDARS)}"
        )
    return cal


def calendars_compatible(a: str | None, b: str | None) -> bool:
    """Whether times in calendars ``a`` and ``b`` can share one float time axis."""
    a, b = _normalise_calendar(a), _normalise_calendar(b)
    if a == b:
        return True
    std = {_normalise_calendar(c) for c in STANDARD_CALENDARS}
    return a in std and b in std


def time_to_float(
    values: np.ndarray,
    units: str = "days",
    origin: str = "1970-01-01",
) -> np.ndarray:
    """Convert datetime64 or cftime values to ``float64`` *units since origin*.

    The conversion happens in the values' own calendar (a 360-day year stays a
    360-day year); missing times (NaT / ``None``) become NaN. Numeric values are
    returned unchanged as float64.

    Parameters
    ----------
    values
        Array of ``datetime64``, ``cftime.datetime`` or numbers.
    units
        ``"seconds"``, ``"minutes"``, ``"hours"`` or ``"days"``.
    origin
        ISO date the float time counts from.

    Examples
    --------
    >>> import numpy as np
    >>> time_to_float(np.array(["1970-01-02T12"], dtype="datetime64[h]"))
    array([1.5])
    """
    if units not in _UNIT_SECONDS:
        raise ValueError(f"time units {units!r} not understood; use one of {sorted(_UNIT_SECONDS)}")
    values = np.asarray(values)
    if values.ndim == 0:  # a scalar time: convert as a 1-element array, return a 0-d array
        return time_to_float(values.reshape(1), units, origin).reshape(())
    kind = time_kind(values)
    if kind == "numeric":
        return values.astype(np.float64)
    if kind == "datetime64":
        ns = values.astype("datetime64[ns]")
        nat = np.isnat(ns)
        delta = (ns - np.datetime64(origin, "ns")).astype("timedelta64[ns]").astype(np.int64)
        out = delta.astype(np.float64) / (_UNIT_SECONDS[units] * 1e9)
        out[nat] = np.nan
        return out
    import cftime

    cal = time_calendar(values)
    flat = values.ravel()
    ok = np.array([v is not None for v in flat], dtype=bool)
    out = np.full(flat.shape, np.nan)
    if ok.any():
        out[ok] = np.asarray(
            cftime.date2num(list(flat[ok]), f"{units} since {origin}", calendar=cal), dtype=float
        )
    return out.reshape(values.shape)


def float_to_time(
    t: np.ndarray,
    units: str = "days",
    origin: str = "1970-01-01",
    calendar: str = "proleptic_gregorian",
) -> np.ndarray:
    """Inverse of :func:`time_to_float`: datetime64 for standard calendars, cftime otherwise.

    Examples
    --------
    >>> float_to_time(np.array([1.5]))
    array(['1970-01-02T12:00:00.000000000'], dtype='datetime64[ns]')
    """
    t = np.asarray(t, dtype=np.float64)
    if calendar == "none":
        return t
    if calendar in STANDARD_CALENDARS:
        ns = np.round(t * _UNIT_SECONDS[units] * 1e9)
        out = np.datetime64(origin, "ns") + ns.astype("timedelta64[ns]")
        return np.where(np.isnan(t), np.datetime64("NaT"), out)
    import cftime

    return np.asarray(
        cftime.num2date(t, f"{units} since {origin}", calendar=calendar), dtype=object
    )


def _cyclical_phase(values: np.ndarray, name: str, calendar: str) -> np.ndarray:
    """Phase in [0, 1) of each time within its hour-of-day / day-of-year cycle."""
    kind = time_kind(values)
    if kind == "numeric":
        raise ValueError(
            f"cyclical time feature {name!r} needs datetime (datetime64 or cftime) times; "
            "for a numeric time axis give the period explicitly, e.g. "
            "time_features={'cycle': 24.0}."
        )
    flat = np.asarray(values).ravel()
    if kind == "datetime64":
        import pandas as pd

        idx = pd.DatetimeIndex(flat.astype("datetime64[ns]"))
        hour = (idx.hour + idx.minute / 60.0 + idx.second / 3600.0).to_numpy(dtype=float)
        if name == "hour":
            phase = hour / 24.0
        else:
            ylen = np.where(idx.is_leap_year, 366.0, 365.0)
            phase = ((idx.dayofyear.to_numpy() - 1) + hour / 24.0) / ylen
    else:
        hour = np.array([v.hour + v.minute / 60.0 + v.second / 3600.0 for v in flat])
        if name == "hour":
            phase = hour / 24.0
        else:
            doy = np.array([v.dayofyr for v in flat], dtype=float)
            if calendar == "360_day":
                ylen = np.full(doy.shape, 360.0)
            elif calendar == "noleap":
                ylen = np.full(doy.shape, 365.0)
            elif calendar == "all_leap":
                ylen = np.full(doy.shape, 366.0)
            else:
                ylen = np.array([366.0 if _is_leap(v.year, calendar) else 365.0 for v in flat])
            phase = ((doy - 1) + hour / 24.0) / ylen
    return np.asarray(phase, dtype=np.float64).reshape(np.shape(values))


def _is_leap(year: int, calendar: str) -> bool:
    if calendar == "julian":
        return year % 4 == 0
    return (year % 4 == 0 and year % 100 != 0) or year % 400 == 0


# --------------------------------------------------------------------------- encoder
@dataclass
class CoordinateEncoder:
    """Maps raw coordinates to the network's input features, and back to names.

    Fit it once on training coordinates with :meth:`fit`; it then transforms any new
    coordinates identically (:meth:`transform`). Its state is a small JSON-friendly dict
    (:meth:`to_dict` / :meth:`from_dict`) saved with every model.

    Feature columns, in order: space (affine ``[-1, 1]`` per coordinate, or 3 sphere
    columns replacing latitude/longitude), time (affine ``[-1, 1]``), then one
    ``(sin, cos)`` pair per cyclical time feature.

    Parameters
    ----------
    space
        Names of the space coordinates, e.g. ``("lat", "lon")``.
    time
        Name of the time coordinate, or ``None`` for static fields.
    sphere
        ``True`` to embed latitude/longitude on the unit sphere, ``False`` for affine
        scaling, ``"auto"`` (default) for the sphere when the longitudes cover at least
        180 degrees of the circle (global or hemispheric data; judged by the largest gap
        between longitudes, so a regional box across 0/360 stays regional, with its
        longitudes unwrapped to one continuous range) and affine otherwise.
    time_units
        Unit of float time: time is ``time_units since time_origin`` in the data's calendar.
    time_origin
        Origin of float time.
    time_features
        Cyclical features: names ``"hour"`` (hour of day) and ``"doy"`` (day of year) for
        datetime axes, or a mapping ``{name: period}`` with the period in ``time_units``.

    Examples
    --------
    >>> import numpy as np
    >>> enc = CoordinateEncoder(space=("x",), time=None).fit({"x": np.array([0.0, 10.0])})
    >>> enc.transform({"x": np.array([0.0, 5.0, 10.0])})[:, 0]
    array([-1.,  0.,  1.])
    """

    space: tuple[str, ...]
    time: str | None = None
    sphere: bool | str = "auto"
    time_units: str = "days"
    time_origin: str = "1970-01-01"
    time_features: Any = ()
    # fitted state
    lat_name: str | None = None
    lon_name: str | None = None
    space_min: dict[str, float] = field(default_factory=dict)
    space_max: dict[str, float] = field(default_factory=dict)
    lon_center: float | None = None
    time_min: float | None = None
    time_max: float | None = None
    space_step: dict[str, float] = field(default_factory=dict)
    time_step: float = 0.0
    calendar: str | None = None
    fitted: bool = False

    # -- construction ---------------------------------------------------------------
    def __post_init__(self) -> None:
        self.space = tuple(self.space)
        if isinstance(self.time_features, str):
            self.time_features = (self.time_features,)
        if isinstance(self.time_features, dict):
            self.time_features = tuple((str(k), float(v)) for k, v in self.time_features.items())
        else:
            tf = []
            for item in self.time_features:
                if isinstance(item, (list, tuple)):
                    tf.append((str(item[0]), None if item[1] is None else float(item[1])))
                elif item in ("hour", "doy"):
                    tf.append((item, None))
                else:
                    raise ValueError(
                        f"unknown cyclical time feature {item!r}: use 'hour', 'doy' or a "
                        "mapping {name: period}"
                    )
            self.time_features = tuple(tf)
        if self.time_units not in _UNIT_SECONDS:
            raise ValueError(
                f"time_units={self.time_units!r} not understood; use one of {sorted(_UNIT_SECONDS)}"
            )
        if not self.space and self.time is None:
            raise ValueError("need at least one space coordinate or a time coordinate")

    # -- fitting --------------------------------------------------------------------
    def fit(
        self,
        space: dict[str, np.ndarray],
        time: np.ndarray | None = None,
        coord_meta: dict[str, Any] | None = None,
    ) -> CoordinateEncoder:
        """Learn the scaling from raw training coordinates.

        Parameters
        ----------
        space
            ``{name: values}`` for each space coordinate (any shape; NaNs ignored).
        time
            Raw time values (datetime64, cftime or numbers), if the encoder has a time.
        coord_meta
            ``{name: DataArray}`` used to recognise latitude/longitude from CF attributes.
        """
        coord_meta = coord_meta or {}
        missing = [n for n in self.space if n not in space]
        if missing:
            raise KeyError(f"space coordinate(s) {missing} not given to CoordinateEncoder.fit")
        self.lat_name = next((n for n in self.space if is_latitude(n, coord_meta.get(n))), None)
        self.lon_name = next((n for n in self.space if is_longitude(n, coord_meta.get(n))), None)
        for name in self.space:
            v = np.asarray(space[name], dtype=np.float64)
            finite = v[np.isfinite(v)]
            if finite.size == 0:
                raise ValueError(f"space coordinate {name!r} has no finite values")
            if name == self.lat_name and (finite.min() < -90.0001 or finite.max() > 90.0001):
                raise ValueError(
                    f"latitude {name!r} has values outside [-90, 90] "
                    f"({finite.min():.3g} .. {finite.max():.3g}); is it really a latitude?"
                )
            self.space_min[name] = float(finite.min())
            self.space_max[name] = float(finite.max())
            self.space_step[name] = _typical_step(finite)
        lon_extent = 0.0
        if self.lon_name is not None:
            lo, hi = self.space_min[self.lon_name], self.space_max[self.lon_name]
            self.lon_center = 0.5 * (lo + hi)
            v = np.asarray(space[self.lon_name], dtype=np.float64)
            start, lon_extent = longitude_arc(v[np.isfinite(v)])
            if start is not None:  # a regional domain across the seam of the values' range
                self.lon_center = start + 0.5 * lon_extent
                self.space_min[self.lon_name] = start
                self.space_max[self.lon_name] = start + lon_extent
        if self.sphere == "auto":
            # by the data's own spacing: the longitudes' extent on the circle, not max - min
            self.sphere = bool(self.lat_name is not None and self.lon_name is not None
                               and lon_extent >= 180.0)
        elif self.sphere and (self.lat_name is None or self.lon_name is None):
            raise ValueError(
                f"sphere=True needs a latitude and a longitude among space={self.space}; "
                "name them lat/lon or set units degrees_north/degrees_east"
            )
        self.sphere = bool(self.sphere)
        if self.time is not None:
            if time is None:
                raise ValueError(f"time coordinate {self.time!r} values are needed to fit the encoder")
            self.calendar = time_calendar(time)
            if self.calendar == "none" and any(p is None for _, p in self.time_features):
                raise ValueError(
                    "cyclical features 'hour'/'doy' need datetime times; time "
                    f"{self.time!r} is numeric. Give periods explicitly, e.g. {{'cycle': 24.0}}"
                )
            tf = time_to_float(time, self.time_units, self.time_origin)
            tf = tf[np.isfinite(tf)]
            if tf.size == 0:
                raise ValueError(f"time coordinate {self.time!r} has no valid values")
            self.time_min, self.time_max = float(tf.min()), float(tf.max())
            self.time_step = _typical_step(tf)
        self.fitted = True
        return self

    # -- transforming ---------------------------------------------------------------
    @property
    def n_space_features(self) -> int:
        """Number of space feature columns."""
        return len(self.space) + (1 if self.sphere else 0)

    @property
    def n_features(self) -> int:
        """Total number of feature columns."""
        return self.n_space_features + (1 if self.time else 0) + 2 * len(self.time_features)

    @property
    def feature_names(self) -> list[str]:
        """Names of the feature columns, in order."""
        names: list[str] = []
        for n in self.space:
            if self.sphere and n == self.lat_name:
                continue
            if self.sphere and n == self.lon_name:
                names += ["sphere_x", "sphere_y", "sphere_z"]
            else:
                names.append(n)
        if self.time:
            names.append(self.time)
        for fname, _ in self.time_features:
            names += [f"sin_{fname}", f"cos_{fname}"]
        return names

    @property
    def feature_slices(self) -> dict[str, slice]:
        """Column slices of the feature groups ``space``, ``time`` and ``cyclical``."""
        s = self.n_space_features
        t = s + (1 if self.time else 0)
        return {"space": slice(0, s), "time": slice(s, t), "cyclical": slice(t, self.n_features)}

    def _affine(self, name: str, v: np.ndarray, lo: float, hi: float) -> np.ndarray:
        span = hi - lo
        if span <= 0:
            return v - lo
        return 2.0 * (v - lo) / span - 1.0

    def encode_space(self, space: dict[str, np.ndarray]) -> np.ndarray:
        """Space feature columns ``[N, n_space_features]`` from raw 1-D arrays."""
        self._check_fitted()
        cols = []
        for name in self.space:
            if name not in space:
                raise KeyError(f"space coordinate {name!r} is missing; the model needs {self.space}")
            v = np.asarray(space[name], dtype=np.float64)
            if name == self.lat_name:
                self.check_latitude(v, "target")
            if self.sphere and name == self.lat_name:
                continue
            if self.sphere and name == self.lon_name:
                lat_name = cast(str, self.lat_name)  # sphere=True needs a latitude (see fit)
                lat = np.deg2rad(np.asarray(space[lat_name], dtype=np.float64))
                lon = np.deg2rad(v)
                cols += [np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)]
                continue
            if name == self.lon_name:
                v = _wrap_longitude(v, cast(float, self.lon_center))  # fit sets it with lon_name
            cols.append(self._affine(name, v, self.space_min[name], self.space_max[name]))
        if not cols:
            n = len(next(iter(space.values()))) if space else 0
            return np.zeros((n, 0))
        return np.stack(cols, axis=-1)

    def time_float(self, time: np.ndarray) -> np.ndarray:
        """Raw time values to float ``time_units since time_origin`` (calendar checked)."""
        self._check_fitted()
        cal = time_calendar(time)
        if not calendars_compatible(cal, self.calendar):
            raise ValueError(
                f"time {self.time!r} is in calendar {cal!r} but the model was fitted on "
                f"calendar {self.calendar!r}; convert first, e.g. "
                f"ds.convert_calendar({self.calendar!r}, align_on='date')"
            )
        return time_to_float(time, self.time_units, self.time_origin)

    def encode_time(self, time: np.ndarray) -> np.ndarray:
        """Time feature columns ``[N, 1 + 2 * n_cyclical]`` from raw time values."""
        tf = self.time_float(time)
        # fitted with a time coordinate: fit sets time_min, time_max and calendar
        cols = [self._affine(cast(str, self.time), tf, cast(float, self.time_min), cast(float, self.time_max))]
        for fname, period in self.time_features:
            if period is None:
                phase = _cyclical_phase(time, fname, cast(str, self.calendar))
            else:
                phase = np.mod(tf / period, 1.0)
            cols += [np.sin(2 * math.pi * phase), np.cos(2 * math.pi * phase)]
        return np.stack(cols, axis=-1)

    def transform(self, space: dict[str, np.ndarray], time: np.ndarray | None = None) -> np.ndarray:
        """All feature columns ``[N, n_features]`` (float64) for raw coordinates."""
        cols = [self.encode_space(space)]
        if self.time is not None:
            if time is None:
                raise ValueError(
                    f"the model needs time coordinate {self.time!r}: give the target a "
                    f"{self.time!r} coordinate or pass time=..."
                )
            cols.append(self.encode_time(np.asarray(time).ravel()))
        return np.concatenate(cols, axis=-1)

    def decode_time(self, encoded: np.ndarray) -> np.ndarray:
        """Encoded time column back to float ``time_units since time_origin``."""
        # fitted with a time coordinate: fit sets time_min and time_max
        time_min, time_max = cast(float, self.time_min), cast(float, self.time_max)
        span = time_max - time_min
        if span <= 0:
            return np.asarray(encoded) + time_min
        return (np.asarray(encoded) + 1.0) * 0.5 * span + time_min

    # -- the training domain -----------------------------------------------------
    def check_latitude(self, values: np.ndarray, role: str = "target") -> None:
        """Refuse latitudes beyond ±90° (radians, or not a latitude at all).

        Parameters
        ----------
        values
            Raw values of the latitude coordinate (any shape; NaNs ignored).
        role
            What the values are, for the message (``"target"``...).

        Raises
        ------
        ValueError
            When a finite value lies outside ``[-90, 90]``.
        """
        if self.lat_name is None:
            return
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size and (v.min() < -90.0001 or v.max() > 90.0001):
            raise ValueError(
                f"latitude {self.lat_name!r} of the {role} has values outside [-90, 90] "
                f"({v.min():.6g} .. {v.max():.6g}); give it in degrees north"
            )

    def outside_fraction(
        self, space: dict[str, np.ndarray], time: np.ndarray | None = None
    ) -> dict[str, float]:
        """Fraction of the given coordinate values outside the training range, per name.

        Each coordinate is judged on its own values (any shape), so for a grid whose
        coordinates broadcast against each other it is also the fraction of the grid's
        points. Values within half a training grid spacing (and ``1e-6`` of the span)
        of the range count as inside, so the training grid or a finer grid over the
        same box is inside. Longitudes are compared after wrapping them to the
        training longitudes' side of the circle; on the sphere a longitude is never
        outside, a latitude is outside beyond the training latitudes' range. NaN
        values are ignored; a latitude beyond ±90° is refused (:meth:`check_latitude`).

        Parameters
        ----------
        space
            ``{name: values}`` for (some of) the space coordinates; others are skipped.
        time
            Raw time values (datetime64, cftime or numbers), if the encoder has a time.

        Returns
        -------
        dict
            ``{name: fraction in [0, 1]}`` for each coordinate given.

        Examples
        --------
        >>> import numpy as np
        >>> enc = CoordinateEncoder(space=("x",)).fit({"x": np.arange(0.0, 10.0)})
        >>> enc.outside_fraction({"x": np.array([0.0, 4.5, 9.2, 20.0])})
        {'x': 0.25}
        """
        self._check_fitted()
        out: dict[str, float] = {}
        for name in self.space:
            if name not in space:
                continue
            v = np.asarray(space[name], dtype=np.float64).ravel()
            if name == self.lat_name:
                self.check_latitude(v, "target")
            if self.sphere and name == self.lon_name:
                out[name] = 0.0
                continue
            if name == self.lon_name and self.lon_center is not None:
                v = _wrap_longitude(v, self.lon_center)
            out[name] = _fraction_outside(v, self.space_min[name], self.space_max[name],
                                          self.space_step.get(name, 0.0))
        if self.time is not None and time is not None:
            tf = self.time_float(np.asarray(time).ravel())
            # fitted with a time coordinate: fit sets time_min and time_max
            out[self.time] = _fraction_outside(tf, cast(float, self.time_min), cast(float, self.time_max),
                                               self.time_step)
        return out

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("CoordinateEncoder is not fitted; call .fit(...) first")

    # -- persistence ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly state (see :meth:`from_dict`)."""
        return {
            "space": list(self.space),
            "time": self.time,
            "sphere": self.sphere,
            "time_units": self.time_units,
            "time_origin": self.time_origin,
            "time_features": [list(x) for x in self.time_features],
            "lat_name": self.lat_name,
            "lon_name": self.lon_name,
            "space_min": dict(self.space_min),
            "space_max": dict(self.space_max),
            "lon_center": self.lon_center,
            "time_min": self.time_min,
            "time_max": self.time_max,
            "space_step": dict(self.space_step),
            "time_step": self.time_step,
            "calendar": self.calendar,
            "fitted": self.fitted,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> CoordinateEncoder:
        """Rebuild an encoder saved by :meth:`to_dict`."""
        state = dict(state)
        state["space"] = tuple(state["space"])
        state["time_features"] = tuple(tuple(x) for x in state.get("time_features", ()))
        return cls(**state)


def _typical_step(values: np.ndarray) -> float:
    """Median spacing of the distinct values (0 for a single value): the grid step."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size > 1_000_000:  # a tolerance only: a strided subset is enough
        v = v[:: v.size // 1_000_000 + 1]
    u = np.unique(v)
    if u.size < 2:
        return 0.0
    return float(np.median(np.diff(u)))


def _fraction_outside(v: np.ndarray, lo: float, hi: float, step: float) -> float:
    """Fraction of the finite ``v`` beyond ``[lo, hi]`` by more than the tolerance."""
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0
    tol = max(0.5 * step, 1e-6 * (hi - lo), 1e-9 * max(1.0, abs(lo), abs(hi)))
    return float(np.mean((v < lo - tol) | (v > hi + tol)))


def warn_outside(
    encoder: CoordinateEncoder,
    space: dict[str, np.ndarray],
    time: np.ndarray | None = None,
    where: str = "predict",
) -> dict[str, float]:
    """Warn (``UserWarning``) for each coordinate with values outside the training range.

    The message names the coordinate, the fraction of the target's values outside,
    the training range and the target's range (see
    :meth:`CoordinateEncoder.outside_fraction`).

    Parameters
    ----------
    encoder
        The model's fitted encoder.
    space
        The target's raw coordinate values, as for
        :meth:`CoordinateEncoder.outside_fraction`.
    time
        The target's raw coordinate values, as for
        :meth:`CoordinateEncoder.outside_fraction`.
    where
        The method's name, starting the message (``"predict"``...).

    Returns
    -------
    dict
        The fractions, ``{name: fraction}``.

    Examples
    --------
    >>> import warnings
    >>> enc = CoordinateEncoder(space=("x",)).fit({"x": np.arange(0.0, 10.0)})
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     _ = warn_outside(enc, {"x": np.array([5.0, 30.0])})
    >>> print(w[0].message)
    predict: 50 % of the target points lie outside the training range of 'x' (0 .. 9): 5 .. 30; pass check_domain=False to silence
    """  # noqa: E501
    import warnings

    fractions = encoder.outside_fraction(space, time)
    for name, frac in fractions.items():
        if frac <= 0:
            continue
        if name == encoder.time:
            cal = encoder.calendar or "none"
            train = float_to_time(np.array([encoder.time_min, encoder.time_max]),
                                  encoder.time_units, encoder.time_origin, cal)
            tf = encoder.time_float(np.asarray(time).ravel())
            tf = tf[np.isfinite(tf)]
            got = float_to_time(np.array([tf.min(), tf.max()]), encoder.time_units,
                                encoder.time_origin, cal)
            tr = f"{_fmt(train[0])} .. {_fmt(train[1])}"
            gr = f"{_fmt(got[0])} .. {_fmt(got[1])}"
        else:
            v = np.asarray(space[name], dtype=np.float64)
            v = v[np.isfinite(v)]
            if name == encoder.lon_name and encoder.lon_center is not None and not encoder.sphere:
                v = _wrap_longitude(v, encoder.lon_center)
            tr = f"{encoder.space_min[name]:.6g} .. {encoder.space_max[name]:.6g}"
            gr = f"{v.min():.6g} .. {v.max():.6g}"
        pct = 100.0 * frac
        ptxt = f"{pct:.0f}" if pct >= 1 else f"{pct:.2g}"
        warnings.warn(
            f"{where}: {ptxt} % of the target points lie outside the training range of "
            f"{name!r} ({tr}): {gr}; pass check_domain=False to silence",
            UserWarning, stacklevel=3,
        )
    return fractions


def _fmt(t: Any) -> str:
    """A time value for a message (dates without a zero time of day)."""
    if isinstance(t, np.datetime64):
        s = str(np.datetime_as_string(t, unit="s"))
        return s[:10] if s.endswith("T00:00:00") else s
    if isinstance(t, (float, np.floating)):
        return f"{float(t):.6g}"
    return str(t)

r"""Units of variables: one place where every estimator checks and converts them.

Units are CF-style strings (``attrs["units"]``: ``"K"``, ``"degC"``, ``"kg m-2 s-1"``,
``"mm day-1"``, ``"1"``, ``"%"``...) parsed by `pint <https://pint.readthedocs.io>`_
with the registry of :mod:`cf_xarray.units`, which understands UDUNITS-style powers
(``m-2``) and the usual CF spellings. Conversions are affine,
``value_to = scale * value_from + offset``:

* temperatures with an offset (``degC``, ``degF``) convert as absolute values
  (``0 degC = 273.15 K``), or, with ``delta=True``, as differences (a standard
  deviation, an error, a trend: ``1 degC`` of spread is ``1 K``);
* hydrological fluxes and amounts of liquid water also convert between mass and depth,
  with a water density of :data:`WATER_DENSITY` (1000 kg m-3): ``1 kg m-2 s-1`` is
  ``1 mm s-1`` (``86400 mm day-1``), ``1 kg m-2`` is ``1 mm``. This is the usual case of
  climate-model precipitation (``kg m-2 s-1``) against observations (``mm day-1``).

Identical strings always match, even when pint does not know them; other pairs must
both parse and have compatible dimensions, otherwise a :class:`ValueError` names the
variable, both units, and what to do.

Examples
--------
>>> convert(20.0, "degC", "K", variable="tas")
293.15
>>> convert(2.0, "degC", "K", variable="tas_std", delta=True)
2.0
>>> round(convert(1e-5, "kg m-2 s-1", "mm day-1", variable="pr"), 6)
0.864
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["WATER_DENSITY", "check_dataset_units", "check_units", "clip_to_physical_bounds", "conversion", "convert",
           "physical_bounds", "same_units", "units_of"]

#: Density of liquid water (kg m-3) used to convert mass fluxes and amounts
#: (``kg m-2 s-1``, ``kg m-2``) to depths (``mm s-1``, ``mm``) and back.
WATER_DENSITY: float = 1000.0

_CONTEXT = "xsciml_liquid_water"


@functools.lru_cache(maxsize=1)
def _registry():
    """The cf_xarray pint registry, with the liquid-water context added once."""
    import pint
    from cf_xarray.units import units as ureg

    rho = ureg.Quantity(WATER_DENSITY, "kg m-3")
    ctx = pint.Context(_CONTEXT)
    ctx.add_transformation("[mass] / [length] ** 2 / [time]", "[length] / [time]",
                           lambda reg, q: q / rho)
    ctx.add_transformation("[length] / [time]", "[mass] / [length] ** 2 / [time]",
                           lambda reg, q: q * rho)
    ctx.add_transformation("[mass] / [length] ** 2", "[length]", lambda reg, q: q / rho)
    ctx.add_transformation("[length]", "[mass] / [length] ** 2", lambda reg, q: q * rho)
    try:
        ureg.add_context(ctx)
    except (KeyError, ValueError):  # already added to the shared registry
        pass
    return ureg


def units_of(obj: Any) -> str | None:
    """The ``units`` attribute of a DataArray (or attrs mapping) as a string, else ``None``.

    Examples
    --------
    >>> import xarray as xr
    >>> units_of(xr.DataArray([1.0], attrs={"units": "K"})), units_of(xr.DataArray([1.0]))
    ('K', None)
    """
    attrs = obj if isinstance(obj, Mapping) else getattr(obj, "attrs", {})
    u = attrs.get("units")
    return None if u is None else str(u)


def _parse(units: str, variable: Any, role: str):
    import pint

    ureg = _registry()
    text = str(units).strip()
    try:
        return ureg.Unit(text) if text else ureg.dimensionless
    except (pint.errors.PintError, AttributeError, TypeError, ValueError, SyntaxError) as err:
        raise ValueError(
            f"the units {units!r} of {role} {variable!r} are not understood ({err}); use a "
            "CF/UDUNITS string such as 'K', 'degC', 'kg m-2 s-1', 'mm day-1' or '1'."
        ) from None


def _delta(ureg, unit):
    """The unit of a difference of two values in ``unit`` (``delta_degC`` for ``degC``)."""
    q = ureg.Quantity(1.0, unit)
    return (q - ureg.Quantity(0.0, unit)).units


@functools.lru_cache(maxsize=256)
def _conversion(src: str, dst: str, delta: bool, variable: Any, role: str) -> tuple[float, float]:
    import pint

    if src.strip() == dst.strip():
        return 1.0, 0.0
    ureg = _registry()
    us, ud = _parse(src, variable, role), _parse(dst, variable, role)
    try:
        offset = 0.0 if delta else float(np.asarray(ureg.Quantity(0.0, us).to(ud, _CONTEXT).magnitude))
        scale = float(np.asarray(ureg.Quantity(1.0, _delta(ureg, us)).to(_delta(ureg, ud), _CONTEXT).magnitude))
    except pint.errors.DimensionalityError:
        raise ValueError(
            f"{role} {variable!r} is in {src!r}, which cannot be converted to {dst!r} "
            f"({us.dimensionality} vs {ud.dimensionality}); check that it is the same quantity, "
            f"convert it to {dst!r} yourself and set attrs['units']."
        ) from None
    return scale, offset


def conversion(from_units: str, to_units: str, *, variable: Any = "values", delta: bool = False,
               role: str = "variable") -> tuple[float, float]:
    """``(scale, offset)`` with ``value_to = scale * value_from + offset``.

    Parameters
    ----------
    from_units
        CF unit string of the values.
    to_units
        CF unit string to convert to.
    variable
        Name used in error messages.
    delta
        Convert differences (standard deviations, errors): the offset is dropped.
    role
        What the values are, for error messages (``"variable"``, ``"input"``...).

    Returns
    -------
    tuple of float

    Raises
    ------
    ValueError
        Unknown units, or units of different dimensions.

    Examples
    --------
    >>> conversion("degC", "K", variable="tas")
    (1.0, 273.15)
    >>> conversion("mm s-1", "mm day-1", variable="pr")
    (86400.0, 0.0)
    """
    return _conversion(str(from_units), str(to_units), bool(delta), str(variable), role)


def same_units(a: str | None, b: str | None) -> bool:
    """Whether two unit strings are the same units (identical, or converting by 1 and 0).

    Unknown strings are the same only when identical; ``None`` matches only ``None``.

    Examples
    --------
    >>> same_units("kg m-2 s-1", "kg/m2/s"), same_units("K", "degC"), same_units("psu", "psu")
    (True, False, True)
    """
    if a is None or b is None:
        return a is b
    if str(a).strip() == str(b).strip():
        return True
    try:
        return conversion(a, b) == (1.0, 0.0)
    except ValueError:
        return False


def convert(values: Any, from_units: str, to_units: str, *, variable: Any = "values",
            delta: bool = False) -> Any:
    """Convert values between units (affine: works on numbers, numpy, dask, torch, xarray).

    Parameters
    ----------
    values
        A number, array, tensor or DataArray. A DataArray's ``units`` attribute is set
        to ``to_units`` (other attrs are kept); laziness (dask) is kept.
    from_units
        CF unit string of the values.
    to_units
        CF unit string to convert to.
    variable
        Name used in error messages.
    delta
        The values are differences (standard deviation, error, difference of two
        fields): temperature offsets do not apply.

    Returns
    -------
    The converted values, of the same type (the input itself when nothing changes).

    Raises
    ------
    ValueError
        Unknown or incompatible units (the message names the variable and both units).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> convert(np.array([0.0, 100.0]), "degC", "K", variable="tas")
    array([273.15, 373.15])
    >>> da = xr.DataArray([1.0, 2.0], dims="time", name="pr", attrs={"units": "kg m-2 s-1"})
    >>> out = convert(da, "kg m-2 s-1", "mm day-1", variable="pr")
    >>> out.values.tolist(), out.attrs["units"]
    ([86400.0, 172800.0], 'mm day-1')
    """
    scale, offset = conversion(from_units, to_units, variable=variable, delta=delta)
    if scale == 1.0 and offset == 0.0:
        return values
    out = values * scale
    if offset:
        out = out + offset
    if hasattr(out, "attrs") and hasattr(values, "attrs"):
        out.attrs = {**values.attrs, "units": str(to_units)}
    return out


_T = TypeVar("_T")


def check_units(data: _T, units: str | None, *, variable: Any, role: str = "input",
                model: str = "the model") -> _T:
    """Bring data entering a fitted model to the units the model was trained in.

    Parameters
    ----------
    data
        A DataArray (its ``attrs["units"]`` is read).
    units
        The model's units for this variable (``None``: trained without units; the data
        are returned unchanged).
    variable
        The variable's name, for messages.
    role
        What the data are (``"input"``, ``"initial state"``, ``"coarse field"``...).
    model
        Who expects the units, for messages.

    Returns
    -------
    DataArray
        ``data`` converted to ``units`` (with ``attrs["units"] = units``), or unchanged
        when already in them or when the model has no units.

    Warns
    -----
    UserWarning
        The data have no ``units`` attribute but the model was trained with units: they
        are assumed to be in the model's units.

    Raises
    ------
    ValueError
        Units that cannot be converted to the model's.

    Examples
    --------
    >>> import xarray as xr
    >>> da = xr.DataArray([0.0, 10.0], dims="x", name="tas", attrs={"units": "degC"})
    >>> check_units(da, "K", variable="tas").values.tolist()
    [273.15, 283.15]
    """
    if units is None:
        return data
    have = units_of(data)
    if have is None:
        warnings.warn(
            f"{role} {variable!r} has no 'units' attribute; assuming it is in {units!r}, the "
            f"units {model} was trained in. Set attrs['units'] to have it checked and converted.",
            UserWarning, stacklevel=3)
        return data
    try:
        scale, offset = conversion(have, units, variable=variable, role=role)
    except ValueError as err:
        raise ValueError(f"{model} was trained with {variable!r} in {units!r}: {err}") from None
    if scale == 1.0 and offset == 0.0:
        return data
    return convert(data, have, units, variable=variable)


def check_dataset_units(ds: Any, var_attrs: Mapping[str, Mapping[str, Any]],
                        variables: Sequence[str], *, role: str = "input",
                        model: str = "the model") -> Any:
    """:func:`check_units` for each of ``variables`` of a Dataset.

    Parameters
    ----------
    ds
        The Dataset entering the model.
    var_attrs
        The model's training attrs per variable (their ``"units"`` are used).
    variables
        Variables to check; those absent from ``ds`` are skipped (the caller reports them).
    role
        For messages, as in :func:`check_units`.
    model
        For messages, as in :func:`check_units`.

    Returns
    -------
    Dataset
        ``ds`` with the variables in the model's units (``ds`` itself when unchanged).

    Examples
    --------
    >>> import xarray as xr
    >>> ds = xr.Dataset({"tas": ("x", [0.0], {"units": "degC"})})
    >>> check_dataset_units(ds, {"tas": {"units": "K"}}, ["tas"])["tas"].values.tolist()
    [273.15]
    """
    new = {}
    for v in variables:
        if v not in ds.data_vars:
            continue
        orig = ds[v]
        da = check_units(orig, units_of(var_attrs.get(v, {})), variable=v, role=role, model=model)
        if da is not orig:
            new[v] = da
    return ds.assign(new) if new else ds


#: Words of CF standard names of quantities that cannot be negative (precipitation fluxes
#: and amounts, mass contents and concentrations, thicknesses, speeds); a standard name
#: with the word ``fraction`` is a fraction, 0 to 1 in the unit ``"1"`` (100 in ``"%"``).
_NONNEGATIVE_WORDS = ("precipitation", "amount", "content", "concentration", "thickness", "speed")
#: Words of standard names of changes and departures, which may be negative whatever the quantity
_SIGNED_WORDS = ("tendency", "change", "anomaly", "difference", "correction", "divergence", "convergence",
                 "derivative", "residual", "increment", "heat", "energy", "enthalpy")


def _range_numbers(value: Any, key: str, variable: Any) -> list[float]:
    """The numbers of a ``valid_*`` attribute: a number, a sequence, or its text (a model
    saved with an older version kept ``valid_range`` as ``"[0. 100.]"``)."""
    given = value.strip().strip("[]()").replace(",", " ").split() if isinstance(value, str) else value
    try:
        nums = [float(x) for x in np.ravel(np.asarray(given, dtype=object))]
        if nums:
            return nums
    except (TypeError, ValueError):
        pass
    raise ValueError(f"attrs[{key!r}] of {variable!r} is {value!r}, not numbers: correct or delete "
                         "it (it gives the range the values are clipped to)")


def physical_bounds(attrs: Mapping[str, Any], *,
                    variable: Any = "values") -> tuple[float | None, float | None, str] | None:
    """The range a variable's values cannot leave, from its CF attributes.

    ``valid_range`` / ``valid_min`` / ``valid_max`` where given; otherwise from the
    ``standard_name``: a fraction (``sea_ice_area_fraction``, ``cloud_area_fraction``,
    ``mole_fraction_of_ozone_in_air``...) lies in 0 to 1 in its ``units`` (0 to 100 for
    ``"%"``; without dimensionless units only the lower bound is known), and a precipitation
    flux or amount, a mass content or concentration, a thickness or a speed is at least 0
    (not a tendency, change, anomaly or difference of one).

    Parameters
    ----------
    attrs
        The variable's attributes.
    variable
        Name used in error messages.

    Returns
    -------
    ``(low, high, why)`` with ``None`` for an open side (also for a NaN bound), or ``None``
    when nothing is known.

    Raises
    ------
    ValueError
        A ``valid_*`` attribute that is not numbers, or a low bound above the high one.

    Examples
    --------
    >>> physical_bounds({"standard_name": "sea_ice_area_fraction", "units": "%"})
    (0.0, 100.0, 'sea_ice_area_fraction is a fraction')
    >>> physical_bounds({"standard_name": "precipitation_flux", "units": "kg m-2 s-1"})
    (0.0, None, 'precipitation_flux cannot be negative')
    >>> physical_bounds({"standard_name": "air_temperature", "units": "K"}) is None
    True
    """
    lo = hi = None
    if attrs.get("valid_range") is not None:
        nums = _range_numbers(attrs["valid_range"], "valid_range", variable)
        if len(nums) != 2:
            raise ValueError(f"attrs['valid_range'] of {variable!r} is {attrs['valid_range']!r}: it needs two "
                             "numbers (low, high)")
        lo, hi = nums
    if attrs.get("valid_min") is not None:  # CF: valid_min / valid_max, where given, win
        lo = _range_numbers(attrs["valid_min"], "valid_min", variable)[0]
    if attrs.get("valid_max") is not None:
        hi = _range_numbers(attrs["valid_max"], "valid_max", variable)[-1]
    lo = lo if lo is not None and np.isfinite(lo) else None
    hi = hi if hi is not None and np.isfinite(hi) else None
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"the valid range of {variable!r} is empty: low {lo:g} is above high {hi:g}; correct "
                         "attrs['valid_range'] / ['valid_min'] / ['valid_max']")
    if lo is not None or hi is not None:
        return lo, hi, "its valid range"
    name = str(attrs.get("standard_name") or "")
    words = name.split("_")
    if any(w in words for w in _SIGNED_WORDS):
        return None
    if "fraction" in words:
        units = attrs.get("units")
        high = None
        if units is not None:
            try:
                scale, offset = conversion("1", str(units), variable=name)
                high = scale + offset
            except ValueError:  # not a dimensionless unit: the upper bound is not known
                high = None
        return 0.0, high, f"{name} is a fraction"
    if any(w in words for w in _NONNEGATIVE_WORDS):
        return 0.0, None, f"{name} cannot be negative"
    return None


def clip_to_physical_bounds(da: xr.DataArray, attrs: Mapping[str, Any] | None = None) -> xr.DataArray:
    """Clip values to the physical range of their variable (:func:`physical_bounds`).

    Parameters
    ----------
    da
        The values (NaN stays NaN, a dask-backed array stays lazy).
    attrs
        Attributes the bounds are read from: default ``da.attrs``; an estimator passes
        those of the data it was fitted on, whose ``valid_range`` its outputs do not
        inherit.

    Returns
    -------
    ``da`` itself when no bounds are known; otherwise the clipped values with their
    attributes and ``attrs["xsciml_bounds"]`` saying what was done.

    Examples
    --------
    >>> import xarray as xr
    >>> da = xr.DataArray([-3.0, 50.0, 104.0], dims="x",
    ...                   attrs={"standard_name": "sea_ice_area_fraction", "units": "%"})
    >>> clip_to_physical_bounds(da).values
    array([  0.,  50., 100.])
    """
    import xarray as xr

    if not isinstance(da, xr.DataArray):
        raise TypeError(f"clip_to_physical_bounds takes a DataArray, got {type(da).__name__}")
    bounds = physical_bounds(da.attrs if attrs is None else attrs, variable=da.name)
    if bounds is None:
        return da
    out = da.clip(min=bounds[0], max=bounds[1], keep_attrs=True)
    return out.assign_attrs(xsciml_bounds=f"clipped to {bounds_text(bounds, da.attrs.get('units'))}")


def bounds_text(bounds: tuple[float | None, float | None, str], units: Any = None) -> str:
    """``"0 to 100 % (sea_ice_area_fraction is a fraction)"``: bounds of :func:`physical_bounds` in words."""
    lo, hi, why = bounds
    side = (f"{lo:g} to {hi:g}" if lo is not None and hi is not None
            else f"at least {lo:g}" if lo is not None else f"at most {hi:g}")
    shown = units if units and str(units).strip() not in ("1", "") else None  # "0 to 1", not "0 to 1 1"
    return f"{side}{f' {shown}' if shown else ''} ({why})"

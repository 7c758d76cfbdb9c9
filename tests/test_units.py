"""Units of variables: the pint-based conversions and what each estimator does with them."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xsciml.units import check_units, conversion, convert, same_units

from .conftest import real_data


# ------------------------------------------------------------------ the units module
def test_temperature_offsets_convert_absolute_values_and_deltas() -> None:
    np.testing.assert_allclose(convert(np.array([0.0, 100.0]), "degC", "K", variable="tas"),
                               [273.15, 373.15])
    np.testing.assert_allclose(convert(np.array([32.0, 212.0]), "degF", "degC", variable="tas"),
                               [0.0, 100.0], atol=1e-12)
    # a standard deviation or a difference converts without the offset
    assert convert(2.0, "degC", "K", variable="tas_std", delta=True) == 2.0
    np.testing.assert_allclose(convert(9.0, "degF", "K", variable="tas_std", delta=True), 5.0)
    assert conversion("K", "degC", variable="tas") == (1.0, -273.15)


def test_water_flux_and_amount_convert_with_the_density_of_water() -> None:
    assert conversion("kg m-2 s-1", "mm s-1", variable="pr") == (1.0, 0.0)
    np.testing.assert_allclose(convert(np.array([1e-5]), "kg m-2 s-1", "mm day-1", variable="pr"),
                               [0.864])
    np.testing.assert_allclose(convert(0.864, "mm day-1", "kg m-2 s-1", variable="pr"), 1e-5)
    assert conversion("kg m-2", "mm", variable="prsn") == (1.0, 0.0)
    assert same_units("kg m-2 s-1", "kg/m2/s") and not same_units("K", "degC")


def test_convert_keeps_xarray_attrs_and_dask_laziness() -> None:
    da = xr.DataArray(np.array([1.0, 2.0]), dims="time", name="pr",
                      attrs={"units": "mm s-1", "long_name": "precipitation"}).chunk(1)
    out = convert(da, "mm s-1", "mm day-1", variable="pr")
    assert out.chunks is not None
    assert out.attrs == {"units": "mm day-1", "long_name": "precipitation"}
    np.testing.assert_allclose(out.values, [86400.0, 172800.0])
    assert convert(da, "mm s-1", "mm/s", variable="pr") is da  # nothing to do


def test_incompatible_and_unknown_units_are_refused_with_the_variable_named() -> None:
    with pytest.raises(ValueError, match=r"variable 'tas' is in 'm', which cannot be converted "
                                         r"to 'K' \(\[length\] vs \[temperature\]\)"):
        conversion("m", "K", variable="tas")
    with pytest.raises(ValueError, match="the units 'apples' of variable 'u' are "
                                         "not understood.*CF/UDUNITS"):
        conversion("apples", "m s-1", variable="u")
    assert conversion("psu", "psu", variable="sss") == (1.0, 0.0)  # same string: no parsing


def test_check_units_converts_warns_and_refuses() -> None:
    da = xr.DataArray([0.0, 10.0], dims="x", name="tas", attrs={"units": "degC"})
    np.testing.assert_allclose(check_units(da, "K", variable="tas").values, [273.15, 283.15])
    assert check_units(da, None, variable="tas") is da  # a model without units
    with pytest.warns(UserWarning, match=r"input 'tas' has no 'units' attribute; assuming it "
                                         r"is in 'K', the units the model was trained in"):
        out = check_units(da.drop_attrs(), "K", variable="tas")
    np.testing.assert_array_equal(out.values, [0.0, 10.0])
    with pytest.raises(ValueError, match=r"the model was trained with 'tas' in 'K': input 'tas' "
                                         r"is in 'kg m-2 s-1', which cannot be converted"):
        check_units(da.assign_attrs(units="kg m-2 s-1"), "K", variable="tas")


@pytest.mark.realdata
def test_sdba_files_units_convert_into_each_other() -> None:
    units = {}
    for name in ("CanESM2_1950-2100.nc", "nrcan_1950-2013.nc", "ahccd_1950-2013.nc"):
        with xr.open_dataset(real_data(f"sdba/{name}"), decode_times=False) as ds:
            units[name] = {v: ds[v].attrs["units"] for v in ("pr", "tasmax")}
            pr = ds.pr.isel(time=slice(0, 50)).load()
    can, nrc, ahc = units.values()
    assert (can["pr"], nrc["pr"], ahc["pr"]) == ("kg m-2 s-1", "mm s-1", "mm day-1")
    assert conversion(can["pr"], nrc["pr"], variable="pr") == (1.0, 0.0)
    assert conversion(can["pr"], ahc["pr"], variable="pr") == (86400.0, 0.0)
    assert conversion(can["tasmax"], ahc["tasmax"], variable="tasmax") == (1.0, -273.15)
    out = convert(pr, ahc["pr"], can["pr"], variable="pr")
    np.testing.assert_allclose(out.values, pr.values / 86400.0, rtol=1e-6)  # float32 data
    assert out.attrs["units"] == "kg m-2 s-1"

"""Units of variables: the pint-based conversions and what each estimator does with them."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xsciml.units import (
    check_units,
    clip_to_physical_bounds,
    conversion,
    convert,
    physical_bounds,
    same_units,
)

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


# ------------------------------------------------------------------ estimators
def _kelvin(ds: xr.Dataset, var: str = "u") -> xr.Dataset:
    """``var`` as temperatures around 280 K (the synthetic data are dimensionless)."""
    return ds.assign({var: (280.0 + 5.0 * ds[var]).assign_attrs(ds[var].attrs, units="K")})


def _celsius(ds: xr.Dataset, var: str = "u") -> xr.Dataset:
    return ds.assign({var: (ds[var] - 273.15).assign_attrs(ds[var].attrs, units="degC")})


def _with_units(ds: xr.Dataset, units: str | None, var: str = "u") -> xr.Dataset:
    da = ds[var].copy()
    da.attrs = {k: a for k, a in da.attrs.items() if k != "units"}
    if units is not None:
        da.attrs["units"] = units
    return ds.assign({var: da})


def _assert_refused_and_warned(call, ds: xr.Dataset, role: str, var: str = "u") -> None:
    with pytest.raises(ValueError, match=rf"{role} '{var}' is in 'kg m-2 s-1', which cannot be "
                                         r"converted to 'K'"):
        call(_with_units(ds, "kg m-2 s-1", var))
    with pytest.warns(UserWarning, match=rf"{role} '{var}' has no 'units' attribute; assuming it "
                                         r"is in 'K'"):
        call(_with_units(ds, None, var))


@pytest.fixture(scope="module")
def heat_k() -> xr.Dataset:
    import xsciml

    return _kelvin(xsciml.datasets.heat(2, 8, seed=0, n_frames=4, alpha=4.0, tau=3.0))


def test_dino_forecast_converts_the_initial_state(heat_k):
    from xsciml.models.dino import fit_dynamics

    model = fit_dynamics(heat_k, "u", steps=5, seed=0, latent_dim=4, width=8, depth=1,
                         dynamics_width=8, dynamics_depth=1, n_points=32, progress=False)
    init = heat_k.isel(time=0)

    def fc(ds):
        return model.forecast(ds, lead=[0.0, 0.5], encode_steps=5, device="cpu")

    want = fc(init)
    got = fc(_celsius(init))
    assert got.attrs["units"] == "K"
    np.testing.assert_allclose(got.values, want.values, atol=1e-3)
    _assert_refused_and_warned(fc, init, "initial state")


def test_smooth_forecast_converts_the_initial_state():
    from xsciml.models.smooth import fit_smooth_dynamics

    from .test_smooth import travelling_waves

    ds = _kelvin(travelling_waves(2, n=8, n_frames=4))
    model = fit_smooth_dynamics(ds, "u", modes=1, waves=1, steps=3, encoder_width=4,
                                dynamics_width=8, dynamics_depth=1, device="cpu", progress=False)
    init = ds.isel(time=0)

    def fc(d):
        return model.forecast(d, lead=[0.0, 0.25], device="cpu")

    np.testing.assert_allclose(fc(_celsius(init)).values, fc(init).values, atol=1e-3)
    _assert_refused_and_warned(fc, init, "initial state")


@pytest.mark.parametrize("kind", ["pca", "mlp"])
def test_autoencoder_encode_converts_the_input(kind):
    import xsciml
    from xsciml.models.amortized import fit_autoencoder

    ds = _kelvin(xsciml.datasets.gaussian_random_field((8, 8), n=12, seed=0))
    extra = {} if kind == "pca" else {"steps": 5, "network_kwargs": {"hidden": (8,)}}
    model = fit_autoencoder(ds, "u", sample_dim="sample", network=kind, latent_dim=3, device="cpu",
                            progress=False, **extra)

    def enc(d):
        return model.encode(d, device="cpu")

    np.testing.assert_allclose(enc(_celsius(ds)).values, enc(ds).values, atol=1e-6)
    _assert_refused_and_warned(enc, ds, "input")


def test_latent_interpolator_encode_converts_the_input():
    from .test_latent import manifold

    ds = _kelvin(manifold()).isel(time=slice(0, 6))
    li = ds.sciml.fit_latent("u", sample_dim="time", latent_dim=2,
                             network_kwargs={"width": 8, "depth": 1}, steps=5, progress=False, seed=0)

    def enc(d):
        return li.encode(d, steps=5, device="cpu", progress=False)

    got, want = enc(_celsius(ds)), enc(ds)
    np.testing.assert_allclose(got["z"].values if isinstance(got, xr.Dataset) else got.values,
                               want["z"].values if isinstance(want, xr.Dataset) else want.values,
                               atol=1e-4)
    _assert_refused_and_warned(enc, ds, "input")


def test_neural_field_score_and_log_prob_convert_the_observations():
    from .test_field import smooth_ds

    ds = _kelvin(smooth_ds())
    field = ds.sciml.fit_field("u", space=("y", "x"), time="time", network="mlp",
                               network_kwargs={"width": 8, "depth": 1}, steps=5, progress=False, seed=0)
    want, got = field.score(ds, device="cpu"), field.score(_celsius(ds), device="cpu")
    assert float(got["rmse"]) == pytest.approx(float(want["rmse"]), rel=1e-4)
    np.testing.assert_allclose(field.log_prob(_celsius(ds), device="cpu").values,
                               field.log_prob(ds, device="cpu").values, rtol=1e-4)
    _assert_refused_and_warned(lambda d: field.score(d, device="cpu"), ds, "input")


def test_lazy_encode_and_forecast_convert_once_and_do_not_warn(heat_k):
    import warnings

    from xsciml.models.dino import fit_dynamics

    from .test_latent import manifold

    ds = _kelvin(manifold()).isel(time=slice(0, 6))
    li = ds.sciml.fit_latent("u", sample_dim="time", latent_dim=2, variational=False,
                             network_kwargs={"width": 8, "depth": 1}, steps=5, progress=False, seed=0)
    model = fit_dynamics(heat_k, "u", steps=5, seed=0, latent_dim=4, width=8, depth=1,
                         dynamics_width=8, dynamics_depth=1, n_points=32, progress=False)
    init = heat_k.isel(time=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the per-chunk tasks see data already in the model's units
        z = li.encode(_celsius(ds).chunk({"time": 3}), steps=5, device="cpu").compute()
        fc = model.forecast(_celsius(init).chunk({"trajectory": 1}), lead=[0.0, 0.5],
                            encode_steps=5, device="cpu").compute()
    np.testing.assert_allclose(z.values, li.encode(ds, steps=5, device="cpu").values, atol=1e-4)
    np.testing.assert_allclose(fc.values, model.forecast(init, lead=[0.0, 0.5], encode_steps=5,
                                                         device="cpu").values, atol=1e-3)


# ------------------------------------------------------------------ physical bounds
@pytest.mark.parametrize("attrs, bounds", [
    ({"standard_name": "sea_ice_area_fraction", "units": "%"}, (0.0, 100.0)),
    ({"standard_name": "cloud_area_fraction", "units": "1"}, (0.0, 1.0)),
    ({"standard_name": "mole_fraction_of_ozone_in_air", "units": "1"}, (0.0, 1.0)),
    ({"standard_name": "mole_fraction_of_ozone_in_air", "units": "1e-9"}, (0.0, None)),  # unread units
    ({"standard_name": "sea_ice_area_fraction"}, (0.0, None)),  # no units: the top is unknown
    ({"standard_name": "land_area_fraction", "units": "m"}, (0.0, None)),  # not dimensionless
    ({"standard_name": "precipitation_flux", "units": "kg m-2 s-1"}, (0.0, None)),
    ({"standard_name": "atmosphere_mass_content_of_water_vapor", "units": "kg m-2"}, (0.0, None)),
    ({"standard_name": "wind_speed", "units": "m s-1"}, (0.0, None)),
    ({"valid_range": np.array([-5.0, 5.0]), "standard_name": "wind_speed"}, (-5.0, 5.0)),
    ({"valid_min": 2}, (2.0, None)),
    ({"valid_max": 7.5}, (None, 7.5)),
    ({"valid_range": "[-5.  5.]"}, (-5.0, 5.0)),  # as a model saved by an older version kept it
    ({"valid_range": [0.0, 10.0], "valid_max": 4.0}, (0.0, 4.0)),  # valid_max, where given, wins
    ({"valid_min": np.float32(np.nan), "valid_max": 3}, (None, 3.0)),  # a NaN bound is open
])
def test_physical_bounds_from_cf_attributes(attrs, bounds) -> None:
    got = physical_bounds(attrs)
    assert got is not None
    np.testing.assert_allclose([np.nan if b is None else b for b in got[:2]],
                               [np.nan if b is None else b for b in bounds])
    assert (got[0] is None) == (bounds[0] is None) and (got[1] is None) == (bounds[1] is None)


@pytest.mark.parametrize("attrs", [
    {"standard_name": "air_temperature", "units": "K"},
    {"standard_name": "tendency_of_atmosphere_mass_content_of_water_vapor", "units": "kg m-2 s-1"},
    {"standard_name": "change_over_time_in_sea_ice_area_fraction", "units": "1"},
    {"units": "%"},
    {"standard_name": "integral_wrt_depth_of_sea_water_temperature_expressed_as_heat_content", "units": "J m-2"},
    {"valid_min": np.nan},
    {},
])
def test_quantities_of_either_sign_have_no_bounds(attrs) -> None:
    assert physical_bounds(attrs) is None


def test_clipping_keeps_nan_laziness_and_says_so() -> None:
    da = xr.DataArray([-3.0, np.nan, 40.0, 120.0], dims="x", name="siconc",
                      attrs={"standard_name": "sea_ice_area_fraction", "units": "%"}).chunk(2)
    out = clip_to_physical_bounds(da)
    assert out.chunks is not None  # still lazy
    np.testing.assert_array_equal(out.values, [0.0, np.nan, 40.0, 100.0])
    assert out.attrs["xsciml_bounds"] == "clipped to 0 to 100 % (sea_ice_area_fraction is a fraction)"
    assert out.attrs["units"] == "%" and out.name == "siconc"
    plain = xr.DataArray([-3.0], dims="x", attrs={"units": "K"})
    assert clip_to_physical_bounds(plain) is plain


@pytest.mark.parametrize("attrs, match", [
    ({"valid_min": 5.0, "valid_max": 2.0}, r"the valid range of 'sic' is empty: low 5 is above high 2"),
    ({"valid_range": [1.0, 2.0, 3.0]}, r"attrs\['valid_range'\] of 'sic' is \[1.0, 2.0, 3.0\]: it needs two"),
    ({"valid_min": "low"}, r"attrs\['valid_min'\] of 'sic' is 'low', not numbers: correct or delete it"),
    ({"valid_max": []}, r"attrs\['valid_max'\] of 'sic' is \[\], not numbers"),
])
def test_unusable_valid_ranges_are_refused_naming_the_variable(attrs, match) -> None:
    with pytest.raises(ValueError, match=match):
        physical_bounds(attrs, variable="sic")


def test_clipping_takes_a_dataarray() -> None:
    with pytest.raises(TypeError, match="clip_to_physical_bounds takes a DataArray, got ndarray"):
        clip_to_physical_bounds(np.zeros(3))


def test_latent_pca_and_prior_outputs_of_a_fraction_stay_in_its_range():
    """Reconstructions, decoded fields and prior draws of a bounded variable are clipped to
    its range (what the unbounded model gives, clipped), and say so."""
    import copy

    import xsciml
    from xsciml.downscale.diffusion import fit_diffusion

    grf = xsciml.datasets.gaussian_random_field((16, 16), n=12, seed=0)
    frac = (grf.u * 0.4 + 0.1).clip(0.0, 1.0)  # many zeros (open water), a few ones
    frac.attrs = {"standard_name": "sea_ice_area_fraction", "units": "1"}
    ds = frac.to_dataset(name="sic")
    pca = ds.sciml.fit_autoencoder("sic", sample_dim="sample", network="pca", latent_dim=2)
    free = copy.deepcopy(pca)
    free.grid.var_attrs["sic"] = {"units": "1"}
    got, raw = pca.reconstruct(ds), free.reconstruct(ds)
    assert float(raw.min()) < 0.0  # two modes undershoot the open water
    xr.testing.assert_equal(got.drop_attrs(), raw.clip(0.0, 1.0).drop_attrs())
    assert got.attrs["xsciml_bounds"] == "clipped to 0 to 1 (sea_ice_area_fraction is a fraction)"
    li = ds.sciml.fit_latent("sic", sample_dim="sample", latent_dim=2, steps=30, progress=False, seed=0)
    codes = li.encode(ds.isel(sample=[0, 1]), steps=5)
    dec = li.decode(codes, ds.isel(sample=0))
    assert 0.0 <= float(dec.min()) and float(dec.max()) <= 1.0 and "xsciml_bounds" in dec.attrs
    prior = fit_diffusion(ds["sic"], sample_dim="sample", base_channels=4, levels=2, emb_dim=8, steps=2,
                          progress=False)
    draws = prior.sample(3, steps=2, progress=False)  # an untrained prior: draws far outside 0..1, clipped
    assert float(draws.min()) == 0.0 and float(draws.max()) == 1.0 and "xsciml_bounds" in draws.attrs

"""Amortized latent models: PCA against an independent SVD, MAP encoding of partial
snapshots, neural autoencoders (MLP, conv, VAE), dask laziness, save/load, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xsciml
from xsciml.models.amortized import AutoEncoder, fit_autoencoder

NY, NX = 10, 12


def lowrank_ds(S=60, noise=0.05, seed=0, amps=(3.0, 2.0, 1.0), lat0=60.0, land=True):
    """(time, lat, lon) field: mean + 3 known modes with decreasing amplitude + noise;
    descending latitude and a land corner."""
    rng = np.random.default_rng(seed)
    lat = np.linspace(lat0, 30.0, NY)
    lon = np.linspace(-20.0, 10.0, NX)
    Y, X = np.meshgrid(np.linspace(0, 1, NY), np.linspace(0, 1, NX), indexing="ij")
    modes = np.stack([np.sin(np.pi * X), np.cos(np.pi * Y) * np.sin(2 * np.pi * X),
                      np.sin(3 * np.pi * Y)])
    a = rng.normal(size=(S, 3)) * np.asarray(amps)
    f = 280 + 5 * Y + np.einsum("sk,kyx->syx", a, modes) + noise * rng.normal(size=(S, NY, NX))
    if land:
        f[:, :2, :3] = np.nan
    time = np.datetime64("2020-01-01", "ns") + np.arange(S) * np.timedelta64(1, "D")
    return xr.Dataset(
        {"t": (("time", "lat", "lon"), f, {"units": "K", "long_name": "temperature"})},
        coords={"time": time, "lat": ("lat", lat, {"units": "degrees_north"}),
                "lon": ("lon", lon, {"units": "degrees_east"})},
    )


def numpy_eofs(ds, k, coslat=True):
    """The reference: numpy SVD of the same weighted, masked, centred matrix."""
    S = ds.sizes["time"]
    Y = ds.t.transpose("time", "lat", "lon").values.reshape(S, -1)
    valid = np.isfinite(Y).all(axis=0)
    w = np.ones(NY * NX)
    if coslat:
        w = np.broadcast_to(np.cos(np.deg2rad(ds.lat.values))[:, None], (NY, NX)).ravel()
    w = w[valid] / w[valid].mean()
    X = (Y[:, valid] - Y[:, valid].mean(axis=0)) * np.sqrt(w)
    U, s, Vt = np.linalg.svd(X, full_matrices=False)
    return valid, U[:, :k] * s[:k], s**2 / (S - 1), Vt[:k]


def rms(a):
    return float(np.sqrt(np.nanmean(np.square(np.asarray(a)))))


@pytest.fixture(scope="module")
def ds():
    return lowrank_ds()


@pytest.fixture(scope="module")
def pca(ds):
    return fit_autoencoder(ds, "t", sample_dim="time", latent_dim=4, weights="coslat")


# ------------------------------------------------------------------------------ PCA
def test_pca_matches_numpy_svd(ds, pca):
    # a gap in one snapshot: that point leaves the basis (missing in some snapshot)
    gappy = ds.copy(deep=True)
    gappy["t"][5, 4, 4] = np.nan
    model = fit_autoencoder(gappy, "t", sample_dim="time", latent_dim=4, weights="coslat")
    valid, pcs, lam, Vt = numpy_eofs(gappy, 4)
    assert not valid[4 * NX + 4] and valid.sum() == NY * NX - 6 - 1
    comps = model.components
    assert comps.dims == ("mode", "lat", "lon")
    flat = comps.values.reshape(4, -1)
    assert np.isnan(flat[:, ~valid]).all()
    for k in range(4):
        sign = np.sign(flat[k, valid] @ Vt[k])
        np.testing.assert_allclose(sign * flat[k, valid], Vt[k], atol=1e-5)
        np.testing.assert_allclose(sign * model.principal_components.values[:, k], pcs[:, k],
                                   rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(model.explained_variance.values, lam[:4], rtol=1e-6)
    np.testing.assert_allclose(model.explained_variance_ratio.values, lam[:4] / lam.sum(), rtol=1e-6)
    # coordinates of the outputs are the data's
    assert (model.principal_components.time == gappy.time).all()
    np.testing.assert_array_equal(comps.lat, gappy.lat)


def test_pca_unweighted_components_are_orthonormal(ds):
    model = fit_autoencoder(ds, "t", latent_dim=3)
    valid, _, lam, Vt = numpy_eofs(ds, 3, coslat=False)
    V = model.components.values.reshape(3, -1)[:, valid]
    np.testing.assert_allclose(V @ V.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(np.abs(np.sum(V * Vt, axis=1)), 1.0, atol=1e-10)
    np.testing.assert_allclose(model.explained_variance.values, lam[:3], rtol=1e-6)


def test_dask_randomized_svd_agrees_with_exact(ds, pca):
    lazy = ds.chunk({"time": 15})
    model = fit_autoencoder(lazy, "t", latent_dim=4, weights="coslat")
    assert model.info["svd"] == "svd_compressed" and pca.info["svd"] == "svd"
    a = pca.components.values.reshape(4, -1)
    b = model.components.values.reshape(4, -1)
    ok = np.isfinite(a[0])
    np.testing.assert_array_equal(ok, np.isfinite(b[0]))
    for k in range(3):  # the 3 signal modes; mode 4 is noise with a flat spectrum
        assert abs(a[k, ok] @ b[k, ok]) > 1 - 1e-6
    np.testing.assert_allclose(model.explained_variance.values[:3], pca.explained_variance.values[:3],
                               rtol=1e-4)
    np.testing.assert_allclose(model.total_variance, pca.total_variance, rtol=1e-10)
    # the randomized SVD can be asked for on in-memory data too
    rand = fit_autoencoder(ds, "t", latent_dim=4, weights="coslat", svd="randomized")
    np.testing.assert_allclose(rand.explained_variance.values[:3], pca.explained_variance.values[:3],
                               rtol=1e-4)


def test_full_snapshot_encode_is_the_projection(ds, pca):
    z = pca.encode(ds)
    assert z.dims == ("time", "latent") and (z.time == ds.time).all()
    np.testing.assert_allclose(z.values, pca.principal_components.values, atol=1e-8)
    # and on new snapshots: x V^T in the weighted space, by hand
    new = lowrank_ds(S=7, seed=3)
    valid, *_ = numpy_eofs(ds, 1)
    w = np.broadcast_to(np.cos(np.deg2rad(ds.lat.values))[:, None], (NY, NX)).ravel()[valid]
    w = w / w.mean()
    mean = ds.t.mean("time").values.ravel()[valid]
    x = (new.t.values.reshape(7, -1)[:, valid] - mean) * np.sqrt(w)
    V = pca.components.values.reshape(4, -1)[:, valid]
    np.testing.assert_allclose(pca.encode(new).values, x @ V.T, atol=1e-8)
    out = pca.encode(new, return_std=True)
    assert float(abs(out.z_std).max()) == 0.0


def test_map_encode_is_the_gaussian_conditional(ds, pca):
    """The batched solve equals the dense Gaussian conditional E[z | x_O] and its std."""
    rng = np.random.default_rng(4)
    part = ds.t.isel(time=slice(0, 6)).where(rng.random((6, NY, NX)) < 0.3)
    got = pca.encode(part, return_std=True)
    valid, *_ = numpy_eofs(ds, 1)
    V = pca.components.values.reshape(4, -1)[:, valid]
    lam, s2 = pca.explained_variance.values, pca.noise_var
    w = np.broadcast_to(np.cos(np.deg2rad(ds.lat.values))[:, None], (NY, NX)).ravel()[valid]
    w = w / w.mean()
    x = (part.values.reshape(6, -1)[:, valid] - pca.mean.values.ravel()[valid]) * np.sqrt(w)
    # covariance of the model x = V^T z + r, r outside the modes with variance σ²
    Cxx = V.T @ np.diag(lam - s2) @ V + s2 * np.eye(V.shape[1])
    for s in range(6):
        o = np.isfinite(x[s])
        K = np.diag(lam) @ V[:, o] @ np.linalg.inv(Cxx[np.ix_(o, o)])
        np.testing.assert_allclose(got.z.values[s], K @ x[s, o], rtol=1e-7, atol=1e-9)
        cov = np.diag(lam) - K @ V[:, o].T @ np.diag(lam)
        np.testing.assert_allclose(got.z_std.values[s], np.sqrt(np.diag(cov)), rtol=1e-6)
    # a noise variance above some eigenvalues takes the general (non-Cholesky) solve
    big = 2 * lam[2]
    z_big = pca.encode(part, noise_var=big).values
    Cxx = V.T @ np.diag(lam - big) @ V + big * np.eye(V.shape[1])
    o = np.isfinite(x[0])
    ref = np.diag(lam) @ V[:, o] @ np.linalg.solve(Cxx[np.ix_(o, o)], x[0, o])
    np.testing.assert_allclose(z_big[0], ref, rtol=1e-7, atol=1e-9)


def test_map_gap_filling_beats_least_squares_under_noise():
    rng = np.random.default_rng(0)
    train = lowrank_ds(S=200, noise=0.0, seed=1, land=False)
    train["t"] = train.t + rng.normal(size=train.t.shape)  # heavy noise, std 1
    model = fit_autoencoder(train, "t", latent_dim=8)
    assert 0.8 < model.noise_var < 1.0  # discarded variance per direction ~ noise variance
    truth = lowrank_ds(S=40, noise=0.0, seed=2, land=False).t
    keep = rng.random(truth.shape) < 0.3
    observed = (truth + rng.normal(size=truth.shape)).where(keep)
    err_map = rms(model.reconstruct(observed) - truth)
    # plain least squares of the 8 coefficients on the observed points, per snapshot
    V = model.components.values.reshape(8, -1)
    mean = model.mean.values.ravel()
    Y = observed.values.reshape(40, -1)
    rec = np.empty_like(Y)
    for s in range(40):
        o = np.isfinite(Y[s])
        c = np.linalg.lstsq(V[:, o].T, Y[s, o] - mean[o], rcond=None)[0]
        rec[s] = mean + c @ V
    err_ls = rms(rec.reshape(truth.shape) - truth.values)
    assert err_map < 0.8 * err_ls, (err_map, err_ls)
    assert err_map < 0.2 * float(truth.std())


def test_reconstruction_error_decreases_with_latent_dim():
    train, test = lowrank_ds(S=80, noise=0.3, seed=5), lowrank_ds(S=20, noise=0.3, seed=6)
    errs = [rms(fit_autoencoder(train, "t", latent_dim=k).reconstruct(test) - test.t)
            for k in (1, 2, 3, 6)]
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False)), errs
    assert errs[2] < 0.5 * errs[1]  # the third mode is signal, later ones noise


def test_zero_weight_points_are_rebuilt_by_regression():
    """With coslat weights a pole row has weight 0: the EOFs are 0 there, but decode still
    rebuilds it (regression patterns); with S-1 modes reconstruction is exact."""
    data = lowrank_ds(S=8, lat0=90.0, land=False)
    model = fit_autoencoder(data, "t", latent_dim=7, weights="coslat")
    assert float(abs(model.components.isel(lat=0)).max()) < 1e-12
    np.testing.assert_allclose(model.reconstruct(data).values, data.t.values, atol=1e-8)


def test_multivariable_pca_dataset_outputs():
    d = lowrank_ds(S=12)
    d["s"] = 35 + 0.01 * (d.t - 280) ** 2
    model = fit_autoencoder(d, ["t", "s"], latent_dim=11)
    assert isinstance(model.components, xr.Dataset) and set(model.components) == {"t", "s"}
    rec = model.reconstruct(d)
    assert isinstance(rec, xr.Dataset)
    np.testing.assert_allclose(rec.s.values, d.s.values, atol=1e-8)  # S - 1 modes: exact
    assert rec.t.attrs["units"] == "K"


def test_lazy_encode_decode(ds, pca):
    lazy = ds.chunk({"time": 20})
    z = pca.encode(lazy)
    assert z.chunks is not None
    np.testing.assert_allclose(z.compute().values, pca.encode(ds).values, atol=1e-10)
    rec = pca.decode(z)
    assert rec.chunks is not None and rec.dims == ("time", "lat", "lon")
    np.testing.assert_allclose(rec.compute().values, pca.reconstruct(ds).values, equal_nan=True)
    with pytest.raises(ValueError, match="one chunk"):
        pca.encode(ds.chunk({"lat": 5}))


def test_decode_array_and_other_dims(pca):
    out = pca.decode(np.zeros(4))  # z = 0 is the mean field
    assert out.dims == ("lat", "lon")
    np.testing.assert_allclose(out.values, pca.mean.values, equal_nan=True)
    z = xr.DataArray(np.zeros((2, 3, 4)), dims=("member", "time", "latent"))
    assert pca.decode(z).dims == ("member", "time", "lat", "lon")
    assert np.isnan(pca.decode(z).values[..., 0, 0]).all()  # land stays NaN


# ------------------------------------------------------------------------------ autoencoders
@pytest.fixture(scope="module")
def waves():
    """Fields a sin(x + y) + b cos(x - y/2): a 2-D manifold."""
    rng = np.random.default_rng(0)
    S = 192
    x = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    y = np.linspace(0, np.pi, 10)
    Yg, Xg = np.meshgrid(y, x, indexing="ij")
    a, b = rng.normal(size=(2, S))
    f = a[:, None, None] * np.sin(Xg + Yg) + b[:, None, None] * np.cos(Xg - 0.5 * Yg)
    return xr.Dataset({"u": (("sample", "y", "x"), f)},
                      coords={"sample": np.arange(S), "y": y, "x": x})


@pytest.fixture(scope="module")
def mlp_ae(waves):
    return fit_autoencoder(waves, "u", sample_dim="sample", network="mlp", latent_dim=2, steps=300,
                           lr=3e-3, network_kwargs={"hidden": (64,)}, progress=False)


def test_mlp_autoencoder_learns_two_dim_manifold(waves, mlp_ae):
    assert isinstance(mlp_ae, AutoEncoder)
    new = waves.isel(sample=slice(0, 40)).copy()
    rng = np.random.default_rng(9)  # unseen amplitudes
    a, b = rng.normal(size=(2, 40, 1, 1))
    X = np.broadcast_to(new.x.values, (10, 12))
    Y = np.broadcast_to(new.y.values[:, None], (10, 12))
    new["u"] = (("sample", "y", "x"), a * np.sin(X + Y) + b * np.cos(X - 0.5 * Y))
    err = rms(mlp_ae.reconstruct(new) - new.u) / float(new.u.std())
    assert err < 0.08, err
    losses = mlp_ae.history.to_dataframe()["mse"]
    assert losses.iloc[-20:].mean() < 0.05 * losses.iloc[:5].mean()
    # σ is the RMS residual in physical units
    assert 0 < float(mlp_ae.noise_std.sel(variable="u")) < 0.1 * float(waves.u.std())


def test_vae_kl_finite_and_encoder_std_positive(waves):
    vae = fit_autoencoder(waves, "u", sample_dim="sample", network="mlp", latent_dim=2,
                          stochastic=True, steps=150, lr=3e-3,
                          network_kwargs={"hidden": (32,)}, progress=False)
    kl = np.asarray(vae.history.logs["kl"])
    assert np.isfinite(kl).all() and (kl >= 0).all() and kl[-1] > 0
    z = vae.encode(waves)
    assert isinstance(z, xr.Dataset) and set(z.data_vars) == {"z", "z_std"}
    assert z.z.dims == ("sample", "latent")
    assert float(z.z_std.min()) > 0
    rec = vae.decode(z)  # decodes the posterior mean
    np.testing.assert_allclose(rec.values, vae.decode(z.z).values)
    assert rms(rec - waves.u) < float(waves.u.std())


def test_conv_autoencoder_masked_grid(ds):
    ae = fit_autoencoder(ds, "t", network="conv", latent_dim=3, steps=120, lr=3e-3, batch_size=16,
                         network_kwargs={"widths": (8, 8)}, progress=False)
    rec = ae.reconstruct(ds)
    assert rec.dims == ("time", "lat", "lon") and rec.attrs["units"] == "K"
    assert np.isnan(rec.values[:, :2, :3]).all() and np.isfinite(rec.values[:, 2:, 3:]).all()
    anomaly = ds.t - ds.t.mean("time")
    assert rms(rec - ds.t) < 0.6 * rms(anomaly)
    # partial snapshots encode too (mask channel), with the same code size
    part = ds.t.where(np.random.default_rng(0).random(ds.t.shape) < 0.5)
    assert ae.encode(part).shape == (60, 3)


def test_input_dropout_helps_partial_snapshots(waves):
    kw = dict(sample_dim="sample", network="mlp", latent_dim=2, steps=400, lr=5e-3,
              network_kwargs={"hidden": (64,)}, progress=False)
    plain = fit_autoencoder(waves, "u", **kw)
    robust = fit_autoencoder(waves, "u", input_dropout=0.9, **kw)
    part = waves.u.where(np.random.default_rng(1).random(waves.u.shape) < 0.3)
    e_plain = rms(plain.reconstruct(part) - waves.u)
    e_robust = rms(robust.reconstruct(part) - waves.u)
    assert e_robust < 0.6 * e_plain, (e_robust, e_plain)


# ------------------------------------------------------------------------------ save / load
def test_save_load_keeps_cftime_samples_and_custom_weights(tmp_path):
    d = lowrank_ds(S=10)
    d = d.assign_coords(time=xr.date_range("2001-02-25", periods=10, calendar="noleap",
                                           use_cftime=True))
    weights = xr.DataArray(np.linspace(1, 2, NX), dims="lon", coords={"lon": d.lon})
    model = fit_autoencoder(d, "t", latent_dim=3, weights=weights)
    assert model.weights == "custom"
    back = xsciml.load(model.save(tmp_path / "m.xsciml"))
    xr.testing.assert_identical(back.principal_components, model.principal_components)
    assert back.principal_components.time.values[4].calendar == "noleap"
    xr.testing.assert_identical(back.decode(np.ones(3)), model.decode(np.ones(3)))


# ------------------------------------------------------------------------------ bad input
def test_latent_dim_larger_than_snapshots(ds):
    with pytest.raises(ValueError, match=r"latent_dim=6 .* 5 snapshots"):
        fit_autoencoder(ds.isel(time=slice(0, 5)), "t", latent_dim=6)
    with pytest.raises(ValueError, match="S - 1 after centering"):
        fit_autoencoder(ds.isel(time=slice(0, 5)), "t", latent_dim=5)
    assert fit_autoencoder(ds.isel(time=slice(0, 5)), "t", latent_dim=5, center=False).latent_dim == 5


def test_encode_on_a_different_grid(ds, pca):
    with pytest.raises(ValueError, match="different grid.*'lon' has 11 points"):
        pca.encode(ds.isel(lon=slice(0, -1)))
    with pytest.raises(ValueError, match="different grid.*'lat' differs"):
        pca.encode(ds.isel(lat=slice(None, None, -1)))  # ascending instead of descending
    with pytest.raises(ValueError, match="different grid"):
        pca.encode(ds.t.rename(lat="y"))
    with pytest.raises(ValueError, match="latent"):
        pca.decode(np.zeros((3, 5)))


def test_all_masked_snapshot(ds, pca):
    bad = ds.copy(deep=True)
    bad["t"][3] = np.nan
    with pytest.raises(ValueError, match="all-masked"):
        fit_autoencoder(bad, "t", latent_dim=2)
    with pytest.raises(ValueError, match="all-masked"):
        fit_autoencoder(bad, "t", network="mlp", latent_dim=2, steps=1, progress=False)
    with pytest.raises(ValueError, match="all-masked snapshot cannot be encoded"):
        pca.encode(bad)


@pytest.mark.parametrize("kwargs,err,match", [
    ({"network": "svd"}, ValueError, "network must be one of"),
    ({"latent_dim": 0}, ValueError, "latent_dim must be a positive integer"),
    ({"stochastic": True}, ValueError, "stochastic=True needs a neural encoder"),
    ({"sample_dim": "member"}, KeyError, "sample_dim 'member'"),
    ({"weights": "area"}, ValueError, "weights must be None, 'coslat'"),
    ({"weights": xr.DataArray(np.ones(3), dims="z")}, ValueError, "only the space dims"),
    ({"network": "mlp", "noise_var": 1.0}, ValueError, "noise_var applies to network='pca'"),
])
def test_bad_arguments(ds, kwargs, err, match):
    with pytest.raises(err, match=match):
        fit_autoencoder(ds, "t", **{"latent_dim": 2, **kwargs})


def test_bad_data():
    d = lowrank_ds(S=6).rename(lat="yy")
    d = d.assign_coords(yy=("yy", np.arange(NY), {}))
    with pytest.raises(ValueError, match="needs a latitude coordinate"):
        fit_autoencoder(d, "t", latent_dim=2, weights="coslat")
    with pytest.raises(ValueError, match="network='conv' needs exactly 2 space dims"):
        fit_autoencoder(d.isel(yy=0), "t", network="conv", latent_dim=2)
    with pytest.raises(KeyError, match="not found"):
        fit_autoencoder(d, "sst")
    gappy = lowrank_ds(S=6, land=False)
    gappy["t"] = gappy.t.where(np.eye(NY, NX, dtype=bool)[None] ^ (np.arange(6) % 2 == 0)[:, None, None])
    with pytest.raises(ValueError, match="no grid point has a value in every snapshot"):
        fit_autoencoder(gappy, "t", latent_dim=2)

"""Conditional super-resolution: coarsening operators, guided projected sampling, labels,
laziness, seeds, debiasing and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import xsciml
from xsciml.downscale.diffusion import fit_diffusion
from xsciml.downscale.pipeline import (
    GuidedDenoiser,
    bicubic,
    coarsen,
    downscale,
    project,
    training_check,
    upsample,
)

F = 4


def _fine(n: int = 40, seed: int = 0) -> xr.DataArray:
    """Smooth random fields on a 16 x 16 grid with descending latitude."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(16) / 16, np.arange(16) / 16, indexing="ij")
    modes = [np.sin(2 * np.pi * (a * yy + b * xx) + c) for a, b, c in [(1, 0, 0), (0, 1, 1), (1, 1, 2), (2, 1, 0)]]
    amps = rng.normal(size=(n, len(modes)))
    vals = 280.0 + np.einsum("nm,myx->nyx", amps, np.stack(modes))
    time = np.datetime64("2019-03-01T00", "ns") + np.arange(n) * np.timedelta64(1, "h")
    return xr.DataArray(vals, dims=("time", "lat", "lon"),
                        coords={"time": time, "lat": 58.0 - 0.25 * np.arange(16), "lon": -10.0 + 0.25 * np.arange(16)},
                        name="t2m", attrs={"units": "K"})


def _block_mean(da: xr.DataArray) -> xr.DataArray:
    return da.coarsen(lat=F, lon=F).mean().assign_attrs(da.attrs)


@pytest.fixture(scope="module")
def prior():
    return fit_diffusion(_fine(), base_channels=8, levels=2, emb_dim=16, steps=60, lr=3e-3,
                         ema=0.9, progress=False, device="cpu")


@pytest.fixture(scope="module")
def coarse():
    return _block_mean(_fine(n=3, seed=1))


KW = dict(samples=2, steps=4, progress=False, device="cpu", check=False)


# ----------------------------------------------------------------- tensor operators
def test_coarsen_upsample_project_known_answers():
    x = torch.arange(16.0).reshape(4, 4)
    torch.testing.assert_close(coarsen(x, 2), torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    torch.testing.assert_close(coarsen(x, 2, "subsample"), torch.tensor([[0.0, 2.0], [8.0, 10.0]]))
    y = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    torch.testing.assert_close(coarsen(upsample(y, 2), 2), y)  # C'U = I
    rng = torch.Generator().manual_seed(0)
    xb = torch.randn(3, 8, 12, generator=rng, dtype=torch.float64)
    yb = torch.randn(3, 2, 3, generator=rng, dtype=torch.float64)
    for how in ("mean", "subsample"):
        p = project(xb, yb, 4, how)
        torch.testing.assert_close(coarsen(p, 4, how), yb, rtol=0, atol=1e-12)
        torch.testing.assert_close(project(p, yb, 4, how), p)  # idempotent
    # block mean: the correction is constant on each block (the orthogonal projection)
    delta = project(xb, yb, 4) - xb
    torch.testing.assert_close(delta, upsample(coarsen(delta, 4), 4))
    # subsample: only the sampled pixels move
    moved = project(xb, yb, 4, "subsample") != xb
    assert not moved[..., 1::4, :].any() and not moved[..., :, 1::4].any()


def test_operator_bad_input():
    with pytest.raises(ValueError, match="multiple of factor"):
        coarsen(torch.zeros(6, 8), 4)
    with pytest.raises(ValueError, match="positive integer"):
        coarsen(torch.zeros(4, 4), 0)
    with pytest.raises(ValueError, match="one of"):
        coarsen(torch.zeros(4, 4), 2, how="max")


def test_guidance_gradient_with_identity_denoiser_is_the_projection():
    class Stub:
        net = staticmethod(lambda x, s: x)  # D(x) = x: Jacobian I
        mask = None

    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    y = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    sigma = torch.tensor(1.0, dtype=torch.float64)
    # w = 1: the guidance step alone already lands on C'x = y, projection is a no-op
    full = GuidedDenoiser(Stub(), y, 4, "mean", guidance=1.0)
    none = GuidedDenoiser(Stub(), y, 4, "mean", guidance=0.0)
    torch.testing.assert_close(full(x, sigma), none(x, sigma))
    torch.testing.assert_close(none(x, sigma), project(x, y, 4))
    # the same with a mask (blocks partly or wholly outside it): C' is the mean over the mask
    sea = np.ones((8, 8), dtype=bool)
    sea[:4, :4] = False  # a block without sea: no constraint
    sea[4:, 4:6] = False  # half a block
    Stub.mask = sea
    full = GuidedDenoiser(Stub(), y, 4, "mean", guidance=1.0)
    none = GuidedDenoiser(Stub(), y, 4, "mean", guidance=0.0)
    torch.testing.assert_close(full(x, sigma), none(x, sigma))
    m = torch.from_numpy(sea)
    out = project(x, y, 4, mask=m)
    torch.testing.assert_close(none(x, sigma), out)
    cm = coarsen(out, 4, mask=m)
    torch.testing.assert_close(cm[..., 1:, :], y[..., 1:, :], rtol=0, atol=1e-12)
    torch.testing.assert_close(cm[..., 0, 1], y[..., 0, 1], rtol=0, atol=1e-12)
    assert torch.isnan(cm[..., 0, 0]).all() and torch.equal(out[..., ~m], x[..., ~m])


# ----------------------------------------------------------------- downscale
def test_downscale_labels_and_exact_constraint(prior, coarse):
    hi = downscale(coarse, prior, factor=F, guidance=0.5, **KW)
    assert hi.dims == ("sample", "time", "lat", "lon") and hi.shape == (2, 3, 16, 16)
    np.testing.assert_array_equal(hi["lat"].values, prior.grid_coords["lat"].values)
    np.testing.assert_array_equal(hi["time"].values, coarse["time"].values)
    assert hi.name == "t2m" and hi.attrs["units"] == "K" and hi.attrs["xsciml_downscale_factor"] == F
    back = hi.coarsen(lat=F, lon=F).mean()
    err = np.abs(back.values - coarse.values[None])
    assert err.max() < 1e-9 * np.abs(coarse.values).max()
    assert float(hi.std("sample").mean()) > 0  # samples differ
    assert np.isfinite(hi.values).all()


def test_downscale_subsample_constraint(prior):
    fine = _fine(n=2, seed=3)
    sub = fine.isel(lat=slice(0, None, F), lon=slice(0, None, F))
    hi = downscale(sub, prior, factor=F, coarsen="subsample", **KW)
    np.testing.assert_allclose(hi.isel(lat=slice(0, None, F), lon=slice(0, None, F)).values,
                               np.broadcast_to(sub.values, (2, *sub.shape)), rtol=0, atol=1e-9)
    # block-centre coords do not match the subsampling grid
    with pytest.raises(ValueError, match="first pixel of each block"):
        downscale(_block_mean(fine), prior, factor=F, coarsen="subsample", **KW)


def test_downscale_seeded_and_batch_independent(prior, coarse):
    a = downscale(coarse, prior, seed=5, batch_size=6, **KW)
    b = downscale(coarse, prior, seed=5, batch_size=1, **KW)
    c = downscale(coarse, prior, seed=6, **KW)
    np.testing.assert_allclose(a.values, b.values, rtol=0, atol=1e-3)
    assert np.abs(a.values - c.values).max() > 1e-2
    # sample k of snapshot i depends on (seed, i, k) only, i the position in the input
    first = downscale(coarse.isel(time=[0]), prior, seed=5, **KW)
    np.testing.assert_allclose(first.values[:, 0], a.values[:, 0], rtol=0, atol=1e-3)


def test_downscale_lazy_equals_eager(prior, coarse):
    eager = downscale(coarse, prior, seed=1, **KW)
    lazy = downscale(coarse.chunk(time=2), prior, seed=1, **KW)
    assert lazy.chunks is not None and lazy.chunks[1] == (2, 1)
    np.testing.assert_allclose(lazy.compute().values, eager.values, rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match="several dask chunks"):
        downscale(coarse.chunk(lat=2), prior, **KW)


def test_downscale_on_distributed_cluster(prior, coarse, dask_client):
    lazy = downscale(coarse.chunk(time=1), prior, seed=2, **KW)
    eager = downscale(coarse, prior, seed=2, **KW)
    np.testing.assert_allclose(dask_client.compute(lazy).result().values, eager.values, rtol=0, atol=1e-3)


def test_downscale_with_loaded_prior(prior, coarse, tmp_path):
    back = xsciml.load(prior.save(tmp_path / "p.xsciml"))
    np.testing.assert_allclose(downscale(coarse, back, seed=3, **KW).values,
                               downscale(coarse, prior, seed=3, **KW).values, rtol=0, atol=1e-6)


def test_downscale_applies_debias_first(prior, coarse):
    class Shift:  # a stand-in Debias: + 0.5 K
        def transform(self, da):
            return da + 0.5

    hi = downscale(coarse, prior, debias=Shift(), **KW)
    np.testing.assert_allclose(hi.coarsen(lat=F, lon=F).mean().values,
                               np.broadcast_to(coarse.values + 0.5, (2, *coarse.shape)), atol=1e-9)
    assert hi.attrs["xsciml_debiased"] == "yes"


def test_downscale_with_fitted_ot_debias(prior):
    ot = pytest.importorskip("xsciml.downscale.ot")
    ref = _block_mean(_fine(n=40, seed=4))
    model = (0.8 * (ref - ref.mean("time")) + ref.mean("time") + 1.5).assign_attrs(units="K")
    deb = ot.fit_debias(model, ref, variable="t2m", method="gaussian", progress=False)
    new = model.isel(time=slice(0, 2))
    hi = downscale(new, prior, debias=deb, **KW)
    target = deb.transform(new)
    np.testing.assert_allclose(hi.coarsen(lat=F, lon=F).mean().values,
                               np.broadcast_to(target.values, (2, *target.shape)), atol=1e-6)
    # the debiased coarse field is close to the reference one, not to the biased one
    assert abs(float(hi.mean() - ref.isel(time=slice(0, 2)).mean())) < 0.5


def test_downscale_bad_input(prior, coarse):
    with pytest.raises(ValueError, match="fine grid has 16"):
        downscale(coarse, prior, factor=2, **KW)
    with pytest.raises(ValueError, match="not a multiple of factor"):
        downscale(coarse.isel(lat=slice(0, 3), lon=slice(0, 3)), prior, factor=5, **KW)
    with pytest.raises(ValueError, match="prior was trained on 't2m'"):
        downscale(coarse.rename("tas"), prior, **KW)
    with pytest.raises(ValueError, match="coarse field 't2m' is in 'm', which cannot be converted to 'K'"):
        downscale(coarse.assign_attrs(units="m"), prior, **KW)
    with pytest.raises(KeyError, match="no dimension"):
        downscale(coarse.rename(lat="y"), prior, **KW)
    shifted = coarse.assign_coords(lat=coarse["lat"] + 1.0)
    with pytest.raises(ValueError, match="does not match the prior's fine grid"):
        downscale(shifted, prior, **KW)
    flipped = coarse.isel(lat=slice(None, None, -1))
    with pytest.raises(ValueError, match="does not match"):
        downscale(flipped, prior, **KW)
    with pytest.raises(KeyError, match="no variable 't2m'"):
        downscale(coarse.to_dataset(name="tas"), prior, **KW)
    with pytest.raises(TypeError, match="DiffusionPrior"):
        downscale(coarse, object(), **KW)
    with pytest.raises(ValueError, match="guidance"):
        downscale(coarse, prior, guidance=-1.0, samples=2, steps=2)
    with pytest.raises(ValueError, match="samples"):
        downscale(coarse, prior, samples=0)


def test_bounded_projection_is_the_nearest_field_in_range_with_the_block_means():
    from scipy.optimize import minimize

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(2, 8, 8)))
    y = torch.from_numpy(rng.uniform(0.0, 0.5, size=(2, 2, 2)))
    y[0, 0, 0] = 0.0  # a dry block: every pixel at the bound
    y[1, 1, 1] = float("nan")  # no constraint: that block is only clipped
    out = project(x, y, 4, bounds=(0.0, 0.6))
    assert float(out.min()) == 0.0 and float(out.max()) <= 0.6
    ok = torch.isfinite(y)
    torch.testing.assert_close(coarsen(out, 4)[ok], y[ok], rtol=0, atol=1e-12)
    assert torch.equal(out[1, 4:, 4:], x[1, 4:, 4:].clamp(0.0, 0.6))
    torch.testing.assert_close(out[0, :4, :4], torch.zeros(4, 4, dtype=out.dtype), rtol=0, atol=1e-12)
    # one block against a general solver of min |z - x|^2 s.t. mean(z) = y, 0 <= z <= 0.6
    b, m = x[1, :4, :4].numpy().ravel(), float(y[1, 0, 0])
    ref = minimize(lambda z: ((z - b) ** 2).sum(), np.full(16, m), jac=lambda z: 2 * (z - b),
                   bounds=[(0.0, 0.6)] * 16, constraints=[{"type": "eq", "fun": lambda z: z.mean() - m}],
                   method="SLSQP", options={"ftol": 1e-14})
    np.testing.assert_allclose(out[1, :4, :4].numpy().ravel(), ref.x, atol=1e-6)
    # a coarse value outside the range is clipped first; subsampling clips the other pixels
    torch.testing.assert_close(project(x, y - 1.0, 4, bounds=(0.0, None))[0], torch.zeros(8, 8, dtype=x.dtype),
                               rtol=0, atol=1e-12)
    sub = project(x, y, 4, how="subsample", bounds=(0.0, None))
    assert float(sub.min()) == 0.0 and torch.equal(sub[..., ::4, ::4][ok], y[ok])
    with pytest.raises(ValueError, match=r"bounds=\(1, 0\) is an empty range: low is above high"):
        project(x, y, 4, bounds=(1.0, 0.0))


def test_downscale_keeps_a_bounded_variable_in_range_and_its_coarse_values(prior, coarse, monkeypatch):
    free = downscale(coarse, prior, factor=F, seed=3, **KW)
    low = float(coarse.min()) - 0.2
    assert float(free.min()) < low  # the unbounded samples do go below the bound
    monkeypatch.setitem(prior.grid.var_attrs["t2m"], "valid_min", low)
    held = downscale(coarse, prior, factor=F, seed=3, **KW)
    assert float(held.min()) >= low
    np.testing.assert_allclose(held.coarsen(lat=F, lon=F).mean().values,
                               np.broadcast_to(coarse.values, held.coarsen(lat=F, lon=F).mean().shape),
                               rtol=0, atol=1e-9)
    want = project(torch.from_numpy(free.values), torch.from_numpy(coarse.values), F, bounds=(low, None))
    np.testing.assert_allclose(held.values, want.numpy(), rtol=0, atol=1e-9)
    assert held.attrs["xsciml_bounds"].startswith(f"projected onto at least {low:g} K (its valid range)")
    assert "xsciml_bounds" not in free.attrs


def test_fit_diffusion_refuses_an_unusable_valid_range():
    bad = _fine(n=4).assign_attrs(valid_range=[300.0, 250.0])
    with pytest.raises(ValueError, match=r"the valid range of 't2m' is empty: low 300 is above high 250"):
        fit_diffusion(bad, base_channels=4, levels=2, emb_dim=8, steps=1, progress=False)


# ----------------------------------------------------------------- the check against bicubic
def test_bicubic_known_answers():
    y = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    assert torch.allclose(bicubic(torch.full((2, 3, 3), 7.0), 4), torch.full((2, 12, 12), 7.0))
    up = bicubic(y, 4, how="subsample")
    assert up.shape == (8, 8) and torch.equal(up[::4, ::4], y)  # through the sampled pixels
    ramp = torch.arange(4.0).repeat(4, 1)  # linear along x: reproduced away from the edges
    assert torch.allclose(bicubic(ramp, 2, how="subsample")[0, 2:5], torch.tensor([1.0, 1.5, 2.0]))
    with pytest.raises(ValueError, match="how/coarsen"):
        bicubic(y, 2, how="nearest")


def test_downscale_reports_the_check_against_bicubic(prior, coarse):
    kw = {**KW, "check": True}
    hi = downscale(coarse, prior, **kw)
    direct = training_check(prior, factor=F, samples=2, steps=4, seed=0)
    assert hi.attrs["xsciml_check"] == direct["text"]
    assert hi.attrs["xsciml_check_rmse"] == [direct["rmse"]["downscale"], direct["rmse"]["bicubic"]]
    assert "4 training frames" in direct["text"] and "debias + bicubic" in direct["text"]
    # the bicubic row is bicubic of the coarsened check frames
    fine = torch.from_numpy(prior.check_fields)
    want = float(((bicubic(coarsen(fine, F), F) - fine) ** 2).mean().sqrt())
    assert direct["rmse"]["bicubic"] == pytest.approx(want)
    assert all(np.isfinite(v) for v in hi.attrs["xsciml_check_melru"])


def test_the_check_runs_once_per_prior_and_settings(prior, coarse, monkeypatch):
    import xsciml.downscale.pipeline as pipeline

    calls = []
    real = pipeline.training_check
    monkeypatch.setattr(pipeline, "training_check", lambda *a, **k: calls.append(k) or real(*a, **k))
    kw = {**KW, "check": True, "seed": 11}
    first = downscale(coarse, prior, **kw)
    again = downscale(coarse.isel(time=[0]), prior, **kw)  # another chunk, the same settings
    assert len(calls) == 1 and again.attrs["xsciml_check"] == first.attrs["xsciml_check"]
    downscale(coarse, prior, **{**kw, "seed": 12})
    assert len(calls) == 2


def test_downscale_warns_with_the_numbers_when_it_loses(coarse):
    untrained = fit_diffusion(_fine(), base_channels=4, levels=2, emb_dim=8, steps=1, ema=0.0,
                              progress=False, device="cpu")
    res = training_check(untrained, factor=F, samples=2, steps=4, guidance=0.0)
    assert res["loses"]  # one step of training does not beat bicubic
    with pytest.warns(UserWarning, match=r"RMSE [0-9.]+ K vs debias \+ bicubic [0-9.]+ K, MELRu [0-9.]+ vs [0-9.]+: "
                      r"downscaling LOSES on RMSE"):
        downscale(coarse, untrained, **{**KW, "check": True, "guidance": 0.0})


def test_check_needs_check_fields(prior):
    import copy

    bare = copy.copy(prior)
    bare.check_fields = None
    with pytest.raises(ValueError, match="keeps no check frames"):
        training_check(bare, factor=F)
    hi = downscale(_block_mean(_fine(n=1)), bare, **{**KW, "check": True})
    assert "xsciml_check" not in hi.attrs


# ----------------------------------------------------------------- a fixed mask (the land of an ocean variable)
def test_a_variable_with_a_fixed_mask_is_modelled_and_downscaled_where_it_exists(tmp_path):
    sea = np.ones((16, 16), dtype=bool)
    sea[:6, :5] = False  # land: one coarse block wholly, others in part
    sst = _fine(n=24).where(sea).rename("sst")
    prior = fit_diffusion(sst, base_channels=8, levels=2, emb_dim=16, steps=20, progress=False, device="cpu")
    np.testing.assert_array_equal(prior.mask, sea)
    assert prior.info["masked_pixels"] == int((~sea).sum()) and np.isnan(prior.check_fields[:, ~sea]).all()
    prior.save(tmp_path / "sst.xsciml")
    back = xsciml.load(tmp_path / "sst.xsciml")
    np.testing.assert_array_equal(back.mask, sea)
    draws = back.sample(2, steps=3, progress=False)
    assert np.isnan(draws.values[:, ~sea]).all() and np.isfinite(draws.values[:, sea]).all()
    # the coarse field of such data: each block's mean over its sea pixels (NaN for all land)
    truth = _fine(n=2, seed=1).where(sea).rename("sst")
    coarse = _block_mean(truth)
    assert np.isnan(coarse.values[:, 0, 0]).all() and np.isfinite(coarse.values[:, 1:, :]).all()
    hi = downscale(coarse, back, **{**KW, "check": True})
    assert np.isnan(hi.values[..., ~sea]).all() and np.isfinite(hi.values[..., sea]).all()
    back_mean = hi.coarsen(lat=F, lon=F).mean()  # skips NaN: the mean over the sea
    np.testing.assert_allclose(back_mean.values, np.broadcast_to(coarse.values, back_mean.shape),
                               rtol=0, atol=1e-9)
    assert np.isfinite(hi.attrs["xsciml_check_rmse"]).all() and np.isfinite(hi.attrs["xsciml_check_melru"]).all()
    # gaps that differ between snapshots are refused, naming the first one
    gappy = sst.copy()
    gappy[3, 10, 10] = np.nan
    with pytest.raises(ValueError, match=r"not the same in every snapshot \(1 of them, in 1 snapshots; e.g. "
                                         r"time index 3 at grid index \[\[10, 10\]\]\)"):
        fit_diffusion(gappy, steps=1, progress=False)


def test_masked_coarsening_projection_and_bicubic_known_answers():
    x = torch.arange(16.0, dtype=torch.float64).reshape(4, 4)
    sea = torch.ones(4, 4, dtype=torch.bool)
    sea[:2, :2] = False
    sea[3, 3] = False
    assert torch.isnan(coarsen(x, 2, mask=sea)[0, 0]) and coarsen(x, 2, mask=sea)[1, 1] == (10 + 11 + 14) / 3
    assert torch.isnan(coarsen(x, 2, how="subsample", mask=sea)[0, 0])
    y = torch.tensor([[5.0, 1.0], [2.0, 3.0]], dtype=torch.float64)
    out = project(x, y, 2, mask=sea)
    cm = coarsen(out, 2, mask=sea)
    torch.testing.assert_close(cm.flatten()[1:], y.flatten()[1:])
    assert torch.isnan(cm[0, 0])
    assert torch.equal(out[~sea], x[~sea])  # the land is left as it is
    low = project(x, y - 20.0, 2, bounds=(0.0, None), mask=sea)  # clipped coarse values: all zero on the sea
    assert torch.equal(low[sea], torch.zeros(int(sea.sum()), dtype=x.dtype)) and torch.equal(low[~sea], x[~sea])
    # a missing coarse pixel no longer spreads through bicubic: only its block is NaN
    c = torch.arange(16.0).reshape(4, 4)
    c[1, 2] = float("nan")
    up = bicubic(c, 2)
    assert torch.isnan(up).sum() == 4 and torch.isnan(up[2:4, 4:6]).all()

"""Ensemble forecasts of the latent-dynamics models (Laplace posterior of the initial codes)
and the scores and plots that judge ensembles."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402

import xsciml  # noqa: E402
from xsciml import metrics  # noqa: E402
from xsciml import plot as xplot  # noqa: E402
from xsciml.models.autodecode import (  # noqa: E402
    decode_codes,
    gauss_newton_codes,
    laplace_codes,
    laplace_posterior,
    sample_codes,
)
from xsciml.models.dynamics import fit_dynamics  # noqa: E402
from xsciml.nn import FourierNet  # noqa: E402

HEAT = dict(n_frames=10, alpha=4.0, tau=3.0)
TINY = dict(latent_dim=16, width=32, depth=2, dynamics_width=64, dynamics_depth=2,
            n_points=64, lr=1e-2, code_lr=1e-2, dynamics_lr=1e-2, progress=False)
LEAD = [0.0, 0.5, 1.0]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def heat_data():
    return xsciml.datasets.heat(16, 16, seed=0, **HEAT), xsciml.datasets.heat(3, 16, seed=1, **HEAT)


@pytest.fixture(scope="module")
def dino(heat_data):
    train, _ = heat_data
    return fit_dynamics(train.isel(time=slice(0, 5)), "u", space=("y", "x"), steps=100,
                        loss="relative", seed=0, **TINY)


@pytest.fixture(scope="module")
def smooth():
    from xsciml.models.smooth import fit_smooth_dynamics
    from xsciml.pde1d import burgers

    ds = burgers(4, 32, n_frames=6, t_max=0.5)
    return fit_smooth_dynamics(ds, "u", modes=2, waves=2, steps=30, progress=False), ds


def _trace(post: xr.Dataset) -> np.ndarray:
    """Trace of each state's posterior covariance L L^T."""
    return (post.scale_tril ** 2).sum(("latent", "latent_j")).values


# ----------------------------------------------------------------------------- tensor level
def test_laplace_posterior_is_the_least_squares_covariance():
    # linear regression y = J a + e: the covariance s^2 (J^T J + n Lambda)^-1 in closed form
    rng = np.random.default_rng(0)
    J = rng.normal(size=(40, 3))
    e = rng.normal(size=40)
    rss, lam = float(e @ e), np.array([0.0, 0.5, 2.0])
    post = laplace_posterior(torch.zeros(1, 3), torch.as_tensor(J)[None], torch.tensor([rss], dtype=torch.float64),
                             torch.tensor([40.0]), torch.as_tensor(lam))
    A = J.T @ J + 40 * np.diag(lam)
    p_eff = np.trace(np.linalg.solve(A, J.T @ J))
    s2 = rss / (40 - p_eff)
    L = post.scale_tril[0].numpy()
    np.testing.assert_allclose(L @ L.T, s2 * np.linalg.inv(A), rtol=1e-10)
    assert float(post.noise_var[0]) == pytest.approx(s2)
    assert float(post.dof[0]) == pytest.approx(40 - p_eff)
    assert np.allclose(L, np.tril(L))


def test_laplace_codes_are_calibrated_on_noisy_decoded_states():
    # states decoded from known codes plus white noise: the error of the fitted code,
    # whitened by the Laplace covariance, is chi-square with d degrees of freedom
    torch.manual_seed(0)
    net = FourierNet(2, 1, width=16, depth=2, input_scale=4.0, code_dim=3)
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.rand(150, 2) * 2 - 1
    true = torch.randn(300, 3) * 0.2
    with torch.no_grad():
        y = decode_codes(net, x, true) + 0.05 * torch.randn(300, 150, 1)
    kw = dict(reg=0.0, code_mean=torch.zeros(3), code_std=torch.ones(3))
    m = torch.ones_like(y)
    a = gauss_newton_codes(net, x, y, m, torch.zeros(300, 3), steps=20, **kw)
    post = laplace_codes(net, x, y, m, a, **kw)
    np.testing.assert_allclose(post.noise_var.sqrt().numpy(), 0.05, rtol=0.2)
    z = torch.linalg.solve_triangular(post.scale_tril, (a - true).double()[..., None], upper=False)
    chi2 = z.squeeze(-1).pow(2).sum(-1)
    assert float(chi2.mean()) == pytest.approx(3.0, rel=0.15)  # E chi2_3 = 3, sd of the mean 0.14


def test_sample_codes_match_the_covariance_and_are_seeded():
    L = torch.tensor([[[1.0, 0.0], [0.8, 0.3]]], dtype=torch.float64)
    draws = sample_codes(torch.tensor([[1.0, -2.0]]), L, 20_000, seed=3)
    assert draws.shape == (20_000, 1, 2)
    np.testing.assert_allclose(draws[:, 0].mean(0).numpy(), [1.0, -2.0], atol=0.03)
    np.testing.assert_allclose(np.cov(draws[:, 0].numpy().T), (L[0] @ L[0].T).numpy(), atol=0.03)
    state = torch.random.get_rng_state()
    again = sample_codes(torch.tensor([[1.0, -2.0]]), L, 20_000, seed=3)
    assert torch.equal(draws, again)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's generator is untouched


# ----------------------------------------------------------------------------- DINo
def test_dino_ensemble_dims_coords_attrs(dino, heat_data):
    _, test = heat_data
    init = test["u"].isel(time=0)
    ens = dino.forecast(init, lead=LEAD, members=5)
    assert ens.dims == ("member", "trajectory", "lead", "y", "x")
    assert ens.member.values.tolist() == [0, 1, 2, 3, 4]
    assert ens.attrs["xsciml_members"] == "5"
    assert "member" not in ens.valid_time.dims
    assert np.isfinite(ens.values).all()
    assert float(ens.std("member").mean()) > 0


def test_dino_ensemble_is_reproducible_with_its_seed(dino, heat_data):
    init = heat_data[1]["u"].isel(time=0)
    a = dino.forecast(init, lead=LEAD, members=4, seed=1)
    b = dino.forecast(init, lead=LEAD, members=4, seed=1)
    c = dino.forecast(init, lead=LEAD, members=4, seed=2)
    xr.testing.assert_identical(a, b)
    assert not np.allclose(a.values, c.values)


def test_dino_deterministic_path_is_unchanged_and_the_ensemble_centres_on_it(dino, heat_data):
    init = heat_data[1]["u"].isel(time=0)
    det = dino.forecast(init, lead=LEAD)
    assert "member" not in det.dims and "xsciml_members" not in det.attrs
    xr.testing.assert_identical(det, dino.forecast(init, lead=LEAD, members=None))
    ens = dino.forecast(init, lead=LEAD, members=64)
    spread = float(ens.std("member").mean())
    # the mean of 64 draws is within a few standard errors of the deterministic forecast
    assert float(abs(ens.mean("member") - det).mean()) < 0.5 * spread
    # the posterior mean is the deterministic code
    post = dino.encode_posterior(init)
    np.testing.assert_array_equal(post.codes.values, dino.encode(init).values)


@pytest.mark.parametrize("optimizer", ["gauss-newton", "adam"])
def test_dino_members_are_the_posterior_draws_decoded(dino, heat_data, optimizer):
    # lead 0 of member m of state i is the decoding of draw m of state i's posterior
    init = heat_data[1]["u"].isel(time=0)
    kw = dict(encode_optimizer=optimizer, encode_steps=3 if optimizer == "gauss-newton" else 30)
    ens = dino.forecast(init, lead=[0.0], members=3, seed=5, **kw)
    post = dino.encode_posterior(init, optimizer=optimizer, steps=kw["encode_steps"])
    draws = sample_codes(torch.as_tensor(post.codes.values), torch.as_tensor(post.scale_tril.values), 3, seed=5)
    codes = xr.DataArray(draws.numpy(), dims=("member", "trajectory", "latent"))
    ref = dino.decode(codes, init)
    np.testing.assert_allclose(ens.isel(lead=0).values, ref.values, atol=1e-5)


def test_dino_laplace_spread_shrinks_with_more_points_and_less_noise(dino, heat_data):
    init = heat_data[1]["u"].isel(time=0)
    full = dino.encode_posterior(init, noise="white")
    sparse = dino.encode_posterior(init.isel(y=slice(None, None, 3), x=slice(None, None, 3)), noise="white")
    sigma = 0.5 * float(init.std())
    noise = sigma * xr.DataArray(np.random.default_rng(0).normal(size=init.shape), dims=init.dims)
    noisy = dino.encode_posterior(init + noise, noise="white")
    assert (_trace(sparse) > 2 * _trace(full)).all()
    # the added white noise shows in the residual variance (standardised units)
    added = (sigma / float(np.asarray(dino.scaler.std).ravel()[0])) ** 2
    np.testing.assert_allclose(noisy.noise_var.values - full.noise_var.values, added, rtol=0.3)
    assert (_trace(noisy) > 2 * _trace(full)).all()
    # and the forecast spread follows
    lead = [0.0, 1.0]
    s_full = dino.forecast(init, lead=lead, members=16, encode_noise="white").std("member").mean(("y", "x"))
    s_noisy = dino.forecast(init + noise, lead=lead, members=16,
                            encode_noise="white").std("member").mean(("y", "x"))
    assert (s_noisy > s_full).all()


def test_dino_ensemble_with_correlated_noise_and_persisted_residual(dino, heat_data):
    init = heat_data[1]["u"].isel(time=0)
    post = dino.encode_posterior(init, noise="correlated")
    assert np.isfinite(post.scale_tril.values).all() and (post.noise_var > 0).all()
    det = dino.forecast(init, lead=LEAD, residual="persist")
    ens = dino.forecast(init, lead=LEAD, members=3, residual="persist")
    assert ens.dims == ("member", *det.dims)
    assert ens.attrs["xsciml_residual"] == "persist"


@pytest.mark.parametrize("bad, err", [(0, ValueError), (-1, ValueError), (2.5, TypeError),
                                      (True, TypeError), ("4", TypeError)])
def test_bad_members_are_refused(dino, heat_data, bad, err):
    init = heat_data[1]["u"].isel(time=0)
    with pytest.raises(err, match="members"):
        dino.forecast(init, lead=LEAD, members=bad)


def test_dask_initial_state_with_members_is_refused_clearly(dino, heat_data):
    pytest.importorskip("dask")
    init = heat_data[1]["u"].isel(time=0).chunk({"trajectory": 1})
    with pytest.raises(ValueError, match=r"members= needs an eager initial state.*compute"):
        dino.forecast(init, lead=LEAD, members=3)


# ----------------------------------------------------------------------------- smooth model
def test_smooth_ensemble_needs_the_refinement(smooth):
    model, ds = smooth
    init = ds.isel(time=0)
    with pytest.raises(ValueError, match="encode_steps > 0"):
        model.forecast(init, lead=[0.0, 0.25], members=4)
    ens = model.forecast(init, lead=[0.0, 0.25], members=4, encode_steps=10, seed=0)
    assert ens.dims == ("member", "trajectory", "lead", "x")
    assert ens.attrs["xsciml_members"] == "4"
    again = model.forecast(init, lead=[0.0, 0.25], members=4, encode_steps=10, seed=0)
    xr.testing.assert_identical(ens, again)
    det = model.forecast(init, lead=[0.0, 0.25], encode_steps=10)
    xr.testing.assert_identical(det, model.forecast(init, lead=[0.0, 0.25], encode_steps=10, members=None))


def test_smooth_laplace_spread_grows_with_noise(smooth):
    model, ds = smooth
    init = ds["u"].isel(time=0)
    noise = xr.DataArray(np.random.default_rng(0).normal(size=init.shape), dims=init.dims)
    clean = model.encode_posterior(init, steps=10)
    noisy = model.encode_posterior(init + 0.2 * float(init.std()) * noise, steps=10)
    np.testing.assert_array_equal(clean.codes.values, model.encode(init, steps=10).values)
    assert (noisy.noise_var.values > clean.noise_var.values).all()
    assert (_trace(noisy) > _trace(clean)).all()


# ----------------------------------------------------------------------------- scores
def _reliable(n_members: int, n_cases: int, seed: int = 0, scale: float = 1.0):
    """Truth and members drawn from the same distribution (a random centre per case);
    ``scale`` < 1 shrinks the members around the centre (under-dispersed)."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=(3, n_cases))
    ens = centre + scale * rng.normal(size=(n_members, 3, n_cases))
    truth = centre + rng.normal(size=(3, n_cases))
    coords = {"lead": [0.0, 1.0, 2.0]}
    return (xr.DataArray(ens, dims=("member", "lead", "case"), coords=coords),
            xr.DataArray(truth, dims=("lead", "case"), coords=coords))


def test_spread_skill_of_a_reliable_ensemble_is_one_with_the_finite_ensemble_correction():
    for n in (2, 10):
        ens, truth = _reliable(n, 40_000)
        ssr = metrics.spread_skill(ens, truth)
        assert ssr.dims == ("lead",)
        np.testing.assert_allclose(ssr.values, 1.0, atol=0.03)
    # without the (N+1)/N correction two members would score sqrt(2/3) = 0.82
    ens, truth = _reliable(2, 40_000)
    assert float(metrics.spread_skill(ens, truth, dims=("lead", "case"))) == pytest.approx(1.0, abs=0.02)


def test_spread_skill_of_an_under_dispersed_ensemble_is_below_one():
    ens, truth = _reliable(10, 20_000, scale=0.5)
    # spread 0.5 sqrt(11/10); error of the mean sqrt(1 + 0.25/10)
    expected = 0.5 * np.sqrt(1.1) / np.sqrt(1.025)
    np.testing.assert_allclose(metrics.spread_skill(ens, truth).values, expected, atol=0.02)


def test_rank_histogram_flat_for_reliable_and_u_shaped_for_under_dispersed():
    ens, truth = _reliable(9, 10_000)
    h = metrics.rank_histogram(ens, truth)
    assert h.dims == ("lead", "rank") and h["rank"].values.tolist() == list(range(10))
    assert (h.sum("rank") == 10_000).all()
    # each bin ~ Binomial(10000, 0.1): sd 30
    assert float(abs(h - 1000).max()) < 150
    u = metrics.rank_histogram(*_reliable(9, 10_000, scale=0.3))
    ends = u.isel(rank=[0, -1]).mean("rank")
    middle = u.isel(rank=slice(3, 7)).mean("rank")
    assert (ends > 3 * middle).all()


def test_rank_histogram_breaks_ties_at_random_and_skips_nan():
    ens = xr.DataArray(np.zeros((3, 4000)), dims=("member", "case"))
    truth = xr.DataArray(np.zeros(4000), dims="case")
    h = metrics.rank_histogram(ens, truth, seed=0)
    assert h.dims == ("rank",) and int(h.sum()) == 4000
    assert float(abs(h - 1000).max()) < 120  # ties spread evenly over the 4 ranks
    xr.testing.assert_identical(h, metrics.rank_histogram(ens, truth, seed=0))
    t2 = truth.copy()
    t2[:10] = np.nan
    e2 = ens.copy()
    e2[1, 10:15] = np.nan
    assert int(metrics.rank_histogram(e2, t2).sum()) == 4000 - 15


def test_ensemble_scores_per_lead_known_values():
    ens, truth = _reliable(6, 500)
    det = ens.isel(member=0, drop=True)
    s = metrics.ensemble_scores(ens, truth, deterministic=det)
    assert set(s.data_vars) == {"rmse", "mae", "crps", "spread", "spread_skill", "rank_histogram",
                                "rmse_deterministic", "mae_deterministic"}
    assert s["rank_histogram"].dims == ("lead", "rank") and s["rmse"].dims == ("lead",)
    mean = ens.mean("member")
    np.testing.assert_allclose(s["rmse"].values, np.sqrt(((mean - truth) ** 2).mean("case")).values)
    np.testing.assert_allclose(s["mae"].values, abs(mean - truth).mean("case").values)
    np.testing.assert_allclose(s["crps"].values,
                               metrics.crps_ensemble(ens, truth, sample_dim="member", dims="case").values)
    np.testing.assert_allclose(s["spread"].values, np.sqrt(7 / 6 * ens.var("member", ddof=1).mean("case")))
    np.testing.assert_allclose(s["spread_skill"].values, metrics.spread_skill(ens, truth).values)
    np.testing.assert_allclose(s["mae_deterministic"].values, abs(det - truth).mean("case").values)
    assert s.attrs["members"] == 6


def test_ensemble_score_errors_name_the_problem():
    ens, truth = _reliable(4, 10)
    with pytest.raises(ValueError, match="at least 2 members"):
        metrics.spread_skill(ens.isel(member=[0]), truth)
    with pytest.raises(ValueError, match="truth must not have"):
        metrics.rank_histogram(ens, ens)
    with pytest.raises(KeyError, match="no dimension"):
        metrics.spread_skill(ens, truth, member_dim="sample")
    with pytest.raises(ValueError, match="different coordinates"):
        metrics.ensemble_scores(ens, truth.assign_coords(lead=[5.0, 6.0, 7.0]))


def test_ensemble_scores_of_a_model_ensemble(dino, heat_data):
    _, test = heat_data
    lead = test.time.values - float(test.time[0])
    ens = dino.forecast(test["u"].isel(time=0), lead=lead, members=8)
    truth = test["u"].rename(time="lead").assign_coords(lead=ens.lead.values)
    s = metrics.ensemble_scores(ens.drop_vars("valid_time"), truth)
    assert s["rank_histogram"].sizes == {"lead": len(lead), "rank": 9}
    assert (s["spread"] > 0).all() and np.isfinite(s["spread_skill"]).all()


def test_score_with_members_adds_the_ensemble_scores_by_time(dino, heat_data):
    _, test = heat_data
    table = dino.score(test, members=8)
    lead = test.time.values - float(test.time[0])
    # the same ensemble and deterministic forecast, scored by hand
    ens = dino.forecast(test["u"].isel(time=0), lead=lead, target=test, members=8)
    det = dino.forecast(test["u"].isel(time=0), lead=lead, target=test)
    truth = test["u"].rename(time="lead").assign_coords(lead=ens.lead.values)
    want = metrics.ensemble_scores(ens.drop_vars("valid_time").transpose("member", *truth.dims), truth,
                                   deterministic=det.drop_vars("valid_time").transpose(*truth.dims))
    np.testing.assert_allclose(table["crps"].values, want["crps"].values, rtol=1e-6)
    np.testing.assert_allclose(table["spread_skill"].values, want["spread_skill"].values, rtol=1e-6)
    np.testing.assert_allclose(table["rmse_deterministic"].values, want["rmse_deterministic"].values, rtol=1e-6)
    assert table["rank_histogram"].dims == ("time", "rank") and table.attrs["members"] == 8
    # the deterministic table is the one without members
    np.testing.assert_allclose(table["mse"].values, dino.score(test)["mse"].values, rtol=1e-6)
    with pytest.raises(ValueError, match="members must be at least 2"):
        dino.score(test, members=1)


# ----------------------------------------------------------------------------- plots
def test_plot_spread_skill_lines():
    ens, truth = _reliable(5, 200)
    scores = metrics.ensemble_scores(ens, truth)
    ax = xplot.plot_spread_skill(scores).axes[0]
    assert len(ax.lines) == 2  # RMSE and spread
    np.testing.assert_allclose(ax.lines[0].get_ydata(), scores["rmse"].values)
    np.testing.assert_allclose(ax.lines[1].get_ydata(), scores["spread"].values)
    ax = xplot.plot_spread_skill({"a": scores, "b": scores}, ratio=True).axes[0]
    assert len(ax.lines) == 3  # two ratios and the ideal line
    assert ax.lines[-1].get_ydata()[0] == 1.0
    ax = xplot.plot_spread_skill(ens, truth).axes[0]  # scored on the fly
    np.testing.assert_allclose(ax.lines[0].get_ydata(), scores["rmse"].values)
    with pytest.raises(TypeError, match="truth"):
        xplot.plot_spread_skill(ens)
    with pytest.raises(ValueError, match="spread_skill"):
        xplot.plot_spread_skill(scores[["rmse"]], ratio=True)


def test_plot_rank_histogram_bars_and_flat_line():
    ens, truth = _reliable(5, 300)
    scores = metrics.ensemble_scores(ens, truth)
    ax = xplot.plot_rank_histogram(scores).axes[0]
    assert len(ax.patches) == 6
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, scores["rank_histogram"].sum("lead").values)
    assert ax.lines[0].get_ydata()[0] == pytest.approx(900 / 6)
    ax = xplot.plot_rank_histogram(scores, lead=1.0).axes[0]
    np.testing.assert_allclose([p.get_height() for p in ax.patches],
                               scores["rank_histogram"].sel(lead=1.0).values)
    with pytest.raises(KeyError, match="lead"):
        xplot.plot_rank_histogram(scores, lead=7.0)
    with pytest.raises(ValueError, match="rank_histogram"):
        xplot.plot_rank_histogram(scores[["rmse"]])

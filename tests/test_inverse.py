"""Inverse problems: Fourier heat operator, damped inverse, SIP training, estimator I/O."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

import xsciml
from xsciml.inverse import (
    FourierOperator,
    HeatOperator,
    LearnedInversion,
    RandomRectangles,
    damped_inverse,
    diffuse,
    fit_inversion,
    heat_gain,
    inverse_diffuse,
    invert,
    make_heat_dataset,
    operator_from_config,
    physics_loss,
    register_operator,
    sip_loss,
    source_errors,
    wavenumbers_squared,
)

TINY_NET = {"base_channels": 4, "levels": 2}


def _grid(n: int, h: float) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.float64) + 0.5) * h


# --------------------------------------------------------------------------- diffuse
@pytest.mark.parametrize("ky,kx", [(0, 1), (3, 0), (2, 5), (8, 16), (1, -7)])
def test_diffuse_decays_single_fourier_modes_exactly(ky, kx):
    ny, nx, hy, hx, amount = 16, 32, 0.5, 2.0, 3.7
    y, x = torch.meshgrid(_grid(ny, hy), _grid(nx, hx), indexing="ij")
    ly, lx = ny * hy, nx * hx
    phase = 2 * math.pi * (ky * y / ly + kx * x / lx)
    wave = torch.cos(phase) + 0.3 * torch.sin(phase)
    k2 = (ky / ly) ** 2 + (kx / lx) ** 2
    expected = wave * math.exp(-amount * 4 * math.pi**2 * k2)
    out = diffuse(wave[None], amount, spacing=(hy, hx))[0]
    assert out.dtype == torch.float64
    assert torch.allclose(out, expected, rtol=0, atol=1e-10)


def test_diffuse_matches_explicit_finite_differences():
    n, h, amount = 64, 0.5, 1.0
    y, x = torch.meshgrid(_grid(n, h), _grid(n, h), indexing="ij")
    length = n * h
    u0 = torch.exp(-((x - 0.5 * length) ** 2 + (y - 0.45 * length) ** 2) / (2 * 3.0**2))
    u0 = u0 + 0.5 * torch.exp(-((x - 0.25 * length) ** 2 + (y - 0.7 * length) ** 2) / (2 * 2.5**2))
    # explicit Euler with small steps, 4th-order periodic Laplacian stencil
    n_steps = math.ceil(amount / (0.02 * h * h / 4))
    dt = amount / n_steps
    u = u0.clone()
    for _ in range(n_steps):
        lap = sum((-u.roll(2, d) + 16 * u.roll(1, d) - 30 * u + 16 * u.roll(-1, d) - u.roll(-2, d))
                  for d in (0, 1)) / (12 * h * h)
        u = u + dt * lap
    out = diffuse(u0, amount, spacing=h)
    assert (out - u0).abs().max() > 0.1  # the test is not trivial
    assert torch.allclose(out, u, rtol=0, atol=1e-4)


def test_diffuse_conserves_heat_is_self_adjoint_and_differentiable():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 12, 10, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.rand(3, 12, 10, generator=g, dtype=torch.float64)
    pa = diffuse(a, 2.0)
    assert torch.allclose(pa.sum((-1, -2)), a.sum((-1, -2)), atol=1e-12)
    # <P a, b> = <a, P b>, and the gradient of <P a, b> w.r.t. a is P b
    (pa * b).sum().backward()
    pb = diffuse(b, 2.0)
    assert torch.allclose((pa * b).sum(), (a * pb).sum(), atol=1e-12)
    assert torch.allclose(a.grad, pb, atol=1e-12)


def test_diffuse_per_example_amount_and_float32():
    x = torch.zeros(2, 8, 8)
    x[:, 4, 4] = 1.0
    out = diffuse(x, torch.tensor([0.0, 1.0]))
    assert out.dtype == torch.float32
    assert torch.allclose(out[0], x[0], atol=1e-6)
    assert out[1, 4, 4] < 0.5
    with pytest.raises(ValueError, match="amount"):
        diffuse(x, -1.0)
    with pytest.raises(TypeError, match="floating"):
        diffuse(torch.zeros(4, 4, dtype=torch.int64), 1.0)


def test_wavenumbers_squared_known_values():
    k2 = wavenumbers_squared((4, 2), spacing=(0.5, 1.0))
    # fftfreq(4, 0.5) = [0, .5, -1, -.5]; fftfreq(2, 1) = [0, -.5]
    expected = torch.tensor([[0, .25], [.25, .5], [1, 1.25], [.25, .5]], dtype=torch.float64)
    assert torch.allclose(k2, expected)
    assert heat_gain((4, 2), 0.0).eq(1).all()


def _field_da(values: np.ndarray, hy: float, hx: float) -> xr.DataArray:
    ny, nx = values.shape[-2:]
    return xr.DataArray(
        values, dims=("time", "lat", "lon"),
        coords={"time": np.arange(values.shape[0]), "lat": np.arange(ny) * hy + 10.0,
                "lon": np.arange(nx) * hx - 3.0},
        attrs={"units": "K"}, name="t",
    )


def test_diffuse_dataarray_reads_spacing_from_coords():
    rng = np.random.default_rng(0)
    da = _field_da(rng.random((2, 8, 12)), 0.5, 2.0)
    out = diffuse(da, 1.5)
    expected = diffuse(torch.from_numpy(da.values), 1.5, spacing=(0.5, 2.0)).numpy()
    np.testing.assert_allclose(out.values, expected, atol=1e-12)
    assert out.dims == da.dims and out.attrs == da.attrs
    xr.testing.assert_identical(out.coords.to_dataset(), da.coords.to_dataset())
    # spatial dims in another order give the same field
    swapped = diffuse(da.transpose("lon", "time", "lat"), 1.5, dims=("lat", "lon"))
    np.testing.assert_allclose(swapped.transpose(*da.dims).values, expected, atol=1e-12)


def test_diffuse_dataarray_errors():
    da = _field_da(np.zeros((1, 6, 6)), 1.0, 1.0)
    bad = da.assign_coords(lon=[0.0, 1.0, 2.0, 3.5, 4.0, 5.0])
    with pytest.raises(ValueError, match="uniformly"):
        diffuse(bad, 1.0)
    with pytest.raises(ValueError, match="no coordinate"):
        diffuse(da.drop_vars("lat"), 1.0)
    with pytest.raises(KeyError, match="nope"):
        diffuse(da, 1.0, dims=("lat", "nope"))
    # an explicit spacing overrides the (missing) coordinate
    assert diffuse(da.drop_vars("lat"), 1.0, spacing=1.0).shape == da.shape


def test_diffuse_dask_stays_lazy_and_matches():
    pytest.importorskip("dask")
    rng = np.random.default_rng(1)
    da = _field_da(rng.random((4, 8, 8)), 1.0, 1.0)
    lazy = diffuse(da.chunk({"time": 2}), 2.0)
    assert lazy.chunks is not None
    np.testing.assert_allclose(lazy.compute().values, diffuse(da, 2.0).values, atol=1e-12)
    with pytest.raises(ValueError, match="rechunk"):
        diffuse(da.chunk({"lat": 4}), 2.0)


# --------------------------------------------------------------------------- damped inverse
def test_damped_inverse_identity_operator_and_uncertainty():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(2, 8, 8, generator=g, dtype=torch.float64)
    res = inverse_diffuse(y, 0.0, uncertainty=0.05, noise_floor=0.0)
    assert torch.allclose(res.estimate, y, atol=1e-12)
    # with a unit kernel, the propagated per-cell std equals the stated one
    assert torch.allclose(res.uncertainty, torch.full_like(y, 0.05), atol=1e-12)
    # the floor adds in quadrature
    res = inverse_diffuse(y, 0.0, uncertainty=0.03, noise_floor=0.04)
    assert torch.allclose(res.uncertainty, torch.full_like(y, 0.05), atol=1e-12)


def test_damped_inverse_uncertainty_is_exact_propagation():
    # all modes clearly signal: kernel = 1/gain, so sigma_x = sigma * sqrt(mean(1/gain^2))
    x = torch.zeros(1, 16, 16, dtype=torch.float64)
    x[0] = torch.randn(16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    gain = heat_gain((16, 16), 0.05)
    y = torch.fft.ifftn(torch.fft.fftn(x, dim=(-2, -1)) * gain, dim=(-2, -1)).real
    res = damped_inverse(y, gain, uncertainty=1e-9, noise_floor=0.0)
    assert torch.allclose(res.kernel, 1 / gain)
    assert torch.allclose(res.estimate, x, atol=1e-9)
    expected = 1e-9 * torch.sqrt((gain**-2).mean())
    assert torch.allclose(res.uncertainty, expected.expand_as(x), rtol=1e-12)


def test_one_inverse_step_beats_1000_gradient_descent_iterations():
    op = HeatOperator(8.0)
    x = RandomRectangles(batch_size=8)(torch.Generator().manual_seed(0))
    y = op(x)
    one_step = source_errors(op.inverse(y), x)["x_l2"].mean()

    # Per-example gradient descent on 1/2 ||P x - y||^2 from x = 0 with lr 1. P is
    # Fourier-diagonal with gain g, so n iterations give the closed form
    # x_n = F^-1[(1 - (1 - g^2)^n) / g * F y]; check it against explicit iterations.
    gain = op.gain((64, 64))

    def gd_closed_form(n):
        mult = torch.where(gain > 1e-150, (1 - (1 - gain**2) ** n) / gain, n * gain)
        return torch.fft.ifftn(torch.fft.fftn(y, dim=(-2, -1)) * mult, dim=(-2, -1)).real

    x_it = torch.zeros_like(x)
    for _ in range(5):
        x_it = x_it - op(op(x_it) - y)
    assert torch.allclose(x_it, gd_closed_form(5), atol=1e-10)
    gd = source_errors(gd_closed_form(1000), x)["x_l2"].mean()
    start = source_errors(torch.zeros_like(x), x)["x_l2"].mean()
    assert gd < 0.5 * start  # the baseline does make progress...
    assert one_step < 0.6 * gd  # ...but one damped inverse step does much better


def test_noise_floor_keeps_iterated_inverse_stable():
    op = HeatOperator(8.0)
    x = RandomRectangles(batch_size=4)(torch.Generator().manual_seed(1))
    y = op(x)

    def iterate(operator, n):
        est = torch.zeros_like(x)
        for _ in range(n):
            est = est + operator.inverse(y - operator(est))
        return source_errors(est, x)["x_l2"].mean()

    first = iterate(op, 1)
    assert iterate(op, 8) <= first * 1.01
    unfloored = HeatOperator(8.0, noise_floor=0.0)
    assert iterate(unfloored, 8) > 10 * first  # without the floor, round-off gets amplified


def test_damping_does_not_amplify_stated_noise():
    g = torch.Generator().manual_seed(2)
    x = RandomRectangles((32, 32), batch_size=4, max_half_size=6.0)(g)
    y = diffuse(x, 2.0)
    noisy = y + 1e-3 * torch.randn(y.shape, generator=g, dtype=y.dtype)
    damped = inverse_diffuse(noisy, 2.0, uncertainty=1e-3)
    raw = damped_inverse(noisy, heat_gain((32, 32), 2.0), uncertainty=0.0, noise_floor=0.0)
    err_damped = source_errors(damped.estimate, x)["x_l2"].mean()
    err_raw = source_errors(raw.estimate, x)["x_l2"].mean()
    assert err_damped < source_errors(noisy, x)["x_l2"].mean()  # better than no inversion
    assert err_raw > 1e3 * err_damped  # the undamped inverse blows the noise up
    # the highest frequencies are judged noise and diffused further
    assert damped.signal_probability[..., 16, 16].max() < 0.5
    assert damped.kernel[..., 16, 16].max() < 1.0


def test_inverse_diffuse_dataarray():
    ds = make_heat_dataset(2, shape=(16, 16), amount=1.0, max_half_size=4.0, spacing=0.5)
    res = inverse_diffuse(ds.observation, 1.0, uncertainty=1e-6)
    tensor = inverse_diffuse(torch.from_numpy(ds.observation.values), 1.0, spacing=0.5,
                             uncertainty=1e-6)
    np.testing.assert_allclose(res.estimate.values, tensor.estimate.numpy(), atol=1e-12)
    assert res.uncertainty.name == "observation_uncertainty"
    assert res.estimate.dims == ds.observation.dims
    with pytest.raises(TypeError, match="scalar"):
        inverse_diffuse(ds.observation, 1.0, uncertainty=np.ones((16, 16)))


# --------------------------------------------------------------------------- sip_loss
def test_sip_loss_gradient_is_the_inverse_physics_correction():
    op = HeatOperator(4.0)
    g = torch.Generator().manual_seed(0)
    x_true = RandomRectangles((32, 32), batch_size=3, max_half_size=6.0)(g)
    y = op(x_true)
    pred = (0.1 * torch.rand(3, 32, 32, generator=g)).requires_grad_()
    sip_loss(pred, y, op.forward, op.inverse, reduction="sum").backward()
    dx = op.inverse(y - op(pred.detach().double()))
    assert torch.allclose(-pred.grad.double(), dx, atol=1e-5)
    assert pred.grad.dtype == torch.float32


def test_sip_loss_equals_physics_loss_for_identity_physics():
    op = HeatOperator(0.0)
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(4, 8, 8, generator=g, dtype=torch.float64)
    y = torch.rand(4, 8, 8, generator=g, dtype=torch.float64)
    a = sip_loss(pred, y, op.forward, op.inverse)
    b = physics_loss(pred, y, op.forward)
    assert torch.allclose(a, b)
    assert torch.allclose(b, 0.5 * ((pred - y) ** 2).sum((-1, -2)).mean())
    with pytest.raises(ValueError, match="same shape"):
        sip_loss(pred, y[:2], op.forward, op.inverse)
    with pytest.raises(ValueError, match="reduction"):
        sip_loss(pred, y, op.forward, op.inverse, reduction="max")


@register_operator
class _Poisson(FourierOperator):
    """The docs' recipe: u = (-Laplace)^-1 f on a periodic grid (mean mode unobservable)."""

    def transfer(self, k2):
        return torch.where(k2 > 0, 1 / (4 * math.pi**2 * k2.clamp_min(1e-300)), 0.0)


def test_poisson_operator_plugs_into_sip_loss():
    op = _Poisson()
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 16, 16, generator=g, dtype=torch.float64)
    f = f - f.mean((-1, -2), keepdim=True)  # zero-mean source: all of it is observable
    u = op(f)
    # -Laplace(u) = f, checked with a spectral Laplacian
    lap = torch.fft.ifftn(torch.fft.fftn(u, dim=(-2, -1)) * 4 * math.pi**2
                          * wavenumbers_squared((16, 16)), dim=(-2, -1)).real
    assert torch.allclose(lap, f, atol=1e-10)
    assert torch.allclose(op.inverse(u), f, atol=1e-8)  # mildly ill-posed: exact recovery
    pred = torch.zeros(2, 16, 16, dtype=torch.float64, requires_grad=True)
    sip_loss(pred, u, op.forward, op.inverse, reduction="sum").backward()
    assert torch.allclose(-pred.grad, f, atol=1e-8)
    assert operator_from_config(op.get_config()).__class__ is _Poisson
    assert op.mean_gain == 0.0


# --------------------------------------------------------------------------- data
def test_random_rectangles_known_mass_and_soft_edges():
    gen = RandomRectangles((50,), count=(1, 1), strength=(1.0, 1.0), max_half_size=8.0)
    x = gen.sample(64, torch.Generator().manual_seed(0))
    assert x.shape == (64, 50) and x.dtype == torch.float64
    assert bool((x >= 0).all()) and bool((x <= 1 + 1e-12).all())
    frac = x[(x > 0) & (x < 1)]
    assert frac.numel() > 0  # soft (area-weighted) edges
    # each example: one box, strength 1, fully inside the domain -> at most two partial
    # cells and a mass equal to the box width
    assert int(((x > 1e-12) & (x < 1 - 1e-12)).sum(-1).max()) <= 2
    assert bool((x.sum(-1) <= 16 + 1e-9).all())


def test_random_rectangles_reproducible_and_counts():
    gen = RandomRectangles((32, 32), batch_size=5, max_half_size=4.0)
    a = gen(torch.Generator().manual_seed(7))
    b = gen(torch.Generator().manual_seed(7))
    c = gen(torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (5, 32, 32)
    # mass is bounded by 10 boxes of at most strength 1 and (2 * 4)^2 cells
    assert bool((a.sum((-1, -2)) <= 10 * 64 + 1e-9).all())
    zero = RandomRectangles((8, 8), count=(0, 1), strength=(0.0, 0.0)).sample(3)
    assert torch.equal(zero, torch.zeros(3, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="count"):
        RandomRectangles(count=(5, 3))
    with pytest.raises(ValueError, match="n must"):
        gen.sample(0)


def test_make_heat_dataset():
    ds = make_heat_dataset(3, shape=(16, 20), amount=2.0, spacing=0.5, max_half_size=3.0)
    assert ds.source.dims == ("sample", "y", "x") and ds.source.shape == (3, 16, 20)
    np.testing.assert_allclose(ds.x.values[:2], [0.25, 0.75])
    np.testing.assert_allclose(diffuse(ds.source, 2.0).values, ds.observation.values, atol=1e-12)


# --------------------------------------------------------------------------- training
def test_sip_trains_better_than_gradient_descent_through_physics():
    op = HeatOperator(2.0)
    data = RandomRectangles((32, 32), batch_size=8, max_half_size=5.0)
    x_test = data.sample(64, torch.Generator().manual_seed(99))
    y_test = op(x_test)
    errors = {}
    for method in ("sip", "gd"):
        inv = fit_inversion(op, data, method=method, steps=40, progress=False, device="cpu",
                            network_kwargs={"base_channels": 8, "levels": 3}, seed=0,
                            calibration_examples=0)
        assert len(inv.history.loss) == 40 and len(inv.history.logs["x_l2"]) == 40
        errors[method] = source_errors(inv.predict(y_test).estimate, x_test)["x_l2"].mean().item()
    mean_only = y_test.mean((-1, -2), keepdim=True).expand_as(y_test)  # the observable part
    baseline = source_errors(mean_only, x_test)["x_l2"].mean().item()
    physics = source_errors(op.inverse(y_test), x_test)["x_l2"].mean().item()
    assert errors["sip"] < 0.9 * errors["gd"]
    assert errors["sip"] < 0.75 * baseline
    # the default design refines the physics inverse and ends up below it
    assert errors["sip"] < 0.9 * physics


@pytest.fixture(scope="module")
def tiny_inversion() -> LearnedInversion:
    data = RandomRectangles((16, 16), batch_size=4, max_half_size=4.0)
    return fit_inversion(HeatOperator(1.0), data, steps=3, network_kwargs=TINY_NET, progress=False,
                         device="cpu")


def test_fit_inversion_records_history_and_config(tiny_inversion):
    inv = tiny_inversion
    assert inv.method == "sip" and inv.history.steps == 3
    assert set(inv.history.logs) == {"x_l2", "y_l2", "x_l2_physics", "x_l2_physics_bounded"}
    cfg = inv._get_config()
    assert cfg["operator"]["kind"] == "heat" and cfg["operator"]["amount"] == 1.0
    assert cfg["training"]["steps"] == 3 and cfg["training"]["batch_size"] == 4
    assert cfg["training"]["grid"] == [16, 16] and cfg["training"]["bounds"] == [0.0, None]
    assert cfg["residual"] is True and inv.grid == (16, 16)
    assert not inv.network.training  # returned in eval mode


def test_same_seed_same_network_and_data():
    data = RandomRectangles((16, 16), batch_size=2, max_half_size=3.0)
    kw = dict(steps=2, network_kwargs=TINY_NET, progress=False, device="cpu", seed=3)
    a = fit_inversion(HeatOperator(1.0), data, **kw)
    b = fit_inversion(HeatOperator(1.0), data, **kw)
    assert a.history.loss == b.history.loss
    y = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.predict(y).estimate, b.predict(y).estimate)


def test_save_load_roundtrip_gives_identical_output(tiny_inversion, tmp_path):
    inv = tiny_inversion
    path = inv.save(tmp_path / "inv.xsciml")
    loaded = xsciml.load(path)
    assert isinstance(loaded, LearnedInversion)
    assert loaded.operator.get_config() == inv.operator.get_config()
    y = diffuse(torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1),
                           dtype=torch.float64), 1.0)
    res = inv.predict(y)
    out = res.estimate
    assert out.dtype == torch.float64 and out.shape == y.shape
    assert res.uncertainty.dtype == torch.float64 and res.uncertainty.shape == y.shape
    again = loaded.predict(y)
    assert torch.equal(again.estimate, out) and torch.equal(again.uncertainty, res.uncertainty)
    assert torch.equal(loaded.calibration["std"], inv.calibration["std"])
    assert bool((out >= 0).all())  # clipped to the sources' range
    # mean correction of the network output (before clipping): the mean of the observation
    x0 = inv.operator.inverse(y)
    raw = inv.network(y, x0)
    assert torch.allclose(raw.mean((-1, -2)).double(), y.mean((-1, -2)), atol=1e-5)


def test_invert_dataarray_keeps_coords_and_adds_provenance(tiny_inversion):
    ds = make_heat_dataset(3, shape=(16, 16), amount=1.0, max_half_size=4.0)
    obs = ds.observation.assign_attrs(units="K")
    res = obs.sciml.invert(tiny_inversion)
    src, unc = res.estimate, res.uncertainty
    assert res.source == "network"
    assert src.dims == obs.dims and src.shape == obs.shape and unc.dims == obs.dims
    xr.testing.assert_identical(src.coords.to_dataset(), obs.coords.to_dataset())
    assert src.attrs["xsciml_model"] == "LearnedInversion"
    assert src.attrs["xsciml_method"] == "sip" and src.attrs["units"] == "K"
    assert src.name == "observation_source" and unc.name == "observation_source_uncertainty"
    expected = tiny_inversion.predict(torch.from_numpy(obs.values))
    np.testing.assert_allclose(src.values, expected.estimate.numpy(), atol=1e-6)
    np.testing.assert_allclose(unc.values, expected.uncertainty.numpy(), atol=1e-6)
    # extra leading dims, transposed input
    stacked = xr.concat([obs, obs], dim="member").transpose("sample", "member", "y", "x")
    out = invert(stacked, tiny_inversion).estimate
    np.testing.assert_allclose(out.isel(member=1).values, src.values, atol=1e-6)


def test_invert_dask_is_lazy_and_equal(tiny_inversion):
    pytest.importorskip("dask")
    obs = make_heat_dataset(4, shape=(16, 16), amount=1.0, max_half_size=4.0).observation
    lazy = invert(obs.chunk({"sample": 2}), tiny_inversion)
    assert lazy.estimate.chunks is not None and lazy.uncertainty.chunks is not None
    eager = invert(obs, tiny_inversion)
    np.testing.assert_allclose(lazy.estimate.compute().values, eager.estimate.values, atol=1e-6)
    np.testing.assert_allclose(lazy.uncertainty.compute().values, eager.uncertainty.values,
                               atol=1e-6)
    with pytest.raises(ValueError, match="rechunk"):
        invert(obs.chunk({"x": 8}), tiny_inversion)


def test_invert_refuses_a_different_grid_spacing(tiny_inversion):
    obs = make_heat_dataset(1, shape=(16, 16), amount=1.0, max_half_size=4.0, spacing=2.0).observation
    with pytest.raises(ValueError, match="spacing"):
        invert(obs, tiny_inversion)
    with pytest.raises(TypeError, match="DataArray"):
        invert(obs.values, tiny_inversion)


def test_fit_inversion_argument_errors():
    data = RandomRectangles((16, 16), batch_size=2)
    op = HeatOperator(1.0)
    with pytest.raises(ValueError, match="method"):
        fit_inversion(op, data, method="newton")
    with pytest.raises(TypeError, match="callable"):
        fit_inversion(op, torch.zeros(2, 16, 16))
    with pytest.raises(TypeError, match="FourierOperator"):
        fit_inversion(lambda x: x, data)
    with pytest.raises(TypeError, match="sample"):
        fit_inversion(op, lambda g: torch.zeros(2, 16, 16), batch_size=4)
    with pytest.raises(ValueError, match="shape"):
        fit_inversion(op, lambda g: torch.zeros(16, 16), steps=1, progress=False, device="cpu",
                      network_kwargs=TINY_NET)
    with pytest.raises(ValueError, match="amount"):
        HeatOperator(-1.0)
    with pytest.raises(KeyError, match="unknown operator"):
        operator_from_config({"kind": "nonexistent"})


def test_gd_and_supervised_methods_and_supplied_observations():
    data = RandomRectangles((16, 16), batch_size=4, max_half_size=4.0)
    op = HeatOperator(1.0)
    for method in ("gd", "supervised"):
        inv = fit_inversion(op, data, method=method, steps=2, optimizer="sgd", lr=1e-4,
                            network_kwargs=TINY_NET, progress=False, device="cpu")
        assert inv.method == method and inv.training["optimizer"] == "sgd"

    def pairs(g):  # the caller supplies (sources, noisy observations)
        x = data(g)
        return x, op(x) + 0.01 * torch.randn(x.shape, generator=g, dtype=x.dtype)

    inv = fit_inversion(op, pairs, steps=2, network_kwargs=TINY_NET, progress=False, device="cpu")
    assert len(inv.history.loss) == 2 and all(math.isfinite(v) for v in inv.history.loss)


@register_operator
class _ScreenedPoisson(FourierOperator):
    """The docs' recipe for an operator with its own parameter."""

    def __init__(self, kappa: float, **kwargs):
        super().__init__(**kwargs)
        self.kappa = float(kappa)

    def transfer(self, k2):
        return 1 / (self.kappa**2 + 4 * math.pi**2 * k2)

    def _params(self):
        return {"kappa": self.kappa}


def test_custom_operator_trains_and_roundtrips(tmp_path):
    op = _ScreenedPoisson(2.0, spacing=0.5)
    assert math.isclose(op.mean_gain, 0.25)
    data = RandomRectangles((16, 16), batch_size=2, max_half_size=2.0, spacing=0.5)
    inv = fit_inversion(op, data, steps=1, network_kwargs=TINY_NET, progress=False, device="cpu",
                        bounds=None)
    loaded = xsciml.load(inv.save(tmp_path / "sp.xsciml"))
    assert isinstance(loaded.operator, _ScreenedPoisson) and loaded.operator.kappa == 2.0
    assert loaded.operator.spacing == (0.5, 0.5)
    y = op(data.sample(2, torch.Generator().manual_seed(0)))
    out = loaded.predict(y).estimate
    assert torch.equal(out, inv.predict(y).estimate)
    # mean corrected to mean(y) / g(0)
    assert torch.allclose(out.mean((-1, -2)), y.mean((-1, -2)) / 0.25, atol=1e-4)


def test_invert_under_distributed_matches_eager(tiny_inversion, dask_client):
    obs = make_heat_dataset(4, shape=(16, 16), amount=1.0, max_half_size=4.0).observation
    lazy = invert(obs.chunk({"sample": 2}), tiny_inversion)
    result = lazy.estimate.compute()  # runs on the cluster's worker processes
    np.testing.assert_allclose(result.values, invert(obs, tiny_inversion).estimate.values, atol=1e-6)


# --------------------------------------------------------------------------- default design
def test_sip_loss_iterations_and_bounds_make_a_projected_solver_target():
    op = HeatOperator(1.0)
    g = torch.Generator().manual_seed(4)
    x_true = RandomRectangles((16, 16), batch_size=2, max_half_size=4.0)(g)
    y = op(x_true)
    pred = (0.1 * torch.randn(2, 16, 16, generator=g, dtype=torch.float64)).requires_grad_()
    sip_loss(pred, y, op.forward, op.inverse, iterations=2, bounds=(0.0, None),
             reduction="sum").backward()
    x = pred.detach()
    for _ in range(2):  # the solver, by hand
        x = (x + op.inverse(y - op(x))).clamp(min=0.0)
    assert torch.allclose(-pred.grad, x - pred.detach(), atol=1e-12)
    with pytest.raises(ValueError, match="iterations"):
        sip_loss(pred, y, op.forward, op.inverse, iterations=0)
    with pytest.raises(ValueError, match="low < high"):
        sip_loss(pred, y, op.forward, op.inverse, bounds=(1.0, 0.0))


def test_residual_network_starts_exactly_at_the_physics_inverse():
    op = HeatOperator(1.0)
    data = RandomRectangles((16, 16), batch_size=4, max_half_size=4.0)
    inv = fit_inversion(op, data, steps=1, lr=0.0, bounds=None, network_kwargs=TINY_NET,
                        calibration_examples=0, progress=False, device="cpu")
    y = op(data.sample(3, torch.Generator().manual_seed(5)))
    res = inv.predict(y)
    assert res.uncertainty is None  # no calibration asked for
    assert torch.allclose(res.estimate, op.inverse(y), atol=1e-5)
    # the logged training error at step 1 is the physics inverse's on the same batch
    logs = inv.history.logs
    assert math.isclose(logs["x_l2"][0], logs["x_l2_physics"][0], rel_tol=1e-5)
    assert logs["x_l2_physics_bounded"] == logs["x_l2_physics"]  # unbounded


def test_bounds_auto_from_the_generator_and_clipped_estimates():
    assert RandomRectangles().bounds == (0.0, None)
    assert RandomRectangles(strength=(-1.0, -0.5)).bounds == (None, 0.0)
    assert RandomRectangles(strength=(-1.0, 1.0)).bounds == (None, None)
    op = HeatOperator(1.0)
    data = RandomRectangles((16, 16), batch_size=2, max_half_size=4.0)
    kw = dict(steps=1, network_kwargs=TINY_NET, calibration_examples=0, progress=False, device="cpu")
    inv = fit_inversion(op, data, **kw)
    assert inv.bounds == (0.0, None)
    y = op(data.sample(2, torch.Generator().manual_seed(0)))
    assert bool((op.inverse(y) < -1e-3).any())  # the physics inverse rings below zero ...
    assert bool((inv.predict(y).estimate >= 0).all())  # ... the estimate does not
    assert fit_inversion(op, data, bounds=None, **kw).bounds == (None, None)
    assert fit_inversion(op, data, bounds=(None, 2.0), **kw).bounds == (None, 2.0)
    with pytest.raises(ValueError, match="bounds"):
        fit_inversion(op, data, bounds="positive", **kw)


def test_calibrated_uncertainty_matches_held_out_errors():
    op = HeatOperator(2.0)
    data = RandomRectangles((32, 32), batch_size=8, max_half_size=5.0)
    inv = fit_inversion(op, data, steps=15, network_kwargs={"base_channels": 8, "levels": 3},
                        calibration_examples=64, progress=False, device="cpu", seed=1)
    x = data.sample(64, torch.Generator().manual_seed(2024))
    res = inv.predict(op(x))
    z2 = ((res.estimate - x) / res.uncertainty).pow(2)
    # calibrated on other examples: the squared z-score is ~1 on fresh ones
    assert 0.7 < z2.mean().item() < 1.4
    std = inv.calibration["std"]
    assert std.numel() >= 4 and bool((std > 0).all())
    # errors concentrate at edges: the sharpest class is far less certain than the flattest
    assert std[-1] > 3 * std[0]
    assert inv.training["calibration_examples"] == 64 and inv.training["calibration_rmse"] > 0


def test_other_grid_size_is_refused_with_the_trained_size(tiny_inversion):
    with pytest.raises(ValueError, match=r"32 x 32 grid.*trained on 16 x 16.*regrid or crop"):
        tiny_inversion.predict(torch.zeros(2, 32, 32))
    obs = make_heat_dataset(1, shape=(16, 24), amount=1.0, max_half_size=4.0).observation
    with pytest.raises(ValueError, match=r"'observation' has a 16 x 24 grid along dims \('y', 'x'\)"):
        obs.sciml.invert(tiny_inversion)


def test_nan_in_observations_is_refused(tiny_inversion):
    y = torch.zeros(3, 16, 16)
    y[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"1 NaN or inf values \(in 1 of 3 fields\).*fill the gaps"):
        tiny_inversion.predict(y)
    obs = make_heat_dataset(2, shape=(16, 16), amount=1.0, max_half_size=4.0).observation
    obs[0, 4, 4] = np.nan
    with pytest.raises(ValueError, match=r"'observation' contains 1 NaN.*interpolate_na"):
        obs.sciml.invert(tiny_inversion)
    pytest.importorskip("dask")
    lazy = invert(obs.chunk({"sample": 1}), tiny_inversion)  # checked when computed
    with pytest.raises(ValueError, match="'observation' contains 1 NaN"):
        lazy.estimate.compute()


def test_noise_outside_the_trained_range_falls_back_to_the_physics_inverse(tiny_inversion):
    op = tiny_inversion.operator
    y = op(RandomRectangles((16, 16), max_half_size=4.0).sample(2, torch.Generator().manual_seed(3)))
    assert tiny_inversion.predict(y, noise=0.0).source == "network"
    with pytest.warns(UserWarning, match=r"noise std 0\.05, outside .* trained on \(0 to 0\).*"
                                         r"observation_noise >= 0\.05"):
        res = tiny_inversion.predict(y, noise=0.05)
    assert res.source == "physics"
    expected = op.inverse_with_uncertainty(y, uncertainty=0.05)
    assert torch.allclose(res.estimate, expected.estimate.float().double(), atol=1e-6)
    assert torch.allclose(res.uncertainty, expected.uncertainty.float().double(), atol=1e-6)
    obs = make_heat_dataset(1, shape=(16, 16), amount=1.0, max_half_size=4.0).observation
    with pytest.warns(UserWarning, match="'observation' have noise std 0.05"):
        out = obs.sciml.invert(tiny_inversion, noise=0.05)
    assert out.source == "physics" and out.estimate.attrs["xsciml_estimate_from"] == "physics"
    with pytest.raises(ValueError, match="noise"):
        tiny_inversion.predict(y, noise=-1.0)


def test_noisy_training_accepts_its_own_noise_level():
    op = HeatOperator(1.0)
    data = RandomRectangles((16, 16), batch_size=4, max_half_size=4.0)
    inv = fit_inversion(op, data, steps=2, observation_noise=0.01, network_kwargs=TINY_NET,
                        calibration_examples=8, progress=False, device="cpu")
    y = op(data.sample(2, torch.Generator().manual_seed(1)))
    assert inv.observation_noise == 0.01
    assert inv.predict(y, noise=0.01).source == "network"
    assert inv.predict(y, noise=0.005).source == "network"
    with pytest.warns(UserWarning, match=r"0 to 0\.01"):
        assert inv.predict(y, noise=0.02).source == "physics"

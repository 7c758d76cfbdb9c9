"""Tests of the pure-torch coordinate networks in :mod:`xsciml.nn`."""

from __future__ import annotations

import copy
import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F

from xsciml.nn import (
    MFN,
    MLP,
    NETWORK_KINDS,
    SIREN,
    FourierFeatureMLP,
    FourierNet,
    MultiResGrid,
    build_network,
    default_grid_resolutions,
)

# small versions of every kind; in_features=3: two space columns then one time column
SMALL = {
    "mlp": dict(width=16, depth=2),
    "fourier": dict(n_frequencies=8, scale=[3.0, 3.0, 1.0], width=16, depth=2),
    "siren": dict(width=16, depth=2),
    "mfn": dict(width=16, depth=2, input_scale=8.0),
    "grid": dict(n_space=2, resolutions=[4, (6, 8)], n_features=2, width=16, depth=1),
}
KINDS = list(SMALL)


@pytest.fixture(autouse=True)
def _single_thread():
    """Small networks gain nothing from intra-op threads, and on a loaded 2-core machine
    two OpenMP threads made these tests 20-40x slower (spin-waiting)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _grid_2d(n: int = 32):
    g = torch.linspace(-1, 1, n)
    X, Y = torch.meshgrid(g, g, indexing="ij")
    x = torch.stack([X.ravel(), Y.ravel()], dim=-1)
    y = (torch.sin(3 * math.pi * X) * torch.cos(2 * math.pi * Y)).reshape(-1, 1)
    return x, y


def _fit(net, x, y, steps, lr):
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = (net(x) - y).square().mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (net(x) - y).square().mean().sqrt().item()


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_without_code(kind):
    torch.manual_seed(0)
    net = build_network(kind, in_features=3, out_features=2, **SMALL[kind])
    assert (net.in_features, net.out_features, net.code_dim) == (3, 2, 0)
    x = torch.rand(11, 3) * 2 - 1
    out = net(x)
    assert out.shape == (11, 2)
    assert torch.isfinite(out).all()
    # extra leading dimensions act like more points
    batched = net(x.reshape(1, 11, 3).expand(4, 11, 3))
    assert batched.shape == (4, 11, 2)
    torch.testing.assert_close(batched[2], out)
    assert net(torch.zeros(0, 3)).shape == (0, 2)


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_broadcast_with_code(kind):
    torch.manual_seed(0)
    net = build_network(kind, in_features=3, out_features=2, code_dim=5, **SMALL[kind])
    x = torch.rand(9, 3) * 2 - 1
    z = torch.randn(5)
    out = net(x, z)
    assert out.shape == (9, 2)
    # one code broadcast to all points == the same code repeated per point
    torch.testing.assert_close(out, net(x, z.expand(9, 5)))
    # per-trajectory codes with a batch of point sets
    zb = torch.randn(4, 1, 5)
    outb = net(x.expand(4, 9, 3), zb)
    assert outb.shape == (4, 9, 2)
    torch.testing.assert_close(outb[1], net(x, zb[1, 0]))
    # the code is actually used
    assert not torch.allclose(net(x, z), net(x, z + 1.0))


@pytest.mark.parametrize("kind", KINDS)
def test_input_errors(kind):
    net = build_network(kind, in_features=3, out_features=1, **SMALL[kind])
    with pytest.raises(ValueError, match="in_features"):
        net(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="code_dim=0"):
        net(torch.zeros(4, 3), torch.zeros(2))
    coded = build_network(kind, in_features=3, out_features=1, code_dim=2, **SMALL[kind])
    with pytest.raises(ValueError, match="code_dim=2"):
        coded(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="code_dim"):
        coded(torch.zeros(4, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="broadcast"):
        coded(torch.zeros(4, 3), torch.zeros(5, 2))


def test_build_network_errors_and_passthrough():
    with pytest.raises(ValueError, match="siren"):
        build_network("transformer", in_features=2, out_features=1)
    with pytest.raises(KeyError, match="kind"):
        build_network({"in_features": 2, "out_features": 1})
    with pytest.raises(ValueError, match="out_features"):
        build_network("mlp", in_features=2)
    with pytest.raises(ValueError, match="activation"):
        MLP(2, 1, activation="nope")
    with pytest.raises(ValueError, match="scale"):
        FourierFeatureMLP(3, 1, scale=[1.0, 2.0])
    with pytest.raises(ValueError, match="width"):
        MLP(2, 1, width=0)
    module = torch.nn.Linear(2, 1)
    assert build_network(module) is module
    assert {"mlp", "fourier", "siren", "mfn", "fouriernet", "grid"} <= set(NETWORK_KINDS)
    assert MFN is FourierNet
    assert isinstance(
        build_network("FourierNet", in_features=2, out_features=1, width=4), FourierNet
    )


@pytest.mark.parametrize("code_dim", [0, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_config_rebuild_gives_same_outputs(kind, code_dim):
    torch.manual_seed(1)
    net = build_network(kind, in_features=3, out_features=2, code_dim=code_dim, **SMALL[kind])
    with torch.no_grad():  # make the weights differ from any fresh initialisation
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    config = json.loads(json.dumps(net.config()))  # JSON-serialisable
    assert config["kind"] in NETWORK_KINDS
    torch.manual_seed(99)
    clone = build_network(config)
    assert clone.config() == net.config()
    x = torch.rand(7, 3) * 2 - 1
    z = torch.randn(code_dim) if code_dim else None
    assert not torch.allclose(clone(x, z), net(x, z))
    clone.load_state_dict(net.state_dict())
    torch.testing.assert_close(clone(x, z), net(x, z), rtol=0, atol=0)


def test_config_overrides():
    net = build_network(
        {"kind": "mlp", "in_features": 2, "out_features": 1, "width": 8}, out_features=3
    )
    assert net.out_features == 3 and net.config()["width"] == 8


# --------------------------------------------------------------------------- fitting


def test_mlp_fits_1d_function():
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 64)[:, None]
    y = torch.sin(3 * math.pi * x)
    rmse = _fit(MLP(1, 1, width=64, depth=3), x, y, steps=300, lr=1e-2)
    constant = y.std(unbiased=False).item()  # RMSE of the best constant model
    assert rmse < 0.1 < constant


@pytest.mark.parametrize(
    "kind, kwargs, lr",
    [
        ("fourier", dict(n_frequencies=32, scale=2.0, width=64, depth=2), 1e-3),
        ("siren", dict(width=64, depth=3, w0_initial=10.0), 1e-3),
        ("mfn", dict(width=64, depth=3, input_scale=16.0), 1e-3),
        ("grid", dict(resolutions=[4, 8, 16], width=32, depth=1), 1e-2),
    ],
)
def test_networks_fit_2d_function(kind, kwargs, lr):
    torch.manual_seed(0)
    x, y = _grid_2d(32)
    net = build_network(kind, in_features=2, out_features=1, **kwargs)
    rmse = _fit(net, x, y, steps=150, lr=lr)
    constant = y.std(unbiased=False).item()
    assert rmse < 0.1, rmse
    assert constant > 4 * rmse


# --------------------------------------------------------------------------- Fourier features


def test_fourier_features_reproducible_by_seed():
    a = FourierFeatureMLP(3, 1, n_frequencies=4096, scale=[8.0, 2.0, 0.5], width=4, depth=1, seed=3)
    b = FourierFeatureMLP(3, 1, n_frequencies=4096, scale=[8.0, 2.0, 0.5], width=4, depth=1, seed=3)
    c = FourierFeatureMLP(3, 1, n_frequencies=4096, scale=[8.0, 2.0, 0.5], width=4, depth=1, seed=4)
    B = a.encoding.B
    assert B.shape == (4096, 3)
    torch.testing.assert_close(B, b.encoding.B, rtol=0, atol=0)
    assert not torch.allclose(B, c.encoding.B)
    assert "encoding.B" in a.state_dict()
    # per-column standard deviation is the requested scale
    torch.testing.assert_close(B.std(0), torch.tensor([8.0, 2.0, 0.5]), rtol=0.05, atol=0)


def test_fourier_features_values_and_learnable():
    net = FourierFeatureMLP(2, 1, n_frequencies=3, scale=1.0, width=4, depth=1, learnable=True)
    x = torch.rand(5, 2)
    B = net.encoding.B
    proj = 2 * math.pi * x @ B.T
    expected = torch.cat([x, torch.sin(proj), torch.cos(proj)], dim=-1)
    torch.testing.assert_close(net.encoding(x), expected)
    assert isinstance(B, torch.nn.Parameter)
    net(x).sum().backward()
    assert B.grad is not None and B.grad.abs().sum() > 0
    fixed = FourierFeatureMLP(2, 1, n_frequencies=3, width=4, depth=1)
    assert "encoding.B" not in dict(fixed.named_parameters())


# --------------------------------------------------------------------------- SIREN / MFN


def test_siren_initialisation_bounds():
    net = SIREN(2, 1, width=64, depth=3, w0=30.0, w0_initial=30.0)
    assert net.layers[0].linear.weight.abs().max() <= 1 / 2
    bound = math.sqrt(6 / 64) / 30.0
    for layer in net.layers[1:]:
        w = layer.linear.weight
        assert w.abs().max() <= bound
        assert w.abs().max() > 0.9 * bound  # uniform over the whole range, not tiny
    assert net.head.weight.abs().max() <= bound


def test_siren_shift_modulation_matches_manual_forward():
    torch.manual_seed(0)
    net = SIREN(2, 1, width=8, depth=2, w0=5.0, w0_initial=7.0, code_dim=3)
    x, z = torch.rand(6, 2), torch.randn(3)
    s1, s2 = (net.modulator.weight @ z).split(8)
    l1, l2 = net.layers[0].linear, net.layers[1].linear
    h = torch.sin(7.0 * (x @ l1.weight.T + l1.bias + s1))
    h = torch.sin(5.0 * (h @ l2.weight.T + l2.bias + s2))
    torch.testing.assert_close(net(x, z), net.head(h))

    film = SIREN(2, 1, width=8, depth=1, w0=5.0, w0_initial=7.0, code_dim=3, modulation="film")
    gamma, beta = (film.modulator.weight @ z).split(8)
    l1 = film.layers[0].linear
    h = torch.sin(7.0 * ((x @ l1.weight.T + l1.bias) * (1 + gamma) + beta))
    torch.testing.assert_close(film(x, z), film.head(h))


def test_mfn_matches_paper_recursion_and_filter_scale():
    torch.manual_seed(0)
    net = FourierNet(2, 2, width=8, depth=1, input_scale=[12.0, 3.0], code_dim=4)
    x, z = torch.rand(5, 2), torch.randn(4)
    f0, f1, lin = net.filters[0], net.filters[1], net.linears[0]
    g0 = torch.sin(x @ f0.weight.T + f0.bias)
    g1 = torch.sin(x @ f1.weight.T + f1.bias)
    h = (g0 @ lin.weight.T + lin.bias + net.shift.weight @ z) * g1
    torch.testing.assert_close(net(x, z), net.head(h))
    # per-column frequency scale divided across depth + 1 filters
    for f in net.filters:
        assert f.weight[:, 0].abs().max() <= 12.0 / math.sqrt(2)
        assert f.weight[:, 1].abs().max() <= 3.0 / math.sqrt(2)
        assert f.bias.abs().max() <= math.pi
    wide = FourierNet(1, 1, width=4096, depth=3, input_scale=40.0)
    # U(-γ, γ) with γ = 40 / sqrt(4) = 20 has std 20 / sqrt(3)
    assert abs(wide.filters[2].weight.std().item() - 20 / math.sqrt(3)) < 0.5


# --------------------------------------------------------------------------- MultiResGrid


def _set_level(net: MultiResGrid, level: int, fn) -> None:
    """Write fn(node coordinates) into a dense level's table."""
    res = net.resolutions[level]
    axes = [torch.linspace(-1, 1, r) for r in res]
    nodes = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(res))
    with torch.no_grad():
        net.tables[level].copy_(fn(nodes))


def _multilinear(nodes: torch.Tensor) -> torch.Tensor:
    """A function that is linear in each coordinate separately, 4 features."""
    prod = torch.prod(nodes + 0.3, dim=-1, keepdim=True)
    lin = nodes.sum(-1, keepdim=True)
    return torch.cat([1 + 2 * lin, prod, 3 * prod - lin, torch.ones_like(lin)], dim=-1)


@pytest.mark.parametrize("res", [(9,), (5, 7), (3, 4, 6)])
def test_grid_interpolation_exact_for_multilinear_function(res):
    torch.manual_seed(0)
    d = len(res)
    net = MultiResGrid(d, 1, resolutions=[res])
    assert net.hashed == [False]
    _set_level(net, 0, _multilinear)
    pts = torch.rand(200, d) * 2 - 1
    pts[:3] = torch.tensor([[-1.0] * d, [1.0] * d, [0.0] * d])  # corners, borders
    torch.testing.assert_close(net.interpolate(0, pts), _multilinear(pts), atol=1e-5, rtol=1e-5)


def test_grid_dense_and_hashed_match_grid_sample_reference():
    torch.manual_seed(0)
    res = (9, 10)
    dense = MultiResGrid(2, 1, resolutions=[res], n_features=3, init_scale=1.0)
    hashed = MultiResGrid(2, 1, resolutions=[res], n_features=3, hash_size=64, init_scale=1.0)
    assert dense.hashed == [False] and hashed.hashed == [True]
    assert hashed.tables[0].shape == (64, 3)
    # node values of the hashed level, from an independent implementation of the hash
    i = torch.arange(res[0]).view(-1, 1).expand(res)
    j = torch.arange(res[1]).view(1, -1).expand(res)
    rows = torch.remainder(torch.bitwise_xor(i * 1, j * 2654435761), 64)
    # the 90 nodes spread over the 64 rows about as well as random rows would (~48)
    assert rows.unique().numel() >= 45
    pts = torch.rand(300, 2) * 2 - 1
    for net, values in [
        (dense, dense.tables[0].detach().view(*res, 3)),
        (hashed, hashed.tables[0].detach()[rows]),
    ]:
        # grid_sample: input [1, C, H, W], grid[..., 0] is x (W axis), [..., 1] is y (H axis)
        img = values.permute(2, 0, 1).unsqueeze(0)
        ref = F.grid_sample(img, pts.flip(-1).view(1, 1, -1, 2), align_corners=True)
        ref = ref.view(3, -1).T
        torch.testing.assert_close(net.interpolate(0, pts), ref, atol=1e-5, rtol=1e-5)


def test_grid_levels_are_hashed_only_above_hash_size():
    net = MultiResGrid(2, 1, resolutions=[4, 8, 16], hash_size=64)
    assert net.hashed == [False, False, True]
    assert [tuple(t.shape) for t in net.tables] == [(16, 4), (64, 4), (64, 4)]


def test_grid_output_is_continuous_and_clamped():
    torch.manual_seed(0)
    net = MultiResGrid(2, 1, resolutions=[5, (9, 17)], init_scale=1.0, width=16, depth=1)
    # x = 0.5 is a node of both levels along the first axis
    y = torch.rand(50, 1) * 2 - 1
    eps = 1e-4
    left = net(torch.cat([torch.full_like(y, 0.5 - eps), y], -1))
    right = net(torch.cat([torch.full_like(y, 0.5 + eps), y], -1))
    far = net(torch.cat([torch.full_like(y, 0.5 + 0.5), y], -1))
    jump = (left - right).abs().max()
    assert jump < 1e-2 * (left - far).abs().max()
    # outside [-1, 1] is clamped to the border
    inside = net(torch.cat([torch.ones_like(y), y], -1))
    outside = net(torch.cat([torch.full_like(y, 1.5), y], -1))
    torch.testing.assert_close(inside, outside)


def test_grid_gradient_flows_to_grid_parameters():
    torch.manual_seed(0)
    net = MultiResGrid(3, 1, n_space=2, resolutions=[4, 8, 32], hash_size=256)
    assert net.hashed == [False, False, True]
    pts = torch.rand(64, 3) * 2 - 1
    net(pts).square().sum().backward()
    for table in net.tables:
        assert table.grad is not None and table.grad.abs().sum() > 0
    # only rows at the corners of visited cells get a gradient
    coarse_rows = (net.tables[0].grad.abs().sum(-1) > 0).sum()
    assert 0 < coarse_rows <= 16
    assert net.film.weight.grad.abs().sum() > 0


def test_grid_time_modulation():
    torch.manual_seed(0)
    net = MultiResGrid(3, 1, n_space=2, resolutions=[4, 8, 16], time_frequencies=2, init_scale=1.0)
    assert net.n_time_levels == 2  # ceil(3 / 2) coarsest levels
    assert net.film.out_features == 2 * 4 * 2
    assert net.time_encoding(torch.zeros(1, 1)).shape == (1, 1 + 2 * 2)
    # FiLM is the identity at initialisation ...
    assert net.film.weight.abs().sum() == 0 and net.film.bias.abs().sum() == 0
    with torch.no_grad():
        net.film.weight.normal_()
    xy = torch.rand(20, 2) * 2 - 1
    out0 = net(torch.cat([xy, torch.full((20, 1), -0.5)], -1))
    out1 = net(torch.cat([xy, torch.full((20, 1), 0.5)], -1))
    assert (out0 - out1).abs().max() > 1e-3


def test_grid_fits_space_time_field():
    torch.manual_seed(0)
    g = torch.linspace(-1, 1, 16)
    X, Y, T = torch.meshgrid(g, g, torch.linspace(-1, 1, 8), indexing="ij")
    pts = torch.stack([X, Y, T], -1).reshape(-1, 3)
    target = (torch.sin(math.pi * X + 2 * T) * torch.cos(math.pi * Y)).reshape(-1, 1)
    net = MultiResGrid(3, 1, n_space=2, resolutions=[4, 8, 16], width=32, depth=1)
    rmse = _fit(net, pts, target, steps=200, lr=1e-2)
    # a time-independent field can do no better than the time-mean at each point
    per_point = target.view(16, 16, 8, 1)
    static = (per_point - per_point.mean(2, keepdim=True)).square().mean().sqrt().item()
    assert rmse < 0.5 * static, (rmse, static)


def test_grid_regularization():
    net = MultiResGrid(1, 1, resolutions=[5, (11,)], n_features=2)
    with torch.no_grad():
        for t in net.tables:
            t.fill_(0.7)
    assert net.regularization().item() == 0.0
    # a linear ramp from 0 to 1: R - 1 steps of 1 / (R - 1), 2 features, squared and summed
    _set_level(net, 0, lambda n: (n + 1) / 2 * torch.ones(1, 2))
    _set_level(net, 1, lambda n: (n + 1) / 2 * torch.ones(1, 2))
    assert net.regularization().item() == pytest.approx(2 / 4 + 2 / 10)
    reg = net.regularization()
    reg.backward()
    assert net.tables[0].grad.abs().sum() > 0
    # 2-D: sums over both dimensions; every neighbour difference is 1 here
    # (2 x 5 along the first axis, 3 x 4 along the second), squared or absolute alike
    for smoothness in ("l2", "tv"):
        net2 = MultiResGrid(2, 1, resolutions=[(3, 5)], n_features=1, smoothness=smoothness)
        _set_level(net2, 0, lambda n: n[:, :1] + 2 * n[:, 1:])
        assert net2.regularization().item() == pytest.approx(2 * 5 + 3 * 4)
    # "tv" is linear in the differences, "l2" quadratic
    net3 = MultiResGrid(1, 1, resolutions=[3], n_features=1, smoothness="tv")
    _set_level(net3, 0, lambda n: 3 * n)
    assert net3.regularization().item() == pytest.approx(6.0)
    with pytest.raises(ValueError, match="smoothness"):
        MultiResGrid(1, 1, resolutions=[3], smoothness="l1")


def test_grid_regularization_skips_hashed_levels():
    net = MultiResGrid(2, 1, resolutions=[4, 16], hash_size=32, init_scale=1.0)
    assert net.hashed == [False, True]
    with torch.no_grad():
        net.tables[0].fill_(1.0)
    assert net.regularization().item() == 0.0
    only_hashed = MultiResGrid(2, 1, resolutions=[16], hash_size=32, init_scale=1.0)
    assert only_hashed.regularization().item() == 0.0


def test_grid_argument_errors():
    with pytest.raises(ValueError, match="n_space"):
        MultiResGrid(4, 1)  # four grid dimensions by default
    with pytest.raises(ValueError, match="n_space"):
        MultiResGrid(2, 1, resolutions=[(4, 4, 4)])
    with pytest.raises(ValueError, match="coarse to fine"):
        MultiResGrid(2, 1, resolutions=[16, 4])
    with pytest.raises(ValueError, match=">= 2"):
        MultiResGrid(2, 1, resolutions=[1, 4])
    with pytest.raises(ValueError, match="n_time_levels"):
        MultiResGrid(3, 1, n_space=2, resolutions=[4, 8], n_time_levels=3)


def test_default_grid_resolutions():
    assert default_grid_resolutions((64, 192), n_levels=5, coarsest=4) == [
        (4, 12),
        (8, 24),
        (16, 48),
        (32, 96),
        (64, 192),
    ]
    levels = default_grid_resolutions((50, 30, 30), n_levels=4, coarsest=3)
    assert levels[0] == (5, 3, 3) and levels[-1] == (50, 30, 30)
    assert all(math.prod(a) <= math.prod(b) for a, b in itertools.pairwise(levels))
    assert default_grid_resolutions(100, n_levels=3, coarsest=4) == [(4,), (20,), (100,)]
    assert default_grid_resolutions((3, 6), n_levels=2, coarsest=8) == [(3, 6), (3, 6)]
    assert default_grid_resolutions((16, 16), n_levels=1) == [(16, 16)]
    with pytest.raises(ValueError, match="extent_cells"):
        default_grid_resolutions((1, 10))
    # usable directly as MultiResGrid resolutions
    net = MultiResGrid(2, 1, resolutions=default_grid_resolutions((12, 24), n_levels=3))
    assert net.resolutions[-1] == (12, 24)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", [*KINDS, "hashed-grid"])
def test_networks_on_cuda_match_cpu(kind):
    torch.manual_seed(0)
    kwargs = dict(SMALL["grid"], hash_size=16) if kind == "hashed-grid" else SMALL[kind]
    net = build_network(kind.split("-")[-1], in_features=3, out_features=2, code_dim=3, **kwargs)
    x, z = torch.rand(50, 3) * 2 - 1, torch.randn(3)
    expected = net(x, z)
    gpu = copy.deepcopy(net).cuda()
    out = gpu(x.cuda(), z.cuda())
    torch.testing.assert_close(out.cpu(), expected, atol=1e-4, rtol=1e-4)
    out.square().sum().backward()
    assert all(p.grad is not None for p in gpu.parameters() if p.requires_grad)

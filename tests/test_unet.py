"""The reusable 2-D U-Net (xsciml.nn.unet)."""

from __future__ import annotations

import pytest
import torch

from xsciml.nn.unet import ConvBlock, UNet


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_default_is_the_sip_reference_size():
    # 4 levels x 16 filters: inc (2,544) + 3 down (4,704 each) + 3 up (7,008 each) + 1x1 (17)
    assert _n_params(UNet(1, 1)) == 2544 + 3 * 4704 + 3 * 7008 + 17


@pytest.mark.parametrize("shape", [(64, 64), (13, 7), (16, 40)])
def test_output_shape_any_size(shape):
    net = UNet(2, 3, base_channels=4, levels=3)
    out = net(torch.randn(2, 2, *shape))
    assert out.shape == (2, 3, *shape)


def test_channel_mult_widths():
    net = UNet(1, 1, base_channels=4, levels=3, channel_mult=(1, 2, 4))
    assert [b.conv2.out_channels for b in net.down] == [8, 16]
    assert net.up[0].conv1.in_channels == 16 + 8  # bottleneck + skip
    assert net(torch.randn(1, 1, 16, 16)).shape == (1, 1, 16, 16)


def test_all_parameters_receive_gradients():
    net = UNet(1, 1, base_channels=4, levels=3, cond_dim=3, norm="group")
    with torch.no_grad():  # make the zero-initialised FiLM layers pass gradients to cond paths
        for m in net.modules():
            if isinstance(m, ConvBlock) and m.film is not None:
                m.film.weight.normal_(0, 0.1)
    net(torch.randn(2, 1, 16, 16), torch.randn(2, 3)).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_conditioning_is_identity_at_init_and_then_matters():
    torch.manual_seed(0)
    net = UNet(1, 1, base_channels=4, levels=2, cond_dim=2, norm="group").eval()
    x = torch.randn(2, 1, 12, 12)
    a = net(x, torch.zeros(2, 2))
    b = net(x, torch.randn(2, 2))
    assert torch.allclose(a, b)  # zero-initialised FiLM
    with torch.no_grad():
        net.inc.film.bias[0] = 1.0  # scale of channel 0 -> x2 for every cond
        net.inc.film.weight[4] = 1.0  # shift of channel 0 depends on cond
    c = net(x, torch.zeros(2, 2))
    d = net(x, torch.ones(2, 2))
    assert not torch.allclose(a, c) and not torch.allclose(c, d)


def test_circular_padding_single_level_is_shift_equivariant():
    torch.manual_seed(0)
    net = UNet(1, 2, base_channels=4, levels=1, padding_mode="circular", norm=None)
    x = torch.randn(1, 1, 10, 10)
    shifted = net(torch.roll(x, shifts=(3, -2), dims=(-2, -1)))
    assert torch.allclose(shifted, torch.roll(net(x), shifts=(3, -2), dims=(-2, -1)), atol=1e-6)


def test_learns_a_simple_map():
    torch.manual_seed(0)
    net = UNet(1, 1, base_channels=8, levels=2, norm=None)
    x = torch.randn(8, 1, 16, 16)
    target = 2.0 * x + 1.0
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = (net(x) - target).square().mean()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.25 * first


def test_batch_norm_and_group_norm_modes():
    x = torch.randn(1, 1, 8, 8)
    UNet(1, 1, base_channels=4, levels=2, norm="group")(x)  # batch of 1 is fine
    bn = UNet(1, 1, base_channels=4, levels=2, norm="batch")
    bn(torch.randn(4, 1, 8, 8))
    assert bn.inc.norm1.num_batches_tracked.item() == 1
    bn.eval()
    assert torch.equal(bn(x), bn(x))


def test_argument_errors():
    with pytest.raises(ValueError, match="levels"):
        UNet(1, 1, levels=0)
    with pytest.raises(ValueError, match="norm"):
        UNet(1, 1, norm="layer")
    with pytest.raises(ValueError, match="padding_mode"):
        UNet(1, 1, padding_mode="wrap")
    with pytest.raises(ValueError, match="channel_mult"):
        UNet(1, 1, levels=2, channel_mult=(1, 2, 4))
    net = UNet(1, 1, base_channels=4, levels=3)
    with pytest.raises(ValueError, match="too small"):
        net(torch.randn(1, 1, 3, 8))
    with pytest.raises(ValueError, match="cond_dim=0"):
        net(torch.randn(1, 1, 8, 8), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="batch, channels"):
        net(torch.randn(1, 8, 8))
    cnet = UNet(1, 1, base_channels=4, levels=2, cond_dim=2)
    with pytest.raises(ValueError, match="cond must have shape"):
        cnet(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="cond must have shape"):
        cnet(torch.randn(2, 1, 8, 8), torch.zeros(2, 3))

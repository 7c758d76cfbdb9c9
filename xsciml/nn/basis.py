r"""A decoder that contains the linear latent model: mean field + basis fields + residual.

.. math::

    f(x, t, z) = m(x) + B(x)\,z + r(x, t, z),

where :math:`m(x)` and the ``code_dim`` columns of :math:`B(x)` are values stored at the
nodes of a regular grid spanning [-1, 1] in each space column and interpolated
(bi/trilinearly) between them — so on a grid-aligned training set they can represent
any field exactly, and they are defined everywhere. :math:`r` is a small MLP of the
coordinates, learned grid features, time columns and the code, whose output layer
starts at zero: a model built from a linear one (e.g. PCA,
:meth:`BasisField.set_linear`) starts *exactly* as that linear model.

With :math:`z \sim \mathcal N(0, I)` and a Gaussian likelihood, the linear part is
probabilistic PCA (Tipping & Bishop 1999); :meth:`BasisField.linear_terms` gives
:math:`m` and :math:`B` at points so that codes can be inferred in closed form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._utils import check_positive_int
from .layers import CoordinateNetwork, get_activation

__all__ = ["BasisField"]


class BasisField(CoordinateNetwork):
    """Mean field plus code-weighted basis fields on a grid, plus a nonlinear residual.

    Parameters
    ----------
    in_features
        Input columns (space first, then time).
    out_features
        Output channels.
    code_dim
        Size of the code ``z`` (number of basis fields); at least 1.
    resolution
        Grid nodes along each space column (an int for all, or one per column), nodes
        at ``linspace(-1, 1, n)``; coordinates outside [-1, 1] are clamped. Use the
        training grid's sizes to represent any field on it.
    n_space
        Space columns (1 to 3); default ``in_features``. Further columns (time) feed
        the residual only.
    width
        Width of the residual MLP.
    depth
        Depth of the residual MLP; ``depth=0`` gives the purely linear decoder ``m + B z``.
    activation
        Activation of the residual MLP.
    n_features
        Learned grid features given to the residual at each point.
    init_scale
        Uniform initial range of the basis values and residual grid features (the mean
        starts at zero); :meth:`set_linear` overwrites the linear part.

    Examples
    --------
    >>> net = BasisField(2, 1, code_dim=4, resolution=(5, 7), width=16, depth=1)
    >>> x = torch.rand(10, 2) * 2 - 1
    >>> net(x, z=torch.zeros(4)).abs().max().item()  # mean starts at 0, residual at 0
    0.0
    >>> m, B = net.linear_terms(x)
    >>> tuple(m.shape), tuple(B.shape)
    ((10, 1), (10, 1, 4))
    """

    kind = "basis"
    # buffers registered in __init__ (declared for the type checker)
    _strides: Tensor
    _sizes: Tensor
    _corners: Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        code_dim: int,
        resolution: int | Sequence[int] = 32,
        n_space: int | None = None,
        width: int = 64,
        depth: int = 2,
        activation: str = "gelu",
        n_features: int = 4,
        init_scale: float = 1e-3,
    ) -> None:
        super().__init__(in_features, out_features, code_dim)
        if self.code_dim < 1:
            raise ValueError("BasisField needs code_dim >= 1 (the number of basis fields).")
        n_space = self.in_features if n_space is None else check_positive_int(n_space, "n_space")
        if not 1 <= n_space <= min(3, self.in_features):
            raise ValueError(
                f"n_space={n_space}: grids support 1 to 3 space columns and there are "
                f"{self.in_features} input columns; pass n_space=<number of space columns>."
            )
        if isinstance(resolution, int):
            resolution = (resolution,) * n_space
        resolution = tuple(check_positive_int(r, "resolution entries", minimum=2) for r in resolution)
        if len(resolution) != n_space:
            raise ValueError(
                f"resolution {resolution} has {len(resolution)} entries for n_space={n_space}; "
                "give one node count per space column or a single int."
            )
        depth = check_positive_int(depth, "depth", minimum=0)
        width = check_positive_int(width, "width")
        n_features = check_positive_int(n_features, "n_features", minimum=0)
        if depth == 0 and self.in_features > n_space:
            raise ValueError(
                f"{self.in_features - n_space} time column(s) need the residual network "
                "(depth >= 1): the linear part depends on space only."
            )
        self.n_space, self.resolution, self.depth = n_space, resolution, depth
        n_nodes = math.prod(resolution)
        self.mean = nn.Parameter(torch.zeros(n_nodes, self.out_features))
        self.basis = nn.Parameter(
            torch.empty(n_nodes, self.out_features, self.code_dim).uniform_(-init_scale, init_scale)
        )
        strides = [math.prod(resolution[d + 1:]) for d in range(n_space)]
        self.register_buffer("_strides", torch.tensor(strides, dtype=torch.long), persistent=False)
        self.register_buffer("_sizes", torch.tensor(resolution), persistent=False)
        corners = torch.cartesian_prod(*[torch.tensor([0, 1])] * n_space).reshape(-1, n_space)
        self.register_buffer("_corners", corners, persistent=False)
        if depth:
            self.features = nn.Parameter(torch.empty(n_nodes, n_features).uniform_(-init_scale, init_scale))
            self.res_in = nn.Linear(self.in_features + n_features, width)
            self.res_code = nn.Linear(self.code_dim, width, bias=False)
            hidden = []
            for _ in range(depth - 1):
                hidden += [get_activation(activation), nn.Linear(width, width)]
            self.res_hidden = nn.Sequential(*hidden, get_activation(activation))
            self.res_out = nn.Linear(width, self.out_features)
            nn.init.zeros_(self.res_out.weight)
            nn.init.zeros_(self.res_out.bias)
        self._config.update(resolution=list(resolution), n_space=n_space, width=width, depth=depth,
                            activation=activation, n_features=n_features, init_scale=float(init_scale))

    # ------------------------------------------------------------------ interpolation
    def node_coordinates(self) -> Tensor:
        """Normalised coordinates of the grid nodes, ``[n_nodes, n_space]`` (C order).

        Examples
        --------
        >>> BasisField(2, 1, code_dim=1, resolution=(2, 3), depth=0).node_coordinates()[:2]
        tensor([[-1., -1.],
                [-1.,  0.]])
        """
        axes = [torch.linspace(-1.0, 1.0, n) for n in self.resolution]
        return torch.cartesian_prod(*axes).reshape(-1, self.n_space)

    def interpolation(self, space: Tensor) -> tuple[Tensor, Tensor]:
        """Node rows ``[N, C]`` and weights ``[N, C]`` of the ``C = 2**n_space`` cell corners.

        Examples
        --------
        >>> net = BasisField(1, 1, code_dim=1, resolution=3, depth=0)
        >>> rows, w = net.interpolation(torch.tensor([[0.5]]))
        >>> rows.tolist(), w.tolist()
        ([[1, 2]], [[0.5, 0.5]])
        """
        size = self._sizes.to(space.dtype)
        pos = (space.clamp(-1.0, 1.0) + 1.0) * (0.5 * (size - 1))
        base = torch.minimum(pos.detach().floor(), size - 2)
        frac = (pos - base).unsqueeze(-2)
        corners = base.long().unsqueeze(-2) + self._corners
        weights = torch.where(self._corners.bool(), frac, 1.0 - frac).prod(-1)
        return (corners * self._strides).sum(-1), weights

    def _interp(self, table: Tensor, rows: Tensor, weights: Tensor) -> Tensor:
        """Interpolate ``table [n_nodes, ...]`` at points given by ``rows, weights [N, C]``."""
        vals = table.index_select(0, rows.reshape(-1)).view(*rows.shape, *table.shape[1:])
        w = weights.to(table.dtype).view(*weights.shape, *([1] * (table.ndim - 1)))
        return (vals * w).sum(1)

    def linear_terms(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``m [..., out]`` and basis ``B [..., out, code_dim]`` at the points.

        Examples
        --------
        >>> net = BasisField(2, 2, code_dim=3, resolution=4, depth=0)
        >>> [tuple(t.shape) for t in net.linear_terms(torch.zeros(5, 2))]
        [(5, 2), (5, 2, 3)]
        """
        lead = features.shape[:-1]
        rows, w = self.interpolation(features.reshape(-1, self.in_features)[:, : self.n_space])
        m = self._interp(self.mean, rows, w)
        B = self._interp(self.basis, rows, w)
        return m.view(*lead, self.out_features), B.view(*lead, self.out_features, self.code_dim)

    # ------------------------------------------------------------------ forward
    def forward(self, features: Tensor, z: Tensor | None = None) -> Tensor:
        self._check_inputs(features, z)
        lead = features.shape[:-1]
        k, out = self.code_dim, self.out_features
        x = features.reshape(-1, self.in_features)
        rows, w = self.interpolation(x[:, : self.n_space])
        assert z is not None  # code_dim >= 1: _check_inputs refuses a missing code
        z = z.to(self.basis.dtype)
        if z.ndim >= 2 and len(lead) >= 2 and z.shape[-2] == 1:
            # one code per group of points (decoding snapshots on a target): combine the
            # node tables with each code first, then interpolate — O(groups x nodes x k)
            groups = lead[:-1]
            zg = z.expand(*groups, 1, k).reshape(-1, k)
            grids = self.mean + torch.einsum("gok,sk->sgo", self.basis, zg)  # [Gs, nodes, out]
            n_g, n_p = zg.shape[0], lead[-1]
            r = rows.view(n_g, n_p * rows.shape[-1])
            vals = torch.gather(grids, 1, r.unsqueeze(-1).expand(-1, -1, out))
            lin = (vals.view(n_g, n_p, -1, out) * w.view(n_g, n_p, -1, 1)).sum(2).reshape(-1, out)
            zp = None
        else:
            zp = self._broadcast_code(z, features).reshape(-1, k)
            lin = self._interp(self.mean, rows, w) + torch.einsum(
                "nok,nk->no", self._interp(self.basis, rows, w), zp)
        if self.depth:
            feats = self._interp(self.features, rows, w)
            h = self.res_in(torch.cat([x, feats], dim=-1))
            if zp is None:  # the code term once per group, broadcast over its points
                hz = self.res_code(zg).unsqueeze(1)
                h = (h.view(zg.shape[0], -1, h.shape[-1]) + hz).reshape(h.shape)
            else:
                h = h + self.res_code(zp)
            lin = lin + self.res_out(self.res_hidden(h))
        return lin.view(*lead, out)

    def residual(self, features: Tensor, z: Tensor) -> Tensor:
        """The nonlinear part ``r(x, t, z)`` alone, with one code per point (``[..., out]``).

        Examples
        --------
        >>> net = BasisField(2, 1, code_dim=3, resolution=4, width=8, depth=1)
        >>> net.residual(torch.zeros(5, 2), torch.ones(5, 3)).abs().max().item()  # starts at 0
        0.0
        """
        lead = features.shape[:-1]
        if not self.depth:
            return features.new_zeros(*lead, self.out_features)
        x = features.reshape(-1, self.in_features)
        rows, w = self.interpolation(x[:, : self.n_space])
        h = self.res_in(torch.cat([x, self._interp(self.features, rows, w)], dim=-1))
        h = h + self.res_code(self._broadcast_code(z, features).reshape(-1, self.code_dim).to(h.dtype))
        return self.res_out(self.res_hidden(h)).view(*lead, self.out_features)

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def set_linear(self, mean: Tensor, basis: Tensor) -> None:
        """Set the node values of the linear part: ``mean [n_nodes, out]``, ``basis [n_nodes, out, k]``.

        Examples
        --------
        >>> net = BasisField(1, 1, code_dim=1, resolution=2, depth=0)
        >>> net.set_linear(torch.tensor([[0.0], [2.0]]), torch.ones(2, 1, 1))
        >>> net(torch.tensor([[0.0]]), z=torch.tensor([3.0])).item()
        4.0
        """
        n = self.mean.shape[0]
        if tuple(mean.shape) != (n, self.out_features) or tuple(basis.shape) != (n, self.out_features, self.code_dim):
            raise ValueError(
                f"set_linear expects mean [{n}, {self.out_features}] and basis "
                f"[{n}, {self.out_features}, {self.code_dim}], got {tuple(mean.shape)} and "
                f"{tuple(basis.shape)}."
            )
        self.mean.copy_(mean)
        self.basis.copy_(basis)

    @property
    def has_residual(self) -> bool:
        """Whether the nonlinear residual exists (``depth >= 1``)."""
        return bool(self.depth)

    def regularization(self) -> Tensor:
        """Squared differences of neighbouring nodes of the mean and basis grids (a GMRF roughness).

        Examples
        --------
        >>> net = BasisField(2, 1, code_dim=2, resolution=3, depth=0, init_scale=0.0)
        >>> float(net.regularization().detach())
        0.0
        """
        total = self.mean.new_zeros(())
        for table in (self.mean, self.basis):
            grid = table.view(*self.resolution, -1)
            for d in range(self.n_space):
                total = total + grid.diff(dim=d).square().sum()
        return total

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, resolution={self.resolution}, residual_depth={self.depth}"

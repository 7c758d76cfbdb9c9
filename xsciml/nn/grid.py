"""Multi-resolution learned feature grids (Instant-NGP style) for neural fields."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from .._utils import check_positive_int
from .layers import MLP, CoordinateNetwork

__all__ = ["MultiResGrid", "default_grid_resolutions"]

# Spatial-hash primes of Instant-NGP (Müller et al. 2022); the first dimension is not
# multiplied so that neighbouring cells along it stay coherent in memory.
_HASH_PRIMES = (1, 2654435761, 805459861)
_MAX_SPACE_DIMS = len(_HASH_PRIMES)


def default_grid_resolutions(
    extent_cells: Sequence[int], n_levels: int = 5, coarsest: int = 4
) -> list[tuple[int, ...]]:
    """Per-level grid sizes growing geometrically up to the data resolution.

    The shorter axis goes from ``coarsest`` to its number of cells in ``n_levels``
    geometric steps; the other axes keep the data's aspect ratio.

    Parameters
    ----------
    extent_cells
        Number of grid cells (points) of the data along each space dimension.
    n_levels
        Number of levels.
    coarsest
        Size of the coarsest level along the shorter axis (at least 2; capped by the
        shorter extent).

    Returns
    -------
    list of tuple of int
        One ``tuple`` of per-dimension sizes per level, coarse to fine; the last level
        equals ``extent_cells``.

    Examples
    --------
    >>> default_grid_resolutions((64, 192), n_levels=5, coarsest=4)
    [(4, 12), (8, 24), (16, 48), (32, 96), (64, 192)]
    """
    if isinstance(extent_cells, int):
        extent_cells = (extent_cells,)
    extent = tuple(check_positive_int(e, "extent_cells entries", minimum=2) for e in extent_cells)
    if not extent:
        raise ValueError("extent_cells must name at least one dimension, e.g. (64, 128).")
    n_levels = check_positive_int(n_levels, "n_levels")
    coarsest = check_positive_int(coarsest, "coarsest", minimum=2)
    short = min(extent)
    start = min(coarsest, short)
    if n_levels == 1:
        return [extent]
    growth = (short / start) ** (1.0 / (n_levels - 1))
    levels = []
    for level in range(n_levels - 1):
        size = start * growth**level
        levels.append(tuple(max(2, round(size * e / short)) for e in extent))
    levels.append(extent)
    return levels


def _normalise_resolutions(resolutions: Any, n_space: int) -> list[tuple[int, ...]]:
    if isinstance(resolutions, int) or not isinstance(resolutions, Sequence) or not resolutions:
        raise TypeError(
            "resolutions must be a non-empty sequence of per-level sizes, each an int or a "
            f"tuple of {n_space} ints, e.g. [16, 32, 64] or [(4, 12), (8, 24)]; got {resolutions!r}."
        )
    out = []
    for r in resolutions:
        if isinstance(r, Sequence):
            if len(r) != n_space:
                raise ValueError(
                    f"resolution {tuple(r)} has {len(r)} entries but n_space={n_space}; give "
                    "one size per space dimension or a single int."
                )
            res = tuple(check_positive_int(v, "resolutions entries", minimum=2) for v in r)
        else:
            res = (check_positive_int(r, "resolutions entries", minimum=2),) * n_space
        out.append(res)
    cells = [math.prod(r) for r in out]
    if any(b < a for a, b in itertools.pairwise(cells)):
        raise ValueError(f"resolutions must go from coarse to fine, got {out}.")
    return out


class MultiResGrid(CoordinateNetwork):
    """Multi-resolution feature grids interpolated at the coordinates, then an MLP.

    Each level ``l`` stores ``n_features`` learned values at the nodes of a regular
    grid of ``resolutions[l]`` nodes spanning [-1, 1] in each of the first ``n_space``
    input columns (node ``0`` at -1, the last node at +1: "align_corners"). Features
    are interpolated linearly (1-D), bilinearly (2-D) or trilinearly (3-D);
    coordinates outside [-1, 1] are clamped to the border. A level with at most
    ``hash_size`` nodes is stored densely; a finer one in a table of ``hash_size``
    rows indexed by the spatial hash of Instant-NGP (Müller et al. 2022):
    ``(i_1·π_1 ⊕ i_2·π_2 ⊕ i_3·π_3) mod hash_size``.

    The remaining ``in_features - n_space`` columns are time(-derived) columns. They
    are encoded as ``[t, sin(π f t), cos(π f t)]`` for ``f`` in ``time_frequencies``
    and, through a linear map (zero at initialisation), give a FiLM scale and shift
    ``feat·(1 + γ(t)) + β(t)`` to the ``n_time_levels`` coarsest levels. The head MLP
    sees the concatenated level features, the time encoding and (by concatenation)
    the code ``z``.

    Parameters
    ----------
    in_features
        Input columns (space first, then time).
    out_features
        Output channels.
    n_space
        Number of space columns interpolated on the grids (1 to 3). Defaults to
        ``in_features`` (every column is a grid dimension).
    resolutions
        Per-level grid sizes from coarse to fine, each an int (same along every
        dimension) or a tuple of ``n_space`` ints (anisotropic); see
        :func:`default_grid_resolutions`.
    n_features
        Features per level.
    hash_size
        Largest dense level (in nodes) and number of rows of hashed levels; a power
        of two spreads the hash best.
    n_time_levels
        Number of coarse levels modulated by time; default ``ceil(n_levels / 2)``.
    time_frequencies
        ``K`` (meaning ``f = 1, …, K``: harmonics of the window [-1, 1]) or an explicit
        sequence of frequencies ``f``; ``0`` or ``[]`` uses the raw time columns only.
    width
        Width of the head MLP.
    depth
        Depth of the head MLP.
    activation
        Activation of the head MLP.
    code_dim
        Size of the conditioning code (concatenated to the head's input).
    init_scale
        Grid values start uniform in ``[-init_scale, init_scale]``.
    smoothness
        Roughness measure of :meth:`regularization`: ``"l2"`` (squared differences of
        neighbouring nodes, a Gaussian Markov random-field prior) or ``"tv"`` (absolute
        differences, total variation, which keeps sharp edges).

    Examples
    --------
    >>> net = MultiResGrid(3, 1, n_space=2, resolutions=[(4, 8), (8, 16), (16, 32)],
    ...                    n_features=2, width=32, depth=1)
    >>> net(torch.rand(10, 3) * 2 - 1).shape
    torch.Size([10, 1])
    >>> float(net.regularization().detach()) >= 0.0
    True
    """

    kind = "grid"
    # buffers registered in __init__ (declared for the type checker)
    _multipliers: Tensor
    _sizes: Tensor
    _corners: Tensor
    _time_freqs: Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        n_space: int | None = None,
        resolutions: Sequence[int | Sequence[int]] = (8, 16, 32, 64, 128),
        n_features: int = 4,
        hash_size: int = 2**19,
        n_time_levels: int | None = None,
        time_frequencies: int | Sequence[float] = 8,
        width: int = 128,
        depth: int = 2,
        activation: str = "gelu",
        code_dim: int = 0,
        init_scale: float = 1e-4,
        smoothness: str = "l2",
    ) -> None:
        super().__init__(in_features, out_features, code_dim)
        n_space = self.in_features if n_space is None else check_positive_int(n_space, "n_space")
        if n_space > min(self.in_features, _MAX_SPACE_DIMS):
            raise ValueError(
                f"n_space={n_space} but grids support 1 to {_MAX_SPACE_DIMS} space dimensions "
                f"and there are {self.in_features} input columns; pass n_space=<number of "
                "space columns> (the remaining columns are treated as time)."
            )
        self.n_space = n_space
        self.n_time = self.in_features - n_space
        self.resolutions = _normalise_resolutions(resolutions, n_space)
        self.n_levels = len(self.resolutions)
        self.n_features = check_positive_int(n_features, "n_features")
        self.hash_size = check_positive_int(hash_size, "hash_size")
        if not init_scale >= 0:
            raise ValueError(f"init_scale must be >= 0, got {init_scale}.")
        if smoothness not in ("l2", "tv"):
            raise ValueError(f"smoothness must be 'l2' or 'tv', got {smoothness!r}.")
        self.smoothness = smoothness

        # tables, and per level the multipliers that turn corner indices into rows:
        # C-order strides (dense) or hash primes (hashed)
        self.hashed = [math.prod(r) > self.hash_size for r in self.resolutions]
        tables, multipliers = [], []
        for res, hashed in zip(self.resolutions, self.hashed, strict=True):
            rows = self.hash_size if hashed else math.prod(res)
            tables.append(
                nn.Parameter(torch.empty(rows, self.n_features).uniform_(-init_scale, init_scale))
            )
            if hashed:
                multipliers.append(_HASH_PRIMES[:n_space])
            else:
                multipliers.append(tuple(math.prod(res[d + 1 :]) for d in range(n_space)))
        self.tables = nn.ParameterList(tables)
        self.register_buffer(
            "_multipliers", torch.tensor(multipliers, dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "_sizes", torch.tensor(self.resolutions, dtype=torch.long), persistent=False
        )
        # the 2**n_space corners of a cell, as 0/1 offsets: [C, n_space]
        corners = torch.cartesian_prod(*[torch.tensor([0, 1])] * n_space).reshape(-1, n_space)
        self.register_buffer("_corners", corners, persistent=False)

        # time encoding and FiLM
        if isinstance(time_frequencies, int) and not isinstance(time_frequencies, bool):
            if time_frequencies < 0:
                raise ValueError(f"time_frequencies must be >= 0, got {time_frequencies}.")
            freqs = [float(k) for k in range(1, time_frequencies + 1)]
        else:
            try:
                # a bool is no sequence: iterating it raises the TypeError below
                freqs = [float(f) for f in cast(Sequence[float], time_frequencies)]
            except TypeError:
                raise TypeError(
                    "time_frequencies must be an int K or a sequence of floats, "
                    f"got {time_frequencies!r}."
                ) from None
        self.register_buffer("_time_freqs", math.pi * torch.tensor(freqs), persistent=False)
        n_time_levels = (
            math.ceil(self.n_levels / 2)
            if n_time_levels is None
            else check_positive_int(n_time_levels, "n_time_levels", minimum=0)
        )
        if n_time_levels > self.n_levels:
            raise ValueError(f"n_time_levels={n_time_levels} exceeds the {self.n_levels} levels.")
        self.n_time_levels = n_time_levels if self.n_time else 0
        self.n_time_encoding = self.n_time * (1 + 2 * len(freqs))
        if self.n_time and self.n_time_levels:
            self.film = nn.Linear(self.n_time_encoding, 2 * self.n_features * self.n_time_levels)
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        self.head = MLP(
            self.n_levels * self.n_features + self.n_time_encoding,
            self.out_features,
            width=width,
            depth=depth,
            activation=activation,
            code_dim=self.code_dim,
        )
        self._config.update(
            n_space=n_space,
            resolutions=[list(r) for r in self.resolutions],
            n_features=self.n_features,
            hash_size=self.hash_size,
            n_time_levels=n_time_levels,
            time_frequencies=time_frequencies if isinstance(time_frequencies, int) else freqs,
            width=self.head._config["width"],
            depth=self.head._config["depth"],
            activation=activation,
            init_scale=float(init_scale),
            smoothness=smoothness,
        )

    def interpolate(self, level: int, space: Tensor) -> Tensor:
        """Features of one level at the points ``space: Tensor[N, n_space]`` → ``[N, n_features]``.

        Differentiable with respect to the grid values and to ``space`` (inside cells).

        Examples
        --------
        >>> net = MultiResGrid(2, 1, resolutions=[3])
        >>> net.interpolate(0, torch.zeros(1, 2)).shape
        torch.Size([1, 4])
        """
        table = self.tables[level]
        size = self._sizes[level].to(space.dtype)
        pos = (space.clamp(-1.0, 1.0) + 1.0) * (0.5 * (size - 1))
        base = torch.minimum(pos.detach().floor(), size - 2)  # cell index, last cell closed
        frac = (pos - base).unsqueeze(1)  # [N, 1, D]
        corners = base.long().unsqueeze(1) + self._corners  # [N, C, D]
        weights = torch.where(self._corners.bool(), frac, 1.0 - frac).prod(-1)  # [N, C]
        scaled = corners * self._multipliers[level]
        if self.hashed[level]:
            rows = scaled[..., 0]
            for d in range(1, self.n_space):
                rows = torch.bitwise_xor(rows, scaled[..., d])
            rows = torch.remainder(rows, self.hash_size)
        else:
            rows = scaled.sum(-1)
        # index_select: its backward (index_add_) is much faster on CPU than embedding's
        values = table.index_select(0, rows.reshape(-1)).view(*rows.shape, self.n_features)
        return torch.einsum("nc,ncf->nf", weights.to(table.dtype), values)

    def time_encoding(self, t: Tensor) -> Tensor:
        """``[t, sin(π f t), cos(π f t)]`` of the time columns ``t: Tensor[N, n_time]``."""
        angles = (t.unsqueeze(-1) * self._time_freqs.to(t.dtype)).flatten(-2)
        return torch.cat([t, torch.sin(angles), torch.cos(angles)], dim=-1)

    def forward(self, features: Tensor, z: Tensor | None = None) -> Tensor:
        self._check_inputs(features, z)
        lead = features.shape[:-1]
        x = features.reshape(-1, self.in_features)
        feats = [self.interpolate(level, x[:, : self.n_space]) for level in range(self.n_levels)]
        if self.n_time:
            enc = self.time_encoding(x[:, self.n_space :])
            if self.n_time_levels:
                film = self.film(enc).view(len(x), self.n_time_levels, 2, self.n_features)
                for level in range(self.n_time_levels):
                    feats[level] = feats[level] * (1.0 + film[:, level, 0]) + film[:, level, 1]
            feats.append(enc)
        h = torch.cat(feats, dim=-1)
        h = h.reshape(*lead, h.shape[-1])
        return self.head(h, z)

    def regularization(self) -> Tensor:
        """Roughness penalty of the dense grids.

        The sum, over dense levels, space dimensions, nodes and features, of the squared
        (``smoothness="l2"``) or absolute (``"tv"``) difference between neighbouring
        nodes; hashed levels are skipped. It is a sum, not a mean, so every node is
        pulled equally hard whatever the size of its level: a mean would leave the
        finest levels, which overfit first, almost unpenalised. Add
        ``weight * net.regularization() / n_points`` to a loss that averages over
        ``n_points`` observations: ``weight`` then acts as a prior precision that does
        not depend on how densely the data are sampled.

        Examples
        --------
        >>> net = MultiResGrid(2, 1, resolutions=[4, 8])
        >>> with torch.no_grad():
        ...     _ = [t.fill_(1.0) for t in net.tables]
        >>> float(net.regularization().detach())
        0.0
        """
        total = self.tables[0].new_zeros(())
        for table, res, hashed in zip(self.tables, self.resolutions, self.hashed, strict=True):
            if hashed:
                continue
            grid = table.view(*res, self.n_features)
            for d in range(self.n_space):
                diff = grid.diff(dim=d)
                total = total + (diff.square() if self.smoothness == "l2" else diff.abs()).sum()
        return total

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, n_space={self.n_space}, levels={self.resolutions}, "
            f"hashed={self.hashed}, n_time_levels={self.n_time_levels}"
        )

"""On-the-fly training data for inverse problems: random soft-edged rectangles.

The SIP heat example draws each source as the sum of 4-10 axis-aligned boxes
(out of 10 slots) with centres in the middle 80 % of the domain, half-sizes
``U(0, 1) * 10`` per axis, strengths ``U(0, 1)``, boxes kept inside the domain,
and *soft edges*: every cell holds the fraction of its area covered by the box
(anti-aliased), so sources vary smoothly with the random box positions.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any, TypedDict

import numpy as np
import torch

__all__ = ["RandomRectangles", "make_heat_dataset"]


class _DrawOptions(TypedDict):
    """Keyword arguments of the ``torch.rand`` draws of :meth:`RandomRectangles.sample`."""

    generator: torch.Generator | None
    device: torch.device
    dtype: torch.dtype


class RandomRectangles:
    """Generator of random rectangle sources on a periodic grid.

    Call it with a :class:`torch.Generator` to get one batch (the form
    :func:`xsciml.training.fit` accepts for on-the-fly data), or use
    :meth:`sample` for any number of examples.

    Parameters
    ----------
    shape
        Grid shape, e.g. ``(64, 64)`` (any number of axes).
    batch_size
        Examples per call of the generator object itself.
    count
        Inclusive range ``(low, high)`` of active boxes per example; ``high`` is
        also the number of slots drawn.
    max_half_size
        Half-sizes are ``U(0, 1) * max_half_size`` per axis (physical units).
    strength
        Range of the uniform box strengths.
    spacing
        Cell size, scalar or per axis; the domain is ``[0, n * spacing)`` per axis.
    dtype
        dtype of the returned tensors (float64 by default: physics precision).
    device
        Device of the returned tensors.

    Examples
    --------
    >>> gen = RandomRectangles((32, 32), batch_size=4, max_half_size=5.0)
    >>> x = gen(torch.Generator().manual_seed(0))
    >>> x.shape, x.dtype, bool(x.min() >= 0)
    (torch.Size([4, 32, 32]), torch.float64, True)
    """

    def __init__(
        self,
        shape: Sequence[int] = (64, 64),
        *,
        batch_size: int = 32,
        count: tuple[int, int] = (4, 10),
        max_half_size: float = 10.0,
        strength: tuple[float, float] = (0.0, 1.0),
        spacing: float | Sequence[float] = 1.0,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        self.shape = tuple(int(n) for n in shape)
        if not self.shape or min(self.shape) < 1:
            raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {shape!r}.")
        nd = len(self.shape)
        if isinstance(spacing, (int, float)):
            spacing = (float(spacing),) * nd
        self.spacing = tuple(float(h) for h in spacing)
        if len(self.spacing) != nd or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be positive, one per axis of {self.shape}; got {spacing!r}.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        lo, hi = (int(c) for c in count)
        if not 0 <= lo <= hi or hi < 1:
            raise ValueError(f"count must be (low, high) with 0 <= low <= high and high >= 1, got {count!r}.")
        if max_half_size <= 0:
            raise ValueError(f"max_half_size must be > 0, got {max_half_size!r}.")
        smin, smax = (float(s) for s in strength)
        if smax < smin:
            raise ValueError(f"strength must be (low, high) with low <= high, got {strength!r}.")
        self.batch_size = batch_size
        self.count = (lo, hi)
        self.max_half_size = float(max_half_size)
        self.strength = (smin, smax)
        self.dtype = dtype
        self.device = device

    @property
    def extent(self) -> tuple[float, ...]:
        """Domain length per axis."""
        return tuple(n * h for n, h in zip(self.shape, self.spacing, strict=True))

    @property
    def bounds(self) -> tuple[float | None, float | None]:
        """Range every drawn source lies in: ``(0, None)`` for non-negative strengths.

        Boxes overlap, so only the sign of the strengths bounds the sum:
        ``(0, None)`` if ``strength[0] >= 0``, ``(None, 0)`` if ``strength[1] <= 0``,
        else ``(None, None)``. :func:`~xsciml.inverse.fit_inversion` uses it with
        ``bounds="auto"``.

        Examples
        --------
        >>> RandomRectangles().bounds
        (0.0, None)
        """
        lo, hi = self.strength
        if lo >= 0:
            return (0.0, None)
        if hi <= 0:
            return (None, 0.0)
        return (None, None)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` sources, shape ``(n, *shape)``.

        Parameters
        ----------
        n
            Number of examples.
        generator
            Source of randomness (its device is used for drawing); ``None`` uses
            torch's global generator.

        Examples
        --------
        >>> g = RandomRectangles((16, 16), max_half_size=4.0)
        >>> a = g.sample(3, torch.Generator().manual_seed(1))
        >>> b = g.sample(3, torch.Generator().manual_seed(1))
        >>> torch.equal(a, b)
        True
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}.")
        nd = len(self.shape)
        slots = self.count[1]
        dev = generator.device if generator is not None else torch.device("cpu")
        kw: _DrawOptions = dict(generator=generator, device=dev, dtype=torch.float64)
        ext = torch.tensor(self.extent, dtype=torch.float64, device=dev)
        n_active = torch.floor(self.count[0] + (slots - self.count[0] + 1) * torch.rand(n, **kw))
        centre = (torch.rand(n, slots, nd, **kw) - 0.5) * ext * 0.8 + ext * 0.5
        half = torch.rand(n, slots, nd, **kw) * self.max_half_size
        half = torch.minimum(half, ext / 2)
        lo, hi = self.strength
        amp = lo + (hi - lo) * torch.rand(n, slots, **kw)
        amp = amp * (torch.arange(slots, device=dev) < n_active[:, None])
        centre = torch.maximum(torch.minimum(centre, ext - half), half)  # keep boxes inside

        # per axis: the fraction of each cell [i h, (i+1) h) covered by the box
        cover = []
        for axis, (cells, h) in enumerate(zip(self.shape, self.spacing, strict=True)):
            edges = torch.arange(cells + 1, dtype=torch.float64, device=dev) * h
            b_lo = (centre[..., axis] - half[..., axis])[..., None]
            b_hi = (centre[..., axis] + half[..., axis])[..., None]
            overlap = torch.minimum(b_hi, edges[1:]) - torch.maximum(b_lo, edges[:-1])
            cover.append(overlap.clamp(min=0.0) / h)  # (n, slots, cells)
        letters = string.ascii_lowercase[2 : 2 + nd]
        spec = "ab," + ",".join(f"ab{c}" for c in letters) + "->a" + letters
        x = torch.einsum(spec, amp, *cover)
        return x.to(dtype=self.dtype, device=self.device if self.device is not None else dev)

    def __call__(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One batch of ``batch_size`` sources (the on-the-fly data form of ``fit``)."""
        return self.sample(self.batch_size, generator)

    def get_config(self) -> dict[str, Any]:
        """JSON-able arguments that rebuild this generator (dtype/device excluded)."""
        return {"shape": list(self.shape), "batch_size": self.batch_size,
                "count": list(self.count), "max_half_size": self.max_half_size,
                "strength": list(self.strength), "spacing": list(self.spacing)}

    def __repr__(self) -> str:
        return f"RandomRectangles({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


def make_heat_dataset(
    n: int = 8,
    *,
    shape: Sequence[int] = (64, 64),
    amount: float = 8.0,
    spacing: float = 1.0,
    noise: float = 0.0,
    seed: int = 0,
    **rect_kwargs: Any,
):
    """A labelled heat-inversion example: random-rectangle sources and their diffusion.

    Parameters
    ----------
    n
        Number of examples (dimension ``sample``).
    shape
        Grid shape ``(ny, nx)``; coordinates ``y``, ``x`` are cell centres.
    amount
        Diffusion amount (diffusivity x time).
    spacing
        Cell size (both axes).
    noise
        Standard deviation of Gaussian noise added to the observation.
    seed
        Seed of the draws.
    **rect_kwargs
        Passed to :class:`RandomRectangles` (``count``, ``max_half_size``, ...).

    Returns
    -------
    xarray.Dataset
        Variables ``source`` and ``observation`` with dims ``(sample, y, x)``.

    Examples
    --------
    >>> ds = make_heat_dataset(2, shape=(16, 16), amount=1.0, max_half_size=4.0)
    >>> ds.observation.dims, float(ds.x[1] - ds.x[0])
    (('sample', 'y', 'x'), 1.0)
    """
    import xarray as xr

    from .heat import diffuse

    if len(tuple(shape)) != 2:
        raise ValueError(f"shape must be (ny, nx), got {shape!r}.")
    g = torch.Generator().manual_seed(int(seed))
    src = RandomRectangles(shape, spacing=spacing, **rect_kwargs).sample(n, g)
    obs = diffuse(src, amount, spacing=spacing)
    if noise > 0:
        obs = obs + noise * torch.randn(obs.shape, generator=g, dtype=obs.dtype)
    ny, nx = src.shape[-2:]
    coords = {"sample": np.arange(n), "y": (np.arange(ny) + 0.5) * spacing,
              "x": (np.arange(nx) + 0.5) * spacing}
    dims = ("sample", "y", "x")
    return xr.Dataset(
        {
            "source": (dims, src.numpy(), {"long_name": "initial heat (source)"}),
            "observation": (dims, obs.numpy(), {"long_name": "diffused heat (observation)"}),
        },
        coords=coords,
        attrs={"diffusion_amount": float(amount), "noise_std": float(noise), "seed": int(seed),
               "description": "random soft-edged rectangles, periodic heat diffusion"},
    )


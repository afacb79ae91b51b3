"""Design spaces for soft-robot co-design: torch modules that map parameters to per-particle fields.

Every representation answers the same question: given the candidate particles of a design region (their rest
positions, normalised to [-1, 1]^d), what is each particle's

* ``occupancy`` (N,) in (0, 1): how much of the particle is robot. It scales density (mass) and stiffness
  together, so the elastic wave speed, and with it the stable substep, does not depend on the design. A sigmoid
  keeps it differentiable everywhere (no hard cut-off); a small floor keeps every particle's mass positive.
* ``softness`` (N,) in [softness_min, 1]: a scale on Young's modulus.
* ``muscle`` (N, G): a soft assignment over G muscle groups (a softmax, so each row sums to 1).
* ``fibre`` (N, d): the unit direction along which the particle's muscle contracts.

Representations (as in SoftZoo's design-space study): per-particle parameters, a voxel grid interpolated at the
particles, an implicit CPPN-like MLP over coordinates, and an interpolation between the signed distance functions
of a few base shapes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as Fn
from torch import nn

from engine.errors import ConfigError

__all__ = ["DesignFields", "Design", "ParticleDesign", "VoxelDesign", "ImplicitDesign", "SDFBasisDesign",
           "REPRESENTATIONS", "make_design", "normalise_coords"]

OCC_FLOOR = 1e-3
"""Smallest occupancy: keeps grid masses positive under a near-empty particle."""


@dataclass
class DesignFields:
    """Per-particle design fields (all torch, differentiable w.r.t. the design parameters).

    occupancy: (N,) in (0, 1); softness: (N,) in (0, 1]; muscle: (N, G) rows sum to 1; fibre: (N, d) unit.
    """

    occupancy: torch.Tensor
    softness: torch.Tensor
    muscle: torch.Tensor
    fibre: torch.Tensor

    def material(self, E0: float, rho0: float):
        """(E, rho): Young's modulus [Pa] and density [kg/m^d] per particle, both (N,).

        Both scale with occupancy, so E/rho (the wave speed) only changes through softness.
        """
        return E0 * self.softness * self.occupancy, rho0 * self.occupancy

    def detach(self) -> DesignFields:
        return DesignFields(*(t.detach() for t in (self.occupancy, self.softness, self.muscle, self.fibre)))


def normalise_coords(x: torch.Tensor, lo, hi) -> torch.Tensor:
    """Map (N, d) positions inside the box [lo, hi] [m] to [-1, 1]^d."""
    lo = torch.as_tensor(lo, dtype=x.dtype, device=x.device)
    hi = torch.as_tensor(hi, dtype=x.dtype, device=x.device)
    return 2.0 * (x - lo) / (hi - lo) - 1.0


def _unit(v: torch.Tensor) -> torch.Tensor:
    # the epsilon keeps the gradient finite at a zero raw vector
    return v / torch.sqrt((v * v).sum(-1, keepdim=True) + 1e-12)


class Design(nn.Module):
    """Base class. ``forward(u) -> DesignFields`` for normalised coordinates u (N, d) in [-1, 1]^d.

    Args:
        dim: 2 or 3.
        n_groups: number of muscle groups G.
        softness_min: lower bound of the stiffness scale.
        init_occupancy: occupancy everywhere at initialisation (before any optimisation).
    """

    def __init__(self, dim: int, n_groups: int, softness_min: float = 0.2, init_occupancy: float = 0.9):
        super().__init__()
        if dim not in (2, 3):
            raise ConfigError(f"design dimension must be 2 or 3, got {dim}")
        if n_groups < 1:
            raise ConfigError(f"n_groups must be >= 1, got {n_groups}")
        if not 0.0 < softness_min <= 1.0:
            raise ConfigError(f"softness_min must be in (0, 1], got {softness_min}")
        if not 0.0 < init_occupancy < 1.0:
            raise ConfigError(f"init_occupancy must be in (0, 1), got {init_occupancy}")
        self.dim, self.n_groups, self.softness_min = dim, n_groups, softness_min
        self.occ_logit0 = math.log(init_occupancy / (1.0 - init_occupancy))

    def fields_from_raw(self, raw: torch.Tensor) -> DesignFields:
        """Squash raw per-particle outputs (N, 2 + G + d) [occupancy, softness, G group logits, fibre] into
        valid fields."""
        G, d = self.n_groups, self.dim
        occ = OCC_FLOOR + (1.0 - OCC_FLOOR) * torch.sigmoid(raw[:, 0] + self.occ_logit0)
        soft = self.softness_min + (1.0 - self.softness_min) * torch.sigmoid(raw[:, 1] + 2.0)
        muscle = torch.softmax(raw[:, 2:2 + G], dim=1)
        fibre = _unit(raw[:, 2 + G:2 + G + d] + self._fibre_bias(raw))
        return DesignFields(occ, soft, muscle, fibre)

    def _fibre_bias(self, raw):
        # default fibres along x: a neutral start that contracts the body lengthwise
        b = torch.zeros(self.dim, dtype=raw.dtype, device=raw.device)
        b[0] = 1.0
        return b

    @property
    def n_raw(self) -> int:
        return 2 + self.n_groups + self.dim

    @staticmethod
    def default_groups(u: torch.Tensor, n_groups: int) -> torch.Tensor:
        """(N, G) initial group logits: vertical stripes along x, so the start design can already push."""
        centres = torch.linspace(-1 + 1.0 / n_groups, 1 - 1.0 / n_groups, n_groups, dtype=u.dtype, device=u.device)
        return -((u[:, :1] - centres[None]) ** 2) * (4.0 * n_groups**2)


class ParticleDesign(Design):
    """One free parameter vector per particle (the most expressive, least regular space).

    Args:
        u0: (N, d) normalised rest positions of the candidate particles.
    """

    def __init__(self, u0: torch.Tensor, n_groups: int, **kw):
        super().__init__(u0.shape[1], n_groups, **kw)
        raw = torch.zeros(u0.shape[0], self.n_raw, dtype=u0.dtype)
        raw[:, 2:2 + n_groups] = self.default_groups(u0, n_groups)
        self.raw = nn.Parameter(raw)

    def forward(self, u: torch.Tensor) -> DesignFields:
        if u.shape[0] != self.raw.shape[0]:
            raise ConfigError(f"ParticleDesign was built for {self.raw.shape[0]} particles, got {u.shape[0]}")
        return self.fields_from_raw(self.raw)


class VoxelDesign(Design):
    """A coarse grid of parameters (``voxels`` cells per axis), interpolated (bi/trilinear) at the particles."""

    def __init__(self, dim: int, n_groups: int, voxels: int = 8, **kw):
        super().__init__(dim, n_groups, **kw)
        if voxels < 2:
            raise ConfigError(f"voxels must be >= 2, got {voxels}")
        shape = (1, self.n_raw) + (voxels,) * dim
        raw = torch.zeros(shape, dtype=torch.get_default_dtype())
        # voxel centres in [-1, 1] (grid_sample's align_corners=True convention) -> stripe group logits
        c = torch.linspace(-1, 1, voxels)
        grids = torch.meshgrid(*([c] * dim), indexing="ij")
        centres = torch.stack([g.reshape(-1) for g in grids], 1)
        logits = self.default_groups(centres, n_groups).T.reshape((n_groups,) + (voxels,) * dim)
        raw[0, 2:2 + n_groups] = logits
        self.raw = nn.Parameter(raw)

    def forward(self, u: torch.Tensor) -> DesignFields:
        raw = self.raw.to(u.dtype)
        # grid_sample indexes (x, y[, z]) against (W, H[, D]) = the reversed spatial axes of an "ij" grid
        g = u.flip(-1).reshape((1,) + (1,) * (self.dim - 1) + (u.shape[0], self.dim))
        out = Fn.grid_sample(raw, g, mode="bilinear", padding_mode="border", align_corners=True)
        return self.fields_from_raw(out.reshape(self.n_raw, -1).T)


class ImplicitDesign(Design):
    """A CPPN-like MLP over coordinates: Fourier features, then layers mixing sin, Gaussian and tanh units."""

    def __init__(self, dim: int, n_groups: int, hidden: int = 32, layers: int = 2, frequencies: int = 3,
                 seed: int = 0, **kw):
        super().__init__(dim, n_groups, **kw)
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", (2.0 ** torch.arange(frequencies, dtype=torch.get_default_dtype())) * math.pi)
        width = dim + 2 * dim * frequencies
        mods = []
        for _ in range(layers):
            lin = nn.Linear(width, hidden)
            with torch.no_grad():
                lin.weight.normal_(0.0, 1.0 / math.sqrt(width), generator=gen)
                lin.bias.zero_()
            mods.append(lin)
            width = hidden
        self.hidden = nn.ModuleList(mods)
        self.head = nn.Linear(width, self.n_raw)
        with torch.no_grad():
            self.head.weight.normal_(0.0, 0.1 / math.sqrt(width), generator=gen)
            self.head.bias.zero_()

    def forward(self, u: torch.Tensor) -> DesignFields:
        ang = u[:, :, None] * self.freqs.to(u.dtype)
        h = torch.cat([u, torch.sin(ang).flatten(1), torch.cos(ang).flatten(1)], 1)
        for lin in self.hidden:
            z = lin(h)
            k = z.shape[1] // 3
            # CPPN activation mix: periodic, radial and sigmoidal units
            h = torch.cat([torch.sin(z[:, :k]), torch.exp(-z[:, k:2 * k] ** 2), torch.tanh(z[:, 2 * k:])], 1)
        raw = self.head(h)
        raw = raw + torch.cat([torch.zeros_like(raw[:, :2]), self.default_groups(u, self.n_groups),
                               torch.zeros_like(raw[:, 2 + self.n_groups:])], 1)
        return self.fields_from_raw(raw)


def _sdf_box(u, half):
    q = u.abs() - half
    return q.clamp(min=0).norm(dim=1) + q.max(dim=1).values.clamp(max=0)


def _sdf_ellipse(u, radii):
    # first-order approximation of the ellipse distance (exact for circles), smooth everywhere but the centre
    k = (u / radii).norm(dim=1)
    return (k - 1.0) * radii.min()


BASE_SHAPES = ("box", "ellipse", "arch", "wedge")


def base_sdf(name: str, u: torch.Tensor) -> torch.Tensor:
    """(N,) signed distance (negative inside) of a base shape in normalised coordinates u (N, d)."""
    d = u.shape[1]
    one = torch.ones(d, dtype=u.dtype, device=u.device)
    if name == "box":
        return _sdf_box(u, 0.9 * one)
    if name == "ellipse":
        return _sdf_ellipse(u, 0.95 * one)
    if name == "arch":  # a box with the lower middle carved out: two legs
        hole = u.clone()
        hole[:, 1] = u[:, 1] + 0.9
        r = one.clone() * 0.35
        r[1] = 0.6
        return torch.maximum(_sdf_box(u, 0.9 * one), -_sdf_ellipse(hole, r))
    if name == "wedge":  # a box cut by a slanted plane: low at the back, high at the front
        plane = (u[:, 1] - 0.45 * u[:, 0] - 0.35) / math.sqrt(1 + 0.45**2)
        return torch.maximum(_sdf_box(u, 0.9 * one), plane)
    raise ConfigError(f"unknown base shape {name!r}; choose from {', '.join(BASE_SHAPES)}")


class SDFBasisDesign(Design):
    """Interpolation between the signed distance functions of a few base shapes.

    sdf(u) = Σ_k softmax(α)_k · sdf_k(u); occupancy = sigmoid(−sdf / sharpness). Muscle groups are soft Voronoi
    cells around G learned centres; each group has a learned fibre angle (2D; in 3D a learned direction) and
    a learned softness.
    """

    def __init__(self, dim: int, n_groups: int, shapes=BASE_SHAPES, sharpness: float = 0.08, **kw):
        super().__init__(dim, n_groups, **kw)
        for s in shapes:
            base_sdf(s, torch.zeros(1, dim))  # validates the name
        self.shapes = tuple(shapes)
        self.sharpness = sharpness
        self.alpha = nn.Parameter(torch.zeros(len(self.shapes)))
        c = torch.zeros(n_groups, dim)
        c[:, 0] = torch.linspace(-1 + 1.0 / n_groups, 1 - 1.0 / n_groups, n_groups)
        self.centres = nn.Parameter(c)
        fib = torch.zeros(n_groups, dim)
        fib[:, 0] = 1.0
        self.fibres = nn.Parameter(fib)
        self.soft = nn.Parameter(torch.zeros(n_groups))

    def forward(self, u: torch.Tensor) -> DesignFields:
        w = torch.softmax(self.alpha.to(u.dtype), 0)
        sdf = sum(wk * base_sdf(name, u) for wk, name in zip(w, self.shapes))
        occ = OCC_FLOOR + (1 - OCC_FLOOR) * torch.sigmoid(-sdf / self.sharpness)
        d2 = ((u[:, None, :] - self.centres.to(u.dtype)[None]) ** 2).sum(-1)
        muscle = torch.softmax(-d2 * (2.0 * self.n_groups) ** 2, dim=1)
        soft_g = self.softness_min + (1 - self.softness_min) * torch.sigmoid(self.soft.to(u.dtype) + 2.0)
        fibre = _unit(muscle @ _unit(self.fibres.to(u.dtype)))
        return DesignFields(occ, muscle @ soft_g, muscle, fibre)


REPRESENTATIONS = ("particle", "voxel", "implicit", "sdf_basis")


def make_design(name: str, u0: torch.Tensor, n_groups: int, seed: int = 0, **kw) -> Design:
    """Build a design representation by name for candidate particles at normalised positions u0 (N, d)."""
    dim = u0.shape[1]
    if name == "particle":
        return ParticleDesign(u0, n_groups, **kw)
    if name == "voxel":
        return VoxelDesign(dim, n_groups, **kw)
    if name == "implicit":
        return ImplicitDesign(dim, n_groups, seed=seed, **kw)
    if name == "sdf_basis":
        return SDFBasisDesign(dim, n_groups, **kw)
    raise ConfigError(f"unknown design representation {name!r}; choose one of {', '.join(REPRESENTATIONS)}")

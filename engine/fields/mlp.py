"""Small torch MLP heads and the neural field that pairs one with a hash-grid encoding."""
import torch

from .. import backend
from .hashgrid import HashGrid

__all__ = ["MLP", "NeuralField"]


class MLP(torch.nn.Module):
    """``in_features -> hidden x layers -> out_features`` with Softplus activations (smooth, so the field's
    spatial gradient, used for normals and the Eikonal term, is continuous)."""

    def __init__(self, in_features: int, out_features: int = 1, hidden: int = 64, layers: int = 2,
                 beta: float = 100.0):
        super().__init__()
        dims = [in_features] + [hidden] * layers
        mods = []
        for a, b in zip(dims, dims[1:]):
            mods += [torch.nn.Linear(a, b), torch.nn.Softplus(beta=beta)]
        mods.append(torch.nn.Linear(dims[-1], out_features))
        self.net = torch.nn.Sequential(*mods).to(backend.torch_dtype())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class NeuralField(torch.nn.Module):
    """Scalar field ``(N, 3) -> (N,)``: hash-grid encoding, MLP head, plus an optional analytic prior.

    Args:
        lo, hi: the box the encoding covers (world units).
        prior_radius: if set, adds ``|x| - prior_radius`` so the field starts as a sphere's SDF (a common
            initialisation for shape fitting; the network learns the residual).
        hidden, layers: MLP width and depth; ``**grid``: ``HashGrid`` options.
    """

    def __init__(self, lo=(-1.0, -1.0, -1.0), hi=(1.0, 1.0, 1.0), prior_radius: float | None = None,
                 hidden: int = 64, layers: int = 2, **grid):
        super().__init__()
        self.encoding = HashGrid(lo, hi, **grid)
        self.head = MLP(self.encoding.out_features, 1, hidden, layers)
        self.prior_radius = prior_radius

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        d = self.head(self.encoding(points)).reshape(-1)
        if self.prior_radius is not None:
            d = d + torch.linalg.norm(points.to(d.dtype), dim=-1) - self.prior_radius
        return d

"""tide's own multi-view denoiser: a small UNet over V views at once (MVDream-style), class- and camera-conditioned.

Input ``x``: (B, V, C, S, S) noisy views (C = 6: RGB and normal map, scaled to [-1, 1]); ``t``: (B,) integer
timesteps of a 1000-step DDPM schedule; ``cams``: (B, V, 3) (azimuth rad, elevation rad, distance world units);
``labels``: (B,) class index, or ``n_classes`` for "no condition" (classifier-free guidance). Output, (B, V, C, S, S):
the predicted noise or, for ``prediction="v_prediction"`` (the shipped weights), v = sqrt(a) eps - sqrt(1 - a) x0;
``eps_from_output`` turns either into the noise that SDS needs.

Views are processed as a batch of B V images by the convolutions; at the coarsest level (S / 4) every view's tokens
attend to all V views' tokens (3D self-attention across views, as MVDream), so the views agree on one object. The
camera enters as an embedding added to every residual block (absolute azimuth: the classes have a canonical front).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MVDenoiser", "camera_features"]


def camera_features(cams: torch.Tensor) -> torch.Tensor:
    """(..., 3) (azimuth, elevation, distance) -> (..., 5) features (sin/cos of the angles, centred distance)."""
    az, el, d = cams.unbind(-1)
    return torch.stack([torch.sin(az), torch.cos(az), torch.sin(el), torch.cos(el), d - 2.6], -1)


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    a = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(a), torch.cos(a)], -1)


class _Res(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.e = nn.Linear(emb, cout)
        self.n2, self.c2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, e):
        h = self.c1(F.silu(self.n1(x))) + self.e(e)[:, :, None, None]
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


class _ViewAttention(nn.Module):
    """Self-attention over the tokens of all V views of an object together (cross-view consistency)."""

    def __init__(self, ch: int, views: int, heads: int = 4):
        super().__init__()
        self.views, self.norm = views, nn.GroupNorm(8, ch)
        self.attn = nn.MultiheadAttention(ch, heads, batch_first=True)

    def forward(self, x):
        BV, C, H, W = x.shape
        h = self.norm(x).reshape(BV // self.views, self.views, C, H * W).permute(0, 1, 3, 2).reshape(
            BV // self.views, self.views * H * W, C)
        h, _ = self.attn(h, h, h, need_weights=False)
        h = h.reshape(BV // self.views, self.views, H * W, C).permute(0, 1, 3, 2).reshape(BV, C, H, W)
        return x + h


class MVDenoiser(nn.Module):
    """Multi-view UNet (see the module docstring); it predicts ``prediction`` ("epsilon" or "v", diffusers'
    names). ``config`` holds its constructor arguments, so ``MVDenoiser(**ckpt["config"])`` rebuilds it.

    Levels S, S/2, S/4 with widths (w, 2w, 4w) (the same cost per level: the full-resolution convolutions dominate
    a CPU step otherwise); cross-view attention at S/4 only (down, middle, up): at S = 32 that is 4 x 64 = 256
    tokens per object, cheap on a CPU, and enough for the views to agree on the silhouette."""

    def __init__(self, n_classes: int = 6, channels: int = 6, views: int = 4, size: int = 32, width: int = 16,
                 emb: int = 128, prediction: str = "epsilon"):
        super().__init__()
        self.config = dict(n_classes=n_classes, channels=channels, views=views, size=size, width=width, emb=emb,
                           prediction=prediction)
        self.n_classes, self.views, self.channels, self.size = n_classes, views, channels, size
        self.prediction = prediction
        w1, w2, w3 = width, 2 * width, 4 * width
        self.t_mlp = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.label = nn.Embedding(n_classes + 1, emb)           # the last row is "unconditional"
        self.cam = nn.Sequential(nn.Linear(5, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.Conv2d(channels, w1, 3, padding=1)
        self.d1, self.d2, self.d3 = _Res(w1, w1, emb), _Res(w1, w2, emb), _Res(w2, w3, emb)
        self.a3 = _ViewAttention(w3, views)
        self.mid = _Res(w3, w3, emb)
        self.am = _ViewAttention(w3, views)
        self.u3, self.u2, self.u1 = _Res(2 * w3, w2, emb), _Res(2 * w2, w1, emb), _Res(2 * w1, w1, emb)
        self.au3 = _ViewAttention(w2, views)
        self.out = nn.Sequential(nn.GroupNorm(8, w1), nn.SiLU(), nn.Conv2d(w1, channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cams: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        B, V, C, S, _ = x.shape
        e = self.t_mlp(_timestep_embedding(t, self.t_mlp[0].in_features)) + self.label(labels)   # (B, E)
        e = (e[:, None] + self.cam(camera_features(cams.float()))).reshape(B * V, -1)              # (B V, E)
        h = self.inp(x.reshape(B * V, C, S, S))
        h1 = self.d1(h, e)                                                    # S
        h2 = self.d2(F.avg_pool2d(h1, 2), e)                                  # S / 2
        h3 = self.a3(self.d3(F.avg_pool2d(h2, 2), e))                         # S / 4
        m = self.am(self.mid(h3, e))
        u = self.au3(self.u3(torch.cat([m, h3], 1), e))
        u = self.u2(torch.cat([F.interpolate(u, scale_factor=2.0), h2], 1), e)
        u = self.u1(torch.cat([F.interpolate(u, scale_factor=2.0), h1], 1), e)
        return self.out(u).reshape(B, V, C, S, S)

    def eps_from_output(self, out: torch.Tensor, xt: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """The network's output -> the predicted noise (``alpha_bar`` broadcastable to ``xt``)."""
        if self.prediction == "epsilon":
            return out
        return alpha_bar.sqrt() * out + (1 - alpha_bar).sqrt() * xt       # v = sqrt(a) eps - sqrt(1 - a) x0

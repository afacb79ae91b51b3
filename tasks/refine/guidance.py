"""Score distillation guidance: one interface, two implementations (tide's multi-view denoiser, a local diffusers
pipeline).

SDS (DreamFusion, MVDream's multi-view form): for rendered views ``x`` (scaled to [-1, 1]) draw a timestep t and
noise eps, form ``x_t = sqrt(a_t) x + sqrt(1 - a_t) eps``, predict ``eps_hat`` with classifier-free guidance
``eps_u + s (eps_c - eps_u)``, and use ``w(t) (eps_hat - eps)`` as the gradient of the loss w.r.t. ``x`` (the
denoiser's Jacobian is skipped). ``w(t) = 1 - a_t``. The timestep range shrinks linearly with ``progress``
(annealing: big noise early for shape, small noise late for detail).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.errors import ConfigError

__all__ = ["GuidanceSettings", "Guidance", "TideGuidance", "DiffusersGuidance", "load_guidance", "load_tide_denoiser",
           "sample_views", "DEFAULT_WEIGHTS"]

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "assets" / "mv_denoiser.pt"
"""The shipped multi-view denoiser."""


@dataclass
class GuidanceSettings:
    cfg: float = 5.0
    """Classifier-free guidance scale s (1 = conditional prediction only)."""
    t_min: float = 0.02
    """Smallest timestep, as a fraction of the schedule."""
    t_max: float = 0.98
    """Largest timestep at the start (fraction)."""
    t_max_end: float = 0.5
    """Largest timestep at the end of the annealing (fraction); t_max moves linearly to it with progress."""


class Guidance:
    """Interface. ``sds_grad(images, cams, condition, progress) -> grad`` with

    images: (B, V, C, S, S) renders in [0, 1] (C = 3 RGB, or 6 RGB + normals encoded as (n + 1) / 2);
    cams: (B, V, 3) (azimuth rad, elevation rad, distance); condition: a class name or a text prompt;
    progress: fraction of the optimisation done, in [0, 1] (drives the timestep annealing).
    Returns the SDS gradient w.r.t. ``images`` (same shape, no graph). ``loss`` wraps it as a scalar whose
    gradient w.r.t. ``images`` is exactly that gradient.
    """

    settings: GuidanceSettings
    alphas_cumprod: torch.Tensor
    channels: int = 3
    size: int = 32

    def predict_eps(self, xt, t, cams, condition, cfg: float) -> torch.Tensor:
        raise NotImplementedError

    def timestep(self, B: int, progress: float, generator=None) -> torch.Tensor:
        s = self.settings
        hi = s.t_max + (s.t_max_end - s.t_max) * min(max(progress, 0.0), 1.0)
        n = len(self.alphas_cumprod)
        lo_i, hi_i = int(s.t_min * n), max(int(hi * n), int(s.t_min * n) + 1)
        return torch.randint(lo_i, hi_i, (B,), generator=generator)

    @torch.no_grad()
    def sds_grad(self, images, cams, condition, progress: float = 0.0, generator=None, t=None) -> torch.Tensor:
        B = images.shape[0]
        x = images.detach().float() * 2 - 1
        t = self.timestep(B, progress, generator) if t is None else t
        a = self.alphas_cumprod[t].float().view(-1, *([1] * (x.dim() - 1)))
        eps = torch.randn(x.shape, generator=generator)
        xt = a.sqrt() * x + (1 - a).sqrt() * eps
        eps_hat = self.predict_eps(xt, t, cams, condition, self.settings.cfg)
        # d(loss)/d(images) = 2 d(loss)/dx (images -> x = 2 images - 1)
        return (2 * (1 - a) * (eps_hat - eps)).to(images.dtype)

    def loss(self, images, cams, condition, progress: float = 0.0, generator=None) -> torch.Tensor:
        g = self.sds_grad(images, cams, condition, progress, generator)
        return (g * images).sum() / images.shape[0]


class TideGuidance(Guidance):
    """Guidance from tide's multi-view denoiser (``MVDenoiser``): V = 4 views, RGB + normals, class labels."""

    def __init__(self, path=DEFAULT_WEIGHTS, settings: GuidanceSettings | None = None):
        from diffusers import DDPMScheduler

        from .shapes import class_index

        self.model = load_tide_denoiser(path)
        self.settings = settings or GuidanceSettings()
        self.alphas_cumprod = DDPMScheduler(num_train_timesteps=1000,
                                            beta_schedule="squaredcos_cap_v2").alphas_cumprod
        self.channels, self.size = self.model.channels, self.model.size
        self._class_index = class_index

    def predict_eps(self, xt, t, cams, condition, cfg: float):
        B = xt.shape[0]
        lab = torch.full((B,), self._class_index(condition)) if isinstance(condition, str) else condition
        null = torch.full((B,), self.model.n_classes)
        both = self.model(torch.cat([xt, xt]), torch.cat([t, t]), torch.cat([cams, cams]).float(),
                          torch.cat([lab, null]))
        a = self.alphas_cumprod[t].float().view(-1, *([1] * (xt.dim() - 1)))
        ec, eu = (self.model.eps_from_output(o, xt, a) for o in both.chunk(2))
        return eu + cfg * (ec - eu)


class DiffusersGuidance(Guidance):
    """Guidance from a diffusers pipeline already on disk (loaded with ``local_files_only``; nothing downloaded).

    Supported: pipelines whose ``unet`` is a ``UNet2DModel`` (pixel space; class-conditional when it has
    ``num_class_embeds``, else unconditional) or a ``UNet2DConditionModel`` with ``vae``, ``tokenizer`` and
    ``text_encoder`` (Stable Diffusion-like: the prompt is encoded, views are encoded to latents and the SDS
    gradient is taken in latent space and pulled back through the VAE encoder). Each view is scored on its own
    (an MVDream-like pipeline that takes camera inputs is not wired in). RGB only: normal channels get zero
    gradient.
    """

    def __init__(self, path, settings: GuidanceSettings | None = None):
        from diffusers import DiffusionPipeline

        p = Path(path)
        if not (p / "model_index.json").is_file():
            raise ConfigError(f"guidance path is not a diffusers pipeline folder (no model_index.json): {p}")
        try:
            self.pipe = DiffusionPipeline.from_pretrained(str(p), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - diffusers raises many types for broken folders
            raise ConfigError(f"could not load the diffusers pipeline at {p}: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        self.unet = getattr(self.pipe, "unet", None)
        if self.unet is None or getattr(self.pipe, "scheduler", None) is None:
            raise ConfigError(f"the diffusers pipeline at {p} has no unet/scheduler to score images with")
        self.unet.eval()
        self.settings = settings or GuidanceSettings()
        self.alphas_cumprod = self.pipe.scheduler.alphas_cumprod
        self.vae = getattr(self.pipe, "vae", None)
        cfg = self.unet.config
        self.size = int(cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0])
        self.latent = self.vae is not None
        self.channels = 3
        if self.latent:
            self.size *= 2 ** (len(self.vae.config.block_out_channels) - 1)

    def _text(self, prompt: str):
        tok = self.pipe.tokenizer([prompt, ""], padding="max_length", truncation=True,
                                  max_length=self.pipe.tokenizer.model_max_length, return_tensors="pt")
        return self.pipe.text_encoder(tok.input_ids)[0]

    def _unet(self, x, t, condition, uncond: bool):
        if hasattr(self.unet.config, "cross_attention_dim") and getattr(self.pipe, "text_encoder", None) is not None:
            emb = self._text(str(condition))[1 if uncond else 0]
            return self.unet(x, t, encoder_hidden_states=emb.expand(len(x), -1, -1)).sample
        n_cls = getattr(self.unet.config, "num_class_embeds", None)
        if n_cls:
            lab = 0 if uncond else (condition if isinstance(condition, int) else 0)
            return self.unet(x, t, class_labels=torch.full((len(x),), lab)).sample
        return self.unet(x, t).sample

    def predict_eps(self, xt, t, cams, condition, cfg: float):
        B, V = xt.shape[:2]
        flat = xt.reshape(B * V, *xt.shape[2:])
        tt = t.repeat_interleave(V)
        ec = self._unet(flat, tt, condition, False)
        eu = self._unet(flat, tt, condition, True) if cfg != 1.0 else ec
        e = eu + cfg * (ec - eu)
        return e.reshape(B, V, 3, *e.shape[-2:])

    def sds_grad(self, images, cams, condition, progress: float = 0.0, generator=None, t=None):
        if not self.latent:
            rgb = images[:, :, :3]
            imgs = F.interpolate(rgb.flatten(0, 1), size=self.size, mode="bilinear", align_corners=False)
            g = super().sds_grad(imgs.reshape(*rgb.shape[:2], *imgs.shape[1:]), cams, condition, progress,
                                 generator, t)
            g = F.interpolate(g.flatten(0, 1), size=images.shape[-1], mode="bilinear", align_corners=False)
            out = torch.zeros_like(images)
            out[:, :, :3] = g.reshape(rgb.shape)
            return out
        # latent SDS: gradient in latent space, pulled back through the encoder by a vector-Jacobian product
        with torch.enable_grad():
            x = images.detach()[:, :, :3].flatten(0, 1).requires_grad_(True)
            xi = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False) * 2 - 1
            z = self.vae.encode(xi).latent_dist.mean * self.vae.config.scaling_factor
            gz = super().sds_grad((z.detach()[:, None] + 1) / 2, cams, condition, progress, generator, t)[:, 0] / 2
            (gx,) = torch.autograd.grad(z, x, gz)
        out = torch.zeros_like(images)
        out[:, :, :3] = gx.reshape(*images.shape[:2], *gx.shape[1:])
        return out


def load_tide_denoiser(path=DEFAULT_WEIGHTS):
    """The shipped ``MVDenoiser`` (float32, eval mode) from a file written by scripts/train_mv_denoiser.py."""
    from .denoiser import MVDenoiser

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"denoiser weights not found: {p} (train them with scripts/train_mv_denoiser.py)")
    blob = torch.load(p, map_location="cpu")
    model = MVDenoiser(**blob["config"])
    model.load_state_dict({k: v.float() for k, v in blob["state"].items()})
    return model.eval()


def load_guidance(spec: str, settings: GuidanceSettings | None = None) -> Guidance:
    """``"tide"`` (the shipped denoiser), ``"tide:/path/weights.pt"`` or ``"diffusers:/path/to/pipeline"``."""
    if spec == "tide":
        return TideGuidance(DEFAULT_WEIGHTS, settings)
    kind, _, path = spec.partition(":")
    if kind == "tide" and path:
        return TideGuidance(path, settings)
    if kind == "diffusers" and path:
        return DiffusersGuidance(path, settings)
    raise ConfigError(f"guidance must be 'tide', 'tide:/path/weights.pt' or 'diffusers:/path/to/pipeline', got {spec!r}")


@torch.no_grad()
def sample_views(model, cams, labels, steps: int = 30, cfg: float = 3.0, generator=None,
                 eta: float = 0.0) -> torch.Tensor:
    """Sample view sets from an ``MVDenoiser`` with diffusers' DDIM scheduler and classifier-free guidance.

    cams: (B, V, 3); labels: (B,) class indices; ``eta``: DDIM's noise (0 deterministic, 1 DDPM-like ancestral
    sampling, whose fresh noise at every step washes out part of the small model's per-step errors).
    Returns (B, V, C, S, S) in [0, 1]."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                          prediction_type=getattr(model, "prediction", "epsilon"))
    sched.set_timesteps(steps)
    B, V = cams.shape[:2]
    x = torch.randn(B, V, model.channels, model.size, model.size, generator=generator)
    null = torch.full((B,), model.n_classes)
    for t in sched.timesteps:
        tt = torch.full((B,), int(t))
        ec, eu = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cams, cams]),
                       torch.cat([labels, null])).chunk(2)
        e = eu + cfg * (ec - eu)
        x = sched.step(e.flatten(0, 1), t, x.flatten(0, 1), eta=eta, generator=generator).prev_sample.reshape(x.shape)
    return ((x + 1) / 2).clamp(0, 1)

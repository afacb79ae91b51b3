"""Guidance: the SDS gradient's direction on a toy case, the diffusers loader, the denoiser's shapes."""
import pytest
import torch

from tasks.refine.guidance import DiffusersGuidance, Guidance, GuidanceSettings, load_guidance


class _Oracle(Guidance):
    """A denoiser that knows the clean image: eps_hat = (x_t - sqrt(a) x*) / sqrt(1 - a)."""

    def __init__(self, clean):
        from diffusers import DDPMScheduler

        self.clean = clean * 2 - 1
        self.settings = GuidanceSettings(cfg=1.0)
        self.alphas_cumprod = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod

    def predict_eps(self, xt, t, cams, condition, cfg):
        a = self.alphas_cumprod[t].float().view(-1, 1, 1, 1, 1)
        return (xt - a.sqrt() * self.clean) / (1 - a).sqrt()


def test_sds_pulls_a_noisy_render_towards_the_clean_image():
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 4, 3, 8, 8, generator=g)
    render = (clean + 0.3 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    guide = _Oracle(clean)
    grad = guide.sds_grad(render, torch.zeros(2, 4, 3), "chair", 0.0, generator=g)
    # per object, -grad points from the render to the clean image (the sampled noise cancels exactly; each object
    # has its own timestep, hence its own positive scale)
    cos = torch.nn.functional.cosine_similarity((-grad).flatten(1), (clean - render).flatten(1), dim=1)
    assert (cos > 0.9999).all()
    x = render.clone().requires_grad_(True)
    opt = torch.optim.SGD([x], lr=0.5)
    err0 = (x - clean).abs().mean().item()
    for _ in range(20):
        opt.zero_grad()
        guide.loss(x, torch.zeros(2, 4, 3), "chair", 0.5, generator=g).backward()
        opt.step()
    assert (x - clean).abs().mean().item() < 0.3 * err0


def test_timestep_annealing_shrinks_the_range():
    guide = _Oracle(torch.zeros(1, 1, 3, 4, 4))
    guide.settings = GuidanceSettings(t_min=0.1, t_max=0.9, t_max_end=0.3)
    g = torch.Generator().manual_seed(0)
    early, late = guide.timestep(4000, 0.0, g), guide.timestep(4000, 1.0, g)
    assert early.min() >= 100 and early.max() >= 850 and late.max() < 300 and late.min() >= 100


def _tiny_pipeline(path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100)).save_pretrained(str(path))


def test_diffusers_loader_on_a_tiny_random_pipeline(tmp_path):
    _tiny_pipeline(tmp_path / "pipe")
    guide = load_guidance(f"diffusers:{tmp_path / 'pipe'}")
    assert isinstance(guide, DiffusersGuidance) and guide.size == 8 and len(guide.alphas_cumprod) == 100
    imgs = torch.rand(1, 4, 6, 16, 16)
    grad = guide.sds_grad(imgs, torch.zeros(1, 4, 3), "chair", 0.3, generator=torch.Generator().manual_seed(0))
    assert grad.shape == imgs.shape and torch.isfinite(grad).all()
    assert grad[:, :, :3].abs().sum() > 0 and grad[:, :, 3:].abs().sum() == 0   # RGB only
    # same seed, same gradient: the loader gives a deterministic denoiser
    again = guide.sds_grad(imgs, torch.zeros(1, 4, 3), "chair", 0.3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(grad, again)


def test_guidance_path_that_is_not_a_pipeline(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a diffusers pipeline"):
        load_guidance(f"diffusers:{tmp_path}")
    with pytest.raises(ValueError, match="guidance must be"):
        load_guidance("stable-diffusion")


def test_denoiser_shapes_and_cross_view_mixing():
    from tasks.refine.denoiser import MVDenoiser

    torch.manual_seed(0)
    m = MVDenoiser(size=16, width=8, emb=32)
    torch.nn.init.normal_(m.out[-1].weight, std=0.1)
    x = torch.randn(2, 4, 6, 16, 16, requires_grad=True)
    y = m(x, torch.tensor([10, 500]), torch.rand(2, 4, 3), torch.tensor([0, 6]))
    assert y.shape == x.shape
    # view 0's output depends on view 2's input (cross-view attention), and object 0's not on object 1's
    (g,) = torch.autograd.grad(y[0, 0].sum(), x)
    assert g[0, 2].abs().sum() > 0 and g[1].abs().sum() == 0


def test_v_prediction_output_converts_to_the_true_noise():
    from tasks.refine.denoiser import MVDenoiser

    m = MVDenoiser(size=8, width=8, emb=16, prediction="v_prediction")
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(3, 4, 6, 8, 8, generator=g) * 2 - 1, torch.randn(3, 4, 6, 8, 8, generator=g)
    a = torch.tensor([0.9, 0.5, 0.02]).view(-1, 1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0            # the training target (diffusers' v)
    assert torch.allclose(m.eps_from_output(v, xt, a), eps, atol=1e-5)
    assert MVDenoiser(size=8, width=8, emb=16).eps_from_output(eps, xt, a) is eps

"""GPU readiness checks that run on the CPU.

A CPU-only machine has no second torch device, so a tensor created without ``device=`` cannot be caught at run
time here; under ``arch=cuda`` it lands on the CPU and meets CUDA tensors. ``test_factories_name_a_device`` is a
static check instead: every torch factory call in ``engine/render`` and ``engine/fields`` passes ``device=`` (or
``**kw`` that carries one), except in the few functions listed, which build CPU tensors on purpose.
``test_gpu_binning_branch_matches_cpu`` runs the rasterizer's GPU tile-binning branch (entries per face, then a
sort) on the CPU against the CPU branch.
"""
import ast
import dataclasses
import pathlib

import pytest
import torch

from engine import backend
from engine.render import Camera, rasterize

ROOT = pathlib.Path(__file__).resolve().parents[2]
FACTORIES = {"zeros", "ones", "empty", "full", "arange", "linspace", "logspace", "rand", "randn", "randint",
             "randperm", "eye", "tensor"}
# (file, enclosing function): CPU tensors on purpose
ALLOWED = {
    ("engine/render/clip.py", "clip_near"),               # small lookup tables, moved with .to(dev)
    ("engine/render/mesh.py", "stack_meshes"),            # per-mesh offsets (metadata), read with int()
    ("engine/fields/grid.py", "DenseGrid.__init__"),      # nn.Module parameters: the caller moves the module
    ("engine/fields/hashgrid.py", "HashGrid.__init__"),   # nn.Module parameters and buffers: likewise
    ("engine/fields/isosurface.py", "grid_points"),       # extract_surface moves them to the field's device
}


def _factory_calls_without_device(path: pathlib.Path):
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, scope):
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = f"{scope}.{child.name}" if scope else child.name
            if (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
                    and child.func.attr in FACTORIES and isinstance(child.func.value, ast.Name)
                    and child.func.value.id == "torch"
                    and not any(k.arg in ("device", None) for k in child.keywords)):   # None: a **kw
                found.append((inner, child.lineno, child.func.attr))
            visit(child, inner)

    visit(tree, "")
    return found


def test_factories_name_a_device():
    bad = []
    for sub in ("engine/render", "engine/fields"):
        for path in sorted((ROOT / sub).glob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            bad += [f"{rel}:{line} torch.{fn}(...) in {scope or '<module>'}"
                    for scope, line, fn in _factory_calls_without_device(path) if (rel, scope) not in ALLOWED]
    assert not bad, ("torch factory calls without device= (CPU tensors under arch=cuda): pass "
                     "device=backend.torch_device() or an input's device:\n" + "\n".join(bad))


def test_gpu_binning_branch_matches_cpu(monkeypatch):
    # rasterize_screen fills the tile lists by a radix sort and bands of tile rows on CPU (_bin_lists) and by a parallel
    # entry pass plus a sort elsewhere (_bin_sorted): the same lists, so the same fragments
    g = torch.Generator().manual_seed(3)
    centres = torch.rand(30, 1, 3, generator=g, dtype=torch.float64) * 1.6 - 0.8
    verts = (centres + torch.randn(30, 3, 3, generator=g, dtype=torch.float64) * 0.3).reshape(-1, 3)
    faces = torch.arange(90).reshape(30, 3)
    cam = Camera.from_look_at([[0.2, 0.1, 3.0], [-0.5, 0.3, 2.6]], fov_y=45, width=23, height=18)
    from engine.render import raster
    active, sorted_fill, calls = backend.settings(), raster._bin_sorted, []

    def counted(*args):
        calls.append(args[0].shape)
        sorted_fill(*args)

    def run(arch):   # only the branch choice reads settings(); the kernels run on the active arch
        monkeypatch.setattr(backend, "settings", lambda: dataclasses.replace(active, resolved_arch=arch))
        return rasterize(verts, faces, cam, faces_per_pixel=4, sigma=1e-3)
    monkeypatch.setattr(raster, "_bin_sorted", counted)
    ref = run("x64")
    assert not calls
    out = run("cuda")
    monkeypatch.undo()
    assert len(calls) == 1
    assert (ref.pix_to_face >= 0).sum() > 100
    for a, b in zip((ref.pix_to_face, ref.bary, ref.zbuf, ref.dist), (out.pix_to_face, out.bary, out.zbuf, out.dist)):
        assert torch.equal(a, b)


def test_torch_binning_with_nothing_visible_matches_cpu_binning():
    # the GPU binning (torch sort) gives the same one-entry id list as the CPU one when no Gaussian is in view,
    # and a render through it works
    from engine.render import render_gaussians, splat
    cam = Camera.from_look_at([[0.0, 0.0, 3.0]], fov_y=40, width=40, height=24)
    means = torch.tensor([[0.0, 0.0, 5.0], [0.1, 0.0, 4.0]], dtype=torch.float64)        # behind the camera
    scales = torch.full((2, 3), 0.1, dtype=torch.float64)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 2, dtype=torch.float64)
    xy, _con, z, rad = splat.project_gaussians(cam, means, scales, quats)
    assert not (rad > 0).any()
    for a, b in zip(splat._bin(xy, rad, z, 24, 40), splat._bin_sort(xy, rad, z, 24, 40)):
        assert torch.equal(a, b)
    opac, col = torch.full((2,), 0.5, dtype=torch.float64), torch.rand(2, 3, dtype=torch.float64)
    ref = render_gaussians(cam, means, scales, quats, opac, colors=col, background=0.25)
    active = backend.settings()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backend, "settings", lambda: dataclasses.replace(active, resolved_arch="cuda"))
        out = render_gaussians(cam, means, scales, quats, opac, colors=col, background=0.25)
    assert torch.equal(out.rgb, ref.rgb) and torch.all(out.rgb == 0.25) and torch.equal(out.alpha, ref.alpha)

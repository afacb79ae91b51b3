"""Triangle-mesh utilities for fitting and exporting shapes.

Meshes are ``(verts (V, 3) float tensor, faces (F, 3) int64 tensor)`` pairs; numpy arrays are accepted wherever a
tensor is. Losses are torch functions, differentiable w.r.t. the vertices.

* ``icosphere``, ``superquadric_mesh`` (an icosphere mapped onto a superquadric, as Differentiable Blocks World);
* ``sample_surface``: uniform-over-area or uniform-over-faces sampling;
* ``laplacian_smooth`` / ``laplacian_loss``, ``edge_length_loss``, ``normal_consistency_loss``;
* ``chamfer_distance`` (exact nearest neighbours by open3d's search index or batched torch);
* ``particles_to_mesh``: splat particles into a density grid, then marching cubes (MPM exports);
* ``check_mesh``: empty meshes, NaN vertices and out-of-range indices raise ``MeshError``.
"""
import math

import numpy as np
import taichi as ti
import torch

from .. import backend
from ..errors import MeshError

__all__ = ["check_mesh", "icosphere", "superquadric_mesh", "sample_surface", "face_areas", "face_normals",
           "edges", "laplacian_smooth", "laplacian_loss", "edge_length_loss", "normal_consistency_loss",
           "chamfer_distance", "particles_to_mesh"]


def check_mesh(verts, faces, name: str = "mesh"):
    """Validate a mesh and return it as ``(verts float tensor, faces int64 tensor)``.

    Raises ``MeshError`` for wrong shapes, no faces, non-finite vertices, or indices outside ``[0, V)``.
    """
    v = torch.as_tensor(verts)
    f = torch.as_tensor(faces)
    if v.ndim != 2 or v.shape[1] != 3:
        raise MeshError(f"{name}: vertices must be (V, 3), got {tuple(v.shape)}")
    if f.ndim != 2 or f.shape[1] != 3:
        raise MeshError(f"{name}: faces must be (F, 3) triangles, got {tuple(f.shape)}")
    if len(v) == 0 or len(f) == 0:
        raise MeshError(f"{name} is empty ({len(v)} vertices, {len(f)} faces); nothing to process")
    if f.is_floating_point():
        raise MeshError(f"{name}: face indices must be integers, got {f.dtype}")
    if not v.is_floating_point():
        v = v.to(backend.torch_dtype())
    if not torch.isfinite(v).all():
        bad = int((~torch.isfinite(v)).any(1).sum())
        raise MeshError(f"{name}: {bad} vertices are NaN or Inf; fix the optimisation (smaller step) or the input")
    lo, hi = int(f.min()), int(f.max())
    if lo < 0 or hi >= len(v):
        raise MeshError(f"{name}: face indices span [{lo}, {hi}] but there are only {len(v)} vertices")
    return v, f.long()


# ----------------------------------------------------------------------------------------------------------------
# Construction

def icosphere(level: int = 1, radius: float = 1.0, dtype=None):
    """Unit icosahedron subdivided ``level`` times and projected to the sphere.

    Returns ``(verts (V, 3), faces (F, 3) int64)``, V = 10 * 4^level + 2, F = 20 * 4^level, outward winding.
    """
    t = (1.0 + math.sqrt(5.0)) / 2.0
    v = np.array([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
                  [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], dtype=np.float64)
    f = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
                  [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5],
                  [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]], dtype=np.int64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    for _ in range(level):
        # One midpoint per undirected edge (np.unique gives each a single new vertex id).
        e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
        uniq, inv = np.unique(np.sort(e, axis=1), axis=0, return_inverse=True)
        mid = v[uniq].mean(1)
        mid /= np.linalg.norm(mid, axis=1, keepdims=True)
        m = inv.reshape(3, -1) + len(v)
        a, b, c = f.T
        f = np.concatenate([np.stack([a, m[0], m[2]], 1), np.stack([b, m[1], m[0]], 1),
                            np.stack([c, m[2], m[1]], 1), np.stack([m[0], m[1], m[2]], 1)])
        v = np.concatenate([v, mid])
    dtype = dtype or backend.torch_dtype()
    return torch.as_tensor(v * radius, dtype=dtype), torch.as_tensor(f)


def _signed_pow(x, e):
    return torch.sign(x) * x.abs().clamp_min(1e-12) ** e


def superquadric_mesh(eps1, eps2, scale, level: int = 2):
    """An icosphere mapped onto the superquadric surface (Barr 1981; as in Differentiable Blocks World).

    A sphere point at latitude eta and longitude omega maps to
    ``(s1 f(cos eta, e1) f(cos omega, e2), s2 f(cos eta, e1) f(sin omega, e2), s3 f(sin eta, e1))`` with
    ``f(x, e) = sign(x) |x|^e``. Differentiable w.r.t. ``eps1``, ``eps2`` (scalars, 0.1..1.9 is DBW's range) and
    ``scale`` (3,) (half extents in world units).

    Returns ``(verts (V, 3), faces (F, 3) int64)``.
    """
    eps1 = torch.as_tensor(eps1, dtype=backend.torch_dtype())
    v, f = icosphere(level, dtype=eps1.dtype)
    scale = torch.as_tensor(scale, dtype=eps1.dtype)
    eta = torch.asin(v[:, 2].clamp(-1.0, 1.0))
    omega = torch.atan2(v[:, 1], v[:, 0])
    ce = _signed_pow(torch.cos(eta), eps1)
    x = ce * _signed_pow(torch.cos(omega), eps2)
    y = ce * _signed_pow(torch.sin(omega), eps2)
    z = _signed_pow(torch.sin(eta), eps1)
    return torch.stack([x, y, z], 1) * scale, f


# ----------------------------------------------------------------------------------------------------------------
# Geometry

def face_normals(verts, faces, unit: bool = True):
    """(F, 3) face normals (right-hand rule); with ``unit=False`` their length is twice the face area."""
    tri = verts[faces]
    n = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=1)
    return n / torch.linalg.norm(n, dim=1, keepdim=True).clamp_min(1e-20) if unit else n


def face_areas(verts, faces):
    """(F,) triangle areas in squared world units."""
    return 0.5 * torch.linalg.norm(face_normals(verts, faces, unit=False), dim=1)


def edges(faces):
    """Unique undirected edges (E, 2) int64, and for each face-edge (3F,) its index into them."""
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    uniq, inv = torch.unique(torch.sort(e, dim=1).values, dim=0, return_inverse=True)
    return uniq, inv


def sample_surface(verts, faces, n: int, weighting: str = "area", generator=None):
    """Sample ``n`` points on the surface.

    Args:
        weighting: ``"area"`` picks faces with probability proportional to area (uniform over the surface);
            ``"face"`` picks every face equally often (denser where faces are small).
        generator: optional ``torch.Generator`` for reproducibility.

    Returns:
        ``(points (n, 3), face_index (n,) int64)``; points are differentiable w.r.t. ``verts``.
    """
    verts, faces = check_mesh(verts, faces)
    # random numbers on the generator's device (a CPU generator cannot fill a CUDA tensor), then onto the mesh's
    gdev = generator.device if generator is not None else verts.device
    if weighting == "area":
        w = face_areas(verts, faces).detach()
        if not (w.sum() > 0):
            raise MeshError("mesh has zero total area; cannot sample it by area")
        idx = torch.multinomial(w.to(gdev), n, replacement=True, generator=generator).to(verts.device)
    elif weighting == "face":
        idx = torch.randint(len(faces), (n,), generator=generator, device=gdev).to(verts.device)
    else:
        raise ValueError(f"weighting must be 'area' or 'face', got {weighting!r}")
    u = torch.rand(n, 2, dtype=verts.dtype, generator=generator, device=gdev).to(verts.device)
    # Fold the unit square onto the triangle: uniform barycentrics without rejection.
    flip = u.sum(1) > 1
    u[flip] = 1 - u[flip]
    tri = verts[faces[idx]]
    pts = tri[:, 0] + u[:, :1] * (tri[:, 1] - tri[:, 0]) + u[:, 1:] * (tri[:, 2] - tri[:, 0])
    return pts, idx


# ----------------------------------------------------------------------------------------------------------------
# Regularisers

def _neighbour_mean(verts, faces):
    e, _ = edges(faces)
    src = torch.cat([e[:, 0], e[:, 1]])
    dst = torch.cat([e[:, 1], e[:, 0]])
    total = torch.zeros_like(verts).index_add_(0, src, verts[dst])
    deg = torch.zeros(len(verts), dtype=verts.dtype, device=verts.device).index_add_(
        0, src, torch.ones_like(src, dtype=verts.dtype))
    return total / deg.clamp_min(1).unsqueeze(1)


def laplacian_smooth(verts, faces, iterations: int = 1, lam: float = 0.5):
    """Uniform-weight Laplacian smoothing: ``v <- v + lam (mean(neighbours) - v)``, ``iterations`` times."""
    verts, faces = check_mesh(verts, faces)
    for _ in range(iterations):
        verts = verts + lam * (_neighbour_mean(verts, faces) - verts)
    return verts


def laplacian_loss(verts, faces):
    """Mean squared uniform Laplacian ``|mean(neighbours) - v|^2`` (world units^2); zero for a flat regular grid."""
    d = _neighbour_mean(verts, faces) - verts
    return (d * d).sum(1).mean()


def edge_length_loss(verts, faces, target: float = 0.0):
    """Mean of ``(|edge| - target)^2`` over unique edges; ``target=0`` penalises long edges (world units^2)."""
    e, _ = edges(faces)
    length = torch.linalg.norm(verts[e[:, 0]] - verts[e[:, 1]], dim=1)
    return ((length - target) ** 2).mean()


def normal_consistency_loss(verts, faces):
    """Mean ``1 - cos`` between the normals of the two faces on each interior edge (0 for a plane)."""
    n = face_normals(verts, faces)
    _, inv = edges(faces)
    face_of = torch.arange(len(faces), device=faces.device).repeat(3)
    order = torch.argsort(inv, stable=True)
    inv_s, face_s = inv[order], face_of[order]
    pair = inv_s[1:] == inv_s[:-1]  # consecutive face-edges with the same edge: its two faces
    a, b = face_s[:-1][pair], face_s[1:][pair]
    if len(a) == 0:
        return verts.sum() * 0
    return (1 - (n[a] * n[b]).sum(1)).mean()


# ----------------------------------------------------------------------------------------------------------------
# Chamfer

def _nearest(query, ref, method: str, chunk: int = 4096):
    if method == "torch":
        out = []
        for i in range(0, len(query), chunk):
            out.append(torch.cdist(query[i:i + chunk], ref).argmin(1))
        return torch.cat(out)
    if method == "kdtree":
        import open3d as o3d

        nns = o3d.core.nns.NearestNeighborSearch(o3d.core.Tensor(ref.detach().cpu().numpy().astype(np.float64)))
        nns.knn_index()
        idx, _ = nns.knn_search(o3d.core.Tensor(query.detach().cpu().numpy().astype(np.float64)), 1)
        return torch.as_tensor(idx.numpy()[:, 0], device=query.device)
    raise ValueError(f"method must be 'torch' or 'kdtree', got {method!r}")


def chamfer_distance(a, b, method: str = "kdtree", squared: bool = True):
    """Symmetric Chamfer distance between point sets a (N, 3) and b (M, 3).

    Convention: ``mean_a min_b d(a, b) + mean_b min_a d(a, b)`` where d is the squared Euclidean distance
    (``squared=True``, as PyTorch3D) or the distance (``squared=False``, as DBW's DTU numbers, which also halve it).
    Nearest neighbours are found exactly, by open3d's KD-tree index (``"kdtree"``) or chunked ``torch.cdist``
    (``"torch"``); the distances are then recomputed in torch, so the result is differentiable w.r.t. a and b.
    """
    a = torch.as_tensor(a)
    b = torch.as_tensor(b, dtype=a.dtype)
    if a.ndim != 2 or b.ndim != 2 or len(a) == 0 or len(b) == 0:
        raise MeshError(f"chamfer_distance needs two non-empty (N, 3) point sets, got {tuple(a.shape)} and "
                        f"{tuple(b.shape)}")
    ia = _nearest(a.detach(), b.detach(), method)
    ib = _nearest(b.detach(), a.detach(), method)
    da = ((a - b[ia]) ** 2).sum(1)
    db = ((b - a[ib]) ** 2).sum(1)
    if not squared:
        da, db = da.clamp_min(1e-30).sqrt(), db.clamp_min(1e-30).sqrt()
    return da.mean() + db.mean()


# ----------------------------------------------------------------------------------------------------------------
# Particles to surface

@ti.kernel
def _splat(points: ti.types.ndarray(ndim=2), origin_x: ti.f64, origin_y: ti.f64, origin_z: ti.f64, h: ti.f64,
           radius: ti.f64, grid: ti.types.ndarray(ndim=3)):
    # Each particle adds the smooth bump (1 - (d / r)^2)^3 to the nodes within r: a compact, C1 density.
    reach = ti.cast(ti.ceil(radius / h), ti.i32)
    for p in range(points.shape[0]):
        x = ti.Vector([(points[p, 0] - origin_x) / h, (points[p, 1] - origin_y) / h, (points[p, 2] - origin_z) / h])
        base = ti.cast(ti.round(x), ti.i32)
        for a, b, c in ti.ndrange((-reach, reach + 1), (-reach, reach + 1), (-reach, reach + 1)):
            node = base + ti.Vector([a, b, c])
            q = (node.cast(ti.f64) - x).norm() * h / radius
            if q < 1.0:
                ti.atomic_add(grid[node[0], node[1], node[2]], (1.0 - q * q) ** 3)


def particles_to_mesh(points, voxel_size: float, radius: float | None = None, level: float = 0.5,
                      smooth_iterations: int = 0):
    """Surface of a particle cloud (e.g. an MPM robot) as a ``trimesh.Trimesh``.

    Args:
        points: (N, 3) positions in world units (numpy or tensor).
        voxel_size: grid spacing of the density volume (world units).
        radius: kernel support per particle (default 2 voxels; use about 1.5-2x the particle spacing).
        level: iso value of the density; one isolated particle peaks at 1, so 0.5 keeps lone particles as blobs.
        smooth_iterations: optional Laplacian smoothing passes on the result.

    Returns:
        A watertight (for well-sampled clouds) mesh with outward normals, in world coordinates.
    """
    import trimesh

    from .isosurface import marching_cubes

    backend.ensure()
    pts = np.ascontiguousarray(torch.as_tensor(points).detach().cpu().numpy(), dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise MeshError(f"particles_to_mesh needs (N, 3) points, got shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise MeshError("particles_to_mesh: some particle positions are NaN or Inf (did the simulation blow up?)")
    if not voxel_size > 0:
        raise MeshError(f"voxel_size must be positive, got {voxel_size}")
    radius = 2.0 * voxel_size if radius is None else float(radius)
    pad = radius + 2 * voxel_size  # room for the kernel plus one empty layer, so the surface closes
    origin = pts.min(0) - pad
    shape = tuple(int(s) for s in np.ceil((pts.max(0) + pad - origin) / voxel_size).astype(int) + 1)
    grid = np.zeros(shape, dtype=np.float64)
    _splat(pts, *origin.tolist(), float(voxel_size), radius, grid)
    if grid.max() <= level:
        raise MeshError(f"particles_to_mesh: density never reaches level {level}; increase radius or lower level")
    # Density is high inside; marching_cubes treats values <= level as inside, so mesh its negation.
    surf = marching_cubes(-grid, -level, spacing=(voxel_size,) * 3)
    verts = surf.verts + origin
    if smooth_iterations:
        verts = laplacian_smooth(torch.as_tensor(verts), torch.as_tensor(surf.faces), smooth_iterations).numpy()
    return trimesh.Trimesh(verts, surf.faces, process=False)

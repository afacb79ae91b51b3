"""Primitive decomposition from posed images (Differentiable Blocks World, Monnier et al. 2023) on tide's renderer.

* ``data``: Blender/nerfstudio ``transforms.json`` and DTU/IDR ``cameras.npz`` readers -> ``Views``;
* ``frame``: up axis, centre and radius estimated from the cameras (``estimate_frame`` -> ``SceneFrame``);
* ``synthetic``: superquadric scenes ray cast by Embree, with ground-truth points.
"""
from .data import Views, load_dtu, load_gt_points, load_transforms, load_views
from .frame import SceneFrame, estimate_frame

__all__ = ["Views", "load_views", "load_transforms", "load_dtu", "load_gt_points", "SceneFrame", "estimate_frame"]

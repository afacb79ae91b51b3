"""Differentiable rendering on CPU and GPU: cameras, mesh rasterizer (hard/soft), volumes, Gaussians, particles.

Torch tensors in, torch tensors out; every differentiable op is a Taichi kernel behind ``engine.bridge``.
"""
from .antialias import antialias, edge_neighbours
from .attributes import face_attributes, interpolate, sample_texture
from .camera import CV_TO_GL, Camera, look_at_rotation, orbit_cameras
from .mesh import MeshRender, StackedMeshes, render_mesh, stack_meshes
from .raster import Fragments, differentiable_fragments, rasterize, soft_composite
from .shading import DirectionalLights, face_normals, lambert, vertex_normals
from .splat import SplatRender, project_gaussians, quat_to_rotmat, render_gaussians
from .volume import VolumeRender, composite_rays, ray_box, render_volume, trilinear

__all__ = [
    "Camera", "look_at_rotation", "orbit_cameras", "CV_TO_GL",
    "Fragments", "rasterize", "differentiable_fragments", "soft_composite", "antialias", "edge_neighbours",
    "interpolate", "sample_texture", "face_attributes",
    "DirectionalLights", "face_normals", "vertex_normals", "lambert",
    "MeshRender", "render_mesh", "stack_meshes", "StackedMeshes",
    "SplatRender", "render_gaussians", "project_gaussians", "quat_to_rotmat",
    "VolumeRender", "render_volume", "composite_rays", "trilinear", "ray_box",
]

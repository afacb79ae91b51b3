"""Fields and iso-surfaces: analytic SDFs, dense grids, hash-grid/MLP fields, marching cubes, mesh utilities.

Nothing here starts Taichi at import time; the first kernel launch calls ``engine.backend.ensure()``.
"""
from .grid import DenseGrid, sample_grid
from .hashgrid import HashGrid, hash_encode, hash_encode_torch, level_resolutions
from .isosurface import (IsoSurface, attach_field_gradients, extract_surface, grid_points, marching_cubes,
                         marching_cubes_torch)
from .mesh import (chamfer_distance, check_mesh, edge_length_loss, face_areas, face_normals, icosphere,
                   laplacian_loss, laplacian_smooth, normal_consistency_loss, particles_to_mesh, sample_surface,
                   superquadric_mesh)
from .mlp import MLP, NeuralField
from . import sdf

__all__ = ["DenseGrid", "sample_grid", "HashGrid", "hash_encode", "hash_encode_torch", "level_resolutions", "IsoSurface",
           "attach_field_gradients", "extract_surface", "grid_points", "marching_cubes", "marching_cubes_torch",
           "chamfer_distance", "check_mesh", "edge_length_loss", "face_areas", "face_normals", "icosphere",
           "laplacian_loss", "laplacian_smooth", "normal_consistency_loss", "particles_to_mesh", "sample_surface",
           "superquadric_mesh", "MLP", "NeuralField", "sdf"]

"""The marching-cubes lookup table that Shap-E's MeshDecoder reads from its buffers.

Real Shap-E weights carry this table; random weights leave it zero and mesh decoding
then fails on an empty triangle list. We compute it by running scikit-image's classic
(Lorensen) marching cubes over each of the 256 corner cases of one 2x2x2 cell, and
express each triangle by the cell's edge numbers in the order MeshDecoder uses.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.measure import marching_cubes

MAX_TRIANGLES = 5  # the classic table never needs more per cell


def _edge_number(midpoint: np.ndarray) -> int:
    """MeshDecoder's edge order: 4 x-edges, 4 y-edges, 4 z-edges, each ordered by the
    other two coordinates with the lower axis varying slowest."""
    x, y, z = (float(c) for c in midpoint)
    if x == 0.5:
        return 0 + int(y) + 2 * int(z)
    if y == 0.5:
        return 4 + int(x) + 2 * int(z)
    return 8 + int(x) + 2 * int(y)


def marching_cubes_table() -> tuple[torch.Tensor, torch.Tensor]:
    """(cases [256, 5, 3] edge indices, masks [256, 5] which triangles are real)."""
    cases = torch.zeros(256, MAX_TRIANGLES, 3, dtype=torch.long)
    masks = torch.zeros(256, MAX_TRIANGLES, dtype=torch.bool)
    for case in range(1, 255):
        # Corner (x, y, z) is bit x + 2y + 4z of the case, as in MeshDecoder.forward.
        cell = np.empty((2, 2, 2), dtype=np.float32)
        for x in range(2):
            for y in range(2):
                for z in range(2):
                    cell[x, y, z] = 1.0 if case >> (x + 2 * y + 4 * z) & 1 else -1.0
        vertices, faces, _, _ = marching_cubes(cell, level=0.0, method="lorensen")
        for t, face in enumerate(faces[:MAX_TRIANGLES]):
            cases[case, t] = torch.tensor([_edge_number(vertices[v]) for v in face])
            masks[case, t] = True
    return cases, masks

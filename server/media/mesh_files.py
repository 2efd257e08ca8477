"""Mesh files written straight into the output stream, in bounded blocks.

OBJ is text: formatting it with one `%` per block of rows is about twice as fast as
open3d's writer (which also writes only to a path, so it needed a temporary file), and
the first bytes leave before the last row is formatted. PLY stays with open3d: its
binary writer is fast, and it needs the temporary file.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import open3d

from genserve.server.provenance.mesh import obj_comment, ply_with_comment
from genserve.server.provenance.record import Record

ROWS_PER_BLOCK = 4096  # ~360 KiB of OBJ text per block


class Writable(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


def obj_blocks(
    vertices: np.ndarray, colours: np.ndarray, faces: np.ndarray, rows: int = ROWS_PER_BLOCK
) -> Iterator[bytes]:
    """`v x y z r g b` lines (colours in 0..1, as open3d reads them), then `f a b c`
    lines with 1-based indices."""
    vertex_rows = np.hstack([vertices, colours]).astype(np.float64)
    for start in range(0, len(vertex_rows), rows):
        block = vertex_rows[start : start + rows]
        yield (("v %.6f %.6f %.6f %.4f %.4f %.4f\n" * len(block)) % tuple(block.ravel())).encode()
    one_based = faces.astype(np.int64) + 1
    for start in range(0, len(one_based), rows):
        indices = one_based[start : start + rows]
        yield (("f %d %d %d\n" * len(indices)) % tuple(indices.ravel().tolist())).encode()


def write_obj(
    out: Writable,
    vertices: np.ndarray,
    colours: np.ndarray,
    faces: np.ndarray,
    record: Record | None = None,
) -> None:
    out.write(obj_comment(record))  # the generation record, the file's first line
    for block in obj_blocks(vertices, colours, faces):
        out.write(block)


def write_ply(
    out: Writable,
    vertices: np.ndarray,
    colours: np.ndarray,
    faces: np.ndarray,
    record: Record | None = None,
) -> None:
    mesh = open3d.geometry.TriangleMesh()
    mesh.vertices = open3d.utility.Vector3dVector(vertices.astype(np.float64))
    mesh.triangles = open3d.utility.Vector3iVector(faces.astype(np.int32))
    mesh.vertex_colors = open3d.utility.Vector3dVector(colours.astype(np.float64))
    # open3d writes only to a path: a private temporary folder, gone when we are done.
    with tempfile.TemporaryDirectory(prefix="genserve-mesh-") as folder:
        path = Path(folder) / "mesh.ply"
        if not open3d.io.write_triangle_mesh(path, mesh, write_vertex_colors=True):
            raise RuntimeError("open3d could not write the PLY file")
        with path.open("rb") as file:
            # the generation record: a comment in the header, in the first block
            out.write(ply_with_comment(file.read(1 << 20), record))
            while block := file.read(1 << 20):
                out.write(block)

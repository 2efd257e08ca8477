"""A mesh file (OBJ, or PLY in ASCII or binary) as a picture: the UI's 3D preview.

Drawn in the client with Pillow, no GPU or OpenGL context: the vertices turned to a fixed
three-quarter view, projected orthographically, the triangles painted back to front
(painter's algorithm), each shaded by how much it faces a light and tinted by its vertices'
colours. Supersampled, then scaled down, for smooth edges. A preview, not a renderer: a very
large mesh is drawn from a sample of its faces.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

PREVIEW_SIZE = 360  # pixels, square
SUPERSAMPLE = 2
MAX_FACES = 60_000  # faces drawn; a larger mesh is drawn from an even sample of them
AZIMUTH_DEG, ELEVATION_DEG = 35.0, 25.0
BACKGROUND = (246, 247, 251)
BASE_COLOUR = np.array([0.45, 0.62, 0.86])  # where a mesh has no vertex colours
LIGHT = np.array([0.4, 0.5, 1.0]) / np.linalg.norm([0.4, 0.5, 1.0])
MESH_MIME_TYPES = ("model/obj", "model/ply")


class MeshFileError(ValueError):
    """The bytes are not a mesh this reader knows."""


@dataclass(frozen=True)
class Mesh:
    vertices: np.ndarray  # (n, 3) float
    faces: np.ndarray  # (m, 3) int, 0-based
    colours: np.ndarray | None  # (n, 3) in 0..1, or None


def is_mesh(mime_type: str, file_name: str = "") -> bool:
    return mime_type in MESH_MIME_TYPES or file_name.lower().endswith((".obj", ".ply"))


def read_mesh(data: bytes, file_name: str = "") -> Mesh:
    """OBJ or PLY, by the file's own first bytes (the name only breaks a tie)."""
    if data.startswith(b"ply"):
        return read_ply(data)
    if file_name.lower().endswith(".ply"):
        raise MeshFileError("a .ply file without the 'ply' magic")
    return read_obj(data)


def read_obj(data: bytes) -> Mesh:
    """`v x y z [r g b]` and `f a b c ...` lines (polygons fanned into triangles; `a/b/c`
    and negative indices as the format allows); everything else is ignored."""
    vertices: list[list[float]] = []
    faces: list[tuple[int, int, int]] = []
    for raw in data.splitlines():
        parts = raw.split()
        if not parts:
            continue
        if parts[0] == b"v":
            vertices.append([float(p) for p in parts[1:7]])
        elif parts[0] == b"f":
            ids = [_obj_index(p, len(vertices)) for p in parts[1:]]
            faces += [(ids[0], ids[i], ids[i + 1]) for i in range(1, len(ids) - 1)]
    if not vertices:
        raise MeshFileError("no vertices")
    widths = {len(v) for v in vertices}
    colours = None
    if widths == {6}:
        table = np.array(vertices, dtype=np.float64)
        points, colours = table[:, :3], np.clip(table[:, 3:6], 0, 1)
    else:
        points = np.array([v[:3] for v in vertices], dtype=np.float64)
    return Mesh(points, _checked_faces(np.array(faces, dtype=np.int64), len(points)), colours)


def _obj_index(token: bytes, count: int) -> int:
    index = int(token.split(b"/")[0])
    return index - 1 if index > 0 else count + index


PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


@dataclass
class _Element:
    name: str
    count: int
    properties: list[tuple[str, str]]  # (name, numpy type); a list: ("list", "count:item")


def read_ply(data: bytes) -> Mesh:
    """A PLY file's `vertex` (x, y, z, optional red/green/blue) and `face` elements."""
    end = data.find(b"end_header")
    if end < 0:
        raise MeshFileError("a PLY file without end_header")
    body_start = data.index(b"\n", end) + 1
    header = data[:end].decode("ascii", "replace").splitlines()
    fmt, elements = _ply_header(header)
    if fmt == "ascii":
        values = data[body_start:].split()
        return _ply_ascii(elements, values)
    order = "<" if fmt == "binary_little_endian" else ">"
    return _ply_binary(elements, data, body_start, order)


def _ply_header(lines: list[str]) -> tuple[str, list[_Element]]:
    fmt = ""
    elements: list[_Element] = []
    for line in lines:
        words = line.split()
        if not words:
            continue
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            elements.append(_Element(words[1], int(words[2]), []))
        elif words[0] == "property" and elements:
            if words[1] == "list":
                kind = f"{PLY_TYPES[words[2]]}:{PLY_TYPES[words[3]]}"
                elements[-1].properties.append((words[4], "list:" + kind))
            else:
                elements[-1].properties.append((words[2], PLY_TYPES[words[1]]))
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise MeshFileError(f"PLY format {fmt!r}")
    return fmt, elements


def _ply_binary(elements: list[_Element], data: bytes, offset: int, order: str) -> Mesh:
    columns: dict[str, np.ndarray] = {}
    faces = np.zeros((0, 3), dtype=np.int64)
    for element in elements:
        lists = [p for p in element.properties if p[1].startswith("list:")]
        if not lists:
            dtype = np.dtype([(name, order + kind) for name, kind in element.properties])
            table = np.frombuffer(data, dtype=dtype, count=element.count, offset=offset)
            offset += dtype.itemsize * element.count
            if element.name == "vertex":
                columns = {name: table[name] for name in dtype.names or ()}
            continue
        if element.name != "face" or len(element.properties) != 1:
            raise MeshFileError(f"PLY element {element.name!r} with lists is not read here")
        count_type, item_type = lists[0][1].removeprefix("list:").split(":")
        # Triangles, as every writer of generated meshes makes them: one fixed-size row.
        dtype = np.dtype([("n", order + count_type), ("ids", order + item_type, (3,))])
        table = np.frombuffer(data, dtype=dtype, count=element.count, offset=offset)
        if element.count and not np.all(table["n"] == 3):
            raise MeshFileError("PLY faces other than triangles")
        faces = table["ids"].astype(np.int64)
        offset += dtype.itemsize * element.count
    return _ply_mesh(columns, faces)


def _ply_ascii(elements: list[_Element], values: list[bytes]) -> Mesh:
    position = 0
    columns: dict[str, np.ndarray] = {}
    triangles: list[tuple[int, int, int]] = []
    for element in elements:
        rows: list[list[float]] = []
        for _ in range(element.count):
            row: list[float] = []
            for _name, kind in element.properties:
                if kind.startswith("list:"):
                    n = int(values[position])
                    ids = [int(v) for v in values[position + 1 : position + 1 + n]]
                    position += 1 + n
                    triangles += [(ids[0], ids[i], ids[i + 1]) for i in range(1, n - 1)]
                else:
                    row.append(float(values[position]))
                    position += 1
            rows.append(row)
        if element.name == "vertex":
            table = np.array(rows, dtype=np.float64).reshape(element.count, -1)
            names = [name for name, _ in element.properties]
            columns = {name: table[:, i] for i, name in enumerate(names)}
    return _ply_mesh(columns, np.array(triangles, dtype=np.int64).reshape(-1, 3))


def _ply_mesh(columns: dict[str, np.ndarray], faces: np.ndarray) -> Mesh:
    if not {"x", "y", "z"} <= set(columns):
        raise MeshFileError("a PLY file without vertex x, y, z")
    points = np.stack([columns[a].astype(np.float64) for a in "xyz"], axis=1)
    colours = None
    if {"red", "green", "blue"} <= set(columns):
        rgb = np.stack([columns[c].astype(np.float64) for c in ("red", "green", "blue")], axis=1)
        colours = np.clip(rgb / 255.0 if rgb.max(initial=0) > 1 else rgb, 0, 1)
    return Mesh(points, _checked_faces(faces, len(points)), colours)


def _checked_faces(faces: np.ndarray, count: int) -> np.ndarray:
    faces = faces.reshape(-1, 3)
    if faces.size and (faces.min() < 0 or faces.max() >= count):
        raise MeshFileError("a face refers to a vertex that does not exist")
    return faces


def render_preview(mesh: Mesh, size: int = PREVIEW_SIZE) -> bytes:
    """A PNG of the mesh from the fixed view; a mesh without faces shows its points."""
    canvas = size * SUPERSAMPLE
    image = Image.new("RGB", (canvas, canvas), BACKGROUND)
    draw = ImageDraw.Draw(image)
    view = _view(mesh.vertices)
    screen = _to_screen(view, canvas)
    colours = mesh.colours if mesh.colours is not None else np.tile(BASE_COLOUR, (len(view), 1))
    faces = mesh.faces
    if len(faces) > MAX_FACES:
        faces = faces[np.linspace(0, len(faces) - 1, MAX_FACES).astype(np.int64)]
    if len(faces):
        corners = view[faces]  # (m, 3, 3)
        normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        lengths = np.linalg.norm(normals, axis=1, keepdims=True)
        normals = np.divide(normals, lengths, out=np.zeros_like(normals), where=lengths > 0)
        shade = 0.3 + 0.7 * np.abs(normals @ LIGHT)  # two-sided: winding varies
        tint = colours[faces].mean(axis=1) * shade[:, None]
        fill = np.clip(tint * 255, 0, 255).astype(np.uint8)
        order = np.argsort(corners[:, :, 2].mean(axis=1))  # far (small z) first
        points = screen[faces]
        for i in order:
            polygon = [tuple(p) for p in points[i].tolist()]
            draw.polygon(polygon, fill=tuple(fill[i].tolist()))
    else:
        radius = SUPERSAMPLE
        for (x, y), colour in zip(screen.tolist(), colours, strict=True):
            rgb = tuple(int(c * 255) for c in colour)
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=rgb)
    out = io.BytesIO()
    image.resize((size, size), Image.Resampling.LANCZOS).save(out, format="PNG")
    return out.getvalue()


def preview_png(data: bytes, file_name: str = "") -> bytes:
    """The mesh file's preview, as PNG bytes; MeshFileError if it cannot be read."""
    try:
        mesh = read_mesh(data, file_name)
    except (ValueError, IndexError, UnicodeDecodeError) as error:
        raise MeshFileError(str(error)) from error
    return render_preview(mesh)


def _view(vertices: np.ndarray) -> np.ndarray:
    """The vertices centred, scaled into the unit ball and turned to the view (z: towards
    the viewer, y: up)."""
    centred = vertices - (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    radius = float(np.linalg.norm(centred, axis=1).max(initial=0)) or 1.0
    a, e = math.radians(AZIMUTH_DEG), math.radians(ELEVATION_DEG)
    turn = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    tilt = np.array([[1, 0, 0], [0, math.cos(e), -math.sin(e)], [0, math.sin(e), math.cos(e)]])
    result: np.ndarray = (centred / radius) @ turn.T @ tilt.T
    return result


def _to_screen(view: np.ndarray, canvas: int) -> np.ndarray:
    margin = 0.06 * canvas
    half = (canvas - 2 * margin) / 2
    x = canvas / 2 + view[:, 0] * half
    y = canvas / 2 - view[:, 1] * half  # screen y grows downwards
    return np.stack([x, y], axis=1)

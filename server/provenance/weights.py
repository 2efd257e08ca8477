"""A digest of a model's weights, computed once when the model loads.

The sha256 over the weight files under the model's source (in path order, each by its
relative path and its own sha256); a folder with none of the known weight suffixes is
digested whole. A hub id that is not a local path has no digest here (None).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".onnx", ".pt", ".pth", ".ckpt", ".npz")
BLOCK_BYTES = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def weight_files(source: Path, gguf_file: str | None = None) -> list[Path]:
    if source.is_file():
        return [source]
    if gguf_file and (source / gguf_file).is_file():
        return [source / gguf_file]
    files = sorted(p for p in source.rglob("*") if p.is_file())
    weights = [p for p in files if p.name.endswith(WEIGHT_SUFFIXES)]
    return weights or files


def weights_digest(source: str, gguf_file: str | None = None) -> str | None:
    """`sha256:<hex>` of the weights at a local path; None for anything else."""
    path = Path(source)
    if not path.exists():
        return None
    root = path if path.is_dir() else path.parent
    combined = hashlib.sha256()
    for file in weight_files(path, gguf_file):
        combined.update(f"{file.relative_to(root).as_posix()}\0{file_sha256(file)}\n".encode())
    return f"sha256:{combined.hexdigest()}"

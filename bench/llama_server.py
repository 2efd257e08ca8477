"""llama.cpp's own server, the peer to beat: built by `make bench` from the sources that
the pinned llama-cpp-python sdist vendors (the same kernels our engine calls), run as
the issue measured it: 2 threads, 8 slots, continuous batching."""

from __future__ import annotations

import subprocess
from pathlib import Path

LLAMA_SERVER = Path("bench/.llama-server/build/bin/llama-server")
SLOTS = 8
CONTEXT_TOKENS = 16384


def start_llama_server(gguf: Path, port: int, threads: int = 2) -> subprocess.Popen[bytes]:
    command = [str(LLAMA_SERVER), "-m", str(gguf), "-t", str(threads), "-np", str(SLOTS)]
    command += ["-c", str(CONTEXT_TOKENS), "--host", "127.0.0.1", "--port", str(port)]
    # No repacked weights, as our engine loads them (llama_runtime.py: the AMX repack
    # faults on CPUs with AMX): the same kernels on both sides.
    command += ["--no-repack"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

"""The benchmark harness in quick mode (tiny counts), so it cannot rot. No timing is
asserted: only that every measurement ran and its outputs were written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from bench.__main__ import run


@pytest.mark.timeout(1200)  # a dozen server processes and every measurement, on a shared machine
def test_quick_benchmark_writes_its_results(tmp_path: Path) -> None:
    results = run(quick=True, out=tmp_path)
    written = json.loads((tmp_path / "bench.json").read_text())
    assert [p["concurrency"] for p in written["sweep_genserve"]] == [1, 2]
    assert all(p["aggregate_tokens_per_s"] > 0 for p in written["sweep_genserve"])
    assert all(p["failed_streams"] == 0 for p in written["sweep_genserve"])
    grpc_sweep = written["sweep_genserve_grpc"]  # the same server's TextService, no bridge
    assert [p["concurrency"] for p in grpc_sweep] == [1, 2]
    assert all(p["aggregate_tokens_per_s"] > 0 and p["failed_streams"] == 0 for p in grpc_sweep)
    # the same GGUF through llama.cpp and through transformers' dequantized copy
    assert 1 < written["perplexity"]["llama_cpp"] < 1000
    assert 0.9 < written["perplexity"]["ratio"] < 1.1
    assert [row["weights"] for row in written["weights"]] == [
        "fp32, aten (stock)",
        "fp32, oneDNN (served)",
        "int8 dynamic",
    ]
    assert all(row["perplexity"] > 1 for row in written["weights"])
    assert {row["modality"].split()[0] for row in written["media_overhead"]} == {
        "image",
        "audio",
        "video",
        "mesh",
    }
    batching = written["image_batching"]  # 4 concurrent images against 4 in a row
    assert batching["sequential_s_median"] > 0 and batching["concurrent_s_median"] > 0
    assert batching["max_pixel_difference"] <= 2
    jobs = written["job_overhead"]  # the same video direct and as a job, then re-attaches
    assert jobs["overhead"]["direct_final_ms"] > 0 and jobs["overhead"]["job_final_ms"] > 0
    assert jobs["overhead"]["job_bytes_consistent"]
    assert jobs["reattach_finished"]["open_connection"]["count"] == 3
    assert jobs["reattach_finished"]["new_connection"]["first_event_ms_median"] > 0
    assert jobs["reattach_running"]["open_connection"]["count"] == 3
    hop = written["process_hop"]  # the same text model in process and in a worker process
    assert hop["ttft_ms_local"] > 0 and hop["ttft_ms_process"] > 0
    assert hop["token_gap_ms_local"] > 0 and hop["token_gap_ms_process"] > 0
    isolation = written["profile_isolation"]  # the whole profile against the text model alone
    assert isolation["tokens_per_s_alone"] > 0 and isolation["profile_vs_alone"] > 0
    ray = written["ray_scale"]  # image requests on 1 and 2 Ray Serve replicas, and the hop
    assert ray["scale"]["one_replica_images_per_s"] > 0
    assert ray["scale"]["two_replicas_images_per_s"] > 0
    assert (
        ray["hop"]["sizes"]["256x256, 1 step"]["chunks"]
        > ray["hop"]["sizes"]["64x64, 1 step"]["chunks"]
    )
    hop = written["upstream_hop"]
    assert hop["tokens_direct"] == hop["tokens_via_genserve"] == 4
    assert hop["ttft_via_genserve_ms"] > 0 and hop["total_direct_ms"] > 0
    assert "| genserve (llama.cpp engine) | 2 |" in (tmp_path / "summary.md").read_text()
    assert Image.open(tmp_path / "throughput.png").format == "PNG"
    assert results["max_new_tokens"] == 8

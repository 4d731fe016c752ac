"""The peer benchmarks compare like with like: run on the tiny model, TRL runs with alignlab's settings (fp32, no
autocast, no activation checkpointing, the KV cache on while sampling), every compared setting is equal, and the
figures are written. A benchmark that let TRL fall back to its bf16 / checkpointing defaults fails here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_benchmark(script: str, out: Path, *options: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--model", "tiny", "--steps", "2", "--threads",
                           "1", "--out", str(out), *options], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def assert_fair(settings: dict) -> None:
    assert settings["parameter dtype"] == "float32" and settings["autocast"] == "off"
    assert settings["activation checkpointing"] is False and settings["training forward use_cache"] is False


@pytest.mark.parametrize("script", ["bench_dpo.py", "bench_oaif.py"])
def test_peer_benchmark_runs_trl_with_alignlabs_settings(script, tmp_path):
    result = run_benchmark(script, tmp_path / "out.json")
    assert result["comparisons"] and all(c["settings_differ"] == [] for c in result["comparisons"])
    runs = result["configurations"] if "configurations" in result else result["repeats"][0]
    for name, run in runs.items():
        assert_fair(run["settings"])
        if name.startswith("trl"):
            assert run["settings"]["precision setting"].startswith("bf16=False, fp16=False")
            assert run["settings"]["checkpointing setting"] == "gradient_checkpointing=False"
    if script == "bench_oaif.py":  # both sides sampled with the KV cache, exactly max_new_tokens per answer
        for run in runs.values():
            assert run["settings"]["KV cache used in decoding"] is True
            assert run["settings"]["generation min_new_tokens"] == run["settings"]["generation max_new_tokens"]
        assert runs["alignlab"]["settings"]["sampling backend"] == "data.sampling.backend=fused"
    for comparison in result["comparisons"]:
        assert all(v > 0 for v in comparison["ratios"].values() if isinstance(v, float))


def test_sampling_benchmark_runs_and_reports_every_backend(tmp_path):
    """bench_sampling.py on the tiny model, on the CPU: every backend measured against hf with its bounds, greedy
    agreement counted. (The --device cuda path is not exercised here: no GPU.)"""
    out = tmp_path / "sampling.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_sampling.py"), "--model", "tiny", "--batch-sizes",
                           "2", "--prompts", "pairs", "--max-new-tokens", "4", "--rounds", "1", "--threads", "1",
                           "--check-greedy", "2", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {r["backend"] for r in result["rows"]} == {"hf", "loop", "packed", "fused"}
    assert all(r["bound_tokens_per_s"] > 0 and r["new_tokens_per_s"] > 0 for r in result["rows"])
    assert set(result["greedy"]) == {"loop", "packed", "fused"} and result["settings"]["device"] == "cpu"

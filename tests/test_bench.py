"""bench.py: the per-process CPU accounting of `bench.py eval --per_process` (the timings themselves are not
asserted: only that each sandbox process is found by its name and that the samples' time is counted)."""
import sys

import pytest

import bench

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")


def test_per_process_cpu_finds_each_sandbox_process():
    ms = bench.per_process_cpu([dict(bench.TRIVIAL_JOB, timeout=3.0)] * 100, workers=2)
    assert {"samples", "zygote", "judge", "executor"} <= set(ms), ms
    assert ms["samples"] > 0 and all(v >= 0 for v in ms.values()), ms

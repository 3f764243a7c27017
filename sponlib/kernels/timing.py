"""Timing GPU kernels the way a captured decoder runs them: many calls, each on its own copy of
the weights (together several times the L2 cache, so no call finds its weights cached), captured
in one CUDA graph and replayed; the median replay over the number of calls is the time per call.

    calls = [lambda w=w, x=x: F.linear(x, w) for w, x in zip(weights, inputs)]
    seconds = graph_time(calls)

Used by the kernel benchmarks (benchmarks/kernels_h200.py); needs a CUDA device.
"""

from __future__ import annotations

import math
import statistics
from typing import Callable, Sequence

import torch


def l2_bytes() -> int:
    """The L2 cache of device 0 in bytes (60 MiB when the driver does not say)."""
    return getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 60 * 2**20)


def copies_for(bytes_per_call: int, floor: int = 2, cap: int = 1024) -> int:
    """Enough copies of a call's data that one pass over them is at least 4x the L2 cache."""
    return max(floor, min(cap, math.ceil(4 * l2_bytes() / bytes_per_call)))


def graph_time(calls: Sequence[Callable[[], object]], replays: int = 15) -> float:
    """Seconds per call: `calls` (zero-argument callables) captured in one CUDA graph, replayed
    `replays` times after warm-up; the median replay over len(calls). Warm-up runs the first
    calls on a side stream first, so compilation, autotuning and library handles stay outside."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls[:3]:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    del graph
    return statistics.median(times) / len(calls)


def normal_threshold(sparsity: float) -> float:
    """τ with P(|x| <= τ) = sparsity for x ~ N(0, 1): the threshold that zeroes that share of
    standard normal inputs."""
    return float(math.sqrt(2.0) * torch.erfinv(torch.tensor(sparsity, dtype=torch.float64)))

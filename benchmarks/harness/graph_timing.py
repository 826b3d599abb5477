"""Time sub-millisecond GPU calls under CUDA-graph capture, so launch gaps are not measured.

    graphs = {name: CapturedCall.capture(run, setup) for name, (run, setup) in calls.items()}
    seconds = graphs[name].replay_times(device, iters)

``capture`` runs the call eagerly ``warmup`` times on a side stream (torch's recipe: lazy
initialisation, allocator warm-up, one-time kernel set-up happen outside the capture), then
captures the call into one graph and its optional ``setup`` (what must precede every call,
e.g. restoring inputs the call overwrites) into another. ``replay_times`` replays
setup + call ``iters`` times back to back, a pair of CUDA events around each call's replay
only; the host waits once, at the end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class CapturedCall:
    """A call and its setup, each captured in a CUDA graph (setup: None when there is none)."""

    call: torch.cuda.CUDAGraph
    setup: torch.cuda.CUDAGraph | None

    @classmethod
    def capture(cls, run: Callable[[], object], setup: Callable[[], object] | None = None,
                warmup: int = 2) -> CapturedCall:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(max(warmup, 1)):
                if setup is not None:
                    setup()
                run()
        torch.cuda.current_stream().wait_stream(side)
        setup_graph = None
        if setup is not None:
            setup_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(setup_graph):
                setup()
        call_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(call_graph):
            run()
        return cls(call_graph, setup_graph)

    def replay_times(self, device: torch.device, iters: int) -> list[float]:
        """Seconds of each of ``iters`` replays of the call (setup replayed before each)."""
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        torch.cuda.synchronize(device)  # host sync: earlier work must not leak into timing
        for start, end in zip(starts, ends):
            if self.setup is not None:
                self.setup.replay()
            start.record()
            self.call.replay()
            end.record()
        torch.cuda.synchronize(device)  # host sync: the one wait, at the end
        return [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]

"""Replay's capture, on the CPU (issue 22, point 5): torch.cuda's streams, graph and synchronize are
replaced by fakes that keep which stream is current and check, as CUDA does, that a capture ends on
the stream it began on. A capture that fails, wherever it fails, leaves the caller's stream current,
the restored tensors at their saved values, the step running eagerly from then on, and one log line
naming the cause; one that succeeds is replayed."""
import pytest
import torch

from udd_fast.engine.replay import WARMUP, Replay

STEP_ERROR = "operation not permitted when stream is capturing"
END_ERROR = "CUDA error: operation failed due to a previous error during capture"


class Stream:
    def __init__(self, name="side"):
        self.name = name

    def wait_stream(self, other):
        pass


class FakeCuda:
    """The current stream (the caller's at the start) and the graphs made; `fail` says where capture
    breaks: "graph" (CUDAGraph()), "warmup" (the step's first run), "begin" (capture_begin), "step" (the
    step during capture, after which capture_end fails too, as an invalidated capture's does), "end"
    (capture_end alone), None (nowhere)."""

    def __init__(self, monkeypatch, fail):
        self.fail, self.caller, self.graphs, self.capturing = fail, Stream("caller"), [], None
        self.current = self.caller
        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: self.current)
        monkeypatch.setattr(torch.cuda, "set_stream", lambda stream: setattr(self, "current", stream))
        monkeypatch.setattr(torch.cuda, "CUDAGraph", self.graph)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)

    def graph(self):
        if self.fail == "graph":
            raise RuntimeError("CUDA graphs need a CUDA device")
        self.graphs.append(Graph(self))
        return self.graphs[-1]


class Graph:
    def __init__(self, cuda):
        self.cuda, self.began_on, self.replays, self.was_reset = cuda, None, [], False

    def capture_begin(self, pool=None, capture_error_mode="global"):
        if self.cuda.fail == "begin":
            raise RuntimeError("CUDA error: capture_begin failed")
        self.began_on = self.cuda.capturing = self.cuda.current

    def capture_end(self):
        if self.began_on is None:
            raise RuntimeError("no capture underway")
        if self.cuda.current is not self.began_on:
            raise RuntimeError("Capture must end on the same stream it began on.")
        self.cuda.capturing = None
        if self.cuda.fail in ("step", "end"):
            raise RuntimeError(END_ERROR)

    def replay(self):
        self.replays.append(self.cuda.current.name)

    def reset(self):
        self.was_reset = True


def _replay(cuda):
    """A Replay of a step that adds 1 to p (restored) and returns its sum; the streams its runs were on."""
    p, runs, logs = torch.zeros(3), [], []

    def step():
        runs.append(cuda.current.name)
        p.add_(1.0)
        if (cuda.fail == "warmup" and len(runs) == 1) or (cuda.fail == "step" and cuda.capturing):
            raise RuntimeError(STEP_ERROR)
        return p.sum()
    return Replay(step, "network step", True, logs.append, restore=[p]), runs, logs


CAUSES = {"graph": "CUDA graphs need a CUDA device", "warmup": STEP_ERROR, "begin": "CUDA error: capture_begin failed",
          "step": STEP_ERROR, "end": END_ERROR}


@pytest.mark.parametrize("fail", list(CAUSES))
def test_failed_capture_falls_back_to_eager_once(monkeypatch, fail):
    """Wherever capture fails: the caller's stream current again, what the warm-up and the capture
    changed put back, the graph reset and dropped, one log line with the cause (the step's error, not
    the capture_end error it leads to), and every call after runs the step eagerly on the caller's
    stream."""
    cuda = FakeCuda(monkeypatch, fail)
    r, runs, logs = _replay(cuda)
    assert float(r()) == 3.0  # the tries were undone, then one eager run
    assert cuda.current is cuda.caller and cuda.capturing is None
    assert r.graph is None and r.out is None and all(g.was_reset for g in cuda.graphs)
    assert float(r()) == 6.0 and float(r()) == 9.0
    assert runs[-3:] == ["caller"] * 3
    tries = {"graph": WARMUP, "warmup": 1, "begin": WARMUP, "step": WARMUP + 1, "end": WARMUP + 1}[fail]
    assert runs[:-3] == ["side"] * tries
    assert logs == [f"CUDA graph capture of the network step failed (RuntimeError: {CAUSES[fail]}); "
                    f"running it eagerly"]


def test_captured_step_is_replayed(monkeypatch):
    """A capture that succeeds: the step run WARMUP times and captured, all on the side stream; then
    every call replays the graph on the caller's stream and returns the captured outputs."""
    cuda = FakeCuda(monkeypatch, None)
    r, runs, logs = _replay(cuda)
    out = r()
    (graph,) = cuda.graphs
    assert graph.began_on.name == "side" and cuda.capturing is None and cuda.current is cuda.caller
    assert r.graph is graph and not graph.was_reset
    assert r() is out and r() is out
    assert runs == ["side"] * (WARMUP + 1) and graph.replays == ["caller"] * 3 and logs == []

"""The static-buffer path's replay: a step that reads and writes only tensors allocated once, run as
it is, or captured as a CUDA graph at its first call and replayed after (--cuda-graphs)."""
import torch

WARMUP = 2  # eager runs on a side stream before capture: Triton compiles, autograd and the allocator settle


class Replay:
    """fn() on static buffers. With `capture` (a CUDA device), the first call runs fn WARMUP times on a
    side stream, restores the tensors in `restore` (what fn changes in place: parameters, momentum),
    captures fn as a CUDA graph and replays it; every later call replays it and returns the same
    output tensors, overwritten. When capture fails, the step runs eagerly from then on and `log` says
    why, once. Without `capture` every call is fn()."""

    def __init__(self, fn, name: str, capture: bool, log, restore=()):
        self.fn, self.name, self.capture, self.log, self.restore = fn, name, capture, log, list(restore)
        self.graph, self.out = None, None

    def __call__(self):
        if self.capture:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
            return self.out
        return self.fn()

    def _capture(self):
        self.capture = False  # one attempt
        saved = [t.clone() for t in self.restore]
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP):
                    self.fn()
            torch.cuda.current_stream().wait_stream(side)
            for t, v in zip(self.restore, saved):
                t.copy_(v)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.out = self.fn()
            self.graph = graph
        except Exception as e:  # noqa: BLE001 - any capture failure falls back to eager, said once
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            for t, v in zip(self.restore, saved):
                t.copy_(v)
            self.graph, self.out = None, None
            self.log(f"CUDA graph capture of the {self.name} failed ({type(e).__name__}: {e}); "
                     f"running it eagerly")

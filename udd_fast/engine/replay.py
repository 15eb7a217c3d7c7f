"""The static-buffer path's replay: a step that reads and writes only tensors allocated once, run as
it is, or captured as a CUDA graph at its first call and replayed after (--cuda-graphs).

The capture is begun and ended here, not by `torch.cuda.graph`: that context manager ends the capture
before it gives the caller's stream back, so when capture_end fails the run goes on on the capture's
stream, and its error is the one reported, not the step's that caused it."""
import contextlib
import gc

import torch

WARMUP = 2  # eager runs on a side stream before capture: Triton compiles, autograd and the allocator settle


@contextlib.contextmanager
def _on(stream):
    """`stream` current inside; the caller's current stream again afterwards, whatever was raised."""
    caller = torch.cuda.current_stream()
    torch.cuda.set_stream(stream)
    try:
        yield
    finally:
        torch.cuda.set_stream(caller)


class Replay:
    """fn() on static buffers. With `capture` (a CUDA device), the first call runs fn WARMUP times on a
    side stream, restores the tensors in `restore` (what fn changes in place: parameters, momentum),
    captures fn as a CUDA graph and replays it; every later call replays it and returns the same
    output tensors, overwritten. When capture fails, the caller's stream is current again, the tensors
    in `restore` are back, the graph is dropped, the step runs eagerly from then on and `log` says why,
    once: the step's own error where it raised during capture. Without `capture` every call is fn()."""

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
        graph = None
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with _on(side):
                for _ in range(WARMUP):
                    self.fn()
            torch.cuda.current_stream().wait_stream(side)
            self._put_back(saved)
            graph = torch.cuda.CUDAGraph()
            self.out = self._record(graph, side)
            self.graph = graph
            return
        except Exception as e:  # noqa: BLE001 - any capture failure falls back to eager, said once
            why = f"{type(e).__name__}: {e}"
        # said first: on a broken device the synchronize below raises, and this line is all that is left
        self.log(f"CUDA graph capture of the {self.name} failed ({why}); running it eagerly")
        # out of the except block, the error and its traceback (the step's frames) are let go: with the
        # graph and its outputs dropped too, the graph's memory pool can go
        self.graph, self.out = None, None
        if hasattr(graph, "reset"):
            with contextlib.suppress(Exception):
                graph.reset()
        del graph
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        self._put_back(saved)

    def _record(self, graph, stream):
        """fn captured into `graph` on `stream`; its outputs. What torch.cuda.graph does, in an order that
        survives a failure: the capture ended on the stream it began on, then the caller's stream back."""
        torch.cuda.synchronize()  # the warm-up and the restores done; memory freed for the graph
        gc.collect()
        torch.cuda.empty_cache()
        with _on(stream):
            try:
                graph.capture_begin(capture_error_mode="global")
                out = self.fn()
            except BaseException:
                # end what capture began (a capturing stream fails the eager work that follows); the first
                # error is the cause, capture_end's (an invalidated or absent capture) would hide it
                with contextlib.suppress(Exception):
                    graph.capture_end()
                raise
            graph.capture_end()
        return out

    def _put_back(self, saved):
        for t, v in zip(self.restore, saved):
            t.copy_(v)

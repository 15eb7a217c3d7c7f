"""The synthetic set: stored images, their momentum buffer, the decode plan and the image step of each
form (docs/method.md sections 1 and 4)."""
import torch

from .. import ops
from ..decode import decode_plan
from ..ops.crop_resize import plan_ok


def check_boxes(boxes: torch.Tensor, src: torch.Tensor, n_images: int, what: str):
    """A decode plan or region boxes, checked once where they are made (this reads the device): the
    loop then decodes without a per-call check."""
    if src.device.type == "meta":  # shapes only (bench/loop_timing.py --host): no values to check
        return
    if not bool(plan_ok(src, boxes, n_images)):
        raise ValueError(f"{what}: every box needs 0 <= y0 < y1 and 0 <= x0 < x1, every source a stored image")


class SyntheticSet:
    """The stored images S [K*ipc, C, H, W] (unclamped between outer boundaries, as IDC), the momentum
    buffer, and `pending`: the part of a split step that comes after the clamp (batched form), a view of
    a buffer allocated at the first split step and overwritten by every later one.

    Decoding is class-major: row c*n_dec + j of the plan decodes stored image c*ipc + src[j]. The
    image steps: `step_class` is IDC's momentum SGD on the whole tensor after one class's gradient;
    `step_classes` does the K per-class steps of one inner iteration at once (momentum mu**K, step
    multiplier (1 - mu**K) / (1 - mu)), splitting the last inner iteration's step at the clamp as
    section 4 prescribes. Their coefficients are computed once, here. Each step is at most 4 kernels:
    the momentum's 2 and the image's 2, with the same roundings as the plain formulas."""

    def __init__(self, images, num_classes: int, ipc: int, factor: int, mom: float, lr: float, classes: tuple,
                 decode_type: str = "single", bound: int = 128):
        self.S = images
        self.buf = torch.zeros_like(images)
        self.pending = None
        self.split = None  # [2, *S.shape]: a split step's part before the clamp (own rows), and `pending`
        self.K, self.ipc = num_classes, ipc
        self.C, self.size = images.shape[1], images.shape[-1]
        dev, dtype = images.device, images.dtype
        c0, c1 = classes
        self.rows = slice(c0 * ipc, c1 * ipc)  # the stored images of this rank's classes
        src, boxes = decode_plan(ipc, self.size, factor, dev, decode_type, bound)
        self.n_dec = src.shape[0]  # ipc * factor^2 (single), more (multi), at most `bound` (bound)
        cls = torch.arange(num_classes, device=dev).repeat_interleave(self.n_dec)
        self.dec_src = cls * ipc + src.repeat(num_classes)
        self.dec_boxes = boxes.repeat(num_classes, 1)
        check_boxes(self.dec_boxes, self.dec_src, images.shape[0], "decode plan")
        self.mu, self.lr = mom, lr
        K = num_classes
        self.m, self.L = mom ** K, (1 - mom ** K) / (1 - mom)
        # up to the clamp, class c has had its own step and those of classes c+1..K-1
        w = torch.tensor([(1 - mom ** (K - c)) / (1 - mom) for c in range(c0, c1)], dtype=dtype,
                         device=dev).repeat_interleave(ipc).view(-1, 1, 1, 1)
        self.parts = torch.stack([lr * w, lr * (self.L - w)])  # [2, own rows, 1, 1, 1]: before, after the clamp
        self.whole = torch.stack([torch.full_like(w, lr * self.L), torch.zeros_like(w)])  # a step not split

    def decode(self, S, classes: slice, views=None):
        """[classes, n, C, H, W] (differentiable in S): each class's formations, then, given `views`
        ([K*n_dec, 4] region boxes), its region views in the same order."""
        src, boxes = self.dec_src.view(self.K, -1), self.dec_boxes.view(self.K, self.n_dec, 4)
        if views is not None:
            src = torch.cat([src, src], 1)
            boxes = torch.cat([boxes, views.view(self.K, self.n_dec, 4)], 1)
        src, boxes = src[classes], boxes[classes]
        out = ops.crop_resize(S, src.reshape(-1), boxes.reshape(-1, 4), (self.size, self.size), validate=False)
        return out.view(src.shape[0], src.shape[1], self.C, self.size, self.size)

    @torch.no_grad()
    def step_class(self, grad):
        self.buf.mul_(self.mu).add_(grad)
        # the product rounded on its own, as IDC's S - lr * buf: add_(buf, alpha=-lr) may fuse it (FMA)
        self.S.sub_(self.lr * self.buf)

    def split_buffer(self):
        """The split step's buffer, allocated at its first use (the sequential form never needs it)."""
        if self.split is None:
            self.split = torch.zeros((2, *self.S.shape), dtype=self.S.dtype, device=self.S.device)
        return self.split

    @torch.no_grad()
    def step_classes(self, grad, last):
        """The steps of all (own) classes; the other ranks' rows are theirs to move (zero gradient here).
        `last` is a bool, or a device flag (0-dim bool) for a captured inner iteration, which is the same
        work whether it is the last or not: one more kernel then picks the coefficients, the remainder
        (`split[1]`) is zero unless last, and the host, which knows, makes it `pending`."""
        S, buf = self.S[self.rows], self.buf[self.rows]
        buf.mul_(self.m).add_(grad[self.rows])
        if isinstance(last, torch.Tensor) or last:
            # both parts in one product (each element rounded as by its own); the other ranks' rows of
            # the remainder are never written, so they stay zero
            parts = self.split_buffer()[:, self.rows]
            coef = torch.where(last, self.parts, self.whole) if isinstance(last, torch.Tensor) else self.parts
            torch.mul(coef, buf, out=parts)
            S.sub_(parts[0])
            if last is True:
                self.pending = self.split[1]
        else:
            S.sub_(self.lr * self.L * buf)

    @torch.no_grad()
    def clamp(self):
        self.S.clamp_(0.0, 1.0)

    @torch.no_grad()
    def finish_split_step(self):
        if self.pending is not None:
            self.S.sub_(self.pending)
            self.pending = None

    def load(self, S, buf, pending):
        """Restore images, momentum and remainder in place (a captured step keeps reading the same tensors)."""
        self.S.copy_(S)
        self.buf.copy_(buf)
        self.pending = None if pending is None else pending.to(self.S.device, self.S.dtype)

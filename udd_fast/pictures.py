"""Pictures of a run a person would open: `grid.png` (the distilled set) and `curves.png` (how the run
went). Pillow draws the grid pixel-exactly (integer upscaling, so a test can find every image in
it); matplotlib, imported only here and only when plotting, draws the curves.

grid.png: one row per class (the first MAX_CLASSES; the caption says how many more there are), its
index and name on the left (`row_label`); each stored image upscaled to at least 64 px with UDD's
region windows outlined on it, followed by the factor^2 formations it decodes to.
"""
import io
import math

import numpy as np
import torch

MIN_PX = 64  # every image is drawn at least this many pixels wide
MAX_CLASSES = 20  # rows drawn; the caption says when a set has more
MAX_STORED = 5  # stored images drawn per class
PAD, GAP, LABEL_W, TITLE_H = 2, 10, 130, 22
BOX_COLOR = (255, 40, 40)


def upscale(size: int) -> int:
    """The integer factor that draws a size-pixel image at least MIN_PX wide."""
    return max(1, math.ceil(MIN_PX / size))


LABEL_CHARS = 18  # what fits LABEL_W at the label's font size


def row_label(k: int, name) -> str:
    """A row's label: the class index, then its name where the picture's font draws it (printable Latin-1;
    other scripts would come out as boxes, and report.html lists every name). The index keeps two labels
    distinct however their names are cut."""
    name = str(name)
    drawable = all(c.isprintable() and ord(c) < 256 for c in name)
    return (f"{k} {name}" if drawable and name else str(k))[:LABEL_CHARS]


def _font(size):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _rgb(img: torch.Tensor, s: int) -> np.ndarray:
    """[C,H,W] in [0,1] -> uint8 [H*s, W*s, 3] (nearest upscaling)."""
    a = (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    a = a.repeat_interleave(s, 1).repeat_interleave(s, 2)
    if a.shape[0] == 1:
        a = a.expand(3, -1, -1)
    return a.permute(1, 2, 0).cpu().numpy()


def grid_layout(num_classes, ipc, size, factor):
    """Where things go: (scale, columns per stored image, cell side, rows drawn, stored drawn per class,
    canvas (height, width)). The cell of stored image j of drawn row r starts at
    (TITLE_H + PAD + r * (cell + PAD), LABEL_W + j * (group + GAP)) with group = cols * (cell + PAD)."""
    s = upscale(size)
    cell = size * s
    cols = 1 + factor * factor if factor > 1 else 1
    rows, per = min(num_classes, MAX_CLASSES), min(ipc, MAX_STORED)
    group = cols * (cell + PAD)
    return s, cols, cell, rows, per, (TITLE_H + PAD + rows * (cell + PAD) + TITLE_H,
                                     LABEL_W + per * (group + GAP))


def grid_png(images, labels, factor, class_names, title="", region_views=None) -> bytes:
    """The PNG bytes of grid.png. images [N,C,H,W] in [0,1] (class-major, equal count per class),
    labels [N]; region_views: UDD's region views (decode.RegionViews: source stored index [M], boxes
    [M,4] in stored pixels) or None."""
    from PIL import Image, ImageDraw

    from .decode import decode_plan
    from .ops import crop_resize

    images, labels = images.detach().float().cpu(), labels.cpu()
    k = len(class_names)
    n, c, size, _ = images.shape
    ipc = n // k
    s, cols, cell, rows, per, (height, width) = grid_layout(k, ipc, size, factor)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, 3), title or f"{k} classes, IPC {ipc}: stored image (UDD windows outlined), then its "
                                  f"{factor * factor} formations", fill=(0, 0, 0), font=_font(13))
    src, boxes = decode_plan(n, size, factor) if factor > 1 else (None, None)
    formations = crop_resize(images, src, boxes, (size, size)) if factor > 1 else None
    label_font = _font(13)
    for r in range(rows):
        y = TITLE_H + PAD + r * (cell + PAD)
        draw.text((PAD, y + cell // 2 - 8), row_label(r, class_names[r]), fill=(0, 0, 0), font=label_font)
        for j in range(per):
            m = r * ipc + j  # the stored image
            x = LABEL_W + j * (cols * (cell + PAD) + GAP)
            canvas.paste(Image.fromarray(_rgb(images[m], s)), (x, y))
            if region_views is not None:
                view_src, view_boxes = region_views
                for y0, x0, y1, x1 in view_boxes[view_src == m].tolist():
                    draw.rectangle((x + x0 * s, y + y0 * s, x + x1 * s - 1, y + y1 * s - 1), outline=BOX_COLOR, width=2)
            for t in range(cols - 1):  # formation t of stored image m is decoded row t * n + m
                canvas.paste(Image.fromarray(_rgb(formations[t * n + m], s)), (x + (t + 1) * (cell + PAD), y))
    shown = [f"{rows} of {k} classes" if rows < k else "", f"{per} of {ipc} stored images per class" if per < ipc else ""]
    note = ", ".join(t for t in shown if t)
    if note:
        draw.text((PAD, height - TITLE_H + 4), f"showing {note}", fill=(90, 90, 90), font=_font(12))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def curves_png(history: dict, title: str = "", architectures: dict = None) -> bytes:
    """The PNG bytes of curves.png: the matching loss per outer iteration, mUE over the run (UDD) and
    the test accuracy of short evaluations during distillation (--eval-every), each a panel when its
    series is there; with `architectures` ({network: {"accuracy_mean", "accuracy_std", ...}}, several), a last
    panel of the final accuracy per evaluation network, mean with its std as an error bar.
    history: {"loss": [[outer, value], ...], "mue": [...], "accuracy": [...]}."""
    import matplotlib

    matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [(key, label) for key, label in (("loss", "matching loss (mean per class and inner iteration)"),
                                               ("mue", "mUE (mean usage entropy of the formations)"),
                                               ("accuracy", "test accuracy % (short evaluation)"))
              if history.get(key)]
    archs = architectures if architectures and len(architectures) > 1 else None
    rows = max(1, len(panels)) + (archs is not None)
    fig, axes = plt.subplots(rows, 1, figsize=(7, 2.6 * rows), squeeze=False)
    if archs is not None:
        ax = axes[-1, 0]
        names = list(archs)
        ax.bar(names, [archs[a]["accuracy_mean"] for a in names], yerr=[archs[a].get("accuracy_std") or 0.0
                                                                         for a in names], capsize=4, color="#4c72b0")
        ax.set_ylabel("test accuracy %")
        ax.set_title("final accuracy per evaluation network (mean, std as error bar)", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        axes = axes[:-1]
    for ax, (key, label) in zip(axes[:, 0], panels):
        xs, ys = zip(*history[key])
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3)
        ax.set_ylabel(label.split(" (")[0])
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # outer iterations are whole
        ax.ticklabel_format(axis="y", useOffset=False)  # mUE moves in the 5th digit: show the values
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no outer iterations ran", ha="center", va="center")
    axes[-1, 0].set_xlabel("outer iteration")  # (the last panel of the run's curves)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()

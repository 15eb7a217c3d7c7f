"""Checks of single values read from files (distilled.pt, checkpoint.pt) and from settings: the one
place that says what an integer, a row of finite numbers and a region box is."""
import math

import torch


def is_int(v) -> bool:
    """An int that is not a bool (True is an int to Python, never a count to us)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    """An int or a float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def finite_numbers(v, n: int) -> bool:
    """A list or tuple of n finite numbers."""
    return isinstance(v, (list, tuple)) and len(v) == n and all(is_number(a) and math.isfinite(a) for a in v)


def boxes_ok(boxes, side: int, rows: int = None) -> bool:
    """Integer boxes (y0, x0, y1, x1) [M, 4] (M = rows when given, else at least 1) inside side x side
    stored pixels, each of positive size."""
    return (isinstance(boxes, torch.Tensor) and not boxes.is_floating_point() and boxes.dim() == 2
            and boxes.shape[1] == 4 and (boxes.shape[0] == rows if rows is not None else boxes.shape[0] > 0)
            and int(boxes.min()) >= 0 and int(boxes.max()) <= side and bool((boxes[:, 2:] > boxes[:, :2]).all()))

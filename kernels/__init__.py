"""Triton kernels of udd_fast.ops, installed as the subpackage `udd_fast.kernels` (setup.py maps
this top-level folder there; udd_fast.ops loads it from the source tree when not installed).

One file per op, with its kernels and their launchers (the entry points, the same as the C++/CUDA
extensions'; see udd_fast/ops/); utils.py holds what the launchers share."""
from .cfc_loss import cfc_loss_backward, cfc_loss_forward
from .crop_resize import crop_resize_backward, crop_resize_forward
from .diff_augment import diff_augment_backward, diff_augment_forward
from .region_mask import region_mask_forward
from .response_map import response_map_forward

__all__ = ["crop_resize_forward", "crop_resize_backward", "diff_augment_forward", "diff_augment_backward",
           "response_map_forward", "region_mask_forward", "cfc_loss_forward", "cfc_loss_backward"]

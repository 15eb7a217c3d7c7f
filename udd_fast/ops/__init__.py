"""The hot paths behind one API. The engine calls only these functions; each has a plain-PyTorch
reference (`<op>_ref` in its module) that every faster backend is tested against: crop_resize and
diff_augment (forward and backward), response_map and region_mask (forward only), cfc_loss (forward
and a fused first-order backward).

One module per op holds its reference, its autograd Function and its dispatch (crop_resize.py,
diff_augment.py, response_map.py, region_mask.py, cfc_loss.py); backend.py loads and chooses the
backends (env UDD_FAST_BACKEND, `set_backend`, `use_backend`; see there). Each op's kernels:
kernels/<op>.py (Triton), csrc/<op>_cpu.cpp and csrc/<op>_cuda.cu.

`ops.crop_resize` and the like are the functions: the import below rebinds each op's name from its
module to its function, so reach a module's other names with `from udd_fast.ops.crop_resize import
crop_resize_ref` (not `import udd_fast.ops.crop_resize as m`, which gives the function).
"""
from .backend import (BACKENDS, ENV_VAR, available_backends, get_backend, resolve, set_backend, use_backend,
                      why_unavailable)
from .cfc_loss import cfc_loss
from .crop_resize import crop_resize
from .diff_augment import diff_augment
from .region_mask import region_mask
from .response_map import response_map

__all__ = ["crop_resize", "diff_augment", "response_map", "region_mask", "cfc_loss", "set_backend", "use_backend",
           "get_backend", "available_backends", "why_unavailable", "resolve", "BACKENDS", "ENV_VAR"]

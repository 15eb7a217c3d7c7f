"""How many classes the batched matching step takes at once. Its grouped network pass holds, per class,
activations of [m, width, H, W] for the real batch (m = batch_real) and, kept for the second backward
(create_graph), for the synthetic batch: at CIFAR-100's 100 classes a single tensor of all classes
would pass 2**31 elements and the step would need 40-70 GB. So the classes are split into groups that
fit a budget (a share of the device's memory, --match-memory), and no tensor passes MAX_ELEMENTS.

The peak model: REAL_FACTOR x (real images) + SYN_FACTOR x (synthetic images) first-layer activations
per class. Measured on the CPU (the process's peak resident memory over one matching step, 2026-12-07,
CIFAR-10 shapes at width 128, 4 classes): 4.3-4.4 activations per real image, up to 9.5 per synthetic
image, the rise of VmHWM over the step (tests/engine/test_memory.py checks that the model stays above it). Not yet
measured on CUDA."""
import math
import os

import torch

MAX_ELEMENTS = 2 ** 31 - 1
REAL_FACTOR, SYN_FACTOR = 5, 12  # above the CPU measurement below, with room for what CUDA adds (workspaces)


def per_class_bytes(m_real: int, m_syn: int, width: int, size: int, itemsize: int) -> int:
    """The model's peak bytes of one class in the grouped pass."""
    return (REAL_FACTOR * m_real + SYN_FACTOR * m_syn) * width * size * size * itemsize


def device_memory(device: torch.device):
    """Bytes of memory on the device (CUDA: the card's; CPU: physical memory), None on the meta device."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def class_groups(n_classes: int, m_real: int, m_syn: int, width: int, size: int, itemsize: int, budget):
    """Split n_classes into the fewest groups of near-equal size such that each group's modelled peak fits
    `budget` bytes (None: no budget) and its largest activation stays under MAX_ELEMENTS. Returns
    (slices over the classes, modelled peak bytes of the largest group)."""
    per_class = per_class_bytes(m_real, m_syn, width, size, itemsize)
    most = MAX_ELEMENTS // (max(m_real, m_syn) * width * size * size)
    if budget is not None:
        most = min(most, int(budget // per_class))
    most = max(1, most)  # one class always runs, whatever the budget says
    n_groups = math.ceil(n_classes / most)
    bounds = [round(i * n_classes / n_groups) for i in range(n_groups + 1)]
    groups = [slice(a, b) for a, b in zip(bounds, bounds[1:])]
    return groups, max(g.stop - g.start for g in groups) * per_class

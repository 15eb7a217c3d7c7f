"""The distillation engine (docs/method.md sections 1, 2, 4, 5), in parts:

- `synthetic`: the stored images, their momentum, the decode plan and the image steps;
- `region_state`: UDD's regions (search, boxes, policy counts, mUE);
- `matcher`: the keyed draws, the one matching-loss recipe, the sequential and the batched form;
- `network_update`: the network update on real data (plain, or static and optionally compiled);
- `replay`: the static-buffer step, captured as a CUDA graph where asked;
- `trajectory`: the networks of several outer iterations trained ahead as one grouped model;
- `feed`: training images in host memory, each inner iteration's staged one ahead;
- `precision`: TF32 and bf16 autocast as contexts;
- `loop`: `Engine`, the loop over them, and its `Report`.
"""
from .loop import Engine, Report, Stopped, static_path, trajectory_problem
from .precision import autocast, precision_scope

__all__ = ["Engine", "Report", "Stopped", "autocast", "precision_scope", "static_path", "trajectory_problem"]

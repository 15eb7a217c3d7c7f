"""IDC's own functions, loaded from IDC's code for checking udd_fast.compat against them
(tests/engine/test_compat.py, bench/test_bench_compat.py). Nothing of IDC's ships with udd_fast.

Where IDC's code is: env UDD_FAST_IDC_SRC, an IDC checkout or its git directory (no default path;
the checks skip, naming the variable, without it).
"""
import ast
import os
import subprocess
import types
from pathlib import Path

import pytest
import torch

ENV = "UDD_FAST_IDC_SRC"


def require_idc_src() -> str:
    """The IDC code's location from UDD_FAST_IDC_SRC; skips the calling test when unset or missing."""
    src = os.environ.get(ENV)
    if not src or not Path(src).exists():
        pytest.skip(f"IDC's code not found: set {ENV} to an IDC checkout or git dir"
                    + (f" ({src} does not exist)" if src else ""))
    return src


def idc_source(root: Path, relpath: str) -> str:
    """relpath read from a checkout, or from HEAD of a git directory without a work tree."""
    if (root / relpath).is_file():
        return (root / relpath).read_text()
    out = subprocess.run(["git", "--git-dir", str(root), "show", f"HEAD:{relpath}"], capture_output=True, text=True)
    if out.returncode != 0:
        raise FileNotFoundError(f"{relpath} not found in {root}: {out.stderr.strip()}")
    return out.stdout


def load_idc_functions(src):
    """IDC's own DiffAug, decode_zoom, subsample, dist and matchloss, loaded at call time from an IDC
    checkout or git directory. misc/augment.py is executed as is (it imports only torch and numpy);
    from condense.py only those functions and its torch/numpy/math imports are compiled (it imports
    torchvision and IDC's other modules). decode_zoom, decode_zoom_multi, decode_zoom_bound and subsample are
    Synthesizer methods: call them as decode_zoom(synth, img, target, factor) with `synth` any object whose
    `resize` is nn.Upsample(size=(H, W), mode='bilinear') (see make_idc_synth; the multi and bound ones also
    call synth.decode_zoom)."""
    root = Path(src)
    ns = types.SimpleNamespace()

    aug = types.ModuleType("idc_misc_augment")
    exec(compile(idc_source(root, "misc/augment.py"), f"{root}/misc/augment.py", "exec"), aug.__dict__)
    ns.DiffAug = aug.DiffAug

    tree = ast.parse(idc_source(root, "condense.py"))
    wanted = {"dist", "add_loss", "matchloss", "decode_zoom", "decode_zoom_multi", "decode_zoom_bound", "subsample"}
    body = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if all(n.split(".")[0] in ("torch", "numpy", "math") for n in names):
                body.append(node)
        elif isinstance(node, ast.FunctionDef) and node.name in wanted:
            body.append(node)
        elif isinstance(node, ast.ClassDef) and node.name == "Synthesizer":
            body += [m for m in node.body if isinstance(m, ast.FunctionDef) and m.name in wanted]
    mod = types.ModuleType("idc_condense_part")
    exec(compile(ast.Module(body=body, type_ignores=[]), f"{root}/condense.py", "exec"), mod.__dict__)
    missing = [n for n in wanted if not hasattr(mod, n)]
    if missing:
        raise ImportError(f"condense.py in {root} lacks {missing}")
    for name in wanted:
        setattr(ns, name, getattr(mod, name))
    return ns


def make_idc_synth(size):
    """The part of IDC's Synthesizer that its decode_zoom reads: `resize` to (H, W)."""
    return types.SimpleNamespace(resize=torch.nn.Upsample(size=tuple(size), mode="bilinear"))


def load_idc_colour_transforms(src):
    """IDC's ColorJitter and Lighting (misc/utils.py, its ImageNet augmentation), with the classes they
    use: only those class definitions and the module's `random`/torch imports are compiled (the module
    imports more). Their draws come from the module's `random` and from Tensor.normal_."""
    root = Path(src)
    tree = ast.parse(idc_source(root, "misc/utils.py"))
    wanted = {"Compose", "Lighting", "Grayscale", "Saturation", "Brightness", "Contrast", "ColorJitter"}
    body = [node for node in tree.body
            if (isinstance(node, ast.Import) and all(a.name in ("random", "torch") for a in node.names))
            or (isinstance(node, ast.ClassDef) and node.name in wanted)]
    mod = types.ModuleType("idc_misc_utils_part")
    exec(compile(ast.Module(body=body, type_ignores=[]), f"{root}/misc/utils.py", "exec"), mod.__dict__)
    missing = [n for n in wanted if not hasattr(mod, n)]
    if missing:
        raise ImportError(f"misc/utils.py in {root} lacks {missing}")
    return mod

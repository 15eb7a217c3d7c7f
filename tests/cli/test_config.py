"""IDC's per-dataset settings as its own code sets them (argument.py and misc/reproduce.py)."""
import pytest

from udd_fast.augment import Strategy
from udd_fast.config import build_config


# (dataset, ipc, factor) -> (evaluation strategy, CutMix at evaluation). IDC removes cutout from
# `dsa_strategy` whenever `--mixup cut` (its default) is on, and drops flip for SVHN and MNIST;
# MNIST at factor > 1 and SVHN at factor 1 / IPC 1 evaluate without CutMix, so cutout stays for SVHN.
EVALUATION = {
    ("cifar10", 1, 2): ("color_crop_flip_scale_rotate", True),
    ("cifar100", 10, 2): ("color_crop_flip_scale_rotate", True),
    ("fashionmnist", 1, 2): ("color_crop_flip_scale_rotate", True),
    ("svhn", 1, 2): ("color_crop_scale_rotate", True),
    ("svhn", 10, 1): ("color_crop_scale_rotate", True),
    ("svhn", 1, 1): ("color_crop_cutout_scale_rotate", False),
    ("mnist", 1, 2): ("color_crop_scale_rotate", False),
    ("mnist", 1, 1): ("color_crop_scale_rotate", True),
    ("npz:/data/x.npz", 1, 2): ("color_crop_flip_scale_rotate", True),
}


@pytest.mark.parametrize("dataset,ipc,factor", list(EVALUATION))
def test_evaluation_strategy_is_idcs(dataset, ipc, factor):
    cfg = build_config(dataset, ipc, "paper", 32, 32, factor=factor)
    strategy, cutmix = EVALUATION[(dataset, ipc, factor)]
    assert Strategy.parse(cfg.eval.eval_aug) == Strategy.parse(strategy) and cfg.eval.eval_cutmix is cutmix
    assert not (cfg.eval.eval_cutmix and Strategy.parse(cfg.eval.eval_aug).cutout)  # never both, as IDC

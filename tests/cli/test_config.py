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


# ----------------------------------------------------------------------------
# IDC's ImageNet settings (misc/reproduce.py's imagenet branch, argument.py's ipc_epoch, tune_lr_img and its
# lines for 100 classes and more)
# ----------------------------------------------------------------------------

# by hand from IDC's code: (classes, ipc, factor) -> (lr_img at 224 px, early, decode type, test epochs)
IMAGENET = {
    (10, 10, 2): (3e-3, 10, "single", 1500),  # 40 decoded per class -> 1500 epochs
    (10, 1, 1): (3e-4, 10, "single", 3000),
    (10, 20, 3): (6e-3, 10, "bound", 1000),  # 180 decoded, bound 128 -> 1000 epochs
    (100, 10, 2): (1e-3, 0, "single", 1000),  # 1500 x 2/3 = 1000
    (100, 20, 3): (2e-3, 0, "bound", 600),  # 1000 x 2/3 = 666 -> 600
    (100, 1, 1): (1e-4, 0, "single", 2000),
}


@pytest.mark.parametrize("classes,ipc,factor", list(IMAGENET))
def test_imagenet_settings_are_idcs(classes, ipc, factor):
    name = "imagenet10" if classes == 10 else "imagenet100"
    cfg = build_config(name, ipc, "paper", 224, 224, factor=factor, num_classes=classes)
    lr_img, early, decode, epochs = IMAGENET[(classes, ipc, factor)]
    assert cfg.match.lr_img == pytest.approx(lr_img, rel=1e-12)
    assert (cfg.net.early, cfg.match.decode_type, cfg.eval.eval_epochs) == (early, decode, epochs)
    assert (cfg.match.metric, cfg.net.n_data, cfg.match.iterations, cfg.net.net_arch, cfg.eval.eval_arch) == \
        ("l1", 500, 500, "resnet_ap10", "resnet_ap10")
    big = classes >= 100
    assert (cfg.net.lr_net, cfg.net.wd_net, cfg.match.batch_real) == ((0.1, 1e-4, 128) if big else (0.01, 5e-4, 64))
    assert (cfg.eval.eval_lr, cfg.eval.eval_wd, cfg.eval.eval_batch) == ((0.1, 1e-4, 128) if big else (0.01, 5e-4, 64))
    assert cfg.net.net_cutmix_p == cfg.eval.eval_cutmix_p == 1.0  # IDC's mix_p default, which ImageNet keeps
    # argument.py sets --dsa only for the other datasets: ImageNet evaluates with transform_imagenet's chain
    assert cfg.eval.eval_aug == "imagenet" and cfg.eval.eval_cutmix
    assert build_config("cifar10", 1, "paper", 32, 32).net.net_cutmix_p == 0.5
    # lr_img scales with the side as IDC's tune_lr_img: (size / 224)^2
    assert build_config(name, ipc, "paper", 112, 224, factor=factor, num_classes=classes).match.lr_img == \
        pytest.approx(lr_img / 4, rel=1e-12)


def test_short_presets_keep_their_budget_on_imagenet():
    cfg = build_config("imagenet10@64", 1, "smoke", 64, 224, num_classes=10)
    assert cfg.net.early == 0 and cfg.match.iterations == 2 and cfg.eval.eval_epochs == 4
    assert build_config("imagenet10@64", 1, "smoke", 64, 224, num_classes=10, early=2).net.early == 2
    tiny = build_config("tinyimagenet", 10, "paper", 64, 64, num_classes=200)
    assert (tiny.match.metric, tiny.net.n_data, tiny.net.net_arch, tiny.net.early) == ("mse", 2000, "convnet", 0)
    assert tiny.match.lr_img == pytest.approx(5e-3)


@pytest.mark.idc
@pytest.mark.parametrize("classes,ipc,factor", list(IMAGENET))
def test_imagenet_settings_against_idcs_code(classes, ipc, factor):
    """IDC's set_arguments (misc/reproduce.py), tune_lr_img and ipc_epoch (argument.py, taken from its syntax
    tree: the module parses the command line when imported), and argument.py's lines for ImageNet with 100
    classes or more, restated here."""
    import argparse
    import ast
    from pathlib import Path

    from idc_code import idc_source, require_idc_src
    root = Path(require_idc_src())
    ns = {}
    exec(compile(idc_source(root, "misc/reproduce.py"), "reproduce.py", "exec"), ns)
    tree = ast.parse(idc_source(root, "argument.py"))
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("ipc_epoch", "tune_lr_img")]
    exec(compile(ast.Module(body=funcs, type_ignores=[]), "argument.py", "exec"), ns)
    args = argparse.Namespace(dataset="imagenet", nclass=classes, ipc=ipc, factor=factor, early=0,
                              decode_type="single", lr_img=5e-3, n_data=500, size=224, net_type="convnet",
                              depth=10, niter=500, metric="l1", lr=0.01, weight_decay=5e-4, batch_size=64,
                              batch_real=64, batch_syn_max=128, mix_p=1.0)
    args = ns["set_arguments"](args)
    if args.nclass >= 100:  # argument.py, `if args.dataset == 'imagenet'`
        args.lr, args.weight_decay = 0.1, 1e-4
        args.batch_size, args.batch_real = max(128, args.batch_size), max(128, args.batch_real)
    bound = args.batch_syn_max if args.decode_type == "bound" else -1
    epochs = ns["ipc_epoch"](args.ipc, args.factor, args.nclass, bound=bound)
    name = "imagenet10" if classes == 10 else "imagenet100"
    cfg = build_config(name, ipc, "paper", 224, 224, factor=factor, num_classes=classes)
    assert cfg.match.lr_img == pytest.approx(ns["tune_lr_img"](args, args.lr_img), rel=1e-12)
    assert (cfg.match.metric, cfg.net.n_data, cfg.match.iterations * 100 // cfg.match.inner_loop) == \
        (args.metric, args.n_data, args.niter * 100 // 100)
    assert (cfg.net.early, cfg.match.decode_type, cfg.eval.eval_epochs) == (args.early, args.decode_type, epochs)
    assert (cfg.net.lr_net, cfg.net.wd_net, cfg.match.batch_real, cfg.eval.eval_batch) == \
        (args.lr, args.weight_decay, args.batch_real, args.batch_size)
    assert (args.net_type, args.depth) == ("resnet_ap", 10) and cfg.net.net_arch == "resnet_ap10"
    assert args.mix_p == cfg.net.net_cutmix_p == cfg.eval.eval_cutmix_p == 1.0  # argument.py leaves ImageNet's

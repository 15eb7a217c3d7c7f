"""IDC's own distillation loop, driven on this machine for a side-by-side time per inner iteration.

    UDD_FAST_IDC_SRC=/path/to/Efficient-Dataset-Condensation python bench/idc_loop.py --ipc 1 10

Nothing of IDC's is copied: its files are read at run time from UDD_FAST_IDC_SRC (a checkout, or a
git directory without a work tree), and its functions run unedited: Synthesizer (mix init, decode,
subsample), diffaug/DiffAug, matchloss, ClassMemDataLoader and train_epoch, ConvNet. One inner
iteration is exactly the body of IDC's `condense()` loop: for each class, class_sample, sample,
aug, matchloss, backward, the image SGD step; then train_epoch(n_data) of the network.
What it takes to run on a CPU without a GPU or torchvision, each a stand-in outside IDC's files:
- `Tensor.cuda` returns the tensor itself (IDC moves batches with `.cuda()` whenever its loader
  reports the CPU), and `random_indices` gets `device='cpu'` in place of its 'cuda' default;
- torchvision's `transforms.Compose` is IDC's own misc.utils.Compose (the same loop), and
  `ConvertImageDtype(torch.float)` is uint8 / 255 (what torchvision's does);
- `np.int` (removed in NumPy 1.24, used by IDC's rand_bbox) is Python's int.
The data are random pixels of CIFAR-10's shape (the loop's cost does not depend on them).
"""
import argparse
import ast
import contextlib
import functools
import os
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from idc_code import idc_source  # noqa: E402  (reads a file of IDC's checkout or git directory)

CIFAR = dict(dataset="cifar10", nclass=10, nch=3, size=32)


def _module(name, source, filename, env=None):
    mod = types.ModuleType(name)
    mod.__dict__.update(env or {})
    exec(compile(source, filename, "exec"), mod.__dict__)
    return mod


def _parts(source, filename, names, env):
    """Only the named top-level functions/classes of a file (its imports need torchvision or CUDA),
    compiled into a namespace holding `env`."""
    tree = ast.parse(source)
    body = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in names]
    found = {n.name for n in body}
    if found != set(names):
        raise ImportError(f"{filename} lacks {sorted(set(names) - found)}")
    return _module("idc_part", ast.Module(body=body, type_ignores=[]), filename, env)


def load_idc(src):
    """IDC's pieces of the condense loop, as a namespace."""
    root = Path(src)
    f = lambda rel: (idc_source(root, rel), f"{root}/{rel}")  # noqa: E731
    utils = _module("idc_misc_utils", *f("misc/utils.py"))
    augment = _module("idc_misc_augment", *f("misc/augment.py"))
    convnet = _module("idc_models_convnet", *f("models/convnet.py"))
    convert = types.SimpleNamespace(ConvertImageDtype=lambda dtype: (lambda x: x.to(dtype) / 255))
    transforms = types.SimpleNamespace(Compose=utils.Compose, **vars(convert))
    common = dict(torch=torch, nn=nn, np=np, F=torch.nn.functional, optim=torch.optim, time=time, ceil=np.ceil)
    data = _parts(*f("data.py"), ["_RepeatSampler", "ClassBatchSampler", "ClassMemDataLoader"],
                  {**common, "transforms": transforms})
    consts = {}  # data.py's module-level MEANS and STDS tables
    tree = ast.parse(idc_source(root, "data.py"))
    exec(compile(ast.Module(body=[n for n in tree.body if isinstance(n, ast.Assign) and any(
        name in ast.unparse(t) for t in n.targets for name in ("MEANS", "STDS"))], type_ignores=[]),
        f"{root}/data.py", "exec"), consts)
    from math import ceil
    condense = _parts(*f("condense.py"), ["Synthesizer", "remove_aug", "diffaug", "dist", "add_loss", "matchloss"],
                      {**common, "ceil": ceil, "DiffAug": augment.DiffAug, "utils": utils,
                       "transforms": transforms, "MEANS": consts["MEANS"], "STDS": consts["STDS"]})
    train = _parts(*f("train.py"), ["train_epoch"],
                   {**common, "AverageMeter": utils.AverageMeter, "accuracy": utils.accuracy,
                    "rand_bbox": utils.rand_bbox,
                    "random_indices": functools.partial(utils.random_indices, device="cpu")})
    return types.SimpleNamespace(ClassMemDataLoader=data.ClassMemDataLoader, Synthesizer=condense.Synthesizer,
                                 diffaug=condense.diffaug, matchloss=condense.matchloss,
                                 train_epoch=train.train_epoch, ConvNet=convnet.ConvNet)


@contextlib.contextmanager
def cpu_stand_ins():
    """Tensor.cuda as the identity and np.int as int, for as long as IDC's code runs."""
    cuda, had_int = torch.Tensor.cuda, hasattr(np, "int")
    torch.Tensor.cuda = lambda self, *a, **k: self
    if not had_int:
        np.int = int
    try:
        yield
    finally:
        torch.Tensor.cuda = cuda
        if not had_int:
            del np.int


class _RandomCifar(torch.utils.data.Dataset):
    """uint8 [3,32,32] images as IDC's loaders read them (`d[0]`), with `targets` and `nclass`."""

    def __init__(self, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        self.targets = [i % CIFAR["nclass"] for i in range(n)]
        self.nclass = CIFAR["nclass"]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], self.targets[i]


def idc_args(ipc, n_data):
    """IDC's settings for CIFAR-10 (argument.py defaults and misc/reproduce.py)."""
    return types.SimpleNamespace(**CIFAR, ipc=ipc, factor=2, decode_type="single", batch_real=64, batch_syn_max=128,
                                 aug_type="color_crop_cutout", mixup_net="cut", mix_p=0.5, beta=1.0, match="grad",
                                 metric="mse", bias=False, fc=False, lr_img=5e-3 * ipc / 10, mom_img=0.5, lr=0.01,
                                 momentum=0.9, weight_decay=5e-4, n_data=n_data, print_freq=10, verbose=False,
                                 epoch_print_freq=1, epochs=1000, norm_type="instance", depth=3, width=1.0)


def idc_steps(idc, ipc, n_data, n_train=50000, seed=0):
    """IDC's loop as a generator: each next() runs one inner iteration and yields (seconds of its
    matching part, seconds of its network update), so it can be timed interleaved with other loops."""
    args = idc_args(ipc, n_data)
    np.random.seed(seed)
    torch.manual_seed(seed)
    with cpu_stand_ins():
        loader = idc.ClassMemDataLoader(_RandomCifar(n_train, seed), batch_size=args.batch_real, device="cpu")
        synset = idc.Synthesizer(args, args.nclass, args.nch, args.size, args.size, device="cpu")
        synset.init(loader, init_type="mix")
        aug, aug_rand = idc.diffaug(args, device="cpu")
        optim_img = torch.optim.SGD(synset.parameters(), lr=args.lr_img, momentum=args.mom_img)
        model = idc.ConvNet(args.nclass, net_norm="instance", net_depth=3, net_width=128, channel=3, im_size=(32, 32))
        model.train()
        optim_net = torch.optim.SGD(model.parameters(), args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
        criterion = nn.CrossEntropyLoss()
        synset.data.data = torch.clamp(synset.data.data, min=0., max=1.)
    while True:
        with cpu_stand_ins():
            t0 = time.perf_counter()
            for c in range(args.nclass):  # the body of IDC's condense() loop, as it stands there
                img, lab = loader.class_sample(c)
                img_syn, lab_syn = synset.sample(c, max_size=args.batch_syn_max)
                n = img.shape[0]
                img_aug = aug(torch.cat([img, img_syn]))
                loss = idc.matchloss(args, img_aug[:n], img_aug[n:], lab, lab_syn, model)
                loss.item()
                optim_img.zero_grad()
                loss.backward()
                optim_img.step()
            t1 = time.perf_counter()
            idc.train_epoch(args, loader, model, criterion, optim_net, n_data=args.n_data, aug=aug_rand,
                            mixup=args.mixup_net)
            t2 = time.perf_counter()
        yield t1 - t0, t2 - t1


def time_idc(idc, ipc, n_data, inner, n_train=50000, seed=0):
    """(median s per inner iteration, median s of its matching part, of its network update), after one
    warm-up inner iteration."""
    steps = idc_steps(idc, ipc, n_data, n_train, seed)
    next(steps)
    match, update = zip(*(next(steps) for _ in range(inner)))
    m, u = statistics.median(match), statistics.median(update)
    return m + u, m, u


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    p.add_argument("--n-data", type=int, default=2000, help="network update images (IDC's CIFAR setting: 2000)")
    p.add_argument("--inner", type=int, default=3, help="timed inner iterations (after one warm-up)")
    args = p.parse_args(argv)
    src = os.environ.get("UDD_FAST_IDC_SRC")
    if not src or not Path(src).exists():
        sys.exit("set UDD_FAST_IDC_SRC to an IDC checkout or git directory")
    idc = load_idc(src)
    print(f"IDC's code on the CPU ({torch.get_num_threads()} threads), CIFAR-10 shapes, network update "
          f"{args.n_data} images; seconds per inner iteration (median of {args.inner})")
    for ipc in args.ipc:
        total, m, u = time_idc(idc, ipc, args.n_data, args.inner)
        print(f"IPC {ipc}: {total:.3f} s (matching {m:.3f}, network update {u:.3f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

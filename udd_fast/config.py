"""Run configuration: IDC's per-dataset settings, presets (paper / quick / smoke) and flag overrides.

The settings come in groups, one per part of the run that reads them: `RunConfig` (what is run, on
what), `MatchConfig` (the synthetic set and its gradient matching), `NetConfig` (the matching network
and its updates on real data), `UddConfig` (UDD's proxy, regions and CFC loss) and `EvalConfig` (the
evaluation protocol). Each field says with `setting` what is derived from it: its command-line option
of `python -m udd_fast.distill` (section, help, default), whether a resumed run must keep it, whether
it applies to a distillation only, and its allowed values (`setting_problem`, the one range check for
flags, saved configs and built ones). Field names are unique across the groups, so a Config saves as
one flat dict (`to_dict`, the format of checkpoint.pt and distilled.pt) and loads from one
(`config_from_dict`, `Config.from_flat`).
"""
import math
import sys
from dataclasses import asdict, dataclass, field, fields

import torch

from .augment import Strategy
from .data.source import DataSource
from .fields import is_int
from .models import ARCHS
from .region_search import POLICIES

METHODS = ("idc", "udd", "random", "herding", "kcenter", "full")
# the methods that select real images (stored whole, factor 1, no distillation); herding and k-center choose
# by the features of a network trained on the real data (UDD's proxy network, its settings theirs too)
SELECTIONS = ("random", "herding", "kcenter")
# the reference points that distill nothing: the selections, and `full`, the evaluation protocol trained on
# the whole real training set (udd_fast/reference.py), which stores no set
NOT_DISTILLED = SELECTIONS + ("full",)
# --method full's evaluation epochs where --eval-epochs is not given. paper: IDC's ipc_epoch for more than
# 500 images per class (300); quick: 2, the fewest whose lr schedule does not decay from the start (MNIST's
# 3 runs took 30 minutes of a 2-core CPU); smoke: 1, for tests
FULL_EPOCHS = {"paper": 300, "quick": 2, "smoke": 1}
USES_PROXY = ("udd", "herding", "kcenter")
PROXY_SETTINGS = ("proxy_epochs", "proxy_cache")
DECODE_TYPES = ("single", "multi", "bound")
NET_ARCHS = ("convnet", "resnet_ap10")
FORMS = ("batched", "sequential")
PRECISIONS = ("fp32", "tf32", "bf16")

PRESETS = {
    "paper": "IDC's published budget: 2000 outer x 100 inner iterations (500 on ImageNet), network updates of "
             "2000 (CIFAR) or 500 real images; UDD proxy 50 epochs; evaluation 1000 epochs (on ImageNet IDC's by "
             "IPC) x 5 runs. GPU hours.",
    "quick": "a demo that fits a few minutes of a 2-core CPU: 10 outer x 5 inner iterations, network "
             "updates of 256 images, no --early; UDD proxy 1 epoch; evaluation 300 epochs x 3 runs, tested once at the end.",
    "smoke": "seconds, for tests: 2 outer x 2 inner iterations, network updates of 64 images, real "
             "batches of 16, no --early; UDD proxy 1% of an epoch; evaluation 4 epochs x 2 runs on the first 1000 test "
             "images.",
}

# The CFC weight's default, by matching metric: L_g's scale differs by metric and dataset (its
# pixel-gradient norm is ~3700x CFC's on MNIST with l1, ~230x on CIFAR-10 with mse, at init), so one
# number cannot serve both. l1: the best of the sweep 0/30/300/3000 in docs/ablation.md (within the
# runs' spread at that small budget); mse: that choice scaled by the gradient-norm ratio (not swept).
CFC_WEIGHTS = {"l1": 300.0, "mse": 20.0}

# The sections of `python -m udd_fast.distill --help` a setting's option can stand in.
MAIN = "main"  # among the parser's own options
PRESET = "overrides of the preset"
UDD = "UDD (with --method udd)"  # the options of this section need --method udd


class UsageError(ValueError):
    """An impossible combination of settings (flags on the command line, keywords in the API)."""


def _device_problem(value):
    return None if value == "cpu" or value.startswith("cuda") else "must be cpu or cuda[:N]"


def _strategy_problem(value):
    try:
        Strategy.parse(value)
    except ValueError as e:
        return str(e)
    return None


def eval_archs(value: str) -> list:
    """The networks of an eval_arch setting ("convnet,resnet10_bn,densenet"), in order."""
    return [a.strip() for a in str(value).split(",") if a.strip()]


def _archs_problem(value):
    archs = eval_archs(value)
    bad = [a for a in archs if a not in ARCHS]
    if not archs or bad:
        return f"must be one of {', '.join(ARCHS)} (or several, comma-separated), not {', '.join(bad) or repr(value)}"
    if len(set(archs)) != len(archs):
        return "names a network twice"
    return None


def _dsa_strategy_problem(value):
    """Matching and the network update augment with DSA strategies (differentiable, siamese)."""
    problem = _strategy_problem(value)
    if problem is None and Strategy.parse(value).imagenet:
        return "'imagenet' is IDC's evaluation augmentation on ImageNet; matching and network updates take DSA strategies"
    return problem


def _probability_problem(value):
    return None if 0.0 <= value <= 1.0 else "must be in [0, 1]"


def _trajectory_batch_problem(value):
    if value == "auto" or (value.isdigit() and value == str(int(value)) and int(value) >= 1):
        return None
    return "must be auto or a whole number >= 1"


def setting(default, help=None, *, flag=None, flag_default=False, flag_choices=None, metavar=None,
            fixed_on_resume=False, distill_only=False, at_least=None, above=None, at_most=None, choices=None,
            check=None):
    """A config field with what is derived from it (kept in the field's metadata).

    flag: the --help section (MAIN, PRESET, UDD) of the field's option --<name-with-dashes>, None for
      no option. The option's default is None (the dataset and the preset decide) unless
      `flag_default`, then the field's default; a bool option takes on|off; `flag_choices` narrows
      `choices` for the option.
    fixed_on_resume: a resumed run refuses another value (it would change what is computed).
    distill_only: --method random (no distillation) refuses the option.
    at_least, above, at_most, choices, check (value -> problem or None): the allowed values.
    """
    return field(default=default, metadata=dict(
        help=help, flag=flag, flag_default=flag_default, flag_choices=flag_choices, metavar=metavar,
        fixed_on_resume=fixed_on_resume, distill_only=distill_only, at_least=at_least, above=above,
        at_most=at_most, choices=choices, check=check))


def _type_problem(f, value):
    """Why `value` is not of the type the setting `f` declares (its default's), or None: an int is an int
    and never a bool; a float setting takes an int as well; a string is a string."""
    kind = type(f.default)
    if kind is bool:
        ok, want = isinstance(value, bool), "on/off (True or False)"
    elif kind is int:
        ok, want = is_int(value), "an integer"
    elif kind is float:
        ok, want = is_int(value) or (isinstance(value, float)), "a number"
    else:
        ok, want = isinstance(value, kind), f"a {kind.__name__}"
    return None if ok else f"must be {want}, not {type(value).__name__}"


def setting_problem(f, value):
    """Why `value` is not allowed for the setting `f` (a field of a group), or None when it is: its type
    (the one its declaration gives), then its range."""
    m = f.metadata
    problem = _type_problem(f, value)
    if problem:
        return problem
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if m["at_least"] is not None and value < m["at_least"]:
        return f"must be >= {m['at_least']}"
    if m["above"] is not None and m["at_most"] is not None and not m["above"] < value <= m["at_most"]:
        return f"must be in ({m['above']}, {m['at_most']}]"
    if m["above"] is not None and not value > m["above"]:
        return f"must be > {m['above']}"
    if m["choices"] is not None and value not in m["choices"]:
        return f"must be one of {', '.join(repr(c) for c in m['choices'])}"
    return m["check"](value) if m["check"] else None


class _Group:
    def validate(self, where: str = "config"):
        """Raise ValueError naming `where` and the first field whose value is not allowed."""
        for f in fields(self):
            value = getattr(self, f.name)
            problem = setting_problem(f, value)
            if problem:
                raise ValueError(f"{where}: {f.name} {problem} (found {value!r})")


@dataclass
class RunConfig(_Group):
    """What is run, on what data and device."""
    # the data's canonical name (udd_fast.data.DatasetInfo.name); --dataset names the data to load
    dataset: str = setting("cifar10")
    ipc: int = setting(1, "stored images per class (default 1)", flag=MAIN, flag_default=True, fixed_on_resume=True,
                       at_least=1)
    method: str = setting("idc", "idc or udd distill; the reference points: random, herding, kcenter (IPC real images "
                                 "per class), full (the evaluation trained on every training image, cached; no set)",
                          flag=MAIN, flag_default=True, fixed_on_resume=True, choices=METHODS)
    preset: str = setting("quick", flag=MAIN, flag_default=True, fixed_on_resume=True, choices=tuple(PRESETS))
    seed: int = setting(0, flag=MAIN, flag_default=True, fixed_on_resume=True)
    device: str = setting("cpu", flag=MAIN, flag_default=True, flag_choices=("cpu", "cuda"), fixed_on_resume=True,
                          check=_device_problem)
    real_on_device: str = setting(
        "auto", "auto (default), on or off: where the training images live. on: copied onto the device (or into "
                "memory); off: left in host memory (memory-mapped from the image cache of a JPEG set), each inner "
                "iteration's images staged one iteration ahead; auto: on where they fit a quarter of the device's "
                "memory (the CPU: memory-mapped images up to a quarter of the machine's)",
        flag=MAIN, flag_default=True, choices=("auto", "on", "off"))
    checkpoint_every: int = setting(
        10, "write checkpoint.pt every N outer iterations (default 1 for smoke/quick, 10 for paper; 0 = only when "
            "stopped by SIGINT/SIGTERM)", flag=MAIN, metavar="N", distill_only=True, at_least=0)


@dataclass
class MatchConfig(_Group):
    """The synthetic set and its gradient matching (udd_fast.engine)."""
    factor: int = setting(2, "multi-formation factor k (1 = no multi-formation)", flag=PRESET, flag_default=True,
                          fixed_on_resume=True, distill_only=True, at_least=1)
    iterations: int = setting(2000, "outer iterations (0 evaluates the initialization)", flag=PRESET,
                              distill_only=True, at_least=0)
    inner_loop: int = setting(100, flag=PRESET, fixed_on_resume=True, distill_only=True, at_least=1)
    # 0: IDC's rule from the dataset and IPC (build_config)
    lr_img: float = setting(0.0, flag=PRESET, fixed_on_resume=True, distill_only=True, above=0)
    batch_real: int = setting(64, flag=PRESET, fixed_on_resume=True, distill_only=True, at_least=1)
    batch_syn_max: int = setting(128, at_least=1)
    mom_img: float = setting(0.5, at_least=0)
    metric: str = setting("mse", choices=("l1", "mse"))
    match_aug: str = setting("color_crop_cutout", check=_dsa_strategy_problem)
    # IDC's --decode_type; "" = IDC's rule (build_config): bound at factor >= 3 and IPC >= 20 on ImageNet
    decode_type: str = setting(
        "", "single (each stored image into factor^2 formations; IDC's default), multi (into the formations of "
            "every factor 1..k) or bound (the largest factors that keep a class's formations within "
            "batch_syn_max; IDC's choice on ImageNet at factor >= 3 and IPC >= 20); evaluation decodes multi as multi, "
            "the others as single, as IDC's test.py", flag=PRESET, flag_choices=DECODE_TYPES, fixed_on_resume=True,
        distill_only=True, choices=("", *DECODE_TYPES))
    # 'sequential' is IDC's per-class loop, 'batched' all classes at once (equal)
    # "" = by measurement (bench/RESULTS.md): sequential on the CPU, batched on CUDA and under torchrun
    form: str = setting("", "batched (all classes per step; the default on CUDA and under torchrun) or sequential "
                            "(IDC's per-class loop; the CPU's default, measured faster there)", flag=PRESET,
                        flag_choices=FORMS, fixed_on_resume=True, distill_only=True, choices=("", *FORMS))
    dtype: str = setting("float32", choices=("float32", "float64"))  # float64 for exactness tests
    # "" = fp32 on CPU, tf32 on CUDA (build_config)
    precision: str = setting(
        "", "fp32 (no TF32; default on CPU), tf32 (TF32 matmuls/convolutions; default on CUDA) or bf16 (network "
            "forward passes under bf16 autocast; images and losses stay float32)", flag=MAIN,
        flag_choices=PRECISIONS, fixed_on_resume=True, distill_only=True, choices=("", *PRECISIONS))
    cuda_graphs: str = setting(
        "auto", "auto (on with CUDA; default), on or off: run each inner iteration as fixed device work whose draws "
                "are keyed from device counters, captured as a CUDA graph and replayed on a GPU (on the CPU, "
                "--cuda-graphs on runs the static path without capture)", flag=MAIN, flag_default=True, distill_only=True,
        choices=("auto", "on", "off"))
    match_memory: float = setting(
        0.5, "the share of the device's memory the batched form's matching step may take: its classes are split "
             "into groups that fit", flag=MAIN, flag_default=True, metavar="SHARE", above=0.0, at_most=1.0)
    trajectory_batch: str = setting(
        "auto", "auto (default: 1 on the CPU, where it was measured slower; on CUDA, up to 4 within memory) or N: "
                "train the matching networks of N outer iterations ahead, together as one grouped model "
                "(1 = interleaved with matching, IDC's order; N x inner_loop parameter snapshots are kept)",
        flag=MAIN, flag_default=True, metavar="auto|N", distill_only=True, check=_trajectory_batch_problem)
    compile: str = setting(
        "auto", "auto (default: on for a CPU run of at least 2000 network-update batches, where the compile's half "
                "minute pays off; off on CUDA until measured there), on or off: run the network update through "
                "torch.compile (on the static path)", flag=MAIN, flag_default=True, distill_only=True,
        choices=("auto", "on", "off"))

@dataclass
class NetConfig(_Group):
    """The matching network and its updates on real data (udd_fast.engine)."""
    net_aug: str = setting("color_crop", check=_dsa_strategy_problem)
    net_cutmix: bool = setting(True)
    net_cutmix_p: float = setting(0.5, check=_probability_problem)  # IDC's mix_p: 1.0 on ImageNet
    n_data: int = setting(2000, "real images per network update", flag=PRESET, fixed_on_resume=True,
                          distill_only=True, at_least=1)
    lr_net: float = setting(0.01, above=0)
    mom_net: float = setting(0.9, at_least=0)
    wd_net: float = setting(5e-4, at_least=0)
    net_width: int = setting(128, at_least=1)
    # "" = by dataset (build_config): IDC's ResNetAP-10 on ImageNet, else ConvNet (depth by resolution)
    net_arch: str = setting("", "the matching network: convnet (depth by resolution: 3 up to 32 px, 4 at 64, 5 at 128; "
                                "the default but on ImageNet) or resnet_ap10 (IDC's ImageNet network)", flag=PRESET,
                            flag_choices=NET_ARCHS, fixed_on_resume=True, distill_only=True, choices=("", *NET_ARCHS))
    early: int = setting(0, "epochs of real-data training of each outer iteration's network before its matching "
                            "(IDC's --early; 10 on ImageNet-10, else 0)", flag=PRESET, metavar="EPOCHS",
                         fixed_on_resume=True, distill_only=True, at_least=0)


@dataclass
class UddConfig(_Group):
    """UDD (docs/method.md section 2): the proxy network, the region search and the CFC loss; `idc` switches
    all of it off."""
    policy: str = setting("auto", "region policy: auto (response where the proxy is right, jitter elsewhere; "
                                  "default), response, jitter, or none (no regions)", flag=UDD, fixed_on_resume=True,
                          choices=POLICIES)
    region_size: float = setting(0.5, "window side / tile side (default 0.5)", flag=UDD, fixed_on_resume=True,
                                 above=0, at_most=1)
    region_every: int = setting(1, "search regions every N outer iterations (1)", flag=UDD, fixed_on_resume=True,
                                at_least=1)
    jitter_sigma: float = setting(0.2, "jitter noise std (0.2)", flag=UDD, fixed_on_resume=True, above=0)
    jitter_draws: int = setting(4, "noise draws per window (4)", flag=UDD, fixed_on_resume=True, at_least=1)
    cfc_weight: float = setting(0.0, f"CFC loss weight lambda (default by matching metric: {CFC_WEIGHTS}; 0 = off)",
                                flag=UDD, fixed_on_resume=True, at_least=0)
    cfc_tau: float = setting(0.1, "CFC temperature (0.1)", flag=UDD, fixed_on_resume=True, above=0)
    proxy_epochs: float = setting(1.0, "proxy training epochs (per preset)", flag=UDD, fixed_on_resume=True,
                                  above=0)
    # "" = $UDD_FAST_CACHE/proxy, else ~/.cache/udd_fast/proxy
    proxy_cache: str = setting("", "proxy cache directory (default ~/.cache/udd_fast/proxy)", flag=UDD)


@dataclass
class EvalConfig(_Group):
    """IDC's evaluation protocol (udd_fast.evaluate)."""
    eval_runs: int = setting(5, "0 skips evaluation", flag=PRESET, at_least=0)
    eval_epochs: int = setting(1000, flag=PRESET, at_least=1)
    eval_arch: str = setting("convnet", "the evaluation networks, comma-separated (the first is the run's accuracy; "
                                        f"each with IDC's protocol for it): {', '.join(ARCHS)}", flag=PRESET,
                             metavar="ARCH[,ARCH...]", check=lambda v: _archs_problem(v))
    eval_batch: int = setting(64, at_least=1)
    eval_lr: float = setting(0.01, above=0)  # IDC's --lr and --weight-decay (0.1 and 1e-4 for 100 ImageNet classes)
    eval_wd: float = setting(5e-4, at_least=0)
    eval_aug: str = setting("color_crop_flip_scale_rotate", check=_strategy_problem)
    eval_cutmix: bool = setting(True)
    eval_cutmix_p: float = setting(0.5, check=_probability_problem)  # IDC's mix_p: 1.0 on ImageNet
    # IDC validates 4 times and logs the best beside the last
    eval_validations: int = setting(4, at_least=1)
    # 0: the whole test set; smoke tests use a prefix to stay fast
    eval_test_limit: int = setting(0, at_least=0)
    # '' = by measurement (protocol.grouped_runs): the runs of an instance-norm ConvNet train as one grouped model
    eval_group: str = setting("", "on or off: train the evaluation runs of the ConvNet together as one grouped "
                                  "model, each with its own init, batches and augmentation (the same results to "
                                  "float round-off); default: on with CUDA, off on the CPU (measured slower there)",
                              flag=PRESET,
                              flag_choices=("on", "off"), choices=("", "on", "off"))
    eval_every: int = setting(0, "a short evaluation (1 run, a fifth of the evaluation epochs) every N outer "
                                 "iterations, plotted in curves.png and recorded in summary.json (default 0: none)",
                              flag=MAIN, metavar="N", distill_only=True, at_least=0)
    eval_region_views: bool = setting(True, "evaluate formations plus region views (on, default for udd) or "
                                            "formations only", flag=UDD)


@dataclass
class Config:
    """A run's settings, by group (see the module docstring)."""
    run: RunConfig = field(default_factory=RunConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    net: NetConfig = field(default_factory=NetConfig)
    udd: UddConfig = field(default_factory=UddConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @classmethod
    def from_flat(cls, values: dict) -> "Config":
        """A Config from flat settings (name -> value); the ones not given take their defaults."""
        groups = {g.name: {} for g in fields(cls)}
        for name, value in values.items():
            if name not in _GROUP_OF:
                raise TypeError(f"unknown setting {name!r}")
            groups[_GROUP_OF[name]][name] = value
        return cls(**{g.name: g.default_factory(**groups[g.name]) for g in fields(cls)})

    def to_dict(self) -> dict:
        """Every setting by name, flat: the format saved in checkpoint.pt and distilled.pt."""
        return {name: value for g in fields(self) for name, value in asdict(getattr(self, g.name)).items()}

    def validate(self, where: str = "config"):
        for g in fields(self):
            getattr(self, g.name).validate(where)


def settings() -> list:
    """The fields of every group, in order: each setting with its metadata (see `setting`)."""
    return [f for g in fields(Config) for f in fields(g.default_factory)]


_GROUP_OF = {f.name: g.name for g in fields(Config) for f in fields(g.default_factory)}


def option_settings() -> list:
    """The settings a run may be given (the command line's options, the API's keyword arguments)."""
    return [f for f in settings() if f.metadata["flag"]]


def option_defaults() -> dict:
    """Each option setting's value when not given: its default where it has its own, else None (the
    dataset and the preset decide)."""
    return {f.name: f.default if f.metadata["flag_default"] else None for f in option_settings()}


def check_settings(values: dict, given, spell):
    """The settings of a new run on their own (against the data: pipeline.checks): each value allowed,
    UDD's only with --method udd, none that needs a distillation with --method random, a CUDA device
    present. spell(name, value=None) is how the caller names a setting, with a value if given (--flag
    value, or keyword=value)."""
    for f in option_settings():
        v = values.get(f.name)
        problem = None if v is None else setting_problem(f, v)
        if problem:
            raise UsageError(f"{spell(f.name)} {problem} (got {v!r})")
    if values["ipc"] > 50:
        print(f"note: IPC {values['ipc']} is beyond the 1-50 range this tool is tuned for", file=sys.stderr)
    udd = [f.name for f in option_settings() if f.metadata["flag"] == UDD and values.get(f.name) is not None
           and not (f.name in PROXY_SETTINGS and values["method"] in USES_PROXY)]
    if udd and values["method"] != "udd":
        raise UsageError(f"{spell(udd[0])} is a UDD setting: it needs {spell('method', 'udd')}")
    unused = [f.name for f in option_settings() if f.metadata["distill_only"] and f.name in given]
    if values["method"] == "full":
        unused += [name for name in ("ipc",) if name in given]
        if values.get("eval_runs") == 0:
            raise UsageError(f"{spell('eval_runs', 0)} with {spell('method', 'full')}: the full-data reference is "
                             f"an evaluation, and this one would run none")
    if values["method"] in NOT_DISTILLED and unused:
        what = ("trains the evaluation networks on every real training image, storing no set" if
                values["method"] == "full" else "stores IPC real images per class")
        raise UsageError(f"{spell(unused[0])} does not apply to {spell('method', values['method'])}: it {what}, "
                         f"without distillation (factor 1, no iterations)")
    if str(values["device"]).startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"{spell('device', 'cuda')} was asked for, but this torch build sees no CUDA device; use "
                         f"{spell('device', 'cpu')}")


def config_from_dict(d, where: str) -> Config:
    """A saved config, every field checked (type and range); missing fields take their defaults (older
    files), unknown ones are ignored. Raises ValueError naming `where` and the field."""
    if not isinstance(d, dict):
        raise ValueError(f"{where} is a {type(d).__name__}, not a dict of settings")
    values = {}
    for f in settings():
        if f.name not in d:
            continue
        v = d[f.name]
        if type(f.default) is float and is_int(v):
            v = float(v)
        if _type_problem(f, v):
            raise ValueError(f"{where}: {f.name} is {v!r}: it {_type_problem(f, v)}")
        problem = setting_problem(f, v)
        if problem:
            raise ValueError(f"{where}: {f.name} {problem} (found {v!r})")
        values[f.name] = v
    return Config.from_flat(values)


def imagenet_like(dataset: str) -> bool:
    """ImageNet's classes (IDC's subsets or a list): IDC's `--dataset imagenet` settings apply."""
    src = DataSource.parse(dataset)
    return src.kind == "imagenet" or (src.kind == "builtin" and src.where in ("imagenet10", "imagenet100"))


def idc_lr_img(dataset: str, ipc: int, size: int, size_base: int, num_classes: int = 10) -> float:
    """IDC: base * (IPC/10) * (size/size_base)^2 (its tune_lr_img); base 1e-4 for MNIST-like data, on ImageNet 3e-3
    for 10 classes and 1e-3 for 100 (its reproduce.py; its parser's 5e-3 for other counts), else 5e-3."""
    base = 1e-4 if dataset in ("mnist", "fashionmnist") else 5e-3
    if imagenet_like(dataset):
        base = {10: 3e-3, 100: 1e-3}.get(num_classes, 5e-3)
    return base * (ipc / 10) * (size / size_base) ** 2


def arch_eval_epochs(arch: str, epochs: int, ipc: int, factor: int) -> int:
    """IDC's test.py per architecture: DenseNet trains 400 epochs on a set of IPC 50 and more stored at factor > 1
    (its other networks, and DenseNet otherwise, the run's epochs)."""
    return 400 if arch == "densenet" and ipc >= 50 and factor > 1 else epochs


def ipc_epoch(ipc: int, factor: int, num_classes: int = 10, bound: int = -1) -> int:
    """IDC's evaluation epochs on ImageNet (argument.py ipc_epoch): by the decoded images per class."""
    n = ipc * max(factor, 1) ** 2
    if bound > 0:
        n = min(n, bound)
    epochs = next(e for limit, e in ((1, 3000), (10, 2000), (50, 1500), (200, 1000), (500, 500), (math.inf, 300))
                  if n <= limit)
    if num_classes == 100:
        epochs = int(2 / 3 * epochs)
        epochs -= epochs % 100
    return epochs


def dataset_defaults(dataset: str, ipc: int, factor: int, num_classes: int = 10) -> dict:
    """IDC's per-dataset settings (its misc/reproduce.py and argument.py), section 1 of the method."""
    mnist_like = dataset in ("mnist", "fashionmnist")
    src = DataSource.parse(dataset)
    cifar_like = dataset in ("cifar10", "cifar100") or src.kind in ("npz", "folder") or src.where == "tinyimagenet"
    d = dict(metric="l1" if mnist_like else "mse", n_data=2000 if cifar_like else 500,
             match_aug="color_crop_cutout", net_aug="color_crop", net_cutmix=True,
             eval_aug="color_crop_cutout_flip_scale_rotate", eval_cutmix=True, net_arch="convnet", decode_type="single")
    if dataset in ("svhn", "mnist"):
        d["eval_aug"] = "color_crop_cutout_scale_rotate"  # IDC drops flip for digits
    if dataset == "mnist" and factor > 1:
        d.update(match_aug="color_crop", net_cutmix=False, eval_aug="color_crop_scale_rotate", eval_cutmix=False)
    if dataset == "svhn" and factor == 1 and ipc == 1:
        d.update(eval_aug="color_crop_cutout_scale_rotate", eval_cutmix=False)
    if imagenet_like(dataset):  # reproduce.py's imagenet branch, argument.py's for 100 classes and more
        # IDC's parser default mix_p 1.0 stands on ImageNet (argument.py sets 0.5 for the other datasets)
        # evaluation: its transform_imagenet chain (RRC, flip, colour jitter, lighting), its --dsa being off there
        d.update(metric="l1", n_data=500, net_arch="resnet_ap10", eval_arch="resnet_ap10", net_cutmix_p=1.0,
                 eval_cutmix_p=1.0, eval_aug="imagenet",
                 early=10 if num_classes == 10 else 0,
                 decode_type="bound" if factor >= 3 and ipc >= 20 else "single")
        if num_classes >= 100:
            d.update(lr_net=0.1, wd_net=1e-4, eval_lr=0.1, eval_wd=1e-4, batch_real=128, eval_batch=128)
    if d["eval_cutmix"]:  # IDC's argument.py: with CutMix (--mixup cut) evaluation drops cutout
        d["eval_aug"] = "_".join(p for p in d["eval_aug"].split("_") if p != "cutout")
    return d


def preset_values(preset: str) -> dict:
    if preset == "paper":
        return dict(iterations=2000, inner_loop=100, eval_epochs=1000, eval_runs=5,
                    eval_validations=4, proxy_epochs=50.0, checkpoint_every=10)
    if preset == "quick":
        return dict(iterations=10, inner_loop=5, n_data=256, eval_epochs=300, eval_runs=3,
                    eval_validations=1, proxy_epochs=1.0, checkpoint_every=1)
    if preset == "smoke":
        return dict(iterations=2, inner_loop=2, n_data=64, batch_real=16, eval_epochs=4, eval_runs=2,
                    eval_validations=1, eval_test_limit=1000, proxy_epochs=0.01,
                    checkpoint_every=1)
    raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")


def full_data_eval(info, preset: str, arch: str, epochs: int = None) -> "EvalConfig":
    """The evaluation settings of `--method full` on this dataset and preset (IDC's protocol for factor 1, the
    preset's full-data epochs, or `epochs`), for network `arch`, one run: what the soft labels' teacher is
    trained with, whichever set it labels, so that every set of a dataset shares one teacher."""
    return build_config(info.name, 1, preset, info.size, info.size_base, factor=1, num_classes=info.num_classes,
                        method="full", eval_arch=arch, eval_runs=1, eval_epochs=epochs).eval


def build_config(dataset: str, ipc: int, preset: str, size: int, size_base: int, factor: int = 2,
                 num_classes: int = 10, **overrides) -> Config:
    """Dataset defaults, then the preset, then explicit overrides (flat settings; None means not given).
    Raises ValueError naming a setting whose value is not allowed."""
    values = dict(dataset=dataset, ipc=ipc, preset=preset, factor=factor)
    values.update(dataset_defaults(dataset, ipc, factor, num_classes))
    values.update(preset_values(preset))
    if preset == "paper" and imagenet_like(dataset):  # IDC's niter and test epochs on ImageNet
        bound = overrides.get("batch_syn_max") or MatchConfig.batch_syn_max
        decode = overrides.get("decode_type") or values["decode_type"]
        values.update(iterations=500, eval_epochs=ipc_epoch(ipc, factor, num_classes,
                                                            bound if decode == "bound" else -1))
    elif preset != "paper":  # the short presets keep their budget: IDC's pretraining epochs are the paper's
        values["early"] = 0
    if overrides.get("method") == "full":
        values["eval_epochs"] = FULL_EPOCHS[preset]
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values.get("method", "idc") != "udd":  # `idc` (and `random`) switch every UDD part off
        values.update(policy="none", cfc_weight=0.0, eval_region_views=False)
    elif overrides.get("cfc_weight") is None:
        values["cfc_weight"] = CFC_WEIGHTS[values["metric"]]
    if not values.get("form"):
        values["form"] = "batched" if str(values.get("device", "cpu")).startswith("cuda") else "sequential"
    if not values.get("precision"):
        values["precision"] = "tf32" if str(values.get("device", "cpu")).startswith("cuda") else "fp32"
    if not values.get("lr_img"):
        values["lr_img"] = idc_lr_img(dataset, ipc, size, size_base, num_classes)
    cfg = Config.from_flat(values)
    cfg.validate()
    return cfg

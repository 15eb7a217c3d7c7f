"""Tests for udd_fast.models: ConvNet-3 (structure, features/classifier split, an independent
functional re-implementation, forward_grouped with per-group conv weights and their gradients),
ResNet-10 (structure, parameter count from the method's stated widths, shapes), ResNetAP and ResNet18
in IDC's ImageNet setting (parameter counts and shapes at 64/128/224 px, an independent functional
forward, features_grouped against separate passes, and, with IDC's code at UDD_FAST_IDC_SRC, IDC's own
modules built under the same seed), convnet_depth and make_model."""
import copy
import re
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from idc_code import idc_source, require_idc_src
from udd_fast.models import ARCHS, ConvNet, ResNet10, ResNet18, ResNetAP, convnet_depth, make_model


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def conv_params(cin, cout, k=3, bias=True):
    return cin * cout * k * k + (cout if bias else 0)


# ----------------------------------------------------------------------------
# ConvNet-3
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("channels,size", [(3, 32), (1, 28)])
def test_convnet_structure_and_features(channels, size):
    torch.manual_seed(0)
    m = ConvNet(10, channels, size)
    assert m.num_features == 2048 and m.feature_shape == (128, 4, 4)
    assert len(m.convs) == 3 and len(m.norms) == 3
    for d, (conv, norm) in enumerate(zip(m.convs, m.norms)):
        assert conv.kernel_size == (3, 3) and conv.out_channels == 128 and conv.bias is not None
        assert conv.in_channels == (channels if d == 0 else 128)
        exp_pad = 3 if (channels == 1 and d == 0) else 1
        assert conv.padding == (exp_pad, exp_pad), f"layer {d}"
        assert isinstance(norm, nn.GroupNorm)
        assert norm.num_groups == norm.num_channels == 128, "instance norm: one group per channel"
        assert norm.affine
    assert m.classifier.in_features == 2048 and m.classifier.out_features == 10
    n_params = sum(p.numel() for p in m.parameters())
    exp = conv_params(channels, 128) + 2 * conv_params(128, 128) + 3 * 2 * 128 + 2048 * 10 + 10
    assert n_params == exp
    assert [tuple(w.shape) for w in m.conv_weights()] == [(128, channels, 3, 3), (128, 128, 3, 3), (128, 128, 3, 3)]
    x = torch.randn(3, channels, size, size, generator=_gen(1))
    fmap = m.feature_map(x)
    assert fmap.shape == (3, 128, 4, 4)
    feats = m.features(x)
    assert feats.shape == (3, 2048)
    assert torch.equal(feats, fmap.flatten(1))
    out = m(x)
    assert out.shape == (3, 10)
    torch.testing.assert_close(out, m.classifier(feats), rtol=0, atol=0)


def _instance_norm_by_hand(h, weight, bias, eps):
    mean = h.mean(dim=(2, 3), keepdim=True)
    var = ((h - mean) ** 2).mean(dim=(2, 3), keepdim=True)  # biased, as normalization layers use
    return (h - mean) / torch.sqrt(var + eps) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def _pool_by_hand(h, k=2):
    n, c, H, W = h.shape
    return h[:, :, :H // k * k, :W // k * k].reshape(n, c, H // k, k, W // k, k).mean(dim=(3, 5))


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_convnet_matches_hand_written_forward(channels, size):
    torch.manual_seed(2)
    m = ConvNet(7, channels, size, width=16).double()
    with torch.no_grad():  # non-trivial affine parameters
        for norm in m.norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.3, 0.3)
    x = torch.randn(3, channels, size, size, generator=_gen(3), dtype=torch.float64)
    h = x
    for d in range(3):
        pad = 3 if (channels == 1 and d == 0) else 1
        h = F.conv2d(F.pad(h, (pad, pad, pad, pad)), m.convs[d].weight, m.convs[d].bias)
        h = _instance_norm_by_hand(h, m.norms[d].weight, m.norms[d].bias, 1e-5)
        h = _pool_by_hand(torch.clamp(h, min=0))
    assert h.shape == (3, 16, 4, 4)
    logits = h.reshape(3, -1) @ m.classifier.weight.t() + m.classifier.bias
    torch.testing.assert_close(m(x), logits, rtol=0, atol=1e-10)


def _perturb_norms(m, seed):
    """Non-trivial per-channel affine norm parameters (default init is all ones/zeros, under which a
    wrong per-group layout of shared norm parameters would go unnoticed)."""
    g = _gen(seed)
    with torch.no_grad():
        for norm in m.norms:
            norm.weight.copy_(torch.rand(norm.weight.shape, generator=g, dtype=norm.weight.dtype) + 0.5)
            norm.bias.copy_(torch.rand(norm.bias.shape, generator=g, dtype=norm.bias.dtype) - 0.5)
    return m


def _random_weights(m, k, seed):
    g = _gen(seed)
    return [w.detach().unsqueeze(0).repeat(k, *([1] * w.dim())) + 0.05 * torch.randn(k, *w.shape, generator=g,
                                                                                      dtype=w.dtype)
            for w in m.conv_weights()]


def _with_conv_weights(m, ws):
    c = copy.deepcopy(m)
    with torch.no_grad():
        for conv, w in zip(c.convs, ws):
            conv.weight.copy_(w)
    return c


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_forward_grouped_shared_weights_equals_per_group(channels, size):
    torch.manual_seed(4)
    m = _perturb_norms(ConvNet(10, channels, size, width=32).double(), 40)
    K, n = 3, 5
    x = torch.randn(K, n, channels, size, size, generator=_gen(5), dtype=torch.float64)
    ws = [w.detach().unsqueeze(0).repeat(K, *([1] * w.dim())) for w in m.conv_weights()]
    out = m.forward_grouped(x, ws)
    assert out.shape == (K, n, 10)
    for k in range(K):
        torch.testing.assert_close(out[k], m(x[k]), rtol=0, atol=1e-10)


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_forward_grouped_different_weights_and_gradients(channels, size):
    torch.manual_seed(6)
    m = _perturb_norms(ConvNet(10, channels, size, width=32).double(), 41)
    K, n = 3, 4
    x = torch.randn(K, n, channels, size, size, generator=_gen(7), dtype=torch.float64)
    y = torch.randint(0, 10, (K, n), generator=_gen(8))
    ws = [w.requires_grad_() for w in _random_weights(m, K, 9)]
    out = m.forward_grouped(x, ws)
    # per-group losses (cross-entropy, mean over the group, as matching uses)
    losses = torch.stack([F.cross_entropy(out[k], y[k]) for k in range(K)])
    grads = torch.autograd.grad(losses.sum(), ws)
    for k in range(K):
        mk = _with_conv_weights(m, [w[k].detach() for w in ws])
        ref = mk(x[k])
        torch.testing.assert_close(out[k], ref, rtol=0, atol=1e-10)
        loss_k = F.cross_entropy(ref, y[k])
        torch.testing.assert_close(losses[k], loss_k, rtol=0, atol=1e-12)
        ref_grads = torch.autograd.grad(loss_k, mk.conv_weights())
        for d in range(3):
            torch.testing.assert_close(grads[d][k], ref_grads[d], rtol=0, atol=1e-10,
                                       msg=f"group {k} layer {d}: per-group conv-weight gradient")
    # groups are really different (the test would pass vacuously if weights were equal)
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_forward_grouped_double_backward():
    # gradient matching differentiates the per-group weight gradients (create_graph) w.r.t. inputs
    torch.manual_seed(10)
    m = _perturb_norms(ConvNet(5, 1, 28, width=8).double(), 42)
    K, n = 2, 3
    x = torch.randn(K, n, 1, 28, 28, generator=_gen(11), dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (K, n), generator=_gen(12))
    ws = [w.requires_grad_() for w in _random_weights(m, K, 13)]
    out = m.forward_grouped(x, ws)
    loss = sum(F.cross_entropy(out[k], y[k]) for k in range(K))
    g = torch.autograd.grad(loss, ws, create_graph=True)
    gx = torch.autograd.grad(sum((gi ** 2).sum() for gi in g), x)[0]
    # independent: the same quantity group by group on separate model copies
    for k in range(K):
        xk = x[k].detach().clone().requires_grad_()
        mk = _with_conv_weights(m, [w[k].detach() for w in ws])
        gk = torch.autograd.grad(F.cross_entropy(mk(xk), y[k]), mk.conv_weights(), create_graph=True)
        gxk = torch.autograd.grad(sum((gi ** 2).sum() for gi in gk), xk)[0]
        torch.testing.assert_close(gx[k], gxk, rtol=1e-8, atol=1e-12)


# ----------------------------------------------------------------------------
# ResNet-10
# ----------------------------------------------------------------------------

def resnet10_param_count(channels, num_classes):
    """Stem conv3x3(32) + norm; BasicBlocks 32->32 (s1), 32->64, 64->128, 128->256 (s2, 1x1 shortcut
    + norm); convs without bias; each norm has 2*C affine parameters; linear head on 256 features."""
    total = conv_params(channels, 32, bias=False) + 2 * 32
    cin = 32
    for planes in (32, 64, 128, 256):
        total += conv_params(cin, planes, bias=False) + 2 * planes
        total += conv_params(planes, planes, bias=False) + 2 * planes
        if cin != planes:
            total += conv_params(cin, planes, k=1, bias=False) + 2 * planes
        cin = planes
    return total + 256 * num_classes + num_classes


@pytest.mark.parametrize("norm", ["batch", "instance"])
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_resnet10(norm, channels, size):
    torch.manual_seed(14)
    m = ResNet10(10, channels, size, norm=norm)
    assert sum(p.numel() for p in m.parameters()) == resnet10_param_count(channels, 10)
    norm_type = nn.BatchNorm2d if norm == "batch" else nn.GroupNorm
    norms = [mod for mod in m.modules() if isinstance(mod, (nn.BatchNorm2d, nn.GroupNorm))]
    assert len(norms) == 1 + 4 * 2 + 3 and all(isinstance(mod, norm_type) for mod in norms)
    if norm == "instance":
        assert all(mod.num_groups == mod.num_channels for mod in norms)
    assert len(m.blocks) == 4
    widths = [b.conv2.out_channels for b in m.blocks]
    assert widths == [32, 64, 128, 256]
    assert [b.conv1.stride for b in m.blocks] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    assert m.blocks[0].shortcut is None and all(b.shortcut is not None for b in m.blocks[1:])
    x = torch.randn(4, channels, size, size, generator=_gen(15))
    feats = m.features(x)
    assert feats.shape == (4, 256) and m.num_features == 256
    out = m(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    torch.testing.assert_close(out, m.classifier(feats), rtol=0, atol=0)
    m.eval()
    assert m(x).shape == (4, 10)


def test_resnet10_features_are_pooled_block_output():
    torch.manual_seed(16)
    m = ResNet10(3, 3, 32, norm="instance").double()
    x = torch.randn(2, 3, 32, 32, generator=_gen(17), dtype=torch.float64)
    h = m.blocks(m.stem(x))
    assert h.shape == (2, 256, 4, 4)
    torch.testing.assert_close(m.features(x), h.mean(dim=(2, 3)), rtol=0, atol=1e-12)
    # residual identity in the first block: out = relu(bn2(conv2(relu(bn1(conv1 x)))) + x)
    b = m.blocks[0]
    s = m.stem(x)
    exp = torch.relu(b.bn2(b.conv2(torch.relu(b.bn1(b.conv1(s))))) + s)
    torch.testing.assert_close(b(s), exp, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------
# ResNetAP and ResNet18 (IDC's ImageNet setting)
# ----------------------------------------------------------------------------
# Written from IDC's models/resnet_ap.py and models/resnet.py (dataset 'imagenet'): stage widths
# 64/128/256/512 (ResNetAP: int(64 * width) times 1, 2, 4, 8), one BasicBlock per stage at depth 10,
# two at 18; the intro block by the input side: small (0 < size <= 64) conv3x3, mid (<= 128) conv3x3 +
# pool, large (otherwise) conv7x7 + pool. ResNetAP: all convs stride 1, pools AvgPool 2 (mid) / 4
# (large), AvgPool(2) after a downsampling block's first ReLU and after its 1x1 shortcut conv. ResNet:
# conv7x7 stride 2 (large), MaxPool(3, 2, 1) (mid, large), strided first conv and 1x1 shortcut conv.

SIZES = (64, 128, 224)
INTRO = {64: "small", 128: "mid", 224: "large"}


def intro_of(size):
    return "small" if 0 < size <= 64 else "mid" if size <= 128 else "large"


def imagenet_resnet_param_count(channels, num_classes, size, blocks, base=64):
    """Stem conv (7x7 large, else 3x3) + norm; per stage (widths base * 1, 2, 4, 8) BasicBlocks of two
    3x3 convs and two norms, the first block of stages 2-4 with a 1x1 shortcut conv and its norm; no
    conv biases; a norm has 2 * C affine parameters; linear head on 8 * base features."""
    k = 7 if intro_of(size) == "large" else 3
    total = conv_params(channels, base, k=k, bias=False) + 2 * base
    cin = base
    for i, nb in enumerate(blocks):
        planes = base * 2 ** i
        for j in range(nb):
            total += conv_params(cin, planes, bias=False) + conv_params(planes, planes, bias=False) + 4 * planes
            if cin != planes:
                total += conv_params(cin, planes, k=1, bias=False) + 2 * planes
            cin = planes
    return total + 8 * base * num_classes + num_classes


def _map_side(size, ap):
    """The last feature map's side, by hand: small keeps the side, mid halves it (pool 2 / maxpool s2),
    large quarters it (ResNetAP: AvgPool 4; ResNet: stride-2 conv then stride-2 maxpool); three
    stride-2 stages halve it three times."""
    side = {"small": size, "mid": size // 2, "large": size // 4}[intro_of(size)]
    return side // 8


MODELS = {  # name: (constructor, blocks per stage, ResNetAP?, norm)
    "ap10_in": (lambda nc, c, s, **kw: ResNetAP(nc, c, s, norm="instance", **kw), (1, 1, 1, 1), True, "instance"),
    "ap10_bn": (lambda nc, c, s, **kw: ResNetAP(nc, c, s, norm="batch", **kw), (1, 1, 1, 1), True, "batch"),
    "rn18_bn": (lambda nc, c, s, **kw: ResNet18(nc, c, s, norm="batch", **kw), (2, 2, 2, 2), False, "batch"),
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", list(MODELS))
def test_imagenet_resnet_structure_and_shapes(name, size):
    build, blocks, ap, norm = MODELS[name]
    channels = 1 if (name == "ap10_in" and size == 64) else 3
    torch.manual_seed(20)
    m = build(10, channels, size)
    assert sum(p.numel() for p in m.parameters()) == imagenet_resnet_param_count(channels, 10, size, blocks)
    assert m.intro == INTRO[size]
    stem = m.stem.conv
    large = INTRO[size] == "large"
    assert stem.kernel_size == ((7, 7) if large else (3, 3)) and stem.padding == ((3, 3) if large else (1, 1))
    assert stem.stride == ((1, 1) if (ap or not large) else (2, 2)) and stem.in_channels == channels
    norm_type = nn.GroupNorm if norm == "instance" else nn.BatchNorm2d
    norms = [mod for mod in m.modules() if isinstance(mod, (nn.BatchNorm2d, nn.GroupNorm))]
    assert len(norms) == 1 + 2 * sum(blocks) + 3 and all(isinstance(mod, norm_type) for mod in norms)
    if norm == "instance":
        assert all(mod.num_groups == mod.num_channels for mod in norms)
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert all(c.bias is None for c in convs) and len(convs) == 1 + 2 * sum(blocks) + 3
    for i, stage in enumerate(m.stages):
        assert len(stage) == blocks[i]
        for j, b in enumerate(stage):
            down = i > 0 and j == 0
            assert b.conv2.out_channels == 64 * 2 ** i
            assert b.conv1.stride == ((2, 2) if (down and not ap) else (1, 1))
            assert (b.shortcut is not None) == down
    # conv_weights: every conv weight, in parameters() order (what IDC's matchloss keeps by default)
    assert [id(w) for w in m.conv_weights()] == [id(p) for p in m.parameters() if p.dim() == 4]
    x = torch.randn(2, channels, size, size, generator=_gen(21))
    side = _map_side(size, ap)
    assert side == (8 if size in (64, 128) else 7)
    assert m.feature_map(x).shape == (2, 512, side, side)
    feats = m.features(x)
    assert feats.shape == (2, 512) and m.num_features == 512
    out = m(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    torch.testing.assert_close(out, m.classifier(feats), rtol=0, atol=0)


def test_resnet_ap_width_and_depth():
    m = ResNetAP(5, 3, 64, width=0.5)
    assert m.num_features == 256 and m.stem.conv.out_channels == 32
    assert sum(p.numel() for p in m.parameters()) == imagenet_resnet_param_count(3, 5, 64, (1, 1, 1, 1), base=32)
    m = ResNetAP(5, 3, 64, depth=18)
    assert sum(p.numel() for p in m.parameters()) == imagenet_resnet_param_count(3, 5, 64, (2, 2, 2, 2))
    for bad in (50, 12):
        with pytest.raises(ValueError):
            ResNetAP(5, 3, 64, depth=bad)
    with pytest.raises(ValueError):
        ResNet18(5, 3, 64, norm="layer")


def _perturb_all_norms(m, seed):
    """Non-trivial affine parameters (and running statistics) for every norm layer."""
    g = _gen(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.GroupNorm, nn.BatchNorm2d)):
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=g, dtype=mod.weight.dtype) + 0.5)
                mod.bias.copy_(torch.rand(mod.bias.shape, generator=g, dtype=mod.bias.dtype) - 0.5)
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g, dtype=mod.running_mean.dtype))
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g, dtype=mod.running_var.dtype) + 0.5)
    return m


def _ref_norm(h, sd, prefix, norm, training, eps=1e-5):
    w, b = sd[prefix + "weight"], sd[prefix + "bias"]
    if norm == "instance":
        return _instance_norm_by_hand(h, w, b, eps)
    if training:  # batch statistics, biased variance
        mean = h.mean(dim=(0, 2, 3), keepdim=True)
        var = ((h - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    else:
        mean, var = sd[prefix + "running_mean"].view(1, -1, 1, 1), sd[prefix + "running_var"].view(1, -1, 1, 1)
    return (h - mean) / torch.sqrt(var + eps) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)


def _ref_imagenet_resnet(sd, x, *, ap, blocks, norm, training, intro):
    """Features and logits written from IDC's description with the model's parameters (state_dict sd);
    `intro` is the model's (chosen by the size it was built for, whatever side x has)."""
    large = intro == "large"
    h = F.conv2d(x, sd["stem.conv.weight"], stride=2 if (large and not ap) else 1, padding=3 if large else 1)
    h = torch.clamp(_ref_norm(h, sd, "stem.norm.", norm, training), min=0)
    if intro != "small":
        h = _pool_by_hand(h, 4 if large else 2) if ap else F.max_pool2d(h, 3, 2, 1)
    for i, nb in enumerate(blocks):
        for j in range(nb):
            p = f"stages.{i}.{j}."
            down = i > 0 and j == 0
            s = 2 if (down and not ap) else 1
            out = F.conv2d(h, sd[p + "conv1.weight"], stride=s, padding=1)
            out = torch.clamp(_ref_norm(out, sd, p + "bn1.", norm, training), min=0)
            if ap and down:
                out = _pool_by_hand(out)
            out = _ref_norm(F.conv2d(out, sd[p + "conv2.weight"], padding=1), sd, p + "bn2.", norm, training)
            assert (p + "shortcut.conv.weight" in sd) == down
            if down:
                res = F.conv2d(h, sd[p + "shortcut.conv.weight"], stride=s)
                res = _pool_by_hand(res) if ap else res
                res = _ref_norm(res, sd, p + "shortcut.norm.", norm, training)
            else:
                res = h
            h = torch.clamp(out + res, min=0)
    feats = h.mean(dim=(2, 3))
    return feats, feats @ sd["classifier.weight"].t() + sd["classifier.bias"]


# (model, training mode, size built for, input side): the instance-norm ResNetAP-10 at its full sizes;
# the batch-norm ones on inputs of half the side they were built for (the same layers at a quarter of
# the cost on 2 cores; 112 px through the large intro also has odd maps: 7 -> 3 by AvgPool 2, 7 -> 4 by
# stride-2 convs)
REF_CASES = ([("ap10_in", True, s, s) for s in SIZES] + [("ap10_bn", True, s, s // 2) for s in SIZES]
             + [("rn18_bn", True, s, s // 2) for s in SIZES] + [("ap10_bn", False, 128, 64), ("rn18_bn", False, 224, 112)])


@pytest.mark.parametrize("name,training,size,side", REF_CASES)
def test_imagenet_resnet_matches_functional_forward(name, training, size, side):
    build, blocks, ap, norm = MODELS[name]
    torch.manual_seed(22)
    m = _perturb_all_norms(build(6, 3, size).double(), 23)
    m.train(training)
    x = torch.randn(2, 3, side, side, generator=_gen(24), dtype=torch.float64)
    sd = {k: v.clone() for k, v in m.state_dict().items()}  # before the pass updates running statistics
    feats, logits = _ref_imagenet_resnet(sd, x, ap=ap, blocks=blocks, norm=norm, training=training,
                                         intro=intro_of(size))
    torch.testing.assert_close(m.features(x), feats, rtol=0, atol=1e-10)
    torch.testing.assert_close(m(x), logits, rtol=0, atol=1e-10)


# -- features_grouped ---------------------------------------------------------------------------

FEED = {64: 32, 128: 48, 224: 64}  # input side for a network built for each size (its intro block)


def _grouped_case(name, size, seed, width=0.25, G=3, n=2, momentum=0.1):
    """A small float64 network built for `size` (its intro block) with perturbed norms, inputs
    [G, n, 3, side, side] with the smaller side FEED[size] (grouping does not depend on the side, the cost
    does), and per-group conv weights [G, ...] (different per group) as leaves requiring grad."""
    build, blocks, ap, norm = MODELS[name]
    torch.manual_seed(seed)
    m = build(5, 3, size, width=width) if ap else build(5, 3, size)
    m = _perturb_all_norms(m.double(), seed + 1)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.momentum = momentum
    x = torch.randn(G, n, 3, FEED[size], FEED[size], generator=_gen(seed + 2), dtype=torch.float64)
    y = torch.randint(0, 5, (G, n), generator=_gen(seed + 3))
    ws = [w.requires_grad_() for w in _random_weights(m, G, seed + 4)]
    return m, x, y, ws


def _set_conv_weights(m, ws):
    with torch.no_grad():
        for p, w in zip(m.conv_weights(), ws):
            p.copy_(w)


def _check_grouped_against_separate(m, x, y, ws, training):
    """features_grouped (and its per-group conv-weight gradients, and for batch norm the running
    statistics it leaves) against G separate passes of one copy of the network, group 0 first, each
    with that group's conv weights."""
    G = x.shape[0]
    ref = copy.deepcopy(m)
    m.train(training)
    ref.train(training)
    feats = m.features_grouped(x, ws)
    assert feats.shape == (G, x.shape[1], m.num_features)
    logits = m.classifier(feats)
    losses = torch.stack([F.cross_entropy(logits[g], y[g]) for g in range(G)])
    grads = torch.autograd.grad(losses.sum(), ws)
    for g in range(G):
        _set_conv_weights(ref, [w[g].detach() for w in ws])
        f_g = ref.features(x[g])
        torch.testing.assert_close(feats[g], f_g, rtol=0, atol=1e-10, msg=f"group {g}: features")
        loss_g = F.cross_entropy(ref.classifier(f_g), y[g])
        torch.testing.assert_close(losses[g], loss_g, rtol=0, atol=1e-12)
        ref_grads = torch.autograd.grad(loss_g, ref.conv_weights())
        for i, (a, b) in enumerate(zip(grads, ref_grads)):
            torch.testing.assert_close(a[g], b, rtol=0, atol=1e-10, msg=f"group {g} conv {i}: gradient")
    assert (feats[0] - feats[1]).abs().max() > 1e-3, "groups must differ (else the test is vacuous)"
    for (name, a), b in zip(m.named_buffers(), ref.buffers()):  # BN running statistics and counts
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=name)


@pytest.mark.parametrize("size", SIZES)
def test_resnet_ap_features_grouped_instance(size):
    m, x, y, ws = _grouped_case("ap10_in", size, 30)
    _check_grouped_against_separate(m, x, y, ws, training=True)
    with torch.no_grad():
        torch.testing.assert_close(m.forward_grouped(x, ws), m.classifier(m.features_grouped(x, ws)), rtol=0, atol=0)


@pytest.mark.parametrize("training,momentum", [(True, 0.1), (True, None), (False, 0.1)])
def test_resnet_ap_features_grouped_batch_norm(training, momentum):
    m, x, y, ws = _grouped_case("ap10_bn", 128, 31, momentum=momentum)
    _check_grouped_against_separate(m, x, y, ws, training=training)


@pytest.mark.parametrize("size", SIZES)
def test_resnet18_features_grouped(size):
    m, x, y, ws = _grouped_case("rn18_bn", size, 32, G=2)
    _check_grouped_against_separate(m, x, y, ws, training=True)


def test_resnet_ap_features_grouped_double_backward():
    # gradient matching differentiates the per-group weight gradients (create_graph) w.r.t. inputs
    m, x, y, ws = _grouped_case("ap10_in", 64, 33, width=0.125, G=2)
    x = x.requires_grad_()
    out = m.forward_grouped(x, ws)
    loss = sum(F.cross_entropy(out[g], y[g]) for g in range(2))
    gr = torch.autograd.grad(loss, ws, create_graph=True)
    gx = torch.autograd.grad(sum((gi ** 2).sum() for gi in gr), x)[0]
    for g in range(2):
        xg = x[g].detach().clone().requires_grad_()
        mg = copy.deepcopy(m)
        _set_conv_weights(mg, [w[g].detach() for w in ws])
        gg = torch.autograd.grad(F.cross_entropy(mg(xg), y[g]), mg.conv_weights(), create_graph=True)
        gxg = torch.autograd.grad(sum((gi ** 2).sum() for gi in gg), xg)[0]
        torch.testing.assert_close(gx[g], gxg, rtol=1e-8, atol=1e-12)


def test_features_grouped_rejects_wrong_weights():
    m = ResNetAP(3, 3, 64, width=0.125)
    ws = [w.detach().unsqueeze(0) for w in m.conv_weights()]
    with pytest.raises(ValueError, match="conv weights"):
        m.features_grouped(torch.randn(1, 1, 3, 64, 64), ws[:-1])


# -- against IDC's own modules ------------------------------------------------------------------

@pytest.fixture(scope="module")
def idc_src():
    return require_idc_src()


@pytest.fixture(scope="module")
def idc_models(idc_src):
    """IDC's models/resnet_ap.py and models/resnet.py, executed as they are: they import only torch and
    math (no torchvision), so no stub is needed."""
    mods = _idc_modules(idc_src, ("models/resnet_ap.py", "models/resnet.py"))
    return types.SimpleNamespace(RNAP=mods["models/resnet_ap.py"], RN=mods["models/resnet.py"])


def _idc_modules(idc_src, rels):
    """IDC's model files, each executed as is into a module of its own."""
    root = Path(idc_src)
    mods = {}
    for rel in rels:
        mod = types.ModuleType("idc_" + rel.replace("/", "_")[:-3])
        exec(compile(idc_source(root, rel), f"{root}/{rel}", "exec"), mod.__dict__)
        mods[rel] = mod
    return mods


def _idc_name(key):
    """IDC's state_dict key in ours: layer0.conv1/bn1 -> stem.conv/norm, layer{i} -> stages.{i-1},
    downsample.0 -> shortcut.conv, downsample.{1,2} (its norm; ResNetAP has an AvgPool at 1) ->
    shortcut.norm, fc -> classifier."""
    key = key.replace("layer0.conv1.", "stem.conv.").replace("layer0.bn1.", "stem.norm.")
    key = re.sub(r"^layer(\d)\.", lambda mt: f"stages.{int(mt.group(1)) - 1}.", key)
    key = key.replace("downsample.0.", "shortcut.conv.")
    key = re.sub(r"downsample\.[12]\.", "shortcut.norm.", key)
    return re.sub(r"^fc\.", "classifier.", key)


IDC_CASES = [  # (ours, IDC's constructor, label)
    (lambda s: ResNetAP(7, 3, s, norm="instance"),
     lambda idc, s: idc.RNAP.ResNetAP("imagenet", 10, 7, width=1.0, norm_type="instance", size=s, nch=3), "ap10_in"),
    (lambda s: ResNetAP(7, 3, s, norm="batch"),
     lambda idc, s: idc.RNAP.ResNetAP("imagenet", 10, 7, width=1.0, norm_type="batch", size=s, nch=3), "ap10_bn"),
    (lambda s: ResNet18(7, 3, s, norm="batch"),
     lambda idc, s: idc.RN.ResNet("imagenet", 18, 7, norm_type="batch", size=s, nch=3), "rn18_bn"),
]


def _compare_with_idc(ours, theirs, size, channels=3):
    sd_idc = {_idc_name(k): v for k, v in theirs.state_dict().items()}
    sd = ours.state_dict()
    assert sd_idc.keys() == sd.keys(), sorted(set(sd_idc) ^ set(sd))
    for k, v in sd.items():
        assert torch.equal(v, sd_idc[k]), f"{k}: not IDC's value under the same seed"
    # what IDC's matchloss compares by default (--bias False, --fc False): gradients of all parameters,
    # minus the 1-dim and the 2-dim ones
    idc_matched = [p for p in theirs.parameters() if p.dim() not in (1, 2)]
    assert len(idc_matched) == len(ours.conv_weights())
    assert all(torch.equal(a, b) for a, b in zip(ours.conv_weights(), idc_matched))
    ours, theirs = ours.double(), theirs.double()
    x = torch.randn(3, channels, size, size, generator=_gen(41), dtype=torch.float64)
    for training in (True, False):
        ours.train(training)
        theirs.train(training)
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-10)
    sd_idc = {_idc_name(k): v for k, v in theirs.state_dict().items()}
    for k, v in ours.state_dict().items():  # running statistics after the training-mode pass
        torch.testing.assert_close(v, sd_idc[k], rtol=0, atol=1e-12, msg=k)


@pytest.mark.idc
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("ours,theirs,label", IDC_CASES, ids=[c[2] for c in IDC_CASES])
def test_imagenet_resnet_equals_idc(idc_models, ours, theirs, label, size):
    torch.manual_seed(40)
    a = theirs(idc_models, size)
    torch.manual_seed(40)
    b = ours(size)
    assert a.net_size == b.intro == INTRO[size]
    _compare_with_idc(b, a, size)


@pytest.mark.idc
def test_resnet_ap_other_widths_depths_equal_idc(idc_models):
    for kw in (dict(width=0.5, depth=10), dict(width=1.0, depth=18)):
        torch.manual_seed(42)
        a = idc_models.RNAP.ResNetAP("imagenet", kw["depth"], 4, width=kw["width"], norm_type="instance", size=64,
                                     nch=1)
        torch.manual_seed(42)
        b = ResNetAP(4, 1, 64, norm="instance", **kw)
        _compare_with_idc(b, a, 64, channels=1)


# ----------------------------------------------------------------------------
# convnet_depth and make_model
# ----------------------------------------------------------------------------

def test_convnet_depth():
    assert [convnet_depth(s) for s in (28, 32, 33, 64, 65, 128, 129, 224, 256)] == [3, 3, 4, 4, 5, 5, 6, 6, 6]


@pytest.mark.parametrize("channels,size,depth,side", [(1, 28, 3, 4), (3, 32, 3, 4), (3, 64, 4, 4), (3, 128, 5, 4),
                                                      (3, 224, 6, 3)])
def test_make_model_convnet_depth_by_size(channels, size, depth, side):
    m = make_model("convnet", 10, channels, size)
    assert isinstance(m, ConvNet) and m.depth == len(m.convs) == depth
    assert m.convs[0].padding == ((3, 3) if channels == 1 else (1, 1))
    assert m.feature_shape == (128, side, side) and m.num_features == 128 * side * side
    x = torch.randn(2, channels, size, size, generator=_gen(50))
    assert m.feature_map(x).shape == (2, 128, side, side) and m(x).shape == (2, 10)
    assert ConvNet(10, channels, size).depth == 3, "ConvNet keeps its explicit depth (default 3)"


def test_make_model():
    assert set(ARCHS) == {"convnet", "convnet_bn", "resnet10_bn", "resnet10_in", "resnet_ap10", "resnet_ap10_bn",
                          "resnet18_bn", "densenet"}
    m = make_model("convnet", 10, 1, 28)
    assert isinstance(m, ConvNet) and m.num_features == 2048 and m.convs[0].padding == (3, 3)
    m = make_model("convnet", 100, 3, 32, width=64)
    assert m.num_features == 64 * 16 and m.classifier.out_features == 100
    m = make_model("resnet10_bn", 10, 3, 32)
    assert isinstance(m, ResNet10) and isinstance(m.stem[1], nn.BatchNorm2d)
    m = make_model("resnet10_in", 10, 1, 28)
    assert isinstance(m, ResNet10) and isinstance(m.stem[1], nn.GroupNorm)
    m = make_model("resnet_ap10", 10, 3, 128)
    assert isinstance(m, ResNetAP) and m.depth == 10 and m.intro == "mid" and isinstance(m.stem.norm, nn.GroupNorm)
    assert m.num_features == 512 and m.classifier.out_features == 10
    m = make_model("resnet_ap10_bn", 10, 3, 224)
    assert isinstance(m, ResNetAP) and m.intro == "large" and isinstance(m.stem.norm, nn.BatchNorm2d)
    m = make_model("resnet18_bn", 100, 3, 64)
    assert isinstance(m, ResNet18) and m.depth == 18 and m.intro == "small" and isinstance(m.stem.norm, nn.BatchNorm2d)
    assert m.classifier.out_features == 100
    for bad in ("resnet18", "ConvNet", "", "resnet10", "resnet_ap", "resnet_ap18"):
        with pytest.raises(ValueError):
            make_model(bad, 10, 3, 32)
    with pytest.raises(ValueError):
        ResNet10(10, 3, 32, norm="layer")


# ----------------------------------------------------------------------------
# ConvNet-BN and IDC's DenseNet for CIFAR (evaluation networks)
# ----------------------------------------------------------------------------

def densenet_param_count(channels, num_classes, blocks=(6, 12, 24, 16), growth=12):
    """By hand: a bottleneck layer on c channels has BN(c) 2c, conv1x1 c*4g, BN(4g) 8g, conv3x3 4g*g*9; a
    transition from c to floor(c/2) has BN(c) 2c and conv c*floor(c/2); the head BN(c) 2c and linear (c+1)*K."""
    c = 2 * growth
    total = channels * c * 9
    for i, n in enumerate(blocks):
        for _ in range(n):
            total += 2 * c + c * 4 * growth + 8 * growth + 4 * growth * growth * 9
            c += growth
        if i < len(blocks) - 1:
            total += 2 * c + c * (c // 2)
            c //= 2
    return total + 2 * c + (c + 1) * num_classes, c


def test_densenet_structure():
    m = make_model("densenet", 10, 3, 32)
    count, width = densenet_param_count(3, 10)
    assert width == 384 and m.num_features == 384  # 24 + 6*12 = 96 -> 48, + 12*12 = 192 -> 96, + 24*12 = 384 -> 192, + 16*12
    assert sum(p.numel() for p in m.parameters()) == count == 1_000_618
    assert [len(s) for s in m.stages if isinstance(s, nn.Sequential)] == [6, 12, 24, 16]
    x = torch.randn(2, 3, 32, 32, generator=_gen(60))
    h = m.stages(m.conv1(x))
    assert h.shape == (2, 384, 4, 4)  # three transitions halve 32 px to 4
    torch.testing.assert_close(m(x), m.classifier(F.relu(m.bn(h)).mean((2, 3))), rtol=1e-5, atol=1e-6)
    assert make_model("densenet", 100, 1, 28)(torch.randn(2, 1, 28, 28)).shape == (2, 100)


def test_convnet_bn():
    m = make_model("convnet_bn", 10, 3, 32)
    assert all(isinstance(n, nn.BatchNorm2d) for n in m.norms) and m.num_features == 2048
    ref = make_model("convnet", 10, 3, 32)
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in ref.parameters())
    x = torch.randn(4, 3, 32, 32, generator=_gen(61))
    m.load_state_dict({k: v for k, v in ref.state_dict().items()}, strict=False)
    m.eval()  # running statistics 0 and 1: the norm is its affine map
    h = x
    for conv, norm in zip(ref.convs, ref.norms):
        h = F.avg_pool2d(F.relu((conv(h) - 0) / (1 + 1e-5) ** 0.5 * norm.weight.view(1, -1, 1, 1)
                                + norm.bias.view(1, -1, 1, 1)), 2)
    torch.testing.assert_close(m(x), ref.classifier(h.flatten(1)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="instance norm's"):
        m.features_grouped(x.view(2, 2, 3, 32, 32), [c.weight.unsqueeze(0).repeat(2, 1, 1, 1, 1) for c in m.convs])


@pytest.fixture(scope="module")
def idc_cifar_models(idc_src):
    """IDC's models/densenet_cifar.py and models/convnet.py, executed as they are (torch and math only)."""
    mods = _idc_modules(idc_src, ("models/densenet_cifar.py", "models/convnet.py"))
    return types.SimpleNamespace(DN=mods["models/densenet_cifar.py"], CN=mods["models/convnet.py"])


@pytest.mark.idc
def test_densenet_and_convnet_bn_equal_idc(idc_cifar_models):
    """Under the same seed: every parameter IDC's densenet_cifar / ConvNet(net_norm='batch') draws, and the same
    output in training and evaluation mode (float64)."""
    x = torch.randn(3, 3, 32, 32, generator=_gen(62), dtype=torch.float64)
    torch.manual_seed(43)
    theirs = idc_cifar_models.DN.densenet_cifar(10)
    torch.manual_seed(43)
    ours = make_model("densenet", 10, 3, 32)
    a, b = list(theirs.parameters()), list(ours.parameters())
    assert [p.shape for p in a] == [p.shape for p in b] and all(torch.equal(p, q) for p, q in zip(a, b))
    torch.manual_seed(44)
    theirs_cn = idc_cifar_models.CN.ConvNet(10, net_norm="batch", channel=3)
    torch.manual_seed(44)
    ours_cn = make_model("convnet_bn", 10, 3, 32)
    a, b = list(theirs_cn.parameters()), list(ours_cn.parameters())
    assert [p.shape for p in a] == [p.shape for p in b] and all(torch.equal(p, q) for p, q in zip(a, b))
    for (t, o) in ((theirs, ours), (theirs_cn, ours_cn)):
        t.double(), o.double()
        o.load_state_dict(dict(zip(o.state_dict().keys(), t.state_dict().values())))
        for training in (True, False):
            t.train(training)
            o.train(training)
            torch.testing.assert_close(o(x), t(x), rtol=0, atol=1e-10)

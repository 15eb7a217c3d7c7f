"""Tests for udd_fast.models: ConvNet-3 (structure, features/classifier split, an independent
functional re-implementation, forward_grouped with per-group conv weights and their gradients)
and ResNet-10 (structure, parameter count from the method's stated widths, shapes)."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from udd_fast.models import ARCHS, ConvNet, ResNet10, make_model


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


def _pool_by_hand(h):
    n, c, H, W = h.shape
    return h[:, :, :H // 2 * 2, :W // 2 * 2].reshape(n, c, H // 2, 2, W // 2, 2).mean(dim=(3, 5))


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
# make_model
# ----------------------------------------------------------------------------

def test_make_model():
    assert set(ARCHS) == {"convnet", "resnet10_bn", "resnet10_in"}
    m = make_model("convnet", 10, 1, 28)
    assert isinstance(m, ConvNet) and m.num_features == 2048 and m.convs[0].padding == (3, 3)
    m = make_model("convnet", 100, 3, 32, width=64)
    assert m.num_features == 64 * 16 and m.classifier.out_features == 100
    m = make_model("resnet10_bn", 10, 3, 32)
    assert isinstance(m, ResNet10) and isinstance(m.stem[1], nn.BatchNorm2d)
    m = make_model("resnet10_in", 10, 1, 28)
    assert isinstance(m, ResNet10) and isinstance(m.stem[1], nn.GroupNorm)
    for bad in ("resnet18", "ConvNet", "", "resnet10"):
        with pytest.raises(ValueError):
            make_model(bad, 10, 3, 32)
    with pytest.raises(ValueError):
        ResNet10(10, 3, 32, norm="layer")

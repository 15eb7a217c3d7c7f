"""Networks: IDC's ConvNet-3 (matching, proxy and evaluation) and ResNet-10 (cross-architecture).

Every model exposes `features(x)` (the penultimate vector) and `classifier` (the linear head), so
`model(x) == model.classifier(model.features(x))`.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvNet(nn.Module):
    """[conv3x3(width) -> GroupNorm(width, width) -> ReLU -> AvgPool2] x depth -> Linear.

    As IDC: a 1-channel input gets padding 3 in the first conv (so 28 px behaves as 32 px and
    the final map is 4 x 4). PyTorch default initialization.
    """

    def __init__(self, num_classes, channels=3, size=32, width=128, depth=3):
        super().__init__()
        self.depth = depth
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        side = size
        cin = channels
        for d in range(depth):
            pad = 3 if channels == 1 and d == 0 else 1
            self.convs.append(nn.Conv2d(cin, width, kernel_size=3, padding=pad))
            self.norms.append(nn.GroupNorm(width, width, affine=True))
            side = (side + 2 * pad - 2) // 2
            cin = width
        self.feature_shape = (width, side, side)
        self.num_features = width * side * side
        self.classifier = nn.Linear(self.num_features, num_classes)

    def feature_map(self, x):
        for conv, norm in zip(self.convs, self.norms):
            x = F.avg_pool2d(F.relu(norm(conv(x))), 2)
        return x

    def features(self, x):
        return self.feature_map(x).flatten(1)

    def forward(self, x):
        return self.classifier(self.features(x))

    def forward_grouped(self, x, conv_weights):
        """Logits [K, n, classes] for K groups of n inputs x [K, n, C, H, W], group k run with its own
        conv weights conv_weights[d][k] (every other parameter shared). One grouped convolution per
        layer, so per-group weight gradients come out of one backward pass."""
        return self.classifier(self.features_grouped(x, conv_weights))

    def features_grouped(self, x, conv_weights):
        """Features [K, n, D] of forward_grouped."""
        k = x.shape[0]
        return self._features_per_group(x, conv_weights, [c.bias.repeat(k) for c in self.convs],
                                        [m.weight.repeat(k) for m in self.norms], [m.bias.repeat(k) for m in self.norms])

    def forward_stacked(self, x, stacked):
        """Logits [K, n, classes] of K networks of this shape at once, network k on x[k] (x [K, n, C, H, W])
        with parameters stacked[i][k], stacked listing [K, ...] tensors in the order of parameters().
        The same grouped convolutions as forward_grouped, every parameter per group."""
        d = self.depth
        weights, biases = stacked[0:2 * d:2], stacked[1:2 * d:2]
        norm_w, norm_b = stacked[2 * d:4 * d:2], stacked[2 * d + 1:4 * d:2]
        feats = self._features_per_group(x, weights, [b.reshape(-1) for b in biases],
                                         [w.reshape(-1) for w in norm_w], [b.reshape(-1) for b in norm_b])
        fc_w, fc_b = stacked[4 * d:]
        return torch.baddbmm(fc_b.unsqueeze(1), feats, fc_w.transpose(1, 2))

    def _features_per_group(self, x, weights, biases, norm_w, norm_b):
        """Features [K, n, D]: group k's inputs through conv weights weights[d][k] (biases and norm
        parameters flat, [K * width]), as one grouped convolution per layer."""
        k, n = x.shape[:2]
        h = x.transpose(0, 1).reshape(n, k * x.shape[2], *x.shape[3:])
        for conv, norm, w, b, nw, nb in zip(self.convs, self.norms, weights, biases, norm_w, norm_b):
            h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), b, padding=conv.padding, groups=k)
            h = F.group_norm(h, h.shape[1], nw, nb, norm.eps)
            h = F.avg_pool2d(F.relu(h), 2)
        return h.reshape(n, k, -1).transpose(0, 1)

    def conv_weights(self):
        """The parameters gradient matching compares (IDC: conv weights only)."""
        return [conv.weight for conv in self.convs]


def _norm(planes, norm):
    if norm == "batch":
        return nn.BatchNorm2d(planes)
    if norm == "instance":
        return nn.GroupNorm(planes, planes)
    raise ValueError(f"unknown norm {norm!r} (batch or instance)")


class BasicBlock(nn.Module):
    def __init__(self, cin, planes, norm, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = _norm(planes, norm)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _norm(planes, norm)
        self.shortcut = None
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), _norm(planes, norm))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class ResNet10(nn.Module):
    """IDC's CIFAR-style ResNet-10: 3x3 stem (32), one BasicBlock per stage, widths 32/64/128/256,
    average pool to 1x1, linear head; batch or instance norm; He-normal conv init as IDC."""

    def __init__(self, num_classes, channels=3, size=32, norm="batch"):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, 32, 3, 1, 1, bias=False), _norm(32, norm), nn.ReLU())
        blocks, cin = [], 32
        for planes, stride in ((32, 1), (64, 2), (128, 2), (256, 2)):
            blocks.append(BasicBlock(cin, planes, norm, stride))
            cin = planes
        self.blocks = nn.Sequential(*blocks)
        self.num_features = 256
        self.classifier = nn.Linear(256, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x):
        return F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1)

    def forward(self, x):
        return self.classifier(self.features(x))


ARCHS = ("convnet", "resnet10_bn", "resnet10_in")


def make_model(arch, num_classes, channels, size, width=128):
    if arch == "convnet":
        return ConvNet(num_classes, channels, size, width=width)
    if arch == "resnet10_bn":
        return ResNet10(num_classes, channels, size, norm="batch")
    if arch == "resnet10_in":
        return ResNet10(num_classes, channels, size, norm="instance")
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")

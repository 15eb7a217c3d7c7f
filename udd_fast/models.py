"""Networks, as IDC (snu-mllab/Efficient-Dataset-Condensation) builds them.

- `ConvNet`: IDC's ConvNet (matching, proxy and evaluation), depth 3 by default; `convnet_depth(size)`
  gives the depth DC/DM/MTT use at larger resolutions (`make_model("convnet", ...)` applies it).
- `ResNet10`: IDC's CIFAR-style ResNet-10 (cross-architecture evaluation at 28/32 px).
- `ResNetAP`: IDC's ResNetAP in its ImageNet setting (models/resnet_ap.py, dataset 'imagenet'): widths
  64/128/256/512, downsampling by average pooling, instance norm (the network IDC condenses and
  evaluates ImageNet subsets with, depth 10) or batch norm.
- `DenseNet`: IDC's DenseNet for CIFAR (DenseNet-121's blocks, growth rate 12; an evaluation network).
- `ResNet18`: IDC's ResNet in its ImageNet setting (models/resnet.py, dataset 'imagenet', depth 18):
  strided convolutions and max pooling, batch norm (an evaluation network).

Every model exposes `features(x)` (the penultimate vector), `classifier` (the linear head), so
`model(x) == model.classifier(model.features(x))`, and `num_features`. ConvNet, ResNetAP and ResNet18
also expose `conv_weights()` (what gradient matching compares) and `features_grouped(x, weights)` (G
groups of inputs, each through its own conv weights, as one grouped convolution per layer).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _norm(planes, norm):
    if norm == "batch":
        return nn.BatchNorm2d(planes)
    if norm == "instance":
        return nn.GroupNorm(planes, planes)
    raise ValueError(f"unknown norm {norm!r} (batch or instance)")


class ConvNet(nn.Module):
    """[conv3x3(width) -> norm -> ReLU -> AvgPool2] x depth -> Linear; the norm IDC's 'instance' (GroupNorm(width,
    width), what matching uses) or 'batch' (BatchNorm2d: ConvNet-BN, an evaluation network).

    As IDC: a 1-channel input gets padding 3 in the first conv (so 28 px behaves as 32 px and
    the final map is 4 x 4). PyTorch default initialization. The grouped forms (features_grouped,
    forward_stacked) are instance norm's.
    """

    def __init__(self, num_classes, channels=3, size=32, width=128, depth=3, norm="instance"):
        super().__init__()
        self.depth, self.norm = depth, norm
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        side = size
        cin = channels
        for d in range(depth):
            pad = 3 if channels == 1 and d == 0 else 1
            self.convs.append(nn.Conv2d(cin, width, kernel_size=3, padding=pad))
            self.norms.append(_norm(width, norm))
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
        if self.norm != "instance":
            raise ValueError("the grouped forms of ConvNet are instance norm's (batch norm mixes the groups' statistics)")
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


def idc_init(model):
    """IDC's init of its ResNets, in module order: every conv weight from N(0, 2 / (k * k * out_channels)),
    norm weights 1 and biases 0 (the linear head keeps PyTorch's default)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


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
        idc_init(self)

    def features(self, x):
        return F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1)

    def forward(self, x):
        return self.classifier(self.features(x))


def _intro_size(size):
    """IDC's intro block for its ImageNet setting, chosen by the input side (ResNet and ResNetAP alike):
    'small' for 0 < size <= 64, 'mid' for 64 < size <= 128, 'large' otherwise (size <= 0 included,
    IDC's default size -1)."""
    if 0 < size <= 64:
        return "small"
    if 64 < size <= 128:
        return "mid"
    return "large"


class _Stem(nn.Module):
    """IDC's IntroBlock: conv (no bias) -> norm -> ReLU -> pool.
    ResNetAP: small 3x3 / none; mid 3x3 / AvgPool 2; large 7x7 (stride 1) / AvgPool 4.
    ResNet:   small 3x3 / none; mid 3x3 / MaxPool(3, 2, 1); large 7x7 stride 2 / MaxPool(3, 2, 1)."""

    def __init__(self, channels, planes, norm, intro, avg_pool):
        super().__init__()
        self.intro = intro
        if intro == "large":
            stride = 1 if avg_pool else 2
            self.conv = nn.Conv2d(channels, planes, 7, stride, 3, bias=False)
        else:
            self.conv = nn.Conv2d(channels, planes, 3, 1, 1, bias=False)
        self.norm = _norm(planes, norm)
        if intro == "small":
            self.pool = None
        elif avg_pool:
            self.pool = ("avg", 4 if intro == "large" else 2)
        else:
            self.pool = ("max", 3, 2, 1)  # kernel, stride, padding

    def apply_pool(self, h):
        if self.pool is None:
            return h
        if self.pool[0] == "avg":
            return F.avg_pool2d(h, self.pool[1])
        return F.max_pool2d(h, *self.pool[1:])


class _Shortcut(nn.Module):
    """The projection shortcut: ResNetAP conv1x1 (stride 1) -> AvgPool(stride) -> norm; ResNet conv1x1
    (stride) -> norm."""

    def __init__(self, cin, planes, norm, stride, avg_pool):
        super().__init__()
        self.conv = nn.Conv2d(cin, planes, 1, 1 if avg_pool else stride, bias=False)
        self.pool = stride if avg_pool else 1
        self.norm = _norm(planes, norm)


class _Block(nn.Module):
    """IDC's BasicBlock: relu(bn2(conv2(pool(relu(bn1(conv1(x)))))) + shortcut(x)). ResNetAP
    downsamples by AvgPool(stride) after the first ReLU (its convs all stride 1); ResNet by the stride of
    the first conv. The shortcut is given (IDC builds it before the block's convs: the same draws of the
    global generator) and registered after bn2 (IDC's order of modules and parameters)."""

    def __init__(self, cin, planes, norm, stride, avg_pool, shortcut):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, 1 if avg_pool else stride, 1, bias=False)
        self.bn1 = _norm(planes, norm)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _norm(planes, norm)
        self.pool = stride if avg_pool else 1
        self.shortcut = shortcut


def _plain_conv(conv, h):
    return conv(h)


def _plain_norm(norm, h):
    return norm(h)


def _grouped_norm(norm, h, groups):
    """`norm` applied to each of `groups` channel blocks of h [n, groups * C, H, W] as if each block
    were a separate batch: instance norm is per channel anyway; batch norm computes each block's
    statistics over its own n samples (training), or uses the running ones (eval)."""
    w, b = norm.weight.repeat(groups), norm.bias.repeat(groups)
    if isinstance(norm, nn.GroupNorm):
        if norm.num_groups != norm.num_channels:
            raise ValueError("features_grouped needs instance norm (GroupNorm(C, C)) or batch norm")
        return F.group_norm(h, h.shape[1], w, b, norm.eps)
    if norm.training or norm.running_mean is None:
        out = F.batch_norm(h, None, None, w, b, True, 0.0, norm.eps)
        if norm.training and norm.track_running_stats:
            _update_running_stats(norm, h, groups)
        return out
    return F.batch_norm(h, norm.running_mean.repeat(groups), norm.running_var.repeat(groups), w, b, False, 0.0,
                        norm.eps)


@torch.no_grad()
def _update_running_stats(norm, h, groups):
    """The running statistics as `groups` separate training-mode passes, block 0 first, leave them."""
    n, c = h.shape[0], norm.num_features
    blocks = h.detach().reshape(n, groups, c, -1).transpose(0, 1)  # [groups, n, C, HW]
    mean = blocks.mean(dim=(1, 3)).to(norm.running_mean.dtype)
    var = blocks.var(dim=(1, 3), unbiased=True).to(norm.running_var.dtype)
    for g in range(groups):
        norm.num_batches_tracked.add_(1)
        f = norm.momentum if norm.momentum is not None else 1.0 / float(norm.num_batches_tracked)
        norm.running_mean.mul_(1 - f).add_(mean[g], alpha=f)
        norm.running_var.mul_(1 - f).add_(var[g], alpha=f)


class _ImageNetResNet(nn.Module):
    """What ResNetAP and ResNet18 share: stem, four stages of BasicBlocks (widths w, 2w, 4w, 8w; the
    first stage stride 1, the others 2), global average pool, linear head, IDC's initialization.

    Built in IDC's order (stem conv, then per block its shortcut conv before conv1 and conv2, then the
    head), so that under the same seed the parameters equal IDC's: PyTorch's default init of each conv
    and of the head draws from the global generator, then every conv weight is redrawn from
    N(0, 2 / (k * k * out_channels)) in module order, norm weights 1 and biases 0; the head keeps
    PyTorch's default init."""

    BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}

    def __init__(self, num_classes, channels, size, depth, base, norm, avg_pool):
        super().__init__()
        if depth not in self.BLOCKS:
            raise ValueError(f"depth {depth} not supported (BasicBlock depths {sorted(self.BLOCKS)}; IDC's "
                             "Bottleneck depths 50+ are not built here)")
        self.depth, self.norm_type, self.intro = depth, norm, _intro_size(size)
        self.stem = _Stem(channels, base, norm, self.intro, avg_pool)
        stages, cin = [], base
        for i, nblocks in enumerate(self.BLOCKS[depth]):
            planes = base * 2 ** i
            blocks = []
            for j in range(nblocks):
                stride = 2 if (i > 0 and j == 0) else 1
                shortcut = None
                if stride != 1 or cin != planes:
                    shortcut = _Shortcut(cin, planes, norm, stride, avg_pool)
                blocks.append(_Block(cin, planes, norm, stride, avg_pool, shortcut))
                cin = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = cin
        self.classifier = nn.Linear(cin, num_classes)
        idc_init(self)

    def _run(self, h, conv, norm):
        """The network up to the last feature map, with `conv(module, h)` and `norm(module, h)`."""
        stem = self.stem
        h = stem.apply_pool(F.relu(norm(stem.norm, conv(stem.conv, h))))
        for stage in self.stages:
            for b in stage:
                out = F.relu(norm(b.bn1, conv(b.conv1, h)))
                if b.pool > 1:
                    out = F.avg_pool2d(out, b.pool)
                out = norm(b.bn2, conv(b.conv2, out))
                res = h
                if b.shortcut is not None:
                    res = conv(b.shortcut.conv, h)
                    if b.shortcut.pool > 1:
                        res = F.avg_pool2d(res, b.shortcut.pool)
                    res = norm(b.shortcut.norm, res)
                h = F.relu(out + res)
        return h

    def feature_map(self, x):
        """The last stage's output, before the global pool."""
        return self._run(x, _plain_conv, _plain_norm)

    def features(self, x):
        h = self.feature_map(x)
        return F.avg_pool2d(h, h.shape[-1]).flatten(1)  # IDC's global pool (square maps)

    def forward(self, x):
        return self.classifier(self.features(x))

    def conv_weights(self):
        """The parameters gradient matching compares, in parameters() order: every conv weight (stem,
        blocks, 1x1 shortcuts). IDC's matchloss takes the gradients of all parameters and skips the
        1-dim ones (norm affine parameters; the head's bias) unless --bias and the 2-dim one (the head's
        weight) unless --fc, both off by default: what remains are the 4-dim conv weights, these (the
        convs have no bias under instance or batch norm)."""
        return [m.weight for m in self.modules() if isinstance(m, nn.Conv2d)]

    def forward_grouped(self, x, conv_weights):
        """Logits [G, n, classes] of features_grouped."""
        return self.classifier(self.features_grouped(x, conv_weights))

    def features_grouped(self, x, conv_weights):
        """Features [G, n, D] for G groups of n inputs x [G, n, C, H, W], group g run with its own conv
        weights conv_weights[i][g] (aligned with conv_weights(), [G, ...] each; every other parameter
        shared), as one grouped convolution per layer on [n, G * C, H, W].

        Instance norm is per channel, so exact. Batch norm in training mode normalizes each group by
        its own batch statistics (as G separate passes would) and updates the running statistics as G
        separate passes would, group 0 first; in eval mode it uses the running statistics."""
        g, n = x.shape[:2]
        convs = [m for m in self.modules() if isinstance(m, nn.Conv2d)]
        if len(conv_weights) != len(convs):
            raise ValueError(f"{len(conv_weights)} conv weights given, the network has {len(convs)}")
        weight = {id(m): w for m, w in zip(convs, conv_weights)}

        def conv(m, h):
            w = weight[id(m)]
            return F.conv2d(h, w.reshape(-1, *w.shape[2:]), None, m.stride, m.padding, groups=g)

        def norm(m, h):
            return _grouped_norm(m, h, g)

        h = self._run(x.transpose(0, 1).reshape(n, g * x.shape[2], *x.shape[3:]), conv, norm)
        h = F.avg_pool2d(h, h.shape[-1])
        return h.reshape(n, g, -1).transpose(0, 1)


class ResNetAP(_ImageNetResNet):
    """IDC's ResNetAP for its ImageNet setting: RNAP.ResNetAP('imagenet', depth, num_classes, width,
    norm_type, size, nch). Depth 10 (one BasicBlock per stage; 18 and 34 also built), stage widths
    int(64 * width) x (1, 2, 4, 8), every conv stride 1 with downsampling by average pooling (after the
    first ReLU of a block, after the 1x1 shortcut conv), intro block by size (see _intro_size / _Stem),
    instance norm (GroupNorm(C, C), condensation) or batch norm. ResNetAP-10 has 4.9M parameters."""

    def __init__(self, num_classes, channels=3, size=224, depth=10, width=1.0, norm="instance"):
        super().__init__(num_classes, channels, size, depth, int(64 * width), norm, avg_pool=True)


class ResNet18(_ImageNetResNet):
    """IDC's ResNet for its ImageNet setting at depth 18: RN.ResNet('imagenet', 18, num_classes,
    norm_type, size, nch). Two BasicBlocks per stage, widths 64/128/256/512, strided convs and 1x1
    strided shortcut convs, intro block by size with max pooling (see _Stem); batch norm (instance
    norm also built)."""

    def __init__(self, num_classes, channels=3, size=224, norm="batch"):
        super().__init__(num_classes, channels, size, 18, 64, norm, avg_pool=False)


class _DenseLayer(nn.Module):
    """DenseNet-BC's bottleneck: BN-ReLU-conv1x1(4 x growth), BN-ReLU-conv3x3(growth), its output put before
    its input (the channel order of IDC's densenet_cifar)."""

    def __init__(self, cin, growth):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        new = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return torch.cat([new, x], 1)


class _Transition(nn.Module):
    """BN-ReLU-conv1x1 to `cout` channels, then 2 x 2 average pooling."""

    def __init__(self, cin, cout):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """IDC's DenseNet for CIFAR (`densenet` in its test.py): DenseNet-121's blocks (6, 12, 24, 16 bottleneck
    layers) with growth rate 12, compression 0.5, a 3x3 stem of 2 x growth channels, batch norm; the final
    map averaged (4 x 4 at 32 px, IDC's pool; any side here), linear head. PyTorch's default init."""

    def __init__(self, num_classes, channels=3, blocks=(6, 12, 24, 16), growth=12, reduction=0.5):
        super().__init__()
        width = 2 * growth
        self.conv1 = nn.Conv2d(channels, width, 3, padding=1, bias=False)
        stages = []
        for i, n in enumerate(blocks):
            layers = []
            for _ in range(n):
                layers.append(_DenseLayer(width, growth))
                width += growth
            stages.append(nn.Sequential(*layers))
            if i < len(blocks) - 1:
                out = int(math.floor(width * reduction))
                stages.append(_Transition(width, out))
                width = out
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(width)
        self.num_features = width
        self.classifier = nn.Linear(width, num_classes)

    def features(self, x):
        h = F.relu(self.bn(self.stages(self.conv1(x))))
        return F.avg_pool2d(h, h.shape[-1]).flatten(1)

    def forward(self, x):
        return self.classifier(self.features(x))


def convnet_depth(size):
    """ConvNet depth by resolution, as DC/DM/MTT use it: 3 up to 32 px (MNIST's 28 px included, with
    IDC's padding-3 first conv for one channel), 4 up to 64 (Tiny ImageNet), 5 up to 128 (ImageNet
    subsets), 6 above 128 (our extension: 224 px ends at a 3 x 3 map)."""
    if size <= 32:
        return 3
    if size <= 64:
        return 4
    if size <= 128:
        return 5
    return 6


ARCHS = ("convnet", "convnet_bn", "resnet10_bn", "resnet10_in", "resnet_ap10", "resnet_ap10_bn", "resnet18_bn",
         "densenet")


def make_model(arch, num_classes, channels, size, width=128):
    """The network `arch` (one of ARCHS) for inputs of `channels` x `size` x `size`. `width` is the
    ConvNet's; the ResNets have IDC's fixed widths.

    convnet: ConvNet of depth convnet_depth(size); resnet10_bn / resnet10_in: the CIFAR-style ResNet10;
    resnet_ap10 / resnet_ap10_bn: ResNetAP-10 with instance / batch norm; resnet18_bn: ResNet18; convnet_bn:
    the ConvNet with batch norm; densenet: IDC's DenseNet for CIFAR."""
    if arch in ("convnet", "convnet_bn"):
        return ConvNet(num_classes, channels, size, width=width, depth=convnet_depth(size),
                       norm="batch" if arch == "convnet_bn" else "instance")
    if arch == "densenet":
        return DenseNet(num_classes, channels)
    if arch == "resnet10_bn":
        return ResNet10(num_classes, channels, size, norm="batch")
    if arch == "resnet10_in":
        return ResNet10(num_classes, channels, size, norm="instance")
    if arch == "resnet_ap10":
        return ResNetAP(num_classes, channels, size, depth=10, norm="instance")
    if arch == "resnet_ap10_bn":
        return ResNetAP(num_classes, channels, size, depth=10, norm="batch")
    if arch == "resnet18_bn":
        return ResNet18(num_classes, channels, size, norm="batch")
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")

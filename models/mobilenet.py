"""MobileNetV1 and MobileNetV2 baselines, key layouts matching ../shared/weights (V2: torchvision's).

`tf_same=True` reproduces TensorFlow "SAME" padding (stride-2 convs pad only bottom/right on even
inputs), which TF-trained weights need; `False` gives PyTorch's symmetric padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Conv2dSame(nn.Conv2d):
    """Conv2d whose padding follows TensorFlow's SAME rule; parameter names stay those of nn.Conv2d."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)
        # Set by `freeze_same_padding` for tracers that cannot read shapes as ints (torch.fx).
        self.frozen_pads: tuple[int, int, int, int] | None = None

    def _same_pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        pads = []
        for size, k, s, d in zip((height, width), self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Computed from the static spatial size (ints under tracing), so exported graphs carry constant pads.
        if self.frozen_pads is not None:
            left, right, top, bottom = self.frozen_pads
        else:
            left, right, top, bottom = self._same_pads(int(x.shape[-2]), int(x.shape[-1]))
        if left or right or top or bottom:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def freeze_same_padding(model: nn.Module, input_size: int) -> nn.Module:
    """Fix every Conv2dSame's pads for `input_size` inputs, so symbolic tracers see constants."""
    hooks = []
    for module in model.modules():
        if isinstance(module, Conv2dSame):
            def record(mod: Conv2dSame, args: tuple) -> None:
                mod.frozen_pads = mod._same_pads(int(args[0].shape[-2]), int(args[0].shape[-1]))
            module.frozen_pads = None
            hooks.append(module.register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        for hook in hooks:
            hook.remove()
    return model


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int, tf_same: bool) -> nn.Conv2d:
    if tf_same and kernel > 1:
        return Conv2dSame(in_ch, out_ch, kernel, stride, groups=groups, bias=False)
    return nn.Conv2d(in_ch, out_ch, kernel, stride, padding=(kernel - 1) // 2, groups=groups, bias=False)


def conv_bn_relu6(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                  tf_same: bool = False) -> nn.Sequential:
    return nn.Sequential(_conv(in_ch, out_ch, kernel, stride, groups, tf_same), nn.BatchNorm2d(out_ch),
                         nn.ReLU6(inplace=True))


def make_divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class MobileNetV1(nn.Module):
    # (output channels, stride) of the 13 depthwise-separable blocks
    BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, tf_same: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        in_ch = make_divisible(32 * width_mult)
        layers: list[nn.Module] = [conv_bn_relu6(3, in_ch, 3, 2, tf_same=tf_same)]
        for out, stride in self.BLOCKS:
            out = make_divisible(out * width_mult)
            dw = conv_bn_relu6(in_ch, in_ch, 3, stride, groups=in_ch, tf_same=tf_same)
            pw = conv_bn_relu6(in_ch, out, 1)
            layers.append(nn.Sequential(*dw, *pw))
            in_ch = out
        self.model = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch, num_classes)
        _init_conv_net(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(self.model(x)), 1)))


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int, tf_same: bool) -> None:
        super().__init__()
        hidden = int(round(in_ch * expand_ratio))
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_relu6(in_ch, hidden, 1))
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden, tf_same=tf_same),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    # expansion t, channels c, repeats n, first stride s
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, tf_same: bool = True,
                 dropout: float = 0.2) -> None:
        super().__init__()
        in_ch = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [conv_bn_relu6(3, in_ch, 3, 2, tf_same=tf_same)]
        for t, c, n, s in self.SETTINGS:
            out = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(in_ch, out, s if i == 0 else 1, t, tf_same))
                in_ch = out
        features.append(conv_bn_relu6(in_ch, self.last_channel, 1))
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes))
        _init_conv_net(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _init_conv_net(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a conv in a Sequential into that conv, in place (eval only).

    The result computes the same function with the weights a deployment format stores after its own
    conv+BN fusion, so weights read back from such a package line up with this model's parameters.
    """
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                with torch.no_grad():
                    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                    conv.weight.mul_(factor.reshape(-1, 1, 1, 1))
                    conv.bias = nn.Parameter(bn.bias + (bias - bn.running_mean) * factor)
                setattr(module, bn_name, nn.Identity())
    return model


def explicit_same_padding(model: nn.Module, input_size: int) -> nn.Module:
    """Replace each Conv2dSame by ZeroPad2d + plain nn.Conv2d (same weights), in place, for `input_size` inputs.

    Graph-pattern tools (torch.fx quantizers) recognise conv -> BN -> ReLU6 only for nn.Conv2d modules.
    """
    freeze_same_padding(model, input_size)
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, Conv2dSame):
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, 0,
                                 child.dilation, child.groups, bias=child.bias is not None)
                conv.load_state_dict(child.state_dict())
                pad = nn.ZeroPad2d(child.frozen_pads)
                if isinstance(parent, nn.Sequential):
                    # Keep conv, BN and ReLU6 siblings: splice the pad in front of the conv.
                    layers = list(parent.children())
                    index = layers.index(child)
                    layers[index:index + 1] = [pad, conv]
                    for name in list(parent._modules):
                        del parent._modules[name]
                    for i, layer in enumerate(layers):
                        parent.add_module(str(i), layer)
                else:
                    setattr(parent, child_name, nn.Sequential(pad, conv))
    return model

"""Weights trained with the papers' own code, loaded into advlib's architectures.

Researchers hold checkpoints trained with the authors' scripts: kuangliu-style ResNet-18 and
MobileNetV2 (SAAD's students, AutoAttack's example model), TRADES-style WRN-34-10 (DYNAT's and
TRADES's targets) and LBGAT's ResNet18_cifar (DYNAT's guide). Their ``state_dict`` keys differ from
advlib's module names only by the renaming below; the tensors are the same.

* ``resnet18`` and ``resnet18_cifar``: ``conv1``, ``bn1``, ``layer{k}.{j}``, ``linear`` become
  ``conv``, ``bn``, ``layers.{2(k-1)+j}``, ``fc``;
* ``mobilenetv2``: ``conv1``, ``bn1``, ``layers.{i}``, ``conv2``, ``bn2``, ``linear`` become ``conv``,
  ``bn``, ``blocks.{i}``, ``head_conv``, ``head_bn``, ``fc``;
* ``wrn34_10``: ``conv1``, ``block{b}.layer.{i}``, ``convShortcut``, ``bn1`` become ``conv``,
  ``blocks.{n(b-1)+i}`` (n blocks per stage), ``shortcut``, ``bn``; TRADES's ``sub_block1``, which
  its ``forward`` never uses, is dropped.

Inside a block the names agree (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``shortcut.0/1``…). Wrappers
are removed first: a ``{"state_dict": …}`` or ``{"model": …}`` dictionary, the ``module.`` prefixes
of ``nn.DataParallel`` and of SWA's ``AveragedModel`` (and its ``n_averaged``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from . import build

StateDict = Mapping[str, torch.Tensor]


def _resnet18_key(key: str) -> str:
    def layer(match: re.Match) -> str:
        return f"layers.{2 * (int(match[1]) - 1) + int(match[2])}."

    key = re.sub(r"^layer([1-4])\.(\d+)\.", layer, key)
    return re.sub(r"^(conv1|bn1|linear)\.", lambda m: {"conv1": "conv.", "bn1": "bn.", "linear": "fc."}[m[1]], key)


def _mobilenetv2_key(key: str) -> str:
    top = {"conv1": "conv.", "bn1": "bn.", "layers": "blocks.", "conv2": "head_conv.", "bn2": "head_bn.",
           "linear": "fc."}
    return re.sub(r"^(conv1|bn1|layers|conv2|bn2|linear)\.", lambda m: top[m[1]], key)


def _wide_resnet_key(blocks_per_stage: int) -> Callable[[str], str | None]:
    def rename(key: str) -> str | None:
        if key.startswith("sub_block1."):
            return None
        key = re.sub(r"^block([1-3])\.layer\.(\d+)\.",
                     lambda m: f"blocks.{blocks_per_stage * (int(m[1]) - 1) + int(m[2])}.", key)
        key = key.replace(".convShortcut.", ".shortcut.")
        return re.sub(r"^(conv1|bn1)\.", lambda m: {"conv1": "conv.", "bn1": "bn."}[m[1]], key)

    return rename


def _renamer(name: str, depth: int) -> Callable[[str], str | None]:
    if name in ("resnet18", "resnet18_cifar"):
        return _resnet18_key
    if name == "mobilenetv2":
        return _mobilenetv2_key
    if name == "wrn34_10":
        return _wide_resnet_key((depth - 4) // 6)
    raise ValueError(f"no reference layout is known for {name!r}; known: {', '.join(REFERENCE_LAYOUTS)}")


REFERENCE_LAYOUTS = {
    "resnet18": "kuangliu pytorch-cifar ResNet18 (SAAD's student, AutoAttack's example model)",
    "resnet18_cifar": "LBGAT's ResNet18_cifar (DYNAT's guide)",
    "mobilenetv2": "kuangliu pytorch-cifar MobileNetV2 (SAAD's student)",
    "wrn34_10": "TRADES's WideResNet (DYNAT's, TRADES's and LBGAT's target)",
}


def unwrap_state_dict(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint without its wrappers: a ``state_dict``/``model``/``net`` entry, the
    ``module.`` prefixes that ``nn.DataParallel`` and ``AveragedModel`` add, and ``n_averaged``."""
    for wrapper in ("state_dict", "model", "net"):
        inner = checkpoint.get(wrapper)
        if isinstance(inner, Mapping):
            checkpoint = inner
            break
    tensors = {}
    for key, value in checkpoint.items():
        if key == "n_averaged":
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor: pass the "
                             "model's state_dict (or a dictionary holding it under 'state_dict' or 'model')")
        while key.startswith("module."):
            key = key[len("module."):]
        tensors[key] = value
    return tensors


def load_reference(name: str, checkpoint: StateDict | str | Path, num_classes: int = 10, in_channels: int = 3,
                   *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                   depth: int = 34, widen_factor: int = 10) -> nn.Module:
    """advlib's ``name`` architecture holding the weights of ``checkpoint``, a ``state_dict`` (or the
    path of one) saved by the reference implementation of that architecture (see
    :data:`REFERENCE_LAYOUTS` and this module's table). The model comes back as
    :func:`~advlib.models.build` makes it, in eval mode; pass ``mean``/``std`` if the reference
    code normalised its inputs outside the model (the papers' codes do not).

    Raises ``ValueError`` naming the first missing or unexpected key, or the first tensor whose
    shape differs (e.g. a CIFAR-100 checkpoint loaded with ``num_classes=10``).
    """
    rename = _renamer(name, depth)
    if isinstance(checkpoint, (str, Path)):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    source = unwrap_state_dict(checkpoint)
    params = {"depth": depth, "widen_factor": widen_factor} if name == "wrn34_10" else {}
    model = build(name, num_classes, in_channels, mean=mean, std=std, **params)
    expected = model.net.state_dict()
    renamed = {}
    for key, value in source.items():
        target = rename(key)
        if target is not None:
            renamed[target] = (key, value)
    missing = [key for key in expected if key not in renamed]
    unexpected = [original for target, (original, _) in renamed.items() if target not in expected]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing, the first {missing[0]!r} (advlib's name)")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected, the first {unexpected[0]!r} (the checkpoint's name)")
        raise ValueError(f"the checkpoint does not fit advlib's {name!r} as {REFERENCE_LAYOUTS[name]}: "
                         + "; ".join(problems) + ". Is it that architecture, saved by that code?")
    for target, (original, value) in renamed.items():
        if value.shape != expected[target].shape:
            raise ValueError(f"checkpoint tensor {original!r} has shape {tuple(value.shape)}, advlib's {target!r} "
                             f"{tuple(expected[target].shape)}; check num_classes ({num_classes}) and in_channels "
                             f"({in_channels})")
    model.net.load_state_dict({target: value for target, (_, value) in renamed.items()})
    return model.eval()

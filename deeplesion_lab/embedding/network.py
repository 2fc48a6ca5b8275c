"""The lesion embedding network: a CNN whose features from several depths are pooled around the
lesion box, projected and L2-normalised (Yan et al., CVPR 2018, "Deep Lesion Graphs in the Wild").

Two backbones:

- ``"small"`` (default): four convolution blocks (16-32-64-128 channels at width 16), about
  45 MMAC per 64x64 patch, fast enough to train and extract on two CPU cores.
- ``"resnet18"``: torchvision's ResNet-18 (built without weights; ImageNet weights can be loaded
  from a LOCAL file with :func:`load_pretrained`, nothing is ever downloaded).

For every tapped block the feature map is ROI-aligned to ``pool_size`` x ``pool_size`` inside the
lesion box, flattened, projected to ``scale_dim`` and L2-normalised; the scales are concatenated,
projected to ``embed_dim`` and L2-normalised again.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import LabError

__all__ = ["ARCHS", "EmbeddingNet", "CheckpointError", "load_pretrained"]

#: Backbones :class:`EmbeddingNet` knows.
ARCHS = ("small", "resnet18")


class CheckpointError(LabError, ValueError):
    """A checkpoint file is missing, unreadable, or made for another architecture."""


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class _SmallBackbone(nn.Module):
    """Four blocks; the last three are tapped. Strides 1, 2, 4, 8."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        w = width
        self.block1 = _conv_bn(in_channels, w)
        self.block2 = nn.Sequential(nn.MaxPool2d(2), _conv_bn(w, 2 * w), _conv_bn(2 * w, 2 * w))
        self.block3 = nn.Sequential(nn.MaxPool2d(2), _conv_bn(2 * w, 4 * w), _conv_bn(4 * w, 4 * w))
        self.block4 = nn.Sequential(nn.MaxPool2d(2), _conv_bn(4 * w, 8 * w), _conv_bn(8 * w, 8 * w))
        self.tap_channels = (2 * w, 4 * w, 8 * w)
        self.tap_strides = (2, 4, 8)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.block1(x)
        f2 = self.block2(x)
        f3 = self.block3(f2)
        f4 = self.block4(f3)
        return [f2, f3, f4]


class _ResNetBackbone(nn.Module):
    """torchvision ResNet-18 without its head; ``layer2..layer4`` are tapped."""

    def __init__(self, in_channels: int):
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1, net.layer2, net.layer3, net.layer4
        )
        self.tap_channels = (128, 256, 512)
        self.tap_strides = (8, 16, 32)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        f2 = self.layer2(x)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [f2, f3, f4]


class EmbeddingNet(nn.Module):
    """CNN -> multi-scale box-pooled features -> L2-normalised embedding.

    Parameters
    ----------
    in_channels : int, default 3
        Input channels (context slices or windows).
    embed_dim : int, default 128
        Embedding size.
    arch : {"small", "resnet18"}, default "small"
        Backbone.
    width : int, default 16
        Channels of the first block of the small backbone (ignored by ResNet-18).
    pool_size : int, default 2
        ROI-align output side per scale.
    scale_dim : int, default 64
        Projection size of each scale before concatenation.
    n_meta : int, default 0
        Size of an optional per-lesion metadata vector (the normalised location) fed beside the
        image features through a small MLP; 0 for an image-only network.
    context_channels : int, default 0
        Channels of an optional context crop (a fixed physical field of view around the
        lesion, :attr:`~deeplesion_lab.embedding.PatchConfig.context_mm`) seen by a second,
        small convolution branch whose pooled features join the others; 0: no such branch.
    """

    def __init__(
        self,
        in_channels: int = 3,
        embed_dim: int = 128,
        arch: str = "small",
        width: int = 16,
        pool_size: int = 2,
        scale_dim: int = 64,
        n_meta: int = 0,
        context_channels: int = 0,
    ):
        super().__init__()
        if arch not in ARCHS:
            raise LabError(f"unknown embedding architecture {arch!r}; known: {', '.join(ARCHS)}")
        if embed_dim < 2:
            raise LabError(f"embed_dim must be at least 2, got {embed_dim}")
        self.arch = arch
        self.pool_size = int(pool_size)
        self.backbone = (
            _SmallBackbone(in_channels, width) if arch == "small" else _ResNetBackbone(in_channels)
        )
        chans = self.backbone.tap_channels
        self.scale_proj = nn.ModuleList(
            nn.Linear(c * self.pool_size**2 + c, scale_dim) for c in chans
        )
        self.n_meta = int(n_meta)
        meta_dim = scale_dim if self.n_meta else 0
        if self.n_meta:
            self.meta = nn.Sequential(
                nn.Linear(self.n_meta, scale_dim), nn.ReLU(inplace=True),
                nn.Linear(scale_dim, scale_dim),
            )
        self.context_channels = int(context_channels)
        ctx_dim = scale_dim if self.context_channels else 0
        if self.context_channels:
            w = max(int(width), 4)
            self.context_net = nn.Sequential(
                _conv_bn(self.context_channels, w), nn.MaxPool2d(2),
                _conv_bn(w, 2 * w), nn.MaxPool2d(2),
                _conv_bn(2 * w, 4 * w), nn.MaxPool2d(2),
                _conv_bn(4 * w, 4 * w),
            )
            # the layout (2 x 2 quadrants around the lesion) and the mean of the field of view
            self.context_proj = nn.Linear(4 * w * 4 + 4 * w, scale_dim)
        self.head = nn.Linear(scale_dim * len(chans) + meta_dim + ctx_dim, embed_dim)

    def forward(
        self, x: torch.Tensor, boxes: torch.Tensor | None = None, meta: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embed a batch.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, C, H, W)`` float patches in [0, 1].
        boxes : torch.Tensor, optional
            ``(B, 4)`` lesion boxes ``x1, y1, x2, y2`` in patch pixels; default the central half.
        meta : torch.Tensor, optional
            ``(B, n_meta)`` metadata; required when the network was built with ``n_meta``.
        context : torch.Tensor, optional
            ``(B, context_channels, T, T)`` float context crops in [0, 1]; required when the
            network was built with ``context_channels``.

        Returns
        -------
        torch.Tensor
            ``(B, embed_dim)``, unit length.
        """
        from torchvision.ops import roi_align

        b, _, h, w = x.shape
        if boxes is None:
            boxes = x.new_tensor([[w * 0.25, h * 0.25, w * 0.75, h * 0.75]]).expand(b, 4)
        rois = torch.cat([torch.arange(b, dtype=x.dtype, device=x.device)[:, None], boxes.to(x)], 1)
        parts = []
        for feat, stride, proj in zip(
            self.backbone(x), self.backbone.tap_strides, self.scale_proj, strict=True
        ):
            pooled = roi_align(
                feat, rois, output_size=self.pool_size, spatial_scale=1.0 / stride,
                sampling_ratio=2, aligned=True,
            ).flatten(1)
            whole = feat.mean(dim=(2, 3))  # the whole patch: the lesion's surroundings
            parts.append(F.normalize(proj(torch.cat([pooled, whole], 1)), dim=1))
        if self.n_meta:
            if meta is None or meta.shape != (b, self.n_meta):
                raise LabError(f"this network needs a (B, {self.n_meta}) metadata input")
            parts.append(F.normalize(self.meta(meta.to(x)), dim=1))
        if self.context_channels:
            if context is None or context.shape[:2] != (b, self.context_channels):
                raise LabError(f"this network needs a (B, {self.context_channels}, T, T) context "
                               "crop input")
            f = self.context_net(context.to(x))
            centre = F.adaptive_avg_pool2d(f, 2).flatten(1)
            parts.append(F.normalize(
                self.context_proj(torch.cat([centre, f.mean(dim=(2, 3))], 1)), dim=1))
        return F.normalize(self.head(torch.cat(parts, 1)), dim=1)


def _read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad file
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


def load_pretrained(net: EmbeddingNet, path: str | Path) -> list[str]:
    """Initialise ``net``'s backbone from a local checkpoint file.

    Accepts a plain backbone state dict (e.g. torchvision's ImageNet ResNet-18 file that the
    user has on disk; a ``fc.*`` head is ignored), one wrapped as ``{"state_dict": ...}``, or a
    lesion-embedder checkpoint (``embedder.pt``), whose whole network is loaded.

    Returns
    -------
    list of str
        The parameter names that were loaded.

    Raises
    ------
    CheckpointError
        The file is missing or unreadable, or its tensors do not fit this architecture (names
        or shapes), e.g. a ResNet checkpoint for the small backbone.
    """
    path = Path(path)
    obj = _read_checkpoint(path)
    whole = obj.get("format") == "deeplesion-lab-embedder"
    state = obj["state_dict"] if isinstance(obj.get("state_dict"), dict) else obj
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    if whole:
        target = net
    else:
        target = net.backbone
        if any(k.startswith("backbone.") for k in state):
            state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    own = target.state_dict()
    state = {k: v for k, v in state.items() if torch.is_tensor(v)}
    matched = [k for k in state if k in own]
    bad = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in matched
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    coverage = len(matched) / max(len(own), 1)
    if bad or coverage < 0.9:
        example = next(iter(state), "nothing")
        detail = f"shape mismatch: {'; '.join(bad[:3])}" if bad else (
            f"only {len(matched)} of the network's {len(own)} tensors found (e.g. the file has "
            f"{example!r}, the network expects {next(iter(own))!r})"
        )
        raise CheckpointError(
            f"{path}: checkpoint of another architecture for the {net.arch!r} embedding "
            f"network ({detail})"
        )
    target.load_state_dict({k: state[k] for k in matched}, strict=False)
    return matched

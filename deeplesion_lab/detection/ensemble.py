"""Several CenterNets as one detector: their head outputs averaged before decoding.

A CenterNet trained on the 16 training patients of a 24-patient demo finds almost every
training lesion and far fewer new ones (issue 14, ``BENCHMARKS.md``): its errors are those of
one model fitted to few patients, the regime where averaging independently trained models helps
most. :class:`CenterNetEnsemble` runs each member on the same batch and averages what their
heads say, per cell: the heatmap as probabilities (turned back into logits for the members'
decoder), the box side distances, and the class log-probabilities. They may differ in weights,
width, training seed or classes: the class head's output is averaged over the members with the
first member's number of classes, and the others add their heatmap and boxes only (so a
single-class detector and a pseudo-label detector, trained side by side in the pipeline, find
lesions together while the pseudo-label model names them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import LabError


class EnsembleError(LabError, ValueError):
    """Members that cannot be averaged (another architecture), or training an ensemble."""


class CenterNetEnsemble(nn.Module):
    """Inference-only average of CenterNet members (see the module docstring).

    Parameters
    ----------
    members : sequence of CenterNet
        Trained models. The ensemble has the first member's classes (its class head averaged
        with those of the members with as many classes). Decoding (score threshold, NMS,
        detections per image) follows the first member's settings.
    """

    arch = "centernet"

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        members = list(members)
        if len(members) < 1:
            raise EnsembleError("an ensemble needs at least one member")
        archs = {getattr(m, "arch", type(m).__name__) for m in members}
        if archs != {"centernet"}:
            raise EnsembleError(
                f"only CenterNet members can be averaged, got {', '.join(sorted(archs))}"
            )
        self.members = nn.ModuleList(members)
        self.num_classes = int(members[0].num_classes)
        #: Members whose class head is averaged (those with the first member's classes).
        self.class_members = [i for i, m in enumerate(members)
                              if int(m.num_classes) == self.num_classes]

    def train(self, mode: bool = True):  # an ensemble is never trained as one
        if mode:
            raise EnsembleError("a CenterNetEnsemble is for inference; train its members")
        return super().train(False)

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The members' head outputs on batch ``x``, averaged (heatmap as probabilities)."""
        outs = [m.heads(x) for m in self.members]
        p = torch.stack([torch.sigmoid(o["heatmap"]) for o in outs]).mean(0)
        p = p.clamp(1e-6, 1 - 1e-6)
        out = {
            "heatmap": torch.log(p) - torch.log1p(-p),
            "box": torch.stack([o["box"] for o in outs]).mean(0),
        }
        if "classes" in outs[0]:
            out["classes"] = torch.stack(
                [torch.log_softmax(outs[i]["classes"], 1) for i in self.class_members]
            ).mean(0)
        return out

    @torch.no_grad()
    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        """Detections per image, as a member's ``forward`` in eval mode gives them."""
        if targets is not None:
            raise EnsembleError("a CenterNetEnsemble is for inference; train its members")
        first = self.members[0]
        x = first._batch(images)
        out = self.heads(x)
        sizes = [tuple(im.shape[-2:]) for im in images]
        return first.decode(out, sizes)

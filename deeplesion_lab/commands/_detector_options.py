"""The detector commands' shared options (``train-detector``, ``finetune``, ``detect``).

The commands parse; :func:`params_from_args` turns the parsed options into the plain keyword
arguments of :func:`deeplesion_lab.detection.workflow.detector_params`, which holds the
defaults (per device and architecture) for notebooks and the pipeline as well.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..detection.workflow import (
    CLASS_LOSS_WEIGHT,
    COPY_PASTE,
    DEFAULT_ARCH,
    DEFAULT_WIDTH,
    FINETUNE_EPOCHS,
    PASTE_SCALE_RANGE,
    SLICE_SPACING_MM,
    TRAIN_EPOCHS,
    detector_params,
)

__all__ = ["add_training_arguments", "add_runtime_arguments", "add_model_arguments",
           "params_from_args"]

#: Options of :func:`~deeplesion_lab.detection.workflow.detector_params` that the parsers
#: define under the same name (``--no-progress`` and ``--no-amp`` are turned round below).
_SAME_NAME = ("device", "threads", "workers", "micro_batches", "checkpoint_every", "epochs",
              "batch_size", "lr", "unannotated", "seed", "copy_paste", "class_loss_weight",
              "paste_scale", "arch", "width", "optimizer", "window", "train_crop", "box_batch", "box_head",
              "backbone", "norm", "backbone_weights", "image_size", "spacing_mm",
              "slice_spacing_mm")


def params_from_args(args: argparse.Namespace, *, new: bool) -> dict[str, Any]:
    """``LesionDetector`` parameters from the parsed options of a detector command."""
    given = {k: getattr(args, k) for k in _SAME_NAME if getattr(args, k, None) is not None}
    return detector_params(new=new, progress=not getattr(args, "no_progress", False),
                           amp=not getattr(args, "no_amp", False), **given)


def add_training_arguments(p: argparse.ArgumentParser, *, finetune: bool = False) -> None:
    """Options shared by ``train-detector`` and ``finetune``."""
    g = p.add_argument_group("training")
    table = FINETUNE_EPOCHS if finetune else TRAIN_EPOCHS
    g.add_argument("--epochs", type=int, default=None,
                   help="epochs (default per architecture: "
                        + ", ".join(f"{k} {v}" for k, v in table.items()) + ")")
    g.add_argument("--batch-size", type=int, default=None, help="images per step (default 4)")
    if finetune:
        g.add_argument("--lr", type=float, default=None,
                       help="learning rate (default: a quarter of the base model's)")
    else:
        g.add_argument("--lr", type=float, default=None,
                       help="learning rate (default 0.001 with adamw, 0.02 with sgd)")
        g.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw",
                       help="adamw (default; fast from random weights) or sgd (for a "
                            "pretrained backbone)")
    g.add_argument("--unannotated", choices=["neighbours", "none"], default=None,
                   help="missing-annotation strategy: ignore regions on lesions annotated on "
                        "nearby slices (default neighbours)")
    g.add_argument("--ignore-from", type=Path, default=None, metavar="PRED.csv",
                   help="predictions on the training slices: confident ones that match no "
                        "annotation become ignore regions (mined unannotated lesions)")
    g.add_argument("--ignore-score", type=float, default=0.5,
                   help="minimum score of a mined ignore region (default 0.5)")
    g.add_argument("--copy-paste", type=int, default=None, metavar="N",
                   help="copy-paste augmentation: up to N lesions of other training slices "
                        "pasted into each training window; 0: off (default: "
                        + ("the base model's)" if finetune else "per architecture, "
                           + ", ".join(f"{k} {v}" for k, v in COPY_PASTE.items()) + ")"))
    g.add_argument("--class-loss-weight", type=float, default=None, metavar="W",
                   help="weight of the class loss of a multi-class centernet (default: "
                        + ("the base model's)" if finetune else
                           f"{CLASS_LOSS_WEIGHT['centernet']:g}; the other architectures "
                           "weigh their class loss themselves)"))
    g.add_argument("--paste-scale", type=_scale_range, default=None, metavar="LO,HI",
                   help="range of a pasted lesion's own rescaling (copy-paste; default: "
                        + ("the base model's)" if finetune else
                           "{:g},{:g} for the centernet)".format(*PASTE_SCALE_RANGE["centernet"])))
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--overwrite", action="store_true",
                   help="start over when NAME holds a training made with other settings")
    add_runtime_arguments(p, training=True)


def _scale_range(text: str) -> tuple[float, float]:
    """``LO,HI`` with 0 < LO <= HI (``--paste-scale``)."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers), got {text!r}") from None
    if not 0 < lo <= hi:
        raise argparse.ArgumentTypeError(f"expected 0 < LO <= HI, got {text!r}")
    return lo, hi


def add_runtime_arguments(p: argparse.ArgumentParser, *, training: bool = False) -> None:
    """``--device``, ``--threads`` (and, with ``training``, ``--no-amp``, ``--workers``,
    ``--micro-batches``)."""
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="cpu",
                   help="cpu (default), cuda, cuda:N or auto (the GPU when torch sees one, "
                        "else the CPU)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    if training:
        g.add_argument("--no-amp", action="store_true",
                       help="train in float32 on CUDA too (default: mixed precision on CUDA)")
        g.add_argument("--workers", type=int, default=None,
                       help="DataLoader workers reading slices on CUDA (default up to 4)")
        g.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS",
                       help="steps between saves of last.pt, from which a rerun resumes "
                            "(default 50; epoch ends always)")
        g.add_argument("--micro-batches", type=int, default=None,
                       help="cut each batch into this many parts with averaged gradients "
                            "(under torchrun at least one per process; a run on N processes "
                            "equals one process with --micro-batches N)")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Network and input options of a new detector."""
    from ..detection.config import ARCHS, BACKBONES, NORMS

    g = p.add_argument_group("network and input")
    g.add_argument("--arch", choices=ARCHS, default=None,
                   help=f"detector architecture (default {DEFAULT_ARCH}): centernet (a "
                        "heatmap detector on a small U-Net, fast to train on a CPU), fasterrcnn "
                        "(torchvision's Faster R-CNN, for a GPU and a local ImageNet file) or "
                        "fcos (torchvision's FCOS)")
    g.add_argument("--width", type=int, default=None,
                   help=f"channels of the centernet's first stage (default {DEFAULT_WIDTH})")
    g.add_argument("--backbone", choices=BACKBONES, default="mobilenet_v3_large_fpn")
    g.add_argument("--backbone-weights", type=Path, default=None, metavar="FILE",
                   help="local classification checkpoint for the backbone (never downloaded)")
    g.add_argument("--norm", choices=NORMS, default="batch",
                   help="normalisation layers of the backbone: batch (default; frozen with "
                        "--backbone-weights) or group (independent of the batch)")
    g.add_argument("--image-size", type=int, default=512,
                   help="canvas side in px (default 512)")
    g.add_argument("--spacing-mm", type=float, default=0.8,
                   help="in-plane mm per pixel after resampling (default 0.8, as DeepLesion's "
                        "detectors use)")
    g.add_argument("--slice-spacing-mm", type=float, default=None,
                   help="distance in mm of the context slices above and below the key slice "
                        "(default per architecture: "
                        + ", ".join(f"{k} {v:g}" for k, v in SLICE_SPACING_MM.items())
                        + ", others 2)")
    g.add_argument("--box-head", type=int, default=None,
                   help="box head width (default 1024 on cuda, 256 on cpu)")
    g.add_argument("--box-batch", type=int, default=None,
                   help="proposals per image that train the box head (default 128 on cuda, "
                        "32 on cpu)")
    g.add_argument("--window", default="soft tissue",
                   help="HU window of the input: a preset name (e.g. 'soft tissue', 'wide') or "
                        "LOW,HIGH (default 'soft tissue', -160 to 240 HU)")
    g.add_argument("--train-crop", type=int, default=None,
                   help="train on windows of this many pixels, mostly around lesions "
                        "(default 128 on cpu, whole images on cuda; 0: whole images)")

"""Self-supervised pretraining of the CenterNet's features on the run's own unlabeled slices.

Why (issue 14, session 8): at the ``make lab`` size the CenterNet learns its 16 training
patients' key slices almost perfectly in 240 CPU-seconds and loses on new patients; the slices
of *every* patient (training, validation and test) can teach features without any label.

Objective: masked-patch reconstruction (a convolutional take on masked image modelling, as in
SparK or SimMIM): each training window (``crop`` pixels, the detector's own 3-slice input) has
a share ``MASK_RATIO`` of its ``PATCH``-pixel patches replaced by mid-grey, and the network's
stride-4 features (:meth:`CenterNetLesion.features`, i.e. the encoder and the top-down path the
detector heads read) predict the original pixels of those patches through a throw-away
``1 x 1`` convolution and a pixel shuffle; the loss is the mean squared error on the masked
pixels. Filling a 16-pixel hole needs what surrounds it (organ walls, vessels, lesion edges).

Slices: the key slices of every lesion of the manifest with their series' slices at
``SLICE_OFFSETS`` (only the images are read, never a box or a label), rescaled, windowed and
cut into windows placed uniformly on each slice, with random scale and flips. Everything is
drawn from ``seed``, so a pretraining gives the same weights each time it runs.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .centernet import STRIDE
from .dataset import KeySliceDataset, resample_window

__all__ = ["masked_pretrain", "PATCH", "MASK_RATIO", "SLICE_OFFSETS"]

#: Side of a masked patch in input pixels (4 x 4 stride-4 cells).
PATCH = 16
#: Share of the patches masked in each window.
MASK_RATIO = 0.5
#: Slices of each key slice's series used (whole slices away from the key slice).
SLICE_OFFSETS = (0, -4, 4, -8, 8)


def mask_patches(images: torch.Tensor, ratio: float, gen: torch.Generator) -> torch.Tensor:
    """A ``(B, 1, H, W)`` mask, 1 on the masked ``PATCH``-pixel patches (H, W multiples)."""
    b, _, h, w = images.shape
    gh, gw = h // PATCH, w // PATCH
    n = gh * gw
    k = max(1, int(round(ratio * n)))
    order = torch.rand((b, n), generator=gen).argsort(1)
    m = torch.zeros((b, n))
    m.scatter_(1, order[:, :k], 1.0)
    m = m.view(b, 1, gh, gw)
    return F.interpolate(m, scale_factor=PATCH, mode="nearest")


def masked_pretrain(
    model: nn.Module,
    lesions: pd.DataFrame,
    images_root,
    *,
    steps: int,
    batch_size: int,
    crop: int,
    seed: int,
    lr: float,
    dataset_kwargs: dict,
    scale_range: tuple[float, float] = (0.85, 1.15),
) -> dict:
    """Pretrain ``model``'s features (in place) by masked-patch reconstruction.

    Parameters
    ----------
    model : CenterNetLesion
        A freshly built network (its heads are not touched).
    lesions : pandas.DataFrame
        Manifest rows whose series give the slices (every split: no label is read).
    images_root : path
    steps : int
        Optimiser steps (AdamW at ``lr``, linear warm-up over the first tenth).
    batch_size, crop : int
        Windows per step and their side in pixels (a multiple of ``PATCH``).
    seed : int
    dataset_kwargs : dict
        ``image_size``, ``spacing_mm``, ``slice_spacing_mm``, ``window``, ``cache_mb`` of the
        detector (the slices are preprocessed exactly as its inputs).
    scale_range : (float, float)

    Returns
    -------
    dict
        ``steps``, ``windows``, ``slices``, ``loss_first`` and ``loss_last`` (mean of the first
        and last 20 steps), ``cpu_s`` (CPU-seconds of this process).
    """
    c0 = time.process_time()
    crop = int(crop)
    if crop % PATCH:
        raise ValueError(f"the pretraining window ({crop} px) must be a multiple of {PATCH}")
    files = lesions.drop_duplicates("file_name")
    ds = KeySliceDataset(files, images_root, unannotated="none", check=True, **dataset_kwargs)
    pool: list[tuple[int, int]] = []
    for i, row in enumerate(ds.rows):
        key = int(row["key_slice_index"])
        lo, hi = int(row["slice_start"]) - key, int(row["slice_end"]) - key
        pool += [(i, o) for o in SLICE_OFFSETS if lo <= o <= hi]
    rng = np.random.default_rng([int(seed), 7])
    gen = torch.Generator().manual_seed(int(seed) * 7919 + 11)
    torch.manual_seed(int(seed) + 17)
    d = model.smooth[0].out_channels
    head = nn.Conv2d(d, 3 * STRIDE * STRIDE, 1)
    params = [p for n, p in model.named_parameters() if not n.startswith(("heatmap.", "box.", "classes."))]
    opt = torch.optim.AdamW(params + list(head.parameters()), lr=lr, weight_decay=1e-4)
    model.train()
    warm = max(1, steps // 10)
    losses = []
    for step in range(int(steps)):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / warm)
        batch = []
        for _ in range(int(batch_size)):
            i, off = pool[int(rng.integers(len(pool)))]
            base, _ = ds._base(i, off)
            h0, w0 = base.shape[-2:]
            s = float(rng.uniform(*scale_range))
            h, w = int(h0 * s), int(w0 * s)
            x0 = int(rng.integers(0, max(w - crop, 0) + 1))
            y0 = int(rng.integers(0, max(h - crop, 0) + 1))
            img = resample_window(base, s, x0, y0, crop)
            img[:, max(0, min(crop, h - y0)) :, :] = 0.0
            img[:, :, max(0, min(crop, w - x0)) :] = 0.0
            if rng.random() < 0.5:
                img = img[:, :, ::-1]
            batch.append(torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)))
        x = torch.stack(batch)
        mask = mask_patches(x, MASK_RATIO, gen)
        xin = x * (1 - mask) + 0.5 * mask
        pred = F.pixel_shuffle(head(model.features(xin)), STRIDE)
        err = ((pred - x) ** 2 * mask).sum() / (mask.sum() * x.shape[1]).clamp(min=1.0)
        opt.zero_grad()
        err.backward()
        opt.step()
        losses.append(float(err.item()))
    n = min(20, len(losses))
    return {
        "steps": int(steps),
        "windows": int(steps) * int(batch_size),
        "slices": len(pool),
        "loss_first": float(np.mean(losses[:n])) if n else None,
        "loss_last": float(np.mean(losses[-n:])) if n else None,
        "cpu_s": time.process_time() - c0,
    }

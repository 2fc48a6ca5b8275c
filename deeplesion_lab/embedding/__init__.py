"""Lesion embeddings (Yan et al., CVPR 2018): patches, network, sequential sampling, embedder.

Examples
--------
>>> from deeplesion_lab.embedding import LesionEmbedder, PatchConfig, build_patches
>>> patches = build_patches(manifest, PatchConfig(), cache_dir="runs/demo/cache")  # doctest: +SKIP
>>> emb = LesionEmbedder(epochs=5).fit(patches)                                    # doctest: +SKIP
>>> vectors = emb.transform(patches)                                                # doctest: +SKIP
"""

from .dataset import (
    LesionPatchDataset,
    PatchConfig,
    PatchSet,
    build_patches,
    context_summary,
    lesion_meta,
)
from .embedder import LesionEmbedder
from .network import ARCHS, CheckpointError, EmbeddingNet, load_pretrained
from .sampling import SequentialSampler, sequential_triplet_loss

__all__ = [
    "ARCHS",
    "CheckpointError",
    "EmbeddingNet",
    "LesionEmbedder",
    "LesionPatchDataset",
    "PatchConfig",
    "PatchSet",
    "SequentialSampler",
    "build_patches",
    "context_summary",
    "lesion_meta",
    "load_pretrained",
    "sequential_triplet_loss",
]

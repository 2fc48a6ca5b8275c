"""The embedding step: train the lesion embedder on the run's manifest, write the embeddings.

``deeplesion-lab embed`` parses its arguments into :class:`EmbedSettings` and calls
:func:`embed_run`; so does the pipeline.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import LabError
from ..run import RunDir

__all__ = ["EmbedResult", "EmbedSettings", "embed_done", "embed_run"]

#: Who may lend the sampler its coarse types (the evaluation protocol's roles).
SAMPLER_ROLES = {"seed+val": ("seed", "val"), "seed": ("seed",), "none": ()}


@dataclass
class EmbedSettings:
    """Settings of :func:`embed_run` (the ``embed`` command's options, same defaults).

    Attributes
    ----------
    epochs, arch, embed_dim, batch_size, lr, seed
        The :class:`~deeplesion_lab.embedding.LesionEmbedder` parameters of the same names.
    channels : {"windows", "context"}
        Patch channels (:class:`~deeplesion_lab.embedding.PatchConfig`).
    context_mm : float
        Side in mm of the fixed-size context crop beside the lesion patch
        (:attr:`~deeplesion_lab.embedding.PatchConfig.context_mm`; 0: none, the network before
        issue 15's context branch).
    type_weight, uniformity_weight : float or None
        Loss weights; None keeps the embedder's defaults.
    sampler_types : {"seed+val", "seed", "none"}
        Whose coarse types the sampler may use (test lesions' never).
    use_pseudo_labels : bool
        Also sample by the run's pseudo-labels (from an earlier ``mine``), for lesions outside
        the protocol's test role.
    labels_from_store : bool
        Also sample by the label store's corrected labels (non-test lesions).
    hold_out : str or None
        Official split(s) (``"test"``, ``"val+test"``) whose lesions never lend the sampler a
        type: not their manifest type, pseudo-label or label-store label. The pipeline holds out
        the split its detectors are scored on class-aware, as ``mine --hold-out`` does; None
        (the ``embed`` command's default): the protocol roles alone decide.
    db : str or None
        Label store for ``labels_from_store`` (default the run's ``labels.sqlite``).
    retrain : bool
        Train again even if a checkpoint with the same settings exists.
    present_only : bool
        Embed only the lesions whose key slice is on disk (a partial download).
    pretrained : str or None
        Local checkpoint to initialise the network from.
    workers, threads, progress
        DataLoader workers, torch CPU threads, progress bars.
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (:func:`deeplesion_lab.device.resolve_device`).
    micro_batches : int
        Parts of each batch with summed gradients (under torchrun at least one per process).
    """

    epochs: int = 10
    arch: str = "small"
    embed_dim: int = 128
    channels: str = "windows"
    context_mm: float = 80.0
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    type_weight: float | None = None
    uniformity_weight: float | None = None
    sampler_types: str = "seed+val"
    use_pseudo_labels: bool = False
    labels_from_store: bool = False
    hold_out: str | None = None
    db: str | None = None
    retrain: bool = False
    present_only: bool = False
    pretrained: str | None = None
    workers: int = 0
    threads: int = 2
    progress: bool = True
    device: str = "cpu"
    micro_batches: int = 1


@dataclass
class EmbedResult:
    """What :func:`embed_run` did: lesions embedded, whether the checkpoint was reused."""

    n_lesions: int
    dim: int
    reused: bool
    sampler_types: int
    pseudo_labels_used: int
    store_labels_used: int
    seconds: float


def embed_done(run: RunDir) -> bool:
    """Whether the run has its embeddings (the pipeline skips the step then)."""
    return run.embeddings.is_file()


def embed_run(
    run: RunDir | str | Path,
    manifest: str | Path,
    settings: EmbedSettings | None = None,
    *,
    truth: str | Path | None = None,
    say: Callable[[str], None] = print,
) -> EmbedResult:
    """Train the embedder on ``manifest`` and write the run's ``embeddings.parquet``.

    Creates the run (``run.json``) on first use, cuts lesion patches (cached under
    ``cache/patches``), trains with the CVPR 2018 sequential triplet sampling (type where
    ``settings.sampler_types`` allows, then location, then size), saves ``embedder.pt`` and
    ``embedder.json`` and writes the embeddings and ``metrics.json``'s ``embedding`` section.
    An interrupted run resumes: finished patch chunks, a trained checkpoint with the same
    settings and finished extraction chunks are reused.

    Parameters
    ----------
    run : RunDir or path
        The run directory.
    manifest : path
        The manifest (parquet, with images).
    settings : EmbedSettings, optional
        Defaults as the ``embed`` command's.
    truth : path, optional
        Truth file recorded in ``run.json`` for evaluation (never used to train).
    say : callable
        Where the step's one-line messages go.

    Raises
    ------
    LabError
        Fewer than 3 lesions, a negative epoch count, a missing truth file, another manifest
        than the run's, or an unusable label store.
    """
    # Passive OpenMP waiting: on a busy machine spinning threads slow torch down several-fold.
    # Only effective when torch is not imported yet (it reads the variable when it loads).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ..availability import record_run_images, select_present
    from ..distributed import is_main, world_size
    from ..embedding import LesionEmbedder, PatchConfig, build_patches, context_summary
    from ..evaluation import protocol_split
    from ..lesion_types import TYPE_CODES
    from ..manifest import read_manifest

    s = settings if settings is not None else EmbedSettings()
    run = run if isinstance(run, RunDir) else RunDir(run)
    manifest = Path(manifest)
    if s.sampler_types not in SAMPLER_ROLES:
        raise LabError(f"sampler_types must be one of {', '.join(SAMPLER_ROLES)}, "
                       f"got {s.sampler_types!r}")
    t0 = time.time()
    df, availability = select_present(read_manifest(manifest), s.present_only, step="embed")
    if not availability.complete:
        say(f"embed {availability.summary()}")
    if len(df) < 3:
        raise LabError(f"{manifest}: {len(df)} lesion(s); training an embedding needs at least 3")
    if s.epochs < 0:
        raise LabError(f"--epochs must be >= 0, got {s.epochs}")
    if truth is not None and not Path(truth).is_file():
        raise LabError(f"{truth}: truth file not found")
    from ..lesion_types import held_out

    held = held_out(df["split"].to_numpy(), s.hold_out, "embed")  # checked before the patches
    config = PatchConfig(channels=s.channels, context_mm=float(s.context_mm))
    if run.run_json.is_file() and run.manifest_path() != manifest.resolve():
        run.init(manifest)  # raises the clear "other manifest" error
    patches = build_patches(df, config, cache_dir=run.patch_cache, num_workers=s.workers,
                            progress=s.progress)
    if (line := context_summary(patches)) is not None:
        say(line)
    run.init(manifest, truth)
    record_run_images(run.run_json, availability)

    roles = protocol_split(df["patient_index"].to_numpy())
    types = np.where(np.isin(roles, list(SAMPLER_ROLES[s.sampler_types])), patches.types, -1)
    n_held_out = int((held & (types >= 1)).sum())
    types[held] = -1
    # a held-out lesion lends no type below either (as a test-role lesion)
    roles = np.where(held, "test", roles).astype(object)
    n_pseudo = 0
    if s.use_pseudo_labels:
        pl = run.load_pseudo_labels()
        m = dict(zip(pl["lesion_id"].astype(str), pl["label"].astype(str), strict=True))
        fill = np.array([TYPE_CODES.get(m.get(i, ""), -1) for i in patches.lesion_ids])
        # never a test lesion's: mined clusters are named by the manifest's types (test
        # lesions' too), so its pseudo-label would carry its own type into the training
        use = (types < 1) & (fill >= 1) & (roles != "test")
        types[use] = fill[use]
        n_pseudo = int(use.sum())
    n_store = 0
    if s.labels_from_store:
        from ..labels.store import run_store_target

        target, namespace = run_store_target(run, s.db)
        n_store = apply_store_labels(types, patches.lesion_ids, roles, target, namespace)

    emb = LesionEmbedder(
        embed_dim=s.embed_dim, arch=s.arch, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr,
        seed=s.seed, num_threads=s.threads, progress=s.progress,
        pretrained=str(s.pretrained) if s.pretrained else None,
        # under torchrun one part per process at least: the record says what was trained
        device=s.device, micro_batches=max(int(s.micro_batches), world_size()),
    )
    for name in ("type_weight", "uniformity_weight"):
        if getattr(s, name) is not None:
            emb.set_params(**{name: getattr(s, name)})
    ckpt = run.embedder
    record = ckpt.with_suffix(".json")
    # where it runs is no training setting; micro_batches is one, recorded when not 1
    params = {k: v for k, v in emb.get_params().items()
              if k not in ("progress", "num_threads", "device", "amp")
              and not (k == "micro_batches" and v == 1)}
    training = {
        "params": params,
        "patch_config": dict(config.__dict__),
        "types_hash": hashlib.sha1(types.astype(np.int64).tobytes()).hexdigest()[:12],
        "manifest_data_hash": df.attrs.get("data_hash", ""),
        "sampler_type_roles": s.sampler_types,
        "sampler_types": int((types >= 1).sum()),
        "pseudo_labels_used": n_pseudo,
        "store_labels_used": n_store,
    }
    if s.hold_out:  # only then, so that earlier checkpoints keep matching
        training["hold_out"] = s.hold_out
    reused = False
    if ckpt.is_file() and record.is_file() and not s.retrain:
        if json.loads(record.read_text()).get("training") == training:
            emb = LesionEmbedder.load(ckpt)
            emb.progress, emb.num_threads, emb.device = s.progress, s.threads, s.device
            reused = True
            say(f"reusing the trained embedder {ckpt} (same settings; --retrain to train again)")
    if not reused:
        emb.fit(patches, y=types)
    if not is_main():  # under torchrun: rank 0 saves, extracts and records
        return EmbedResult(len(patches), int(emb.embed_dim), reused, training["sampler_types"],
                           n_pseudo, n_store, round(time.time() - t0, 1))
    if not reused:
        emb.save(ckpt, extra={"training": training, "manifest": str(manifest.resolve())})
    resume = run.embedding_chunks
    vectors = emb.transform(patches, resume_dir=resume)
    run.save_embeddings(
        patches.lesion_ids, vectors,
        metadata={"deeplesion_lab.model_hash": emb.model_hash(),
                  "deeplesion_lab.data_hash": df.attrs.get("data_hash", "")},
    )
    shutil.rmtree(resume, ignore_errors=True)
    last = emb.history_[-1].get("triplet_loss") if emb.history_ else None
    seconds = round(time.time() - t0, 1)
    run.update_metrics({"embedding": {
        "n_lesions": len(patches), "manifest_lesions": availability.n_lesions,
        "epochs": s.epochs, "final_triplet_loss": last,
        "sampler_types_used": training["sampler_types"], "pseudo_labels_used": n_pseudo,
        "store_labels_used": n_store,
        "hold_out": s.hold_out, "n_types_held_out": n_held_out,
        "model_hash": emb.model_hash(), "seconds": seconds,
    }})
    say(f"embedded {len(patches)} lesions ({vectors.shape[1]}-d) in {time.time() - t0:.1f} s; "
        f"sampler knew the type of {training['sampler_types']} lesions (protocol roles "
        f"{s.sampler_types}{' + pseudo-labels' if n_pseudo else ''}"
        f"{f' + {n_store} corrected labels' if n_store else ''}; never test types"
        f"{f'; the {s.hold_out} split held out: {n_held_out} types not lent' if s.hold_out else ''})")
    say(f"wrote {ckpt}, {record.name} and {run.embeddings}")
    return EmbedResult(len(patches), int(vectors.shape[1]), reused, training["sampler_types"],
                       n_pseudo, n_store, seconds)


def apply_store_labels(types: np.ndarray, lesion_ids, roles, db,
                       namespace: str | None = None) -> int:
    """Overwrite ``types`` (in place) with the label store's corrected labels of non-test
    lesions; returns how many lesions took one."""
    from ..labels import LabelStore
    from ..lesion_types import TYPE_CODES

    if not str(db).startswith("postgresql") and not Path(db).is_file():
        raise LabError(f"{db}: no label store for --labels-from-store (run `labels init` first)")
    with LabelStore.open(db, create=False, namespace=namespace) as store:
        cur = store.current_labels()
    cur = cur[cur["source"].isin(["corrected", "added"]) & cur["label"].notna()]
    # classes people added beyond the 8 coarse types get their own codes (9, 10, ...)
    extra = sorted(set(cur["label"].astype(str)) - set(TYPE_CODES))
    codes = {**TYPE_CODES, **{name: 9 + k for k, name in enumerate(extra)}}
    m = dict(zip(cur["lesion_id"].astype(str), cur["label"].astype(str), strict=True))
    code = np.array([codes.get(m.get(str(i), ""), -1) for i in lesion_ids])
    use = (code >= 1) & (np.asarray(roles) != "test")
    types[use] = code[use]
    return int(use.sum())

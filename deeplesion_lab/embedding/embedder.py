"""``LesionEmbedder``: train the embedding network with sequential triplets, extract embeddings,
save and load checkpoints with a config record."""

from __future__ import annotations

import copy
import hashlib
import time
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from .. import distributed
from ..device import autocast, grad_scaler, resolve_device
from ..device import torch_threads as _torch_threads
from ..errors import LabError
from ..params import Interval, StrOptions, validate_params
from ..transforms import flip_boxes_lr, jitter_intensity
from .dataset import PatchConfig, PatchSet
from .network import ARCHS, CheckpointError, EmbeddingNet, load_pretrained
from .sampling import SequentialSampler, sequential_triplet_loss

__all__ = ["LesionEmbedder", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "deeplesion-lab-embedder"
CHECKPOINT_VERSION = 1
#: Metadata inputs of the network: location x, y, z and log long diameter.
N_META = 4


def _check_patchset(X, what: str, min_n: int = 1) -> PatchSet:
    if not isinstance(X, PatchSet):
        raise LabError(
            f"{what} expects a PatchSet (deeplesion_lab.embedding.build_patches), "
            f"got {type(X).__name__}"
        )
    if len(X) < min_n:
        raise LabError(
            f"{what} needs at least {min_n} lesion(s), got {len(X)}"
            + (" (triplet training compares each lesion with others)" if min_n > 1 else "")
        )
    return X


def _ids_hash(ids: np.ndarray) -> str:
    return hashlib.sha1("\n".join(map(str, ids)).encode()).hexdigest()[:12]


class LesionEmbedder(TransformerMixin, BaseEstimator):
    """Lesion embeddings learned with the CVPR 2018 sequential triplet sampling.

    Parameters
    ----------
    embed_dim : int, default 128
        Embedding size.
    arch : {"small", "resnet18"}, default "small"
        Backbone of :class:`~deeplesion_lab.embedding.network.EmbeddingNet`.
    width : int, default 16
        Width of the small backbone.
    epochs : int, default 10
        Training epochs (one sequence per lesion per epoch).
    batch_size : int, default 32
        Sequences per step (5 patches each).
    lr : float, default 1e-3
        Adam learning rate.
    weight_decay : float, default 1e-4
    margin : float, default 0.1
        Triplet margin on squared distances of unit vectors.
    n_neighbors : int, default 20
        "Nearby" neighbourhood of the sampler.
    aux_weight : float, default 0.0
        Weight of an optional auxiliary self-supervised loss added to the paper's triplet loss:
        a linear head regresses the lesion's normalised location and log size from the
        embedding (both come with every lesion, no manual label). 0 disables it.
    type_weight : float, default 1.0
        Weight of a cross-entropy loss on the lesions whose type the sampler knows (``y >= 1``),
        through a temporary cosine-classifier head, added to the triplet loss. It uses no label
        the sampler does not already use; it costs nothing measurable. 0 gives the paper's
        triplet loss alone (the default before issue 15; ``bench/results/embedding.md`` compares
        them).
    uniformity_weight : float, default 0.0
        Weight of the uniformity loss of Wang and Isola (ICML 2020), ``log mean exp(-2 |zi -
        zj|^2)`` over the batch's distinct lesions, added to the triplet loss: it spreads the
        embeddings over the sphere against collapse onto a few directions. 0 disables it.
    contrastive_weight : float, default 0.0
        Weight of an InfoNCE loss (SimCLR, Chen et al. 2020; temperature 0.1) between each
        sequence's anchor and a second, independently augmented view of it (flip, intensity,
        shift of a few pixels, noise), the other anchors of the batch being the negatives: it
        uses every lesion, labelled or not. 0 disables it.
    propagate_types : int, default 0
        Self-training of the sampler: every ``propagate_types`` epochs the current network
        embeds every lesion, lesions of unknown type get the type of their nearest known-type
        neighbours when those agree (at least ``propagate_min_share``), and the sampler is refitted
        with them, so that the type > location > size order reaches lesions nobody labelled.
        Given types are never changed. 0 disables it.
    propagate_min_share : float, default 0.6
        Share of the ``propagate_neighbors`` nearest known-type neighbours that must agree.
    propagate_neighbors : int, default 5
    use_metadata : bool, default True
        Feed the lesion's normalised location (x, y, z) and log long diameter to the network
        beside the image. Both come with every lesion without manual labelling (DeepLesion's
        location is itself derived from the CT volume by self-supervised body-part regression;
        the diameter from the RECIST measurement that defines the lesion). ``False`` gives the
        image-only network of the paper.
    warm_start : bool, default False
        ``fit`` continues training the current network (e.g. with new pseudo-types) instead of
        starting from a new one.
    pretrained : str or path, optional
        Local checkpoint to initialise from (see :func:`~deeplesion_lab.embedding.network.load_pretrained`).
    seed : int, default 0
    num_threads : int, default 2
        Torch CPU threads while fitting and extracting (restored afterwards).
    device : str, default "cpu"
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (:func:`deeplesion_lab.device.resolve_device`).
    amp : bool, default True
        Mixed precision in training on CUDA; the CPU always trains in float32.
    micro_batches : int, default 1
        Cut each batch of sequences into this many parts whose gradients are summed, each
        weighted by its share (running statistics from the first). Under ``torchrun`` with N
        processes it is at least N, one part per process, so that N processes train exactly
        as one process with ``micro_batches=N``.
    progress : bool, default False
        Progress bars.

    Attributes
    ----------
    net_ : EmbeddingNet
    patch_config_ : PatchConfig
    history_ : list of dict
        Loss per epoch.
    data_hash_ : str
        Hash of the training lesion ids.
    n_train_ : int
    """

    _parameter_constraints: dict = {
        "embed_dim": [Interval(Integral, 1, None, closed="left")],
        "arch": [StrOptions(set(ARCHS))],
        "width": [Interval(Integral, 1, None, closed="left")],
        "epochs": [Interval(Integral, 0, None, closed="left")],
        # a batch holds sequences of 5 patches; batch norm needs at least two of them
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "margin": [Interval(Real, 0, None, closed="left")],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "aux_weight": [Interval(Real, 0, None, closed="left")],
        "type_weight": [Interval(Real, 0, None, closed="left")],
        "uniformity_weight": [Interval(Real, 0, None, closed="left")],
        "contrastive_weight": [Interval(Real, 0, None, closed="left")],
        "propagate_types": [Interval(Integral, 0, None, closed="left")],
        "propagate_min_share": [Interval(Real, 0, 1, closed="both")],
        "propagate_neighbors": [Interval(Integral, 1, None, closed="left")],
        "use_metadata": ["boolean"],
        "warm_start": ["boolean"],
        "pretrained": [None, str, Path],
        "seed": [Interval(Integral, 0, None, closed="left")],
        "num_threads": [None, Interval(Integral, 1, None, closed="left")],
        "device": [str],
        "amp": ["boolean"],
        "micro_batches": [Interval(Integral, 1, None, closed="left")],
        "progress": ["boolean"],
    }

    def __init__(
        self,
        embed_dim: int = 128,
        arch: str = "small",
        width: int = 16,
        epochs: int = 10,
        batch_size: int = 32,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        margin: float = 0.1,
        n_neighbors: int = 20,
        aux_weight: float = 0.0,
        type_weight: float = 1.0,
        uniformity_weight: float = 0.0,
        contrastive_weight: float = 0.0,
        propagate_types: int = 0,
        propagate_min_share: float = 0.6,
        propagate_neighbors: int = 5,
        use_metadata: bool = True,
        warm_start: bool = False,
        pretrained: str | None = None,
        seed: int = 0,
        num_threads: int = 2,
        device: str = "cpu",
        amp: bool = True,
        micro_batches: int = 1,
        progress: bool = False,
    ):
        self.embed_dim = embed_dim
        self.arch = arch
        self.width = width
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.margin = margin
        self.n_neighbors = n_neighbors
        self.aux_weight = aux_weight
        self.type_weight = type_weight
        self.uniformity_weight = uniformity_weight
        self.contrastive_weight = contrastive_weight
        self.propagate_types = propagate_types
        self.propagate_min_share = propagate_min_share
        self.propagate_neighbors = propagate_neighbors
        self.use_metadata = use_metadata
        self.warm_start = warm_start
        self.pretrained = pretrained
        self.seed = seed
        self.num_threads = num_threads
        self.device = device
        self.amp = amp
        self.micro_batches = micro_batches
        self.progress = progress

    # building --------------------------------------------------------------------------------
    def _make_net(self, config: PatchConfig) -> EmbeddingNet:
        import torch

        if self.arch not in ARCHS:
            raise LabError(f"unknown embedding architecture {self.arch!r}; known: {', '.join(ARCHS)}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = EmbeddingNet(config.in_channels, self.embed_dim, self.arch, self.width,
                               n_meta=N_META if self.use_metadata else 0,
                               context_channels=config.context_channels)
        if self.pretrained:
            load_pretrained(net, self.pretrained)
        return net

    def initialize(self, X: PatchSet | PatchConfig) -> LesionEmbedder:
        """Build the (untrained, or pretrained-initialised) network without training it."""
        config = X.config if isinstance(X, PatchSet) else X
        self.patch_config_ = config
        self.net_ = self._make_net(config).eval()
        self.history_ = []
        self.data_hash_ = ""
        self.n_train_ = 0
        return self

    # training --------------------------------------------------------------------------------
    def fit(self, X: PatchSet, y: np.ndarray | None = None) -> LesionEmbedder:
        """Train on the patches with sequential triplets.

        Parameters
        ----------
        X : PatchSet
            Lesion patches and metadata.
        y : (N,) int array, optional
            Type codes for the sampler (``-1`` unknown); default ``X.types``. Pass only the
            types you may train on (e.g. labelled seeds, or pseudo-labels).
        """
        import torch
        from tqdm.auto import tqdm

        validate_params(self, LabError)
        X = _check_patchset(X, "LesionEmbedder.fit", min_n=3)
        types = X.types if y is None else np.asarray(y, dtype=np.int64)
        if types.shape != (len(X),):
            raise LabError(f"y must hold {len(X)} type codes, got shape {types.shape}")
        if not (self.warm_start and hasattr(self, "net_")):
            self.initialize(X)
        sampler = SequentialSampler(self.n_neighbors, seed=self.seed).fit(
            X.locations, X.sizes_mm, types
        )
        device = resolve_device(self.device)
        ctx = distributed.context(device)
        m = int(self.micro_batches)
        if ctx.active:
            if m > 1 and m % ctx.world:
                raise LabError(f"micro_batches={m} is not a multiple of the {ctx.world} "
                               "training processes")
            m = max(m, ctx.world)
        net = self.net_.to(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + 2)
            aux = torch.nn.Linear(self.embed_dim, 4)
            type_head = torch.nn.Linear(self.embed_dim, max(9, int(types.max()) + 1), bias=False)
        aux.to(device)
        type_head.to(device)
        targets = torch.from_numpy(_aux_targets(X)).float().to(device)
        known_t = torch.from_numpy(np.where(types >= 1, types, -1).astype(np.int64)).to(device)
        use_types = bool(self.type_weight) and int((types >= 1).sum()) >= 2
        params = list(net.parameters()) + (list(aux.parameters()) if self.aux_weight else [])
        params += list(type_head.parameters()) if use_types else []
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        scaler = grad_scaler(device, self.amp)
        start = len(self.history_)
        rng = np.random.default_rng([self.seed, start])
        gen = torch.Generator().manual_seed(self.seed + start)
        bs = int(self.batch_size)
        if m > bs:
            raise LabError(f"batch_size={bs} is smaller than the {m} micro-batches (one per "
                           "training process at least)")
        every = int(self.propagate_types)
        sampler_types = types
        with _torch_threads(self.num_threads):
            net.train()
            bar = tqdm(range(int(self.epochs)), desc="embedder", unit="epoch",
                       disable=not (self.progress and ctx.main))
            for epoch in bar:
                n_prop = None
                if every > 0 and epoch > 0 and epoch % every == 0:
                    sampler_types = self._propagated_types(X, types)
                    n_prop = int(((sampler_types >= 1) & (types < 1)).sum())
                    sampler = SequentialSampler(self.n_neighbors, seed=self.seed).fit(
                        X.locations, X.sizes_mm, sampler_types
                    )
                    net.train()
                seqs = sampler.sample(epoch=start + epoch)
                seqs = seqs[rng.permutation(len(seqs))]
                losses, type_losses, nce_losses = [], [], []
                for s in range(0, len(seqs), bs):
                    batch = seqs[s : s + bs]
                    if len(batch) < 2:
                        continue
                    opt.zero_grad()
                    # [triplet, type loss, share with a type loss, contrastive], weighted by share
                    vals = np.zeros(4)
                    for g, part in enumerate(distributed.shards(batch, m)):
                        if g % ctx.world != ctx.rank:
                            continue
                        share = len(part) / len(batch)
                        if not len(part):  # a short batch: joins the exchange with weight 0
                            part = batch[:1]
                        # one micro-batch draws its augmentations from (seed, epoch, batch,
                        # part), the same on one process as on several
                        pgen = gen if m == 1 else torch.Generator().manual_seed(
                            hash((self.seed, start + epoch, s, g)) & 0x7FFFFFFF)
                        with distributed.keep_buffers(net, g != 0):
                            trip, t_loss, nce = self._step_loss(
                                net, X, part, pgen, aux, type_head, targets, known_t,
                                use_types, device, scaler, share)
                        vals += share * np.array([trip, t_loss or 0.0,
                                                  0.0 if t_loss is None else 1.0, nce or 0.0])
                    distributed.sum_gradients(params, ctx)
                    vals = ctx.all_sum(vals)
                    scaler.step(opt)
                    scaler.update()
                    distributed.broadcast_buffers(net, ctx)
                    losses.append(float(vals[0]))
                    if vals[2] > 0:
                        type_losses.append(float(vals[1] / vals[2]))
                    nce_losses.append(float(vals[3]))
                mean = float(np.mean(losses)) if losses else float("nan")
                rec = {"epoch": start + epoch + 1, "triplet_loss": mean}
                if type_losses:
                    rec["type_loss"] = float(np.mean(type_losses))
                if self.contrastive_weight and nce_losses:
                    rec["contrastive_loss"] = float(np.mean(nce_losses))
                if n_prop is not None:
                    rec["propagated_types"] = n_prop
                if ctx.active:
                    rec["processes"] = ctx.world
                self.history_.append(rec)
                bar.set_postfix(loss=f"{mean:.4f}")
            net.eval()
        self.data_hash_ = _ids_hash(X.lesion_ids)
        self.n_train_ = len(X)
        return self

    def _step_loss(self, net, X: PatchSet, seqs: np.ndarray, gen, aux, type_head, targets,
                   known_t, use_types: bool, device, scaler, weight: float
                   ) -> tuple[float, float | None, float | None]:
        """Forward and backward of one micro-batch of sequences (loss scaled by ``weight``);
        returns its triplet loss, its type loss (``None`` without known types) and its
        contrastive loss (``None`` without one)."""
        import torch

        idx = seqs.ravel()
        x, boxes, meta, cx = _batch(X, idx, augment=True, gen=gen)
        x, boxes, meta = x.to(device), boxes.to(device), meta.to(device)
        t_val = nce_val = None
        with autocast(device, self.amp):
            e = net(x, boxes, meta if self.use_metadata else None, _to(cx, device)).float()
        loss = sequential_triplet_loss(e, 5, self.margin)
        trip = loss.item()
        if self.aux_weight:
            aux_loss = torch.nn.functional.mse_loss(aux(e), targets[idx])
            loss = loss + self.aux_weight * aux_loss
        if self.uniformity_weight:
            _, first = np.unique(idx, return_index=True)
            z = e[torch.from_numpy(np.sort(first)).to(device)]
            sq = torch.pdist(z).pow(2)
            loss = loss + self.uniformity_weight * sq.mul(-2.0).exp().mean().log()
        if self.contrastive_weight:
            anchors = seqs[:, 0]
            x2, b2, m2, c2 = _batch(X, anchors, augment=True, gen=gen, strong=True)
            with autocast(device, self.amp):
                z2 = net(x2.to(device), b2.to(device), m2.to(device) if self.use_metadata
                         else None, _to(c2, device)).float()
            z1 = e[:: seqs.shape[1]]
            logits = z1 @ z2.T / 0.1
            lab = torch.arange(len(anchors), device=device)
            nce = 0.5 * (torch.nn.functional.cross_entropy(logits, lab)
                         + torch.nn.functional.cross_entropy(logits.T, lab))
            loss = loss + self.contrastive_weight * nce
            nce_val = nce.item()
        if use_types:
            kt = known_t[idx]
            has = kt >= 1
            if bool(has.any()):
                w = torch.nn.functional.normalize(type_head.weight, dim=1)
                logits = e[has] @ w.T / 0.1
                t_loss = torch.nn.functional.cross_entropy(logits, kt[has])
                loss = loss + self.type_weight * t_loss
                t_val = t_loss.item()
        scaler.scale(loss * weight).backward()
        return trip, t_val, nce_val

    def _propagated_types(self, X: PatchSet, types: np.ndarray) -> np.ndarray:
        """``types`` with unknown lesions filled by agreeing known-type neighbours in the
        current embedding (see ``propagate_types``)."""
        known = np.flatnonzero(types >= 1)
        out = types.copy()
        if len(known) < 2:
            return out
        was = self.progress
        self.progress = False
        try:
            E = self.transform(X)
        finally:
            self.progress = was
        self.net_.train()
        k = int(min(self.propagate_neighbors, len(known)))
        sim = E @ E[known].T  # unit vectors: cosine
        nb = np.argsort(-sim, axis=1)[:, :k]
        votes = types[known][nb]
        unknown = np.flatnonzero(types < 1)
        for i in unknown:
            codes, counts = np.unique(votes[i], return_counts=True)
            j = int(np.argmax(counts))
            if counts[j] / k >= self.propagate_min_share:
                out[i] = codes[j]
        return out

    def fine_tune_classes(
        self, X: PatchSet, targets: np.ndarray, epochs: int = 1, lr: float | None = None
    ) -> LesionEmbedder:
        """Fine-tune the network to predict ``targets`` (e.g. cluster ids) from the embedding,
        through a temporary linear head and cross-entropy (the deep-clustering step)."""
        import torch
        from torch import nn

        self._check_fitted()
        X = _check_patchset(X, "fine_tune_classes", min_n=2)
        t = np.asarray(targets, dtype=np.int64)
        if t.shape != (len(X),) or t.min() < 0:
            raise LabError(f"targets must be {len(X)} non-negative class ids, got shape {t.shape}")
        n_classes = int(t.max()) + 1
        device = resolve_device(self.device, quiet=True)
        net = self.net_.to(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + 1)
            head = nn.Linear(self.embed_dim, n_classes)
        head.to(device)
        params = list(net.parameters()) + list(head.parameters())
        opt = torch.optim.Adam(params, lr=lr or self.lr * 0.5, weight_decay=self.weight_decay)
        # balance clusters: inverse-frequency class weights
        counts = np.bincount(t, minlength=n_classes).astype(np.float64)
        w = torch.tensor(len(t) / (n_classes * np.maximum(counts, 1.0)), dtype=torch.float32,
                         device=device)
        rng = np.random.default_rng(self.seed + len(self.history_))
        gen = torch.Generator().manual_seed(self.seed + 7)
        bs = max(8, int(self.batch_size) * 4)
        tt = torch.from_numpy(t).to(device)
        scaler = grad_scaler(device, self.amp)
        with _torch_threads(self.num_threads):
            net.train()
            for _ in range(int(epochs)):
                order = rng.permutation(len(X))
                losses = []
                for s in range(0, len(order), bs):
                    idx = order[s : s + bs]
                    if len(idx) < 2:
                        continue
                    x, boxes, meta, cx = _batch(X, idx, augment=True, gen=gen)
                    x, boxes, meta = x.to(device), boxes.to(device), meta.to(device)
                    with autocast(device, self.amp):
                        e = net(x, boxes, meta if self.use_metadata else None,
                                _to(cx, device)).float()
                    logits = head(e) / 0.1  # unit vectors: sharpen
                    loss = nn.functional.cross_entropy(logits, tt[idx], weight=w)
                    opt.zero_grad()
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                    losses.append(loss.item())
                self.history_.append({
                    "epoch": len(self.history_) + 1,
                    "cluster_loss": float(np.mean(losses)) if losses else float("nan"),
                })
            net.eval()
        return self

    # extraction ------------------------------------------------------------------------------
    def transform(
        self,
        X: PatchSet,
        *,
        batch_size: int = 256,
        resume_dir: str | Path | None = None,
        chunk_size: int = 4096,
    ) -> np.ndarray:
        """Embeddings ``(N, embed_dim)`` float32, unit length.

        Parameters
        ----------
        X : PatchSet
        batch_size : int, default 256
            DataLoader batch size.
        resume_dir : path, optional
            Keep finished chunks here (``.npy``, named by model and lesions), so an interrupted
            extraction resumes where it stopped; the caller removes the folder when done.
        chunk_size : int, default 4096
        """
        import torch
        from tqdm.auto import tqdm

        from ..atomic import atomic_path

        self._check_fitted()
        X = _check_patchset(X, "LesionEmbedder.transform")
        if X.config.in_channels != self.patch_config_.in_channels or (
            X.config.size != self.patch_config_.size
        ):
            raise LabError(
                f"patches are {X.config.in_channels}x{X.config.size}px but the embedder was made "
                f"for {self.patch_config_.in_channels}x{self.patch_config_.size}px"
            )
        if bool(X.config.context_mm) != bool(self.patch_config_.context_mm) or (
            X.context is None and self.patch_config_.context_mm
        ):
            raise LabError(
                f"patches have {'a' if X.config.context_mm else 'no'} context crop "
                f"(context_mm={X.config.context_mm}) but the embedder was made for "
                f"context_mm={self.patch_config_.context_mm}"
            )
        out = np.empty((len(X), self.embed_dim), dtype=np.float32)
        rdir = Path(resume_dir) if resume_dir is not None else None
        fp = self.model_hash() if rdir is not None else ""
        device = resolve_device(self.device, quiet=True)
        net = self.net_.to(device).eval()
        bar = tqdm(total=len(X), desc="embeddings", unit="lesion", disable=not self.progress)
        with _torch_threads(self.num_threads), torch.inference_mode():
            for s in range(0, len(X), chunk_size):
                e = min(s + chunk_size, len(X))
                f = rdir / f"emb-{fp}-{_ids_hash(X.lesion_ids[s:e])}.npy" if rdir else None
                if f is not None and f.is_file():
                    out[s:e] = np.load(f)
                    bar.update(e - s)
                    continue
                ctx = X.context[s:e] if X.context is not None else np.zeros((e - s, 0), np.uint8)
                ds = torch.utils.data.TensorDataset(
                    torch.from_numpy(X.patches[s:e]), torch.from_numpy(X.boxes[s:e]),
                    torch.from_numpy(_meta(X.locations[s:e], X.sizes_mm[s:e])),
                    torch.from_numpy(ctx),
                )
                loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False,
                                                     pin_memory=device.type == "cuda")
                pos = s
                for p, b, m, c in loader:
                    p, b = p.to(device, non_blocking=True), b.to(device, non_blocking=True)
                    m = m.to(device, non_blocking=True) if self.use_metadata else None
                    c = c.to(device).float().div_(255.0) if c.ndim == 4 else None
                    out[pos : pos + len(p)] = net(p.float().div_(255.0), b, m, c).float().cpu().numpy()
                    pos += len(p)
                    bar.update(len(p))
                if f is not None:
                    with atomic_path(f) as tmp:
                        with open(tmp, "wb") as fh:
                            np.save(fh, out[s:e])
        bar.close()
        return out

    # persistence -----------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "net_"):
            raise LabError("the embedder is not fitted; call fit (or initialize) first")

    def model_hash(self) -> str:
        """A short hash of the network weights."""
        self._check_fitted()
        h = hashlib.sha1()
        for k, v in self.net_.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().numpy().tobytes())
        return h.hexdigest()[:12]

    def record(self, extra: dict | None = None) -> dict:
        """The config record saved beside the checkpoint."""
        from ..run import versions

        self._check_fitted()
        rec = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "params": self.get_params(),
            "patch_config": dict(self.patch_config_.__dict__),
            "seed": self.seed,
            "data_hash": self.data_hash_,
            "n_train": self.n_train_,
            "model_hash": self.model_hash(),
            "history": self.history_,
            "versions": versions(),
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        rec.update(extra or {})
        return rec

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """Write the checkpoint (``.pt``) and its config record (same name, ``.json``)."""
        import torch

        from ..atomic import atomic_path, write_json

        path = Path(path)
        rec = self.record(extra)
        state = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "params": {k: v for k, v in rec["params"].items() if v is not None},
            "patch_config": rec["patch_config"],
            "state_dict": {k: v.detach().cpu() for k, v in self.net_.state_dict().items()},
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        write_json(rec, path.with_suffix(".json"))
        return path

    @classmethod
    def load(cls, path: str | Path) -> LesionEmbedder:
        """Load a checkpoint written by :meth:`save`.

        Raises
        ------
        CheckpointError
            Missing or unreadable file, not an embedder checkpoint, or weights that do not fit
            the architecture its record names.
        """
        import json

        from .network import _read_checkpoint

        path = Path(path)
        obj = _read_checkpoint(path)
        if obj.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{path}: not a lesion-embedder checkpoint (a plain backbone state dict can be "
                "used as --pretrained instead)"
            )
        params = dict(obj.get("params", {}))
        params.pop("pretrained", None)
        params.pop("device", None)  # where it trained is not where it runs now
        valid = set(cls().get_params())
        emb = cls(**{k: v for k, v in params.items() if k in valid})
        try:
            # checkpoints from before the context crop had none
            config = PatchConfig(**{"context_mm": 0.0, **obj["patch_config"]})
        except (TypeError, KeyError) as exc:
            raise CheckpointError(f"{path}: bad patch config in checkpoint ({exc})") from exc
        emb.patch_config_ = config
        emb.net_ = emb._make_net(config)
        try:
            emb.net_.load_state_dict(obj["state_dict"], strict=True)
        except (RuntimeError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0][:300]
            raise CheckpointError(
                f"{path}: checkpoint of another architecture than its record says "
                f"(arch={emb.arch!r}, embed_dim={emb.embed_dim}): {first}"
            ) from exc
        emb.net_.eval()
        rec_path = path.with_suffix(".json")
        rec = json.loads(rec_path.read_text()) if rec_path.is_file() else {}
        emb.history_ = list(rec.get("history", []))
        emb.data_hash_ = rec.get("data_hash", "")
        emb.n_train_ = int(rec.get("n_train", 0))
        return emb

    def copy(self) -> LesionEmbedder:
        """A deep copy (network included)."""
        return copy.deepcopy(self)


def _aux_targets(X: PatchSet) -> np.ndarray:
    """Standardised location (x, y, z) and log long diameter, the auxiliary regression targets.

    Left-right flips mirror ``x`` in the image but not the body, so ``x`` is taken as the
    distance from the body's midline (``|x - 0.5|``), which a flip does not change.
    """
    t = np.column_stack([
        np.abs(X.locations[:, 0] - 0.5), X.locations[:, 1], X.locations[:, 2],
        np.log(np.maximum(X.sizes_mm, 1e-3)),
    ])
    sd = t.std(0)
    return ((t - t.mean(0)) / np.where(sd > 0, sd, 1.0)).astype(np.float32)


def _meta(locations: np.ndarray, sizes_mm: np.ndarray) -> np.ndarray:
    """Network metadata input: the normalised location centred on the body (-0.5..0.5) and
    the log long diameter centred on 20 mm."""
    loc = np.asarray(locations, dtype=np.float32).reshape(-1, 3) - np.float32(0.5)
    size = np.log(np.maximum(np.asarray(sizes_mm, dtype=np.float32), 1.0) / np.float32(20.0))
    return np.column_stack([loc, size]).astype(np.float32)


def _to(t, device):
    return None if t is None else t.to(device)


def _batch(X: PatchSet, idx: np.ndarray, *, augment: bool, gen=None, strong: bool = False):
    """Float patches in [0, 1], boxes, location input and context crops (None without them)
    for ``idx``; random left-right flips (the location's x and the context crop flip with the
    image) and intensity jitter, batched, with the geometry and the jitter of
    :mod:`deeplesion_lab.transforms` (one factor per patch)."""
    import torch

    x = torch.from_numpy(X.patches[idx]).float().div_(255.0)
    cx = None if X.context is None else torch.from_numpy(X.context[idx]).float().div_(255.0)
    boxes = torch.from_numpy(X.boxes[idx]).clone()
    meta = torch.from_numpy(_meta(X.locations[idx], X.sizes_mm[idx]))
    if augment:
        b = len(idx)
        w = x.shape[-1]
        flip = torch.rand(b, generator=gen) < 0.5
        x[flip] = x[flip].flip(-1)
        boxes[flip] = flip_boxes_lr(boxes[flip], w)
        meta[flip, 0] = -meta[flip, 0]
        c = 1.0 + (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 0.2
        d = (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 0.1
        x = jitter_intensity(x, c, d)
        if cx is not None:
            cx[flip] = cx[flip].flip(-1)
            cx = jitter_intensity(cx, c, d)
        if strong:  # the second view of a contrastive pair: shift a few pixels, add noise
            dx, dy = (int(v) for v in torch.randint(-4, 5, (2,), generator=gen))
            x = torch.roll(x, (dy, dx), (-2, -1))
            boxes = (boxes + torch.tensor([dx, dy, dx, dy], dtype=boxes.dtype)).clamp_(0, w)
            x = (x + 0.03 * torch.randn(x.shape, generator=gen)).clamp_(0.0, 1.0)
            if cx is not None:
                cx = torch.roll(cx, (dy // 2, dx // 2), (-2, -1))
                cx = (cx + 0.03 * torch.randn(cx.shape, generator=gen)).clamp_(0.0, 1.0)
    return x, boxes, meta, cx

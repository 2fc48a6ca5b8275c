"""Sequential sampling of lesion sequences for triplet training (Yan et al., CVPR 2018).

Similarity between lesions is decided first by coarse type (where known: labelled seeds or
current pseudo-labels), then by location (normalised x, y, z), then by size (long diameter in
mm). For each anchor ``A`` the sampler draws a sequence ``A, B, C, D, E`` of decreasing
similarity:

- ``B``: same type, nearby, similar size;
- ``C``: same type, nearby, different size;
- ``D``: same type, farther away;
- ``E``: another type (when the anchor's type is known and other types exist), otherwise a lesion
  far away.

Lesions of unknown type take part through location and size alone, so every lesion is used. The
loss sums the triplet losses of consecutive pairs: ``d(A,B) < d(A,C) < d(A,D) < d(A,E)``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import LabError

__all__ = ["SequentialSampler", "sequential_triplet_loss"]


class SequentialSampler:
    """Draw ``(A, B, C, D, E)`` index sequences from location, size and (optional) type.

    Parameters
    ----------
    n_neighbors : int, default 20
        Size of the "nearby" neighbourhood in location space.
    n_far : int, default 16
        Random candidates drawn for the "farther" members.
    seed : int, default 0
        Random seed.
    """

    def __init__(self, n_neighbors: int = 20, n_far: int = 16, seed: int = 0):
        self.n_neighbors = n_neighbors
        self.n_far = n_far
        self.seed = seed

    def fit(
        self,
        locations: np.ndarray,
        sizes_mm: np.ndarray,
        types: np.ndarray | None = None,
    ) -> SequentialSampler:
        """Index the lesions.

        Parameters
        ----------
        locations : (N, 3) array
            Normalised x, y, z.
        sizes_mm : (N,) array
            Long diameters in mm.
        types : (N,) int array, optional
            Coarse type codes, ``-1`` (or any value < 1) where unknown.
        """
        from sklearn.neighbors import NearestNeighbors

        loc = np.asarray(locations, dtype=np.float64)
        size = np.asarray(sizes_mm, dtype=np.float64)
        n = len(loc)
        if loc.ndim != 2 or loc.shape[1] != 3 or len(size) != n:
            raise LabError(f"sampler needs (N, 3) locations and N sizes, got {loc.shape}, {size.shape}")
        if n < 3:
            raise LabError(f"triplet sampling needs at least 3 lesions, got {n}")
        if not (np.isfinite(loc).all() and np.isfinite(size).all()):
            bad = int(np.flatnonzero(~(np.isfinite(loc).all(1) & np.isfinite(size)))[0])
            raise LabError(f"lesion {bad}: location or size is NaN/inf")
        t = np.full(n, -1, dtype=np.int64) if types is None else np.asarray(types, dtype=np.int64)
        t = np.where(t >= 1, t, -1)
        self.locations_ = loc
        self.log_sizes_ = np.log(np.maximum(size, 1e-3))
        self.types_ = t
        self.groups_: dict[int, np.ndarray] = {}
        self.neighbors_ = np.empty((n, 0), dtype=np.int64)
        # groups: each known type with >= 4 members; everything else samples from all lesions
        self.group_of_ = np.full(n, -1, dtype=np.int64)
        for code in np.unique(t[t >= 1]):
            members = np.flatnonzero(t == code)
            if len(members) >= 4:
                self.groups_[int(code)] = members
                self.group_of_[members] = code
        self.groups_[-1] = np.arange(n)
        k = min(self.n_neighbors, n - 1)
        neigh = np.empty((n, k), dtype=np.int64)
        radius = np.empty(n)
        for code, members in self.groups_.items():
            anchors = np.flatnonzero(self.group_of_ == code)
            if len(anchors) == 0:
                continue
            kk = min(k, len(members) - 1)
            nn_ = NearestNeighbors(n_neighbors=kk + 1).fit(loc[members])
            dist, idx = nn_.kneighbors(loc[anchors])
            # drop the anchor itself (first hit, or wherever it appears among ties)
            cand = members[idx]
            keep = np.ones_like(cand, dtype=bool)
            self_hit = cand == anchors[:, None]
            keep[self_hit] = False
            no_self = ~self_hit.any(1)
            keep[no_self, -1] = False
            cand = cand[keep].reshape(len(anchors), kk)
            d = dist[keep].reshape(len(anchors), kk)
            if kk < k:  # pad small groups by repeating
                cand = np.concatenate([cand, np.resize(cand, (len(anchors), k - kk))], 1)
            neigh[anchors] = cand[:, :k]
            radius[anchors] = d[:, -1]
        self.neighbors_ = neigh
        self.radius_ = radius
        return self

    def sample(self, anchors: np.ndarray | None = None, epoch: int = 0) -> np.ndarray:
        """Sequences ``(M, 5)`` of lesion indices ``A, B, C, D, E`` for the given anchors."""
        if not hasattr(self, "neighbors_"):
            raise LabError("SequentialSampler is not fitted; call fit first")
        n = len(self.locations_)
        rng = np.random.default_rng([self.seed, epoch])
        a = np.arange(n) if anchors is None else np.asarray(anchors, dtype=np.int64)
        m = len(a)
        neigh = self.neighbors_[a]  # (m, k) nearby, same group
        k = neigh.shape[1]
        sd = np.abs(self.log_sizes_[neigh] - self.log_sizes_[a][:, None])
        order = np.argsort(sd + 1e-9 * rng.random(sd.shape), axis=1, kind="stable")
        q = max(1, k // 4)
        rows = np.arange(m)
        b = neigh[rows, order[rows, rng.integers(0, q, m)]]
        c = neigh[rows, order[rows, k - 1 - rng.integers(0, q, m)]]

        # D: same group, beyond the neighbourhood (a random candidate of n_far, the nearest
        # of those beyond the radius; the farthest when none is)
        d = np.empty(m, dtype=np.int64)
        e = np.empty(m, dtype=np.int64)
        groups = self.group_of_[a]
        for code in np.unique(groups):
            sel = np.flatnonzero(groups == code)
            members = self.groups_[int(code)]
            cand = members[rng.integers(0, len(members), (len(sel), self.n_far))]
            dist = np.linalg.norm(self.locations_[cand] - self.locations_[a[sel]][:, None], axis=2)
            beyond = dist > self.radius_[a[sel]][:, None]
            score = np.where(beyond, dist, np.inf)
            pick = np.argmin(score, axis=1)
            none = ~beyond.any(1)
            pick[none] = np.argmax(dist[none], axis=1)
            d[sel] = cand[np.arange(len(sel)), pick]
            # E: another known type when there is one, else the farthest random lesion
            others = np.flatnonzero((self.types_ >= 1) & (self.types_ != code)) if code >= 1 else []
            if len(others):
                e[sel] = others[rng.integers(0, len(others), len(sel))]
            else:
                cand_e = rng.integers(0, n, (len(sel), self.n_far))
                dist_e = np.linalg.norm(
                    self.locations_[cand_e] - self.locations_[a[sel]][:, None], axis=2
                )
                e[sel] = cand_e[np.arange(len(sel)), np.argmax(dist_e, axis=1)]
        return np.stack([a, b, c, d, e], axis=1)


def sequential_triplet_loss(
    emb: torch.Tensor, n_per_sequence: int = 5, margin: float = 0.1
) -> torch.Tensor:
    """Sum of triplet losses along sequences.

    Parameters
    ----------
    emb : torch.Tensor
        ``(M * n_per_sequence, D)`` embeddings, sequence-major (``A0 B0 C0 D0 E0 A1 ...``).
    n_per_sequence : int, default 5
        Sequence length (anchor included).
    margin : float, default 0.1
        Margin between consecutive squared distances.
    """
    seq = emb.view(-1, n_per_sequence, emb.shape[1])
    d = ((seq[:, 1:] - seq[:, :1]) ** 2).sum(-1)  # (M, n-1): d(A,B), d(A,C), ...
    return torch.relu(d[:, :-1] - d[:, 1:] + margin).sum(1).mean()

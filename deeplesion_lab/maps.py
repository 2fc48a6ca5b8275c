"""2-D maps of lesion embeddings: PCA pre-reduction, then UMAP with a fixed seed, cached on disk
by a hash of the embeddings and the settings, so reopening a run's map is instant.

The cache keeps the coordinates (``.npy``, read on every hit) and what :meth:`LesionMap.transform`
needs to place new lesions (``.npz``: the PCA and the reduced points; read only then).

Examples
--------
>>> m = LesionMap(cache_dir="runs/demo/cache/umap").fit(vectors)   # doctest: +SKIP
>>> m.embedding_[:3], m.cache_hit_                                  # doctest: +SKIP
>>> m.transform(new_vectors)                                        # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator

from .errors import LabError

__all__ = ["LesionMap", "embedding_hash", "enable_umap_numba_cache", "warm_numba_cache"]

# numba's on-disk cache makes the first UMAP call of a fresh process fast; the Makefile and the
# tests point it at .cache/numba, this is the fallback for notebooks and scripts (it only counts
# when numba is not imported yet).
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "deeplesion-lab" / "numba"))

_NUMBA_CACHING = False


def enable_umap_numba_cache() -> int:
    """Turn on numba's on-disk cache for umap-learn's and pynndescent's jitted functions.

    About half of them are declared without ``cache=True``, so a fresh process compiled them
    again on every first UMAP call (tens of seconds). Module-level functions without closures
    are safe to cache (numba keys the cache by source file, function and signature). Returns the
    number of functions switched on.
    """
    global _NUMBA_CACHING
    if _NUMBA_CACHING:
        return 0
    import sys

    import umap  # noqa: F401 - loads the modules walked below
    from numba.core.dispatcher import Dispatcher

    n = 0
    for name, mod in list(sys.modules.items()):
        if not name.startswith(("umap", "pynndescent")) or mod is None:
            continue
        for obj in list(vars(mod).values()):
            if (
                isinstance(obj, Dispatcher)
                and type(obj._cache).__name__ == "NullCache"
                and obj.py_func.__closure__ is None
            ):
                try:
                    obj.enable_caching()
                    n += 1
                except Exception:  # a function numba cannot cache stays uncached
                    pass
    _NUMBA_CACHING = True
    return n


def warm_numba_cache(n: int = 5000, seed: int = 0) -> float:
    """Compile umap-learn's functions once into numba's on-disk cache (``make`` runs this).

    Maps ``n`` random points (more than UMAP's small-data limit of 4,096, so the same code paths
    as a full-size map are compiled) with a few epochs. Every later fresh process then finds the
    compiled functions on disk instead of spending tens of seconds compiling them. Returns the
    seconds taken.
    """
    import time

    t0 = time.perf_counter()
    X = np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)
    LesionMap(n_neighbors=15, pca_components=32, n_epochs=5, seed=seed).fit(X)
    return time.perf_counter() - t0


def embedding_hash(X: np.ndarray) -> str:
    """A short content hash of a float32 array (shape included)."""
    a = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    h = hashlib.sha1(str(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


class LesionMap(BaseEstimator):
    """PCA + UMAP to 2-D, cached by embedding hash.

    Parameters
    ----------
    n_neighbors : int, default 15
        Neighbours of the exact k-nearest-neighbour graph UMAP lays out.
    min_dist : float, default 0.1
    pca_components : int, default 32
        PCA dimensions before UMAP (skipped when the data has no more dimensions than this).
    n_epochs : int, optional
        UMAP optimisation epochs (UMAP's default when None: 200 for large data, 500 for small).
    seed : int, default 0
        Fixes PCA and UMAP (UMAP then runs single-threaded, and reproducibly).
    cache_dir : path, optional
        Where the coordinates and the transform model are cached.

    Attributes
    ----------
    embedding_ : (N, 2) float32 array
        Map coordinates of the fitted lesions.
    key_ : str
        Cache key (embedding hash + settings).
    cache_hit_ : bool
        Whether :meth:`fit` read the map from the cache.
    """

    def __init__(
        self,
        n_neighbors: int = 15,
        min_dist: float = 0.1,
        pca_components: int = 32,
        n_epochs: int | None = None,
        seed: int = 0,
        cache_dir: str | Path | None = None,
    ):
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.pca_components = pca_components
        self.n_epochs = n_epochs
        self.seed = seed
        self.cache_dir = cache_dir

    def _key(self, X: np.ndarray) -> str:
        settings = json.dumps(
            {k: v for k, v in self.get_params().items() if k != "cache_dir"}, sort_keys=True
        )
        return embedding_hash(X) + "-" + hashlib.sha1(settings.encode()).hexdigest()[:8]

    def _paths(self) -> tuple[Path, Path] | tuple[None, None]:
        if self.cache_dir is None:
            return None, None
        d = Path(self.cache_dir)
        return d / f"umap-{self.key_}.npy", d / f"umap-{self.key_}.npz"

    def fit(self, X, y=None) -> LesionMap:
        """Compute (or load from the cache) the 2-D map of ``X``."""
        from .mining import check_features

        X = check_features(X, "embeddings").astype(np.float32)
        n = len(X)
        if n < 3:
            raise LabError(f"a map needs at least 3 lesions, got {n}")
        self.key_ = self._key(X)
        coords_path, model_path = self._paths()
        self._model = None
        if coords_path is not None and coords_path.is_file():
            self.embedding_ = np.load(coords_path)
            self.cache_hit_ = True
            return self
        self.cache_hit_ = False
        model = self._fit_model(X)
        self._model = model
        self.embedding_ = model["coords"]
        if coords_path is not None:
            from .atomic import atomic_path

            with atomic_path(model_path) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **model)
            with atomic_path(coords_path) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, self.embedding_)
        return self

    def _fit_model(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """PCA, exact k nearest neighbours (scikit-learn), then UMAP on that graph.

        The exact neighbour graph is handed to UMAP (``precomputed_knn``): at 32,735 lesions it
        takes a few seconds, and it spares pynndescent's just-in-time compilation (over ten
        seconds in every fresh process, as part of it cannot be cached).
        """
        import warnings

        import umap
        from sklearn.decomposition import PCA
        from sklearn.neighbors import NearestNeighbors

        enable_umap_numba_cache()
        n, d = X.shape
        mean = np.zeros(d, dtype=np.float32)
        components = np.eye(d, dtype=np.float32)
        if d > self.pca_components and n > self.pca_components:
            pca = PCA(n_components=self.pca_components, random_state=self.seed).fit(X)
            mean = pca.mean_.astype(np.float32)
            components = pca.components_.astype(np.float32)
        Z = ((X - mean) @ components.T).astype(np.float32)
        k = int(min(self.n_neighbors, n - 1))
        dist, idx = NearestNeighbors(n_neighbors=k).fit(Z).kneighbors(Z)
        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=k,
            min_dist=self.min_dist,
            n_epochs=self.n_epochs,
            random_state=self.seed,
            n_jobs=1,  # a fixed seed makes UMAP single-threaded anyway; say so, no warning
            init="spectral" if n > 10 else "random",
            precomputed_knn=(idx.astype(np.int32), dist.astype(np.float32), None),
        )
        with warnings.catch_warnings():
            # small data: UMAP recomputes the (exact) neighbours itself and says so
            warnings.filterwarnings("ignore", message=".*precomputed_knn.*")
            coords = reducer.fit_transform(Z)
        return {
            "coords": np.asarray(coords, dtype=np.float32),
            "reduced": Z,
            "pca_mean": mean,
            "pca_components": components,
        }

    def fit_transform(self, X, y=None) -> np.ndarray:
        return self.fit(X).embedding_

    def transform(self, X) -> np.ndarray:
        """Place new lesions on the fitted map.

        Each new lesion goes to the weighted mean of the map positions of its nearest fitted
        lesions (in the PCA space the map was made from), as UMAP's own ``transform`` starts;
        the map itself does not move.
        """
        from sklearn.neighbors import NearestNeighbors

        from .mining import check_features

        if not hasattr(self, "embedding_"):
            raise LabError("LesionMap is not fitted; call fit first")
        X = check_features(X, "embeddings").astype(np.float32)
        model = self._model
        if model is None:
            _, model_path = self._paths()
            if model_path is None or not model_path.is_file():
                raise LabError(
                    f"the map's model is not cached ({model_path}); fit it again with cache_dir"
                )
            with np.load(model_path) as z:
                model = {k: z[k] for k in z.files}
            self._model = model
        if X.shape[1] != model["pca_mean"].shape[0]:
            raise LabError(
                f"embeddings have {X.shape[1]} dimensions, the map was made from "
                f"{model['pca_mean'].shape[0]}"
            )
        Z = (X - model["pca_mean"]) @ model["pca_components"].T
        ref = model["reduced"]
        k = int(min(self.n_neighbors, len(ref)))
        dist, idx = NearestNeighbors(n_neighbors=k).fit(ref).kneighbors(Z)
        spread = np.maximum(dist.mean(1, keepdims=True) - dist[:, :1], 1e-6)
        w = np.exp(-(dist - dist[:, :1]) / spread)
        w /= w.sum(1, keepdims=True)
        return (w[:, :, None] * model["coords"][idx]).sum(1).astype(np.float32)


if __name__ == "__main__":  # python -m deeplesion_lab.maps --warm
    import sys

    if sys.argv[1:] != ["--warm"]:
        raise SystemExit("usage: python -m deeplesion_lab.maps --warm")
    print(f"umap-learn compiled into {os.environ['NUMBA_CACHE_DIR']} in {warm_numba_cache():.0f} s")

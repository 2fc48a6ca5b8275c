"""2-D maps of lesion embeddings: PCA pre-reduction, then UMAP with a fixed seed, cached on disk
by a hash of the embeddings and the settings, so reopening a run's map is instant.

The cache keeps the coordinates (``.npy``, read on every hit) and the fitted reducers (a pickle,
read only when :meth:`LesionMap.transform` places new lesions on the map).

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
import pickle
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator

from .errors import LabError

__all__ = ["LesionMap", "embedding_hash", "enable_umap_numba_cache"]

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
                except Exception:  # noqa: BLE001 - a function numba cannot cache stays uncached
                    pass
    _NUMBA_CACHING = True
    return n


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
    min_dist : float, default 0.1
    pca_components : int, default 32
        PCA dimensions before UMAP (skipped when the data has no more dimensions than this).
    n_epochs : int, optional
        UMAP optimisation epochs (UMAP's default when None: 200 for large data, 500 for small).
    seed : int, default 0
        Fixes PCA and UMAP (UMAP then runs single-threaded, and reproducibly).
    cache_dir : path, optional
        Where coordinates and reducers are cached.

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
        return d / f"umap-{self.key_}.npy", d / f"umap-{self.key_}.pkl"

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
        self.embedding_ = np.asarray(model["coords"], dtype=np.float32)
        if coords_path is not None:
            from .atomic import atomic_path

            with atomic_path(model_path) as tmp:
                with open(tmp, "wb") as fh:
                    pickle.dump({k: v for k, v in model.items() if k != "coords"}, fh)
            with atomic_path(coords_path) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, self.embedding_)
        return self

    def _fit_model(self, X: np.ndarray) -> dict:
        import umap
        from sklearn.decomposition import PCA

        enable_umap_numba_cache()
        n, d = X.shape
        pca = None
        Z = X
        if d > self.pca_components and n > self.pca_components:
            pca = PCA(n_components=self.pca_components, random_state=self.seed).fit(X)
            Z = pca.transform(X).astype(np.float32)
        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=int(min(self.n_neighbors, n - 1)),
            min_dist=self.min_dist,
            n_epochs=self.n_epochs,
            random_state=self.seed,
            n_jobs=1,  # a fixed seed makes UMAP single-threaded anyway; say so, no warning
            init="spectral" if n > 10 else "random",
        )
        coords = reducer.fit_transform(Z)
        return {"pca": pca, "umap": reducer, "coords": coords}

    def fit_transform(self, X, y=None) -> np.ndarray:
        return self.fit(X).embedding_

    def transform(self, X) -> np.ndarray:
        """Place new lesions on the fitted map."""
        from .mining import check_features

        if not hasattr(self, "embedding_"):
            raise LabError("LesionMap is not fitted; call fit first")
        X = check_features(X, "embeddings").astype(np.float32)
        model = self._model
        if model is None:
            _, model_path = self._paths()
            if model_path is None or not model_path.is_file():
                raise LabError(
                    f"the map's reducers are not cached ({model_path}); refit without the cache"
                )
            enable_umap_numba_cache()
            with open(model_path, "rb") as fh:
                model = pickle.load(fh)
            self._model = model
        Z = model["pca"].transform(X).astype(np.float32) if model["pca"] is not None else X
        return np.asarray(model["umap"].transform(Z), dtype=np.float32)

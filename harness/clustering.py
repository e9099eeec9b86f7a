"""k-means for diversity selection: scikit-learn, or faiss where it is installed and the pool is large."""

from __future__ import annotations

import numpy as np

FAISS_MIN_ROWS = 200_000
"""From this many examples on, faiss (if installed) clusters instead of scikit-learn."""


def kmeans(x: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """Cluster label of every row (deterministic for a seed)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) >= FAISS_MIN_ROWS:
        try:
            import faiss
        except ImportError:
            faiss = None
        if faiss is not None:
            km = faiss.Kmeans(x.shape[1], n_clusters, niter=20, seed=int(seed) % (2**31), verbose=False)
            km.train(x)
            return km.index.search(x, 1)[1][:, 0].astype(np.int64)
    from sklearn.cluster import KMeans, MiniBatchKMeans

    cls = MiniBatchKMeans if len(x) >= FAISS_MIN_ROWS else KMeans
    model = cls(n_clusters=n_clusters, random_state=int(seed) % (2**31), n_init=3)
    return model.fit_predict(x).astype(np.int64)


def default_clusters(n: int) -> int:
    """Clusters for a pool of n when none are given: sqrt(n), at most the authors' 4096 (about 63 for 4,000), and
    never more than n."""
    return int(min(n, 4096, max(2, round(np.sqrt(n)))))

"""Diversity clusters, kMQ (Yu et al., "Diversify and Conquer", 2024), with RDS+ embeddings (Ivison et al., 2025).

    embed every example: the proxy's final hidden states, mean-pooled with weights proportional to position,
        L2-normalised (RDS+); the proxy is a warm-up model from the signal service
    cluster the embeddings with k-means into K clusters (K = sqrt(N), at most 4096, unless given)
    rounds = 1 (kMQ): take an equal quota min(k / K, |cluster|) uniformly at random from every cluster,
        redistributing what small clusters cannot fill
    rounds = R > 1 (iterative kMQ): round 1 takes k / R by equal quota; before each later round, train the proxy on
        what is selected so far, score each cluster by the current model's mean loss on its examples (the authors'
        loss option; they also use a reward model), turn scores into weights softmax(score / temperature), and
        draw that round's share of the budget from the unselected examples of each cluster accordingly
Authors' defaults: K = 4096 for a 5% budget of a large pool, K = 512 with 3 rounds for the iterative variant.
"""

import numpy as np

from harness.clustering import default_clusters, kmeans
from harness.errors import HarnessError
from harness.scores import check_warmup, warmup_seed
from harness.selection import Selection, SelectionContext, equal_quotas, register


def check(params: dict) -> None:
    check_warmup(params, seeds_key=None)
    if params["n_clusters"] is not None and params["n_clusters"] < 1:
        raise HarnessError(f"n_clusters must be at least 1 (or null: sqrt of the pool), got {params['n_clusters']}")
    if params["rounds"] < 1:
        raise HarnessError(f"rounds must be at least 1, got {params['rounds']}")
    if params["temperature"] <= 0:
        raise HarnessError(f"temperature must be positive (it divides the cluster scores), got {params['temperature']}")
    if params["round_epochs"] < 1:
        raise HarnessError(f"round_epochs must be at least 1, got {params['round_epochs']}")


def draw(rng: np.random.Generator, labels: np.ndarray, available: np.ndarray, quotas: np.ndarray) -> np.ndarray:
    """quotas[c] rows drawn uniformly from the available rows of every cluster c."""
    chosen = [
        rng.choice(np.flatnonzero(available & (labels == c)), size=q, replace=False) for c, q in enumerate(quotas)
    ]
    return np.concatenate([c for c in chosen if len(c)]) if any(len(c) for c in chosen) else np.zeros(0, dtype=int)


def weighted_quotas(rng: np.random.Generator, sizes: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """k draws spread over clusters in proportion to weights, never more than a cluster has left."""
    quota = np.zeros(len(sizes), dtype=int)
    remaining = min(k, int(sizes.sum()))
    while remaining > 0:
        open_ = quota < sizes
        p = np.where(open_, weights, 0.0)
        p = p / p.sum() if p.sum() > 0 else open_ / open_.sum()
        add = np.minimum(rng.multinomial(remaining, p), sizes - quota)
        quota += add
        remaining -= int(add.sum())
    return quota


@register("diversity", check=check)
def select(
    ctx: SelectionContext,
    *,
    n_clusters: int | None = None,
    rounds: int = 1,
    temperature: float = 1.0,
    round_epochs: int = 1,
    warmup_epochs: int = 1,
    warmup_fraction: float = 1.0,
) -> Selection:
    """Equal quota per k-means cluster of RDS+ embeddings; iteratively re-weighted by loss when rounds > 1."""
    n, k = ctx.pool.n, ctx.k
    clusters = n_clusters if n_clusters is not None else default_clusters(n)
    if clusters > n:
        raise HarnessError(f"n_clusters={clusters} is more than the {n} examples of the pool; use fewer clusters")
    rng = ctx.rng()
    warm = ctx.signals.warmup(epochs=warmup_epochs, seed=warmup_seed(ctx, 0), fraction=warmup_fraction)
    labels = kmeans(np.asarray(ctx.signals.embeddings(warm)), clusters, ctx.seed)
    sizes = np.bincount(labels, minlength=clusters)
    shares = [k // rounds + (1 if r < k % rounds else 0) for r in range(rounds)]
    available = np.ones(n, dtype=bool)
    chosen = draw(rng, labels, available, equal_quotas(sizes, shares[0]))
    history = []
    for r in range(1, rounds):
        available[chosen] = False
        model = ctx.signals.warmup(epochs=round_epochs, seed=warmup_seed(ctx, 100 + r), ids=list(ctx.pool.ids[chosen]))
        loss = np.asarray(ctx.signals.losses(model)["loss"], dtype=np.float64)
        score = np.array([loss[labels == c].mean() for c in range(clusters)])
        weights = np.exp((score - score.max()) / temperature)
        left = np.bincount(labels[available], minlength=clusters)
        quotas = weighted_quotas(rng, left, weights, shares[r])
        chosen = np.concatenate([chosen, draw(rng, labels, available, quotas)])
        history.append({"round": r + 1, "weights_max": float(weights.max() / weights.sum())})
    return Selection(
        ids=list(ctx.pool.ids[np.sort(chosen)]),
        info={"n_clusters": clusters, "cluster_sizes_min_max": [int(sizes.min()), int(sizes.max())], "rounds": history},
    )

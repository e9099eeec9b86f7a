"""Diversity clusters, kMQ (Yu et al., "Diversify and Conquer", 2024), with RDS+ embeddings (Ivison et al., 2025).

    embed every example: the proxy's final hidden states, mean-pooled with weights proportional to position,
        L2-normalised (RDS+, default); the proxy is a warm-up model from the signal service.
        Option embedding=tfidf: TF-IDF of the example's words reduced to 256 dimensions (LSA) and L2-normalised,
        a self-contained stand-in for the large external embedders the authors used, for proxies whose hidden
        states reflect surface form more than content (the testbed's scratch model; see conf/selector_on/)
    cluster the embeddings with k-means into K clusters (K = sqrt(N), at most 4096, unless given)
    rounds = 1 (kMQ): take an equal quota min(k / K, |cluster|) uniformly at random from every cluster,
        redistributing what small clusters cannot fill; when K does not divide k (or K > k), the clusters that take
        one more are drawn at random, never by k-means label (labels follow the seeding order)
    rounds = R > 1 (iterative kMQ): round 1 takes k / R by equal quota; then, before each later round,
        train the proxy on what is selected so far
        score each cluster by how much that model still gets wrong there: the mean loss of the cluster's examples
            selected so far, the ones it trained on (cluster_score=selected, default, the authors' rule; they score
            with a reward model, gold minus generated reward, and name loss as the other option), or of all its
            members (cluster_score=pool). A cluster with nothing selected yet (K > k / R leaves some) gets the mean
            of the scored clusters' scores: with no evidence either way, a neutral prior that keeps its examples
            drawable (the authors' K and budget leave no cluster unscored; their code assumes none is)
        weights = softmax(score / temperature) (temperature 1: the authors' plain softmax)
        draw the round's share of k from the unselected examples of each cluster by these weights, redrawing what a
            cluster cannot fill among the others so that the selection holds exactly k (the authors' code leaves
            that shortfall unfilled; a fair comparison needs every method at the same budget)
Authors' defaults: K = 4096 for a 5% budget of a large pool, K = 512 with 3 rounds for the iterative variant.
"""

import math

import numpy as np

from harness.clustering import default_clusters, kmeans
from harness.errors import HarnessError
from harness.params import number, whole
from harness.scores import BASE_DEFAULTS, check_warmup, warmup_base, warmup_seed
from harness.selection import Selection, SelectionContext, equal_quotas, register


def check(params: dict) -> None:
    check_warmup(params, seeds_key=None)
    if params["n_clusters"] is not None:
        whole(params, "n_clusters", 1, "or null: sqrt of the pool")
    whole(params, "rounds", 1)
    number(params, "temperature", 0, math.inf, low_open=True, why="it divides the cluster scores")
    if params["embedding"] not in EMBEDDINGS:
        raise HarnessError(f"unknown embedding {params['embedding']!r}; use one of {list(EMBEDDINGS)}")
    whole(params, "round_epochs", 1)
    if params["cluster_score"] not in CLUSTER_SCORES:
        raise HarnessError(f"unknown cluster_score {params['cluster_score']!r}; use one of {list(CLUSTER_SCORES)}")


EMBEDDINGS = ("rds", "tfidf")


def tfidf_embeddings(prompts: list[str], responses: list[str], dim: int = 256, seed: int = 0) -> np.ndarray:
    """TF-IDF over whitespace-separated words, reduced by truncated SVD (LSA), L2-normalised."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    texts = [f"{p} {r}" for p, r in zip(prompts, responses)]
    try:
        x = TfidfVectorizer(token_pattern=r"[^\s]+").fit_transform(texts)
    except ValueError as exc:  # an empty vocabulary
        raise HarnessError("the pool's texts have no words to embed with TF-IDF; use selector.embedding=rds") from exc
    if min(x.shape) < 2:  # one word or one example: nothing to reduce (truncated SVD needs two of each)
        return normalize(x.toarray()).astype(np.float32)
    dim = max(1, min(dim, x.shape[1] - 1, x.shape[0] - 1))
    return normalize(TruncatedSVD(dim, random_state=seed % (2**31)).fit_transform(x)).astype(np.float32)


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


CLUSTER_SCORES = ("selected", "pool")
"""Whose losses score a cluster in the iterative rounds: its examples selected so far (the authors') or all its
members."""


def cluster_weights(
    loss: np.ndarray, labels: np.ndarray, sizes: np.ndarray, temperature: float, rows: np.ndarray | None = None
) -> np.ndarray:
    """softmax(score / temperature) per cluster, a cluster's score the mean loss of its scored examples: `rows` (the
    rows `loss` belongs to, in order) or, if None, the whole pool. A cluster with members but no scored example
    gets the mean of the scored clusters' scores; one k-means left empty (identical vectors) gets weight 0."""
    rows = np.arange(len(labels)) if rows is None else np.asarray(rows)
    loss = np.asarray(loss, dtype=np.float64)
    known = np.isfinite(loss)  # an example without response tokens has no loss (NaN): it scores nothing
    scored_labels = labels[rows[known]]
    counts = np.bincount(scored_labels, minlength=len(sizes))
    mean = np.bincount(scored_labels, weights=loss[known], minlength=len(sizes))
    scored = counts > 0
    mean = mean / np.maximum(counts, 1)
    prior = mean[scored].mean() if scored.any() else 0.0
    score = np.where(scored, mean, prior)
    filled = np.asarray(sizes) > 0
    score = np.where(filled, score, -np.inf)
    weights = np.exp((score - score[filled].max()) / temperature)
    return weights / weights.sum()


@register("diversity", check=check, shared=BASE_DEFAULTS)
def select(
    ctx: SelectionContext,
    *,
    n_clusters: int | None = None,
    embedding: str = "rds",
    rounds: int = 1,
    temperature: float = 1.0,
    cluster_score: str = "selected",
    round_epochs: int = 1,
    warmup_epochs: int = 1,
    warmup_fraction: float = 1.0,
    **base: object,
) -> Selection:
    """Equal quota per k-means cluster of RDS+ embeddings; when rounds > 1, later rounds re-weighted by the clusters'
    losses under a proxy trained on the selection so far."""
    n, k = ctx.pool.n, ctx.k
    clusters = n_clusters if n_clusters is not None else default_clusters(n)
    if clusters > n:
        raise HarnessError(f"n_clusters={clusters} is more than the {n} examples of the pool; use fewer clusters")
    rng = ctx.rng()
    if embedding == "rds":
        warm = ctx.signals.warmup(
            epochs=warmup_epochs, seed=warmup_seed(ctx, 0), fraction=warmup_fraction, base=warmup_base(base)
        )
        vectors = np.asarray(ctx.signals.embeddings(warm))
    else:
        frame = ctx.pool.frame
        vectors = tfidf_embeddings(frame["prompt"].tolist(), frame["response"].tolist(), seed=ctx.seed)
    labels = kmeans(vectors, clusters, ctx.seed)
    sizes = np.bincount(labels, minlength=clusters)
    shares = [k // rounds + (1 if r < k % rounds else 0) for r in range(rounds)]
    available = np.ones(n, dtype=bool)
    chosen = draw(rng, labels, available, equal_quotas(sizes, shares[0], ctx.rng("quota")))
    history = []
    for r in range(1, rounds):
        if shares[r] == 0:  # k < rounds: the later rounds have nothing to draw, so no proxy is trained for them
            break
        available[chosen] = False
        model = ctx.signals.warmup(
            epochs=round_epochs, seed=warmup_seed(ctx, 100 + r), ids=list(ctx.pool.ids[chosen]), base=warmup_base(base)
        )
        if cluster_score == "selected":  # a loss pass over the rows this model trained on only (about k*r/R of N)
            scored = np.sort(chosen)
            loss = ctx.signals.losses(model, rows=scored)["loss"]
            unscored = int(np.sum(np.bincount(labels[chosen], minlength=clusters) == 0) - np.sum(sizes == 0))
        else:  # the pool-wide loss signal
            scored, loss, unscored = None, ctx.signals.losses(model)["loss"], 0
        weights = cluster_weights(np.asarray(loss, dtype=np.float64), labels, sizes, temperature, scored)
        left = np.bincount(labels[available], minlength=clusters)
        quotas = weighted_quotas(rng, left, weights, shares[r])
        chosen = np.concatenate([chosen, draw(rng, labels, available, quotas)])
        history.append({"round": r + 1, "weights_max": float(weights.max()), "unscored_clusters": unscored})
    return Selection(
        ids=list(ctx.pool.ids[np.sort(chosen)]),
        info={"n_clusters": clusters, "cluster_sizes_min_max": [int(sizes.min()), int(sizes.max())], "rounds": history},
    )

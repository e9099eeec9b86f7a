"""Model signals for selectors: per-example losses, EL2N, gradient norms, embeddings and gradient features."""

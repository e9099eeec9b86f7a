"""The model-signal service and its computations: warm-ups, losses, EL2N, gradient norms, embeddings, influence."""

"""Signals that selectors consume: influence scores and the feature stores they are computed from."""

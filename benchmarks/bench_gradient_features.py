"""LESS gradient features: the batched path (torch.func per-example gradients, Adam directions and one
projection per batch) against a LESS-style loop (one example, one backward pass, one projection at a
time), with the same warmed-up model, Adam state and projector.

Two projection regimes: "cached" (the whole matrix fits the projector's memory budget, so it is
generated once, in the warm-up) and "streamed" (cache_bytes=0: every projection regenerates the
matrix block by block, the regime at Llama scale where P x d never fits). Each way runs in its own
process; prints CPU seconds, examples/s, the ratio, the peak RSS above the built model, and checks that
both give the same features.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from signals_common import QKVO, build, in_child, loop_features, peak_mb, threads, timed

from harness.signals.gradients import gradient_features
from harness.signals.projection import Projector

SIGNAL_BATCH = int(OmegaConf.load(Path(__file__).parents[1] / "conf" / "eval" / "testbed.yaml").batch_size)
"""The batch the signal service uses on the testbed (its signals run at the evaluation batch size)."""
MODELS = {  # name -> (LoRA rank, 0 for a full-parameter warm-up; modules the features are taken over)
    "lora8": (8, None),
    "lora128": (128, None),  # LESS's own LoRA: r=128, alpha=512
    "qkvo": (0, QKVO),  # the testbed preset (conf/selector_on/*_testbed.yaml): full warm-up, features over q/k/v/o
    "full": (0, None),
}
CASES = [  # (model; d; regime; examples; batch size)
    ("lora8", 1024, "cached", 256, SIGNAL_BATCH),
    ("lora8", 8192, "cached", 128, SIGNAL_BATCH),
    ("lora128", 1024, "cached", 128, SIGNAL_BATCH),
    ("qkvo", 1024, "cached", 128, SIGNAL_BATCH),
    ("lora8", 1024, "streamed", 128, SIGNAL_BATCH),
    ("lora8", 8192, "streamed", 64, SIGNAL_BATCH),
    ("full", 1024, "streamed", 16, 8),
]
CACHE_BYTES = 2 << 30
"""The projector's memory budget in the cached regime: holds the whole matrix of every cached case
(P = 393,216 at LESS's rank 128 and d = 1024 is 1.6 GB)."""


def run(way: str, model_name: str, dim: int, regime: str, n: int, batch_size: int) -> dict:
    rank, modules = MODELS[model_name]
    tok, data, model, state = build(rank > 0, rank=rank or 8)
    if modules:  # as the signal service does for feature_modules
        for name, param in model.named_parameters():
            param.requires_grad_(any(m in name for m in modules))
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    projector = Projector(n_params, dim, seed=0, cache_bytes=CACHE_BYTES if regime == "cached" else 0)
    rows = np.arange(200, 200 + n)
    baseline = peak_mb()
    adam = dict(moments=state.moments, step=state.step, betas=state.betas, eps=state.eps)

    def batched(rr):
        return gradient_features(
            model, data, rr, kind="adam", **adam, projector=projector, batch_size=batch_size, device="cpu", pad_id=0
        )

    def loop(rr):
        return loop_features(model, data, rr, tok.pad_token_id, projector, state)

    fn = batched if way == "batched" else loop
    fn(rows[: batch_size if way == "batched" else 2])  # warm-up: fills the projector's cache, sizes the buffers
    # the batched way takes well under a second, so one hiccup of this shared machine would swing it: the median
    # of 3 runs; the loop runs for seconds to a minute and averages such noise out in one run
    out, seconds, extra_mb = timed(lambda: fn(rows), baseline, repeats=3 if way == "batched" else 1)
    return {"out": out, "seconds": seconds, "extra_mb": extra_mb, "n_params": n_params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="only the LoRA r=8, d=1024 cases")
    parser.add_argument("--model", choices=sorted(MODELS), default=None, help="only the cases of this model")
    args = parser.parse_args()
    cases = [c for c in CASES if c[0] == "lora8" and c[1] == 1024] if args.quick else CASES
    cases = [c for c in cases if args.model is None or c[0] == args.model]
    n_threads = threads()
    clock = "CPU s" if n_threads == 1 else "wall s"
    print(f"LESS Adam features, testbed tiny_llama (hidden 128, 3 layers), {n_threads} CPU thread(s)")
    print(f"{'model':<20}{'d':>6}  {'projection':<11}{'way':<9}{'n':>5}{clock:>9}{'ex/s':>8}{'peak MB':>9}")
    for model_name, dim, regime, n, batch_size in cases:
        kw = dict(model_name=model_name, dim=dim, regime=regime, n=n, batch_size=batch_size)
        slow = in_child(run, way="loop", **kw)
        fast = in_child(run, way="batched", **kw)
        diff = float(np.abs(fast["out"] - slow["out"]).max())
        assert diff < 1e-4, f"batched and loop features differ by {diff}"
        name = f"{model_name} P={fast['n_params']:,}"
        for way, r in (("loop", slow), ("batched", fast)):
            line = f"{name:<20}{dim:>6}  {regime:<11}{way:<9}{n:>5}{r['seconds']:>9.2f}{n / r['seconds']:>8.1f}"
            print(f"{line}{r['extra_mb']:>9.0f}")
        print(f"{'':<20}{'':>6}  batched is {slow['seconds'] / fast['seconds']:.1f}x faster; max |diff| {diff:.1e}")


if __name__ == "__main__":
    main()

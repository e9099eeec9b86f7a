"""Per-example gradient norms (GraNd): batched torch.func path against one backward pass per example.

Each way runs in its own process on the testbed proxy (tiny_llama: hidden 128, 3 layers), full-parameter
and with LoRA r=8 on q/k/v/o; prints CPU seconds, examples/s, the ratio, the peak RSS of each way above
the built model, and checks that both give the same numbers.
"""

from __future__ import annotations

import argparse

import numpy as np
from signals_common import build, in_child, loop_grad_norms, peak_mb, timed

from harness.signals.per_example import grad_norms


def run(way: str, lora: bool, n: int, batch_size: int) -> dict:
    tok, data, model, _ = build(lora)
    rows = np.arange(200, 200 + n)
    baseline = peak_mb()
    if way == "batched":
        grad_norms(model, data, rows[:8], batch_size=batch_size, device="cpu", pad_id=tok.pad_token_id)  # warm-up
        fn = lambda: grad_norms(model, data, rows, batch_size=batch_size, device="cpu", pad_id=tok.pad_token_id)  # noqa: E731
    else:
        loop_grad_norms(model, data, rows[:8], tok.pad_token_id)
        fn = lambda: loop_grad_norms(model, data, rows, tok.pad_token_id)  # noqa: E731
    out, seconds, extra_mb = timed(fn, baseline)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"out": out, "seconds": seconds, "extra_mb": extra_mb, "n_params": n_params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=256, help="examples scored")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    print(f"{args.n} testbed examples, batch {args.batch_size}, 1 CPU thread")
    print(f"{'model':<22}{'way':<10}{'CPU s':>9}{'ex/s':>9}{'peak MB':>9}")
    for lora in (False, True):
        loop = in_child(run, way="loop", lora=lora, n=args.n, batch_size=args.batch_size)
        fast = in_child(run, way="batched", lora=lora, n=args.n, batch_size=args.batch_size)
        np.testing.assert_allclose(fast["out"], loop["out"], rtol=1e-4)
        name = f"{'LoRA r=8' if lora else 'full'} (P={fast['n_params']:,})"
        for way, r in (("loop", loop), ("batched", fast)):
            print(f"{name:<22}{way:<10}{r['seconds']:>9.2f}{args.n / r['seconds']:>9.1f}{r['extra_mb']:>9.0f}")
        worst = float(np.max(np.abs(fast["out"] - loop["out"]) / loop["out"]))
        ratio = loop["seconds"] / fast["seconds"]
        print(f"{'':<22}batched is {ratio:.1f}x faster; max relative difference {worst:.1e}")


if __name__ == "__main__":
    main()

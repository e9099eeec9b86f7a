"""Tokenizing the pool: the harness's batched, cached path against one tokenizer call per example.

Prints the median of several repeats for each way and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from timing import median_seconds

from harness.modeling import pool_corpus, train_tokenizer
from harness.testbed import TestbedConfig, generate_testbed
from harness.tokenization import encode_examples, tokenize_pool


def one_at_a_time(prompts, responses, tok, delimiter, max_length):
    """The obvious way: encode each example's context and whole text separately."""
    out = []
    for p, r in zip(prompts, responses):
        ctx = tok.encode(p, add_special_tokens=False)
        whole = tok.encode(p + delimiter + r, add_special_tokens=False)
        out.append((ctx + whole[len(ctx) :] + [tok.eos_token_id])[:max_length])
    return out


def main(n_pool: int = 20000) -> None:
    pool = generate_testbed(TestbedConfig(n_pool=n_pool, n_facts=256, add_max=999))  # 7,000 distinct sums
    texts = pool_corpus(pool, validation=False)
    tok = train_tokenizer(texts, 512)
    prompts, responses = pool.examples["prompt"].tolist(), pool.examples["response"].tolist()

    slow = median_seconds(lambda: one_at_a_time(prompts, responses, tok, " ", 64), 5)
    batched = median_seconds(lambda: encode_examples(prompts, responses, tok, " ", 64, False), 5)
    with tempfile.TemporaryDirectory() as cache:
        cold = median_seconds(lambda: tokenize_pool(pool, tok, 64, False, Path(tempfile.mkdtemp(dir=cache))), 3)
        tokenize_pool(pool, tok, 64, False, Path(cache))
        warm = median_seconds(lambda: tokenize_pool(pool, tok, 64, False, Path(cache)), 5)
    seqs = encode_examples(prompts, responses, tok, " ", 64, False)[0]
    assert seqs == one_at_a_time(prompts, responses, tok, " ", 64), "the two ways must agree"

    print(f"pool of {pool.n} examples")
    print(f"one call per example : {slow:.3f} s")
    print(f"batched              : {batched:.3f} s   ({slow / batched:.1f}x faster)")
    print(f"cache, first run     : {cold:.3f} s   (batched + fingerprint + write)")
    print(f"cache, later runs    : {warm:.3f} s   ({slow / warm:.1f}x faster than one call per example)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-pool", type=int, default=20000, help="examples in the pool (a quick run: 2000)")
    main(parser.parse_args().n_pool)

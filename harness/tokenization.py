"""Tokenize the pool once (cached): prompt tokens, then the response tokens the loss is taken on."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from harness.errors import HarnessError
from harness.pool import Pool
from harness.storage import atomic_dir

log = logging.getLogger(__name__)
CHUNK = 20_000  # examples per batched tokenizer call (a progress step on large pools)


@dataclass
class TokenizedPool:
    """Token ids of every pool example, flat with offsets; `prompt_len[i]` tokens carry no loss."""

    ids: np.ndarray  # int32, all examples back to back
    offsets: np.ndarray  # int64, len n + 1
    prompt_len: np.ndarray  # int32
    truncated: int  # examples longer than max_length (the prompt's start is cut first)
    response_cut: int = 0  # of those, examples that also lost the end of their response (and its eos)

    @property
    def n(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def example(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Identity of a tokenizer: its vocabulary, special tokens, chat template and, for a fast tokenizer, the
    pipeline that maps text to ids (normalizer, pre-tokenizer, model with its merges): the same vocabulary with
    another pre-tokenizer (e.g. add_prefix_space) gives other ids."""
    vocab = sorted(tokenizer.get_vocab().items())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pipeline = ""
    if backend is not None:
        spec = json.loads(backend.to_str())
        pipeline = json.dumps(
            {k: spec.get(k) for k in ("normalizer", "pre_tokenizer", "model", "added_tokens")}, sort_keys=True
        )
    special = [tokenizer.all_special_tokens, tokenizer.bos_token_id, tokenizer.eos_token_id]
    payload = json.dumps([vocab, special, tokenizer.chat_template or "", type(tokenizer).__name__, pipeline])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def format_prompts(pool: Pool, frame_prompts: list[str], tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The prompt as the model sees it (inside the tokenizer's chat template when the pool asks)."""
    if not pool.chat_template:
        return list(frame_prompts)
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in frame_prompts
    ]


def require_eos(tokenizer: PreTrainedTokenizerBase) -> None:
    """Every trained response ends with the tokenizer's end-of-sequence token: a one-line error when it has none."""
    if tokenizer.eos_token_id is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise HarnessError(
            f"the tokenizer of '{name}' has no eos token, which ends every trained response; set its eos_token "
            "(e.g. in the model's tokenizer_config.json) or choose another model.name_or_path"
        )


def encode_examples(
    prompts: list[str],
    responses: list[str],
    tokenizer: PreTrainedTokenizerBase,
    delimiter: str,
    max_length: int,
    add_bos: bool,
) -> tuple[list[list[int]], list[int], int, int]:
    """Token ids and prompt lengths, split the way lm-eval splits context from continuation
    (encode the whole text and the context; the continuation is what the whole adds), plus eos; then how many
    examples were truncated, and how many of those lost part of their response."""
    require_eos(tokenizer)
    contexts, continuations = [], []
    for p, r in zip(prompts, responses):
        cont = delimiter + r
        stripped = p.rstrip()
        contexts.append(stripped)
        continuations.append(p[len(stripped) :] + cont)
    whole, ctx = [], []
    chunks = range(0, len(contexts), CHUNK)
    for start in tqdm(chunks, desc="tokenize", unit="chunk", disable=len(chunks) < 4, mininterval=5.0):
        part = slice(start, start + CHUNK)
        texts = [c + k for c, k in zip(contexts[part], continuations[part])]
        whole.extend(tokenizer(texts, add_special_tokens=False)["input_ids"])
        ctx.extend(tokenizer(contexts[part], add_special_tokens=False)["input_ids"])
    bos = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    # An empty context is lm-eval's prefix token (bos, else eos), so the first response token is predicted too.
    prefix = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    out, plen, truncated, response_cut = [], [], 0, 0
    for w, c in zip(whole, ctx):
        # no second BOS when the text brings its own (a chat template that writes it), as evaluation does
        prompt = (c if bos and c[:1] == bos else bos + c) or prefix
        response = w[len(c) :] + [tokenizer.eos_token_id]
        if len(prompt) + len(response) > max_length:
            truncated += 1
            keep_prompt = max(1, max_length - len(response))
            prompt = prompt[-keep_prompt:]
            response_cut += len(response) > max_length - len(prompt)
            response = response[: max_length - len(prompt)]
        out.append(prompt + response)
        plen.append(len(prompt))
    return out, plen, truncated, response_cut


def tokenize_frame(
    pool: Pool, frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, max_length: int, add_bos: bool
) -> TokenizedPool:
    """Token ids of the rows of `frame` (prompt, response), formatted as the pool's examples are trained on
    (used for the pool itself and for its validation examples)."""
    prompts = format_prompts(pool, frame["prompt"].tolist(), tokenizer)
    # Inside a chat template the answer follows the assistant header directly, as lm-eval scores it.
    delimiter = "" if pool.chat_template else pool.delimiter
    seqs, plen, truncated, response_cut = encode_examples(
        prompts, frame["response"].tolist(), tokenizer, delimiter, max_length, add_bos
    )
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(s) for s in seqs])
    ids = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=offsets[-1])
    return TokenizedPool(
        ids=ids,
        offsets=offsets,
        prompt_len=np.asarray(plen, dtype=np.int32),
        truncated=truncated,
        response_cut=response_cut,
    )


def warn_truncation(data: TokenizedPool, what: str, max_length: int) -> None:
    """Say how many examples did not fit, and how many of them lost part of the answer they are trained on."""
    if data.truncated:
        log.warning(
            "%d %s were longer than %d tokens and lost the start of their prompt; %d of them also lost the end of "
            "their response (raise model.max_length to keep them whole)",
            data.truncated,
            what,
            max_length,
            data.response_cut,
        )


def tokenize_pool(
    pool: Pool, tokenizer: PreTrainedTokenizerBase, max_length: int, add_bos: bool, cache_dir: Path
) -> TokenizedPool:
    """Tokenized pool, computed once per (pool, tokenizer, max_length) and shared through the cache."""
    require_eos(tokenizer)  # before the cache folder is made
    key = hashlib.sha256(
        f"{pool.fingerprint()}:{tokenizer_fingerprint(tokenizer)}:{max_length}:{add_bos}:v3".encode()
    ).hexdigest()[:16]
    path = Path(cache_dir) / "tokenized" / key

    def build(tmp: Path) -> None:
        data = tokenize_frame(pool, pool.examples, tokenizer, max_length, add_bos)
        np.save(tmp / "ids.npy", data.ids)
        np.save(tmp / "offsets.npy", data.offsets)
        np.save(tmp / "prompt_len.npy", data.prompt_len)
        meta = {"truncated": data.truncated, "response_cut": data.response_cut, "n": data.n}
        (tmp / "meta.json").write_text(json.dumps(meta))

    atomic_dir(path, build)
    meta = json.loads((path / "meta.json").read_text())
    data = TokenizedPool(
        ids=np.load(path / "ids.npy"),
        offsets=np.load(path / "offsets.npy"),
        prompt_len=np.load(path / "prompt_len.npy"),
        truncated=meta["truncated"],
        response_cut=meta["response_cut"],
    )
    warn_truncation(data, "pool examples", max_length)
    return data

"""Stage 2: the pool, from the embedded testbed, a local JSONL file or a Hugging Face dataset.

`load_pool` returns a truth-free Pool (what selection may see); `load_truth` returns the testbed's planted
truth, for the record stage alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from harness.loaders import load_hub_pool, load_jsonl_pool
from harness.pool import Pool
from harness.testbed import TestbedConfig, generate_testbed, testbed_truth

TESTBED_FIELDS = {f.name for f in dataclasses.fields(TestbedConfig)}


def testbed_config(data_cfg: DictConfig) -> TestbedConfig:
    """The generator's settings from the data config (every TestbedConfig field may be overridden)."""
    values = OmegaConf.to_container(data_cfg, resolve=True)
    return TestbedConfig(**{k: v for k, v in values.items() if k in TESTBED_FIELDS})


def pretraining_corpus(data_cfg: DictConfig, n: int) -> Pool:
    """`n` clean examples from the testbed's generator under another seed (its own draws of problems and facts),
    with no planted noise, duplicates or filler, and none whose prompt is a prompt of the pool, its validation
    examples or its evaluation items: what the testbed's pretrained stand-in proxy learns the skills from
    (selectors' `warmup_base=pretrained`), never what a run trains or is evaluated on."""
    from harness.seeding import stream_seed

    pool = generate_testbed(testbed_config(data_cfg))
    held = set(pool.examples["prompt"]) | set(pool.validation["prompt"]) | set(pool.eval_items["prompt"])
    size = n
    while True:  # the generator's small skills repeat prompts: draw more until n unseen ones remain
        cfg = dataclasses.replace(
            testbed_config(data_cfg),
            seed=stream_seed(int(data_cfg.seed), "pretraining-corpus"),
            n_pool=size,
            noise_rate=0.0,
            dup_rate=0.0,
            filler_rate=0.0,
        )
        corpus = generate_testbed(cfg)
        unseen = corpus.examples[~corpus.examples["prompt"].isin(held)]
        if len(unseen) >= n:
            break
        size = int(size * 1.25) + 1
    corpus = dataclasses.replace(corpus, examples=unseen.head(n).reset_index(drop=True))
    corpus.delimiter = data_cfg.delimiter
    return corpus


def load_truth(data_cfg: DictConfig) -> pd.DataFrame | None:
    """The planted truth of the pool `load_pool(data_cfg)` returns (id, truth_noisy, truth_dup_group, truth_filler).

    None for pools without one (JSONL, hub). The testbed regenerates it from its seed, so no truth is held
    in memory while a selector runs."""
    if data_cfg.source == "testbed":
        return testbed_truth(testbed_config(data_cfg))
    return None


def load_pool(data_cfg: DictConfig, include_path: Any = None) -> Pool:
    """The pool of data.source (no truth: see load_truth). `data.validation_tasks` replaces its validation
    examples with n per target task drawn from lm-eval tasks' few-shot/validation splits."""
    pool = _load(data_cfg)
    wanted = dict(data_cfg.get("validation_tasks") or {})
    if wanted:
        from harness.validation import from_lm_eval

        pool.validation = from_lm_eval(wanted, include_path, seed=int(data_cfg.get("seed", 0) or 0))
    return pool


def _load(data_cfg: DictConfig) -> Pool:
    if data_cfg.source == "testbed":
        pool = generate_testbed(testbed_config(data_cfg))
        pool.delimiter = data_cfg.delimiter
        return pool
    common = dict(
        columns=OmegaConf.to_container(data_cfg.columns) or None,
        template=data_cfg.template,
        default_task=data_cfg.default_task,
        delimiter=data_cfg.delimiter,
        chat_template=data_cfg.chat_template,
    )
    import datasets

    datasets.disable_progress_bars()  # a pool loads in seconds; its bars would only crowd the log
    if data_cfg.source == "jsonl":
        validation = data_cfg.validation_path
        return load_jsonl_pool(
            to_absolute_path(data_cfg.path),
            validation_path=to_absolute_path(validation) if validation else None,
            name=data_cfg.name,
            **common,
        )
    data_files = (
        OmegaConf.to_container(data_cfg.data_files) if OmegaConf.is_config(data_cfg.data_files) else data_cfg.data_files
    )
    return load_hub_pool(
        data_cfg.dataset,
        split=data_cfg.split,
        subset=data_cfg.subset,
        revision=data_cfg.revision,
        validation_split=data_cfg.validation_split,
        data_files=data_files,
        **common,
    )

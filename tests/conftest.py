"""Shared test setup: no network, small configs, and a way to run the CLI in-process."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "TOKENIZERS_PARALLELISM": "false",
}
os.environ.update(OFFLINE)

MICRO_POOL = ["data.n_pool=300", "data.n_validation_per_task=20", "data.n_eval_per_task=12", "data.n_facts=32"]
"""A small testbed pool."""

MICRO_RECIPE = [
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_hidden_layers=1",
    "model.num_attention_heads=2",
    "model.num_key_value_heads=2",
    "model.vocab_size=300",
    "train.epochs=2",
    "train.global_batch_size=16",
    "train.micro_batch_size=8",
    "train.checkpoint_every=2",
    "eval.batch_size=32",
]
"""A one-layer model and a short recipe."""

MICRO = MICRO_POOL + MICRO_RECIPE
"""Overrides that shrink the default job to seconds."""


LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+\]\[")
"""Progress log lines (Hydra's format), which go to stderr beside errors."""


def message_lines(err: str) -> list[str]:
    """The non-empty lines of stderr that are not progress log lines or progress bars."""
    return [line for line in err.splitlines() if line.strip() and not LOG_LINE.match(line) and "step/s" not in line]


def plugin_folder(tmp_path: Path, filename: str, source: str) -> Path:
    """A `plugins=[...]` folder holding one selector file."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / filename).write_text(source)
    return folder


def find_cell(root: Path, selector: str, prefix: str = "") -> Path:
    """The one run folder of `selector` under root/results/runs whose name starts with prefix (e.g. 'b0.3_s1,')."""
    found = [p for p in (Path(root) / "results" / "runs").glob(f"*/*/{selector}/{prefix}*") if p.is_dir()]
    assert len(found) == 1, f"expected one {selector}/{prefix}* folder, found {found}"
    return found[0]


def record_path(out: str) -> Path:
    """The record folder a run printed ('record: PATH')."""
    lines = [line for line in out.splitlines() if line.startswith("record: ")]
    assert lines, out
    return Path(lines[-1][len("record: ") :])


def run_harness(args: list[str], tmp_path: Path) -> tuple[int, str, str]:
    """Run `python -m harness ARGS` in-process with results under tmp_path; returns (code, out, err)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from hydra.core.global_hydra import GlobalHydra

    from harness.cli import main

    argv = ["harness", *args, f"paths.results={tmp_path / 'results'}"]
    out, err = io.StringIO(), io.StringIO()
    old = sys.argv
    sys.argv = argv
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
        GlobalHydra.instance().clear()
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def harness_cli(tmp_path):
    """Call as harness_cli([...overrides]); results go under tmp_path/results."""
    return lambda args: run_harness(args, tmp_path)


def tiny_llama(tokenizer, layers: int = 1, hidden: int = 32, heads: int = 2, seed: int = 0):
    """A randomly initialised Llama small enough for tests, sized to the tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def user_lm_eval_task(folder: Path, data: Path) -> None:
    """A multiple-choice task over a local JSONL file (absolute data_files: lm-eval resolves relative ones
    against the current directory)."""
    folder.mkdir()
    (folder / "my_task.yaml").write_text(
        "task: my_task\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: question\n"
        "doc_to_choice: options\n"
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n"
    )

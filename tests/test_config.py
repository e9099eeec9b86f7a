"""Config composition: groups, overrides, typed schemas, and the resolved config printout."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from harness import REPO_ROOT
from harness.config import cell_name, parse_budget, register_resolvers, validate
from harness.errors import HarnessError


def composed(*overrides: str):
    register_resolvers()
    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_default_config_has_every_stage_group():
    cfg = validate(composed())
    for group in ("data", "model", "train", "selector", "eval", "logger"):
        assert group in cfg
    assert cfg.selector.name == "random"
    assert cfg.budget == 0.15 and cfg.seed == 0
    assert cfg.data.source == "testbed" and cfg.model.source == "scratch"


def test_overrides_compose():
    cfg = validate(composed("selector=balanced_random", "budget=0.05", "seed=1", "train.epochs=2"))
    assert (cfg.selector.name, cfg.budget, cfg.seed, cfg.train.epochs) == ("balanced_random", 0.05, 1, 2)


def test_every_option_of_every_group_composes():
    for group in ("data", "model", "train", "selector", "eval", "logger"):
        for option in sorted((REPO_ROOT / "conf" / group).glob("*.yaml")):
            extra = {"jsonl": ["data.path=x.jsonl"], "hub": ["data.dataset=org/name"], "hf": ["model.name_or_path=m"]}
            cfg = validate(composed(f"{group}={option.stem}", *extra.get(option.stem, [])))
            assert cfg[group] is not None


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("train.epochs=three", "train"),
        ("+train.warmup=3", "warmup"),
        ("+model.layers=3", "layers"),
        ("train.scheduler=exotic", "train.scheduler"),
        ("seed=-1", "seed"),
        ("train.global_batch_size=0", "global_batch_size"),
        # an unknown stage seed or path went unused (and the stage seed changed the run id)
        ("+seeds.warmup=3", "warmup"),
        ("+paths.signals=/x", "signals"),
        ("paths.cache=null", "paths"),
    ],
)
def test_wrong_types_and_unknown_keys_are_errors(override, fragment):
    with pytest.raises(HarnessError) as info:
        validate(composed(override))
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("value", [0, 1.5, "abc", -0.1, True])
def test_bad_budgets(value):
    with pytest.raises(HarnessError, match="budget"):
        parse_budget(value)


def test_run_dir_names_are_readable(monkeypatch):
    from hydra.core.hydra_config import HydraConfig

    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # outside a Hydra run (an earlier test may have set it)
    assert (
        cell_name("testbed", "tiny_llama", "random", 0.15, 2) == "testbed/tiny_llama/random/b0.15_s2"
    )  # outside Hydra: no overrides
    assert cell_name("testbed", "tiny_llama", "full", 0.15, 0) == "testbed/tiny_llama/full/all_s0"


def test_cfg_job_prints_the_resolved_config(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "harness", "selector=balanced_random", "budget=0.05", "--cfg", "job"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    printed = OmegaConf.create(done.stdout)
    assert printed.selector.name == "balanced_random" and printed.budget == 0.05
    assert not (tmp_path / "results").exists()


def test_jsonl_pool_through_the_config(tmp_path):
    from harness.data import load_pool

    rows = [
        {"instruction": f"q{i}", "input": f"x{i}", "output": f"a{i}", "category": "t" + str(i % 2)} for i in range(6)
    ]
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
    cfg = validate(
        composed(
            "data=jsonl",
            f"data.path={path}",
            "data.columns={prompt: instruction, response: output, task: category}",
            'data.template="{instruction} / {input}"',
            "eval=lm_eval",
        )
    )
    pool = load_pool(cfg.data)
    assert pool.n == 6 and pool.tasks == ["t0", "t1"]
    assert pool.examples["prompt"][1] == "q1 / x1" and pool.examples["response"][1] == "a1"
    assert pool.examples["id"][0] == "pool-000000"

"""A cell's identity: every result-changing value is in it, nothing else is; folder names show the difference."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from harness import REPO_ROOT
from harness.config import register_resolvers, validate
from harness.identity import differing_keys, identity, identity_hash, result_overrides, run_name


def run_id(*overrides: str) -> str:
    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return identity_hash(identity(validate(cfg)))


BASE = run_id()


@pytest.mark.parametrize(
    "override",
    [
        "train.epochs=3",
        "train.lr=5e-4",
        "train.compute=steps",
        "train.mixed_precision=bf16",
        "data.n_pool=8000",
        "data.noise_rate=0.1",
        "data.noise_kind=near_miss",
        "data.facts_validation=taught",
        "model.hidden_size=256",
        "eval.num_fewshot=5",
        "eval.tasks=[addition]",
        "eval.limit=10",
        "budget=0.1",
        "seed=1",
        "seeds.order=3",
        "selector=balanced_random",
    ],
)
def test_result_changing_values_change_the_identity(override):
    assert run_id(override) != BASE


@pytest.mark.parametrize(
    "override",
    [
        "paths.results=/elsewhere",
        "paths.cache=/shared/cache",
        "logger=wandb",
        "rerun=true",
        "eval.batch_size=7",
        "train.micro_batch_size=8",
        "train.checkpoint_every=5",
        "train.keep_checkpoint=true",
        "num_threads=1",
        "train.epochs=10",  # the default, spelled out
    ],
)
def test_other_values_keep_the_identity(override):
    assert run_id(override) == BASE


def test_full_ignores_the_budget():
    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        a = compose(config_name="config", overrides=["selector=full", "budget=0.1"])
        b = compose(config_name="config", overrides=["selector=full", "budget=0.5"])
    assert identity_hash(identity(validate(a), uses_budget=False)) == identity_hash(
        identity(validate(b), uses_budget=False)
    )


def test_differing_keys_names_them():
    a = {"train": {"epochs": 1, "lr": 1e-3}, "budget": 0.1}
    b = {"train": {"epochs": 3, "lr": 5e-4}, "budget": 0.1}
    assert differing_keys(a, b) == ["train.epochs", "train.lr"]


def test_folder_names_show_what_changes_the_result():
    assert run_name("random", 0.15, 0, []) == "b0.15_s0"
    assert run_name("full", 0.15, 0, []) == "all_s0"
    name = run_name("random", 0.1, 0, ["selector=random", "budget=0.1", "train.epochs=5", "model.hidden_size=256"])
    assert name == "b0.1_s0,model.hidden_size=256,train.epochs=5"
    # not part of the identity: never in the name
    assert run_name("random", 0.1, 0, ["paths.results=/x", "logger=wandb", "rerun=true", "eval.batch_size=3"]) == (
        "b0.1_s0"
    )
    assert result_overrides(["+experiment=x", "~foo", "data.path=/a/b.jsonl"]) == [
        "data.path=/a/b.jsonl",
        "experiment=x",
    ]
    assert "/" not in run_name("random", 0.1, 0, ["data.path=/a/b.jsonl"])


def test_long_names_get_a_hash():
    many = [f"data.knob_{i}=value_{i}" for i in range(20)]
    name = run_name("random", 0.1, 0, many)
    assert name.startswith("b0.1_s0,h") and len(name) < 30
    assert name != run_name("random", 0.1, 0, [*many[:-1], "data.knob_19=other"])


def test_budget_free_cells_with_long_names_share_one_folder():
    """Past the readable length the name is a hash of the identity: `full` ignores the budget, so that hash does."""
    extra = [
        "model.hidden_size=256",
        "model.intermediate_size=512",
        "train.lr=0.000123456",
        "train.warmup_ratio=0.0625",
        "data.noise_rate=0.0123",
        "data.n_pool=8000",
    ]
    register_resolvers()
    names = {}
    for selector in ("full", "random"):
        for budget in ("0.1", "0.5"):
            overrides = [f"selector={selector}", f"budget={budget}", *extra]
            with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
                cfg = compose(config_name="config", overrides=overrides)
            names[selector, budget] = run_name(selector, budget, 0, overrides, root=cfg)
    assert names["full", "0.1"].startswith("all_s0,h")  # long enough to be hashed
    assert names["full", "0.1"] == names["full", "0.5"]
    assert names["random", "0.1"] != names["random", "0.5"]


def test_override_keys():
    from harness.identity import override_keys

    assert override_keys(["+train.lr=1", "++a.b=2", "~foo", "selector=x", "selector.k = 3"]) == {
        "train.lr",
        "a.b",
        "selector",
        "selector.k",
    }


def test_warmup_base_keeps_the_run_ids_of_warm_ups_from_the_model_and_counts_where_it_acts():
    """warmup_base=model (what every record before the key did) and the stand-in's settings beside it leave a run
    id as it was; the testbed's pretrained stand-in, and each of its settings, make other cells."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = validate(compose(config_name="config", overrides=["selector=influence"]))
    assert cfg.selector.warmup_base == "model"  # influence on the testbed: warm-ups from the model as configured
    tree = OmegaConf.to_container(cfg, resolve=True)
    added = ("warmup_base", "base_examples", "base_epochs")
    before = {**tree, "selector": {k: v for k, v in tree["selector"].items() if k not in added}}
    assert identity_hash(identity(tree)) == identity_hash(identity(before))  # a record made before the keys
    assert identity_hash(identity(tree)) == run_id("selector=influence", "selector.base_epochs=3")  # cannot act
    pretrained = run_id("selector=influence", "selector.warmup_base=pretrained")
    assert len({identity_hash(identity(tree)), pretrained, run_id("selector=el2n")}) == 3
    assert run_id("selector=el2n", "selector.base_epochs=3") != run_id("selector=el2n")  # acts on the testbed
    assert run_id("selector=el2n", "selector.base_examples=100") != run_id("selector=el2n")

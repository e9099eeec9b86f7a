"""The signal service and the selectors it feeds: computed once and shared, safe across processes, and the
selectors find what the testbed planted (noise for EL2N/GraNd, near-duplicates for diversity, balance for BIDS)."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from harness.config import ScratchModelSchema, TrainSchema
from harness.data import pretraining_corpus
from harness.errors import HarnessError
from harness.modeling import load_tokenizer
from harness.selection import SelectionContext, get_selector, load_plugins
from harness.signals.service import SignalService
from harness.testbed import TestbedConfig, generate_testbed_with_truth
from harness.tokenization import tokenize_pool

MODEL = OmegaConf.merge(
    OmegaConf.structured(ScratchModelSchema),
    {
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "vocab_size": 300,
    },
)
RECIPE = OmegaConf.merge(
    OmegaConf.structured(TrainSchema), {"global_batch_size": 16, "micro_batch_size": 16, "lr": 3e-3}
)


def service_for(pool, truth, model_cfg, train_cfg, cache: Path, data_cfg=None) -> tuple:
    """(pool, truth in pool order, a signal service over the pool) with a tokenizer trained in `cache`; with the
    testbed's `data_cfg`, warm-ups may start from its pretrained stand-in."""
    truth = truth.set_index("id").loc[pool.examples["id"]].reset_index()
    tok = load_tokenizer(pool, model_cfg, cache)
    tokens = tokenize_pool(pool, tok, model_cfg.max_length, False, cache)
    service = SignalService(
        pool=pool,
        tokens=tokens,
        tokenizer=tok,
        model_cfg=model_cfg,
        train_cfg=train_cfg,
        cache_dir=cache,
        accelerator=Accelerator(cpu=True),
        batch_size=64,
        pretraining_corpus=partial(pretraining_corpus, data_cfg) if data_cfg is not None else None,
    )
    return pool, truth, service


def make_service(cache: Path, n_pool: int = 800) -> tuple:
    pool, truth = generate_testbed_with_truth(
        TestbedConfig(n_pool=n_pool, n_validation_per_task=8, n_eval_per_task=4, n_facts=24, noise_rate=0.08)
    )
    return service_for(pool, truth, MODEL, RECIPE, cache)


def context(pool, service, budget: float, seed: int = 0, epochs: int = 2) -> SelectionContext:
    k = round(budget * pool.n)
    return SelectionContext(
        pool=pool.view(),
        budget=budget,
        k=k,
        seed=seed,
        signals=service,
        epochs=epochs,
        global_batch_size=int(RECIPE.global_batch_size),  # the recipe the service's warm-ups train with
        target_tasks=sorted(set(pool.validation["task"])),
    )


def pick(name: str, ctx: SelectionContext, **params) -> list[str]:
    load_plugins()
    ctx.signals.used.clear()
    return get_selector(name).fn(ctx, **params)


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    return make_service(tmp_path_factory.mktemp("signals"))


@pytest.fixture(scope="module")
def default_bed(tmp_path_factory):
    """The default testbed pool (4,000 examples), proxy and recipe, as `python -m harness` composes them."""
    from hydra import compose, initialize_config_dir

    from harness import REPO_ROOT
    from harness.data import testbed_config

    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base=None):
        cfg = compose("config")
    pool, truth = generate_testbed_with_truth(testbed_config(cfg.data))
    return service_for(pool, truth, cfg.model, cfg.train, tmp_path_factory.mktemp("default-signals"), cfg.data)


def composed_selector_params(selector: str) -> dict:
    """The selector's parameters as `python -m harness selector=NAME` composes them on the testbed."""
    from hydra import compose, initialize_config_dir

    from harness import REPO_ROOT

    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=[f"selector={selector}"])
    return {k: v for k, v in OmegaConf.to_container(cfg.selector, resolve=True).items() if k != "name"}


def test_el2n_and_grand_find_the_planted_noise_and_drop_top_skips_it(default_bed):
    """On the default testbed, with the testbed's settings (warm-ups from the pretrained stand-in, one epoch, three
    warm-up seeds, offset 0.10): the planted (mismatched) noise scores high pool-wide and in every skill, what
    drop_top skips is mostly noise and filler, and drop_top keeps fewer noisy examples than random at every budget
    and selection seed."""
    pool, truth, service = default_bed
    noisy = truth["truth_noisy"].to_numpy()
    tasks = pool.examples["task"].to_numpy()
    el2n_params, grand_params = composed_selector_params("el2n"), composed_selector_params("grand")
    assert el2n_params["warmup_base"] == grand_params["warmup_base"] == "pretrained"
    ctx = context(pool, service, 0.15, epochs=10)
    el2n = pick("el2n", ctx, **el2n_params)
    assert [u["name"] for u in service.used].count("pretrained_base") == 1
    grand = pick("grand", ctx, **grand_params)
    assert all(u["cached"] for u in service.used if u["name"] in ("warmup", "pretrained_base"))  # shared warm-ups
    scores = el2n.scores.to_numpy()
    assert roc_auc_score(noisy, scores) > 0.9 and roc_auc_score(noisy, grand.scores.to_numpy()) > 0.85
    for task in sorted(set(tasks)):  # the stand-in has learned every skill, reversal and sorting included
        assert roc_auc_score(noisy[tasks == task], scores[tasks == task]) > 0.8, task
    # the NLP recipe's premise: what drop_top skips (the top 10%) is mostly the planted junk (9% of the pool)
    junk = noisy | truth["truth_filler"].to_numpy()
    skipped = np.argsort(-scores, kind="stable")[: round(0.10 * pool.n)]
    assert junk[skipped].mean() > 0.7, junk[skipped].mean()
    assert not set(pool.examples["id"].to_numpy()[skipped]) & set(el2n.ids)
    is_noisy = dict(zip(pool.examples["id"], noisy))
    kept = {}
    for seed in (0, 1, 2):
        for budget in (0.05, 0.1, 0.15):
            at = context(pool, service, budget, seed=seed, epochs=10)
            kept[seed, budget] = tuple(
                sum(is_noisy[i] for i in pick(name, at, **params).ids)
                for name, params in (("el2n", el2n_params), ("random", {}))
            )
    assert all(mine < theirs for mine, theirs in kept.values()), kept


def redundant_duplicates(truth, ids: list[str]) -> int:
    """Members of planted near-duplicate groups beyond the first of their group among `ids`."""
    group = dict(zip(truth["id"], truth["truth_dup_group"]))
    groups = [group[i] for i in ids if group[i] >= 0]
    return len(groups) - len(set(groups))


def test_diversity_keeps_fewer_near_duplicates_than_random(bed):
    pool, truth, service = bed

    def redundant(ids: list[str]) -> int:
        return redundant_duplicates(truth, ids)

    ctx = context(pool, service, 0.3)
    diverse = pick("diversity", ctx, embedding="tfidf", n_clusters=240).ids
    assert len(diverse) == ctx.k and len(set(diverse)) == ctx.k
    random_ids = pick("random", ctx).ids
    assert redundant(diverse) < redundant(random_ids), (redundant(diverse), redundant(random_ids))
    assert pick("diversity", ctx, warmup_epochs=1).ids  # RDS+ embeddings of a warm-up proxy run too
    iterative = pick("diversity", ctx, embedding="tfidf", n_clusters=240, rounds=3, temperature=0.5)
    assert len(iterative.ids) == ctx.k and len(iterative.info["rounds"]) == 2


def test_bids_is_more_task_balanced_than_instance_max_and_deterministic(bed):
    pool, _, service = bed
    settings = {"warmup_mode": "full", "warmup_fraction": 1.0, "warmup_epochs": 2, "warmup_lr": 3e-3, "proj_dim": 256}
    ctx = context(pool, service, 0.15)
    inst = pick("influence", ctx, aggregation="instance_max", **settings)
    used_first = {u["name"]: u["cached"] for u in service.used}
    bids = pick("bids", ctx, **settings)
    assert {u["name"]: u["cached"] for u in service.used} == {"warmup": True, "influence": True}
    assert used_first["influence"] is False
    tasks = dict(zip(pool.examples["id"], pool.examples["task"]))

    def spread(ids):
        counts = np.array([sum(tasks[i] == t for i in ids) for t in sorted(set(tasks.values()))])
        return counts.max() - counts.min()

    assert spread(bids.ids) < spread(inst.ids), (spread(bids.ids), spread(inst.ids))
    assert pick("bids", ctx, **settings).ids == bids.ids
    for aggregation in ("task_max", "sum"):
        pick("influence", ctx, aggregation=aggregation, **settings)
        assert all(u["cached"] for u in service.used)


def _ask(cache: str, barrier, out) -> None:
    from harness.signals.service import SignalService

    class Bare(SignalService):
        def __init__(self) -> None:  # the caching machinery only, one process per job
            self.root, self.used, self._stack = Path(cache) / "signals", [], []
            self._base = {"test": 1}
            self.accelerator = SimpleNamespace(num_processes=1, is_main_process=True, process_index=0)

    def build(work: Path) -> None:
        with open(Path(cache) / "builds.txt", "a") as fh:
            fh.write("built\n")
        time.sleep(1.5)
        np.save(work / "x.npy", np.arange(100_000, dtype=np.float32))

    barrier.wait()
    service = Bare()
    path = service.cached("demo", {"a": 1}, build)
    x = np.load(path / "x.npy", mmap_mode="r")
    out.put((float(x.sum()), service.used[0]["cached"]))


def test_two_processes_compute_a_signal_once_and_both_read_it(tmp_path):
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_ask, args=(str(tmp_path), barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    results = [out.get(timeout=5) for _ in procs]
    assert [p.exitcode for p in procs] == [0, 0]
    assert (tmp_path / "builds.txt").read_text() == "built\n"
    assert [r[0] for r in results] == [float(np.arange(100_000, dtype=np.float32).sum())] * 2
    assert sorted(r[1] for r in results) == [False, True]  # one computed it, the other found it cached
    meta = json.loads(next((tmp_path / "signals" / "demo").glob("*/meta.json")).read_text())
    assert meta["seconds"] >= 1.5


def test_rs2_sees_every_example_before_repeats_and_trains_as_many_steps(bed):
    pool, _, service = bed
    ctx = context(pool, service, 0.3, epochs=7)
    schedule = pick("rs2", ctx).epochs
    assert len(schedule) == 7 and all(len(e) == ctx.k == len(set(e)) for e in schedule)
    flat = [i for e in schedule for i in e]
    assert len(set(flat[: pool.n])) == pool.n  # one full pass before any repeat
    independent = pick("rs2", ctx, replacement=True).epochs
    assert len(independent) == 7 and all(len(set(e)) == ctx.k for e in independent)
    from harness.training import compute_plan, count_steps

    plan = compute_plan(OmegaConf.merge(RECIPE, {"epochs": 7}), ctx.k, pool.n)
    assert count_steps([np.arange(ctx.k)] * 7, 16) == plan.steps == count_steps([np.array(e) for e in schedule], 16)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diversity_on_the_default_testbed_keeps_fewer_near_duplicates(default_bed, seed):
    """kMQ with the testbed's preset (conf/selector_on/diversity_testbed.yaml) at 15%, as a sweep runs it."""
    from harness import REPO_ROOT

    pool, truth, service = default_bed
    preset = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf/selector_on/diversity_testbed.yaml"))
    ctx = context(pool, service, 0.15, seed=seed)
    diverse = pick("diversity", ctx, **preset).ids
    random_ids = pick("random", ctx).ids
    kept, baseline = redundant_duplicates(truth, diverse), redundant_duplicates(truth, random_ids)
    assert kept < baseline, (kept, baseline)


def test_influence_targets_the_evaluated_tasks_only(bed):
    """The cached matrix covers every validation example; `influence` and `bids` use the target tasks' columns."""
    pool, _, service = bed
    settings = {"warmup_mode": "full", "warmup_fraction": 1.0, "warmup_epochs": 2, "warmup_lr": 3e-3, "proj_dim": 256}
    from harness.signals import less

    everything, all_tasks = less.influence_matrix(context(pool, service, 0.15), settings)
    ctx = dataclasses.replace(context(pool, service, 0.15), target_tasks=["addition", "facts"])
    matrix, tasks = less.influence_matrix(ctx, settings)
    assert set(tasks) == {"addition", "facts"} and set(all_tasks) > set(tasks)
    assert np.array_equal(matrix, np.asarray(everything)[:, np.isin(all_tasks, ["addition", "facts"])])
    info = pick("bids", ctx, **settings).info
    assert set(info["validation_per_task"]) == {"addition", "facts"}


def _capture_training(monkeypatch) -> list:
    """Patch the training loop so the test keeps the model a warm-up trained (trained in place)."""
    import harness.training

    trained, original = [], harness.training.train

    def train(model, *args, **kwargs):
        outcome = original(model, *args, **kwargs)
        trained.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return outcome

    monkeypatch.setattr(harness.training, "train", train)
    return trained


def test_signals_read_the_model_the_warm_up_trained_with_lora_on_a_scratch_base(tmp_path, monkeypatch):
    """A checkpoint keeps only the trained (LoRA) weights: the frozen random base must be rebuilt from the
    warm-up's own init seed, or every signal is computed on adapters over another network."""
    pool, truth = generate_testbed_with_truth(TestbedConfig(n_pool=200, n_validation_per_task=2, n_eval_per_task=2))
    lora_model = OmegaConf.merge(MODEL, {"lora": {"enabled": True, "r": 4, "alpha": 8}})
    _, _, service = service_for(pool, truth, lora_model, RECIPE, tmp_path)
    trained = _capture_training(monkeypatch)
    warm = service.warmup(epochs=1, seed=123, fraction=0.5)
    restored = service.model_at(warm, 0).state_dict()
    assert any("lora_" in k for k in restored) and set(restored) == set(trained[0])
    for name, value in trained[0].items():
        assert torch.equal(restored[name], value), name


def test_full_warm_up_trains_every_parameter_of_a_lora_configured_model(tmp_path, monkeypatch):
    """warmup_mode=full (lora={"enabled": False}) overrides the model's own LoRA setting."""
    pool, truth = generate_testbed_with_truth(TestbedConfig(n_pool=200, n_validation_per_task=2, n_eval_per_task=2))
    lora_model = OmegaConf.merge(MODEL, {"lora": {"enabled": True, "r": 4, "alpha": 8}})
    _, _, service = service_for(pool, truth, lora_model, RECIPE, tmp_path)
    trained = _capture_training(monkeypatch)
    full = service.warmup(epochs=1, seed=123, fraction=0.5, lora={"enabled": False})
    assert not any("lora_" in k for k in trained[-1])
    model = service.model_at(full, 0)
    assert all(p.requires_grad for p in model.parameters())
    own = service.warmup(epochs=1, seed=123, fraction=0.5)  # the proxy as configured: LoRA
    assert any("lora_" in k for k in trained[-1]) and own.key != full.key


def test_iterative_kmq_weights_skip_empty_clusters():
    """k-means can leave a cluster empty; its mean loss is undefined and must not turn every weight into NaN."""
    import sys

    from harness import REPO_ROOT

    load_plugins()
    path = (REPO_ROOT / "selectors" / "diversity.py").resolve()
    diversity = next(m for m in list(sys.modules.values()) if Path(getattr(m, "__file__", "") or "").resolve() == path)
    labels = np.array([0, 0, 1, 1, 2, 2])
    sizes = np.bincount(labels, minlength=4)  # cluster 3 is empty
    loss = np.array([5.0, 5.0, 0.1, 0.1, 0.1, 0.1])
    weights = diversity.cluster_weights(loss, labels, sizes, temperature=1.0)  # cluster_score=pool: every member
    assert np.isfinite(weights).all() and weights[3] == 0 and np.isclose(weights.sum(), 1)
    expected = np.exp([4.9, 0, 0]) / np.exp([4.9, 0, 0]).sum()
    assert np.allclose(weights[:3], expected)
    quotas = diversity.weighted_quotas(np.random.default_rng(0), np.array([200, 200, 200, 0]), weights, 90)
    assert quotas[3] == 0 and quotas[0] > 80


def test_warm_up_taken_early_in_a_full_length_run(tmp_path):
    """schedule_epochs: the schedule spans the whole run and training stops after `epochs` (the data-diet papers'
    early scores), so the first epoch's learning rates are the full run's, not a schedule annealed in one epoch."""
    from harness.training import count_steps, learning_rates

    pool, truth = generate_testbed_with_truth(TestbedConfig(n_pool=200, n_validation_per_task=2, n_eval_per_task=2))
    _, _, service = service_for(pool, truth, MODEL, RECIPE, tmp_path)
    early = service.warmup(epochs=1, seed=3, fraction=1.0, schedule_epochs=5)
    own = service.warmup(epochs=1, seed=3, fraction=1.0)
    steps = count_steps([np.arange(pool.n)], RECIPE.global_batch_size)
    full_run = learning_rates(RECIPE, 5 * steps)
    assert early.epochs == 1 and early.key != own.key
    assert np.isclose(early.avg_lrs[0], np.mean(full_run[:steps]))
    assert np.isclose(own.avg_lrs[0], np.mean(learning_rates(RECIPE, steps)))
    assert early.avg_lrs[0] > 1.5 * own.avg_lrs[0]  # the annealed one-epoch schedule averages far lower
    log = [json.loads(x) for x in (early.path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == steps and log[-1]["lr"] > 0.9 * RECIPE.lr  # stopped near the peak, not annealed


def test_a_signal_finished_elsewhere_is_kept_when_committing(tmp_path):
    """If another process completed the signal while this one computed it (a lock broken as stale), the finished
    folder that readers may be using stays, and this process's copy is dropped."""
    from harness.signals.service import DONE, SignalService

    class Bare(SignalService):
        def __init__(self) -> None:
            self.root, self.used, self._stack = tmp_path / "signals", [], []
            self._base = {"test": 1}
            self.accelerator = SimpleNamespace(num_processes=1, is_main_process=True, process_index=0)

    service = Bare()
    path = service.root / "demo" / service.key("demo", {"a": 1})
    path.mkdir(parents=True)
    np.save(path / "x.npy", np.ones(3))
    (path / DONE).write_text(json.dumps({"seconds": 1.0}))

    def build(work: Path) -> None:
        np.save(work / "x.npy", np.zeros(3))

    service._build("demo", {"a": 1}, path, build)
    assert np.load(path / "x.npy").tolist() == [1, 1, 1]
    assert not path.with_name(path.name + ".partial").exists()


def test_el2n_scores_early_in_a_recipe_length_run_on_request(bed):
    """warmup_schedule=run: each warm-up is the first epoch of a run whose schedule spans the recipe's epochs."""
    pool, _, service = bed
    ctx = context(pool, service, 0.15, epochs=4)
    pick("el2n", ctx, warmup_seeds=1, warmup_schedule="run")
    warmups = [u for u in service.used if u["name"] == "warmup"]
    assert len(warmups) == 1
    meta = json.loads((service.root / "warmup" / warmups[0]["key"] / "meta.json").read_text())
    assert meta["spec"]["schedule_epochs"] == 4 and meta["spec"]["epochs"] == 1


def test_warm_ups_start_from_the_pretrained_stand_in_built_once(tmp_path, bed):
    """warmup_base=pretrained: the stand-in (the scratch model trained on clean generated examples that are not the
    pool's) is built once and shared; warm-ups from it are other signals than warm-ups from the random init, and a
    LoRA warm-up's frozen weights are the stand-in's. A pool that is not the testbed has no stand-in."""
    tb = TestbedConfig(n_pool=300, n_validation_per_task=4, n_eval_per_task=4, n_facts=24)
    data_cfg = OmegaConf.create({**dataclasses.asdict(tb), "source": "testbed", "delimiter": " "})
    pool, truth, service = service_for(*generate_testbed_with_truth(tb), MODEL, RECIPE, tmp_path, data_cfg)
    corpus = pretraining_corpus(data_cfg, 200)
    assert corpus.n == 200 and corpus.fingerprint() != pool.fingerprint()
    held = set(pool.examples["prompt"]) | set(pool.validation["prompt"]) | set(pool.eval_items["prompt"])
    assert not held & set(corpus.examples["prompt"])  # nothing the run trains on, validates or evaluates
    assert corpus.fingerprint() == pretraining_corpus(data_cfg, 200).fingerprint()  # deterministic
    base = {"examples": 200, "epochs": 1}
    warm = service.warmup(epochs=1, seed=0, base=base)
    assert [(u["name"], u["cached"]) for u in service.used] == [("pretrained_base", False), ("warmup", False)]
    assert service.used[0]["seconds"] > 0
    assert service.warmup(epochs=1, seed=0).key != warm.key  # from the random init: another warm-up
    service.used.clear()
    service.warmup(epochs=1, seed=1, base=base)
    assert [(u["name"], u["cached"]) for u in service.used] == [("pretrained_base", True), ("warmup", False)]
    stand_in = torch.load(warm.base / "model.pt", weights_only=True)
    fresh = service._proxy(service._with_lora(None), warm.init_seed, None).state_dict()
    assert not torch.equal(stand_in["model.embed_tokens.weight"], fresh["model.embed_tokens.weight"])  # it trained
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    adapted = service.model_at(service.warmup(epochs=1, seed=0, base=base, lora=lora), 0)
    frozen = {n: p for n, p in adapted.named_parameters() if not p.requires_grad}
    name = next(n for n in frozen if n.endswith("embed_tokens.weight"))
    assert torch.equal(frozen[name].detach(), stand_in["model.embed_tokens.weight"])
    with pytest.raises(HarnessError, match="use selector.warmup_base=model"):
        bed[2].warmup(epochs=1, seed=0, base=base)  # a service without the testbed's generator

"""The model-signal service: selectors ask it for warm-up runs, per-example losses and EL2N, gradient norms,
embeddings, gradient features and influence; it computes each one once and shares it through the cache.

Every signal lives in `<cache>/signals/<name>/<key>/`, where key hashes everything that determines it (the pool's
fingerprint, the model config, the warm-up recipe and seed, the signal's own settings). Arrays are `.npy` files,
memory-mapped when read. One process computes a missing signal while the others wait on a lock file that works
on cluster file systems (harness.locking: O_EXCL plus heartbeat, not flock); the computation writes into
`<key>.partial/` (long ones in atomically committed shards, so an interrupted one continues) and is renamed into
place when complete. The seconds it took are stored with it and attributed to every run that uses it, with a flag
saying whether that run computed it or found it cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from harness.errors import HarnessError
from harness.locking import HeartbeatLock
from harness.modeling import (
    add_lora,
    build_model,
    matching_parameters,
    meta_model,
    model_description,
    resolved_precision,
)
from harness.pool import Pool
from harness.runtime import together
from harness.seeding import stage_rng, stream_seed
from harness.signals.projection import generator_identity
from harness.storage import atomic_write_json, share_mode
from harness.tokenization import TokenizedPool, tokenizer_fingerprint

log = logging.getLogger(__name__)

DONE = "meta.json"
VERSION = "signals-v2"  # raised when a key stops meaning what it meant: older caches are not reused


def digest(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


@dataclass(frozen=True)
class WarmupRun:
    """A cached warm-up: the proxy trained on `rows` for some epochs, with one kept checkpoint per epoch."""

    path: Path
    key: str
    rows: np.ndarray
    epochs: int
    avg_lrs: tuple[float, ...]
    lora: dict[str, Any] | None
    init_seed: int
    """The seed the warm-up's model was built with: a checkpoint keeps only the trained weights, so the frozen
    rest (a scratch model's random base under LoRA) is rebuilt from it."""
    base: Path | None = None
    """The pretrained stand-in the warm-up started from (SignalService.pretrained_base), None: the model as
    configured."""

    def checkpoint(self, epoch: int) -> Path:
        return self.path / "epochs" / f"epoch-{epoch:03d}" / "state.pt"


class SignalService:
    """What `ctx.signals` is: cached model signals for one pool, model and training recipe."""

    def __init__(
        self,
        *,
        pool: Pool,
        tokens: TokenizedPool,
        tokenizer: Any,
        model_cfg: DictConfig,
        train_cfg: DictConfig,
        cache_dir: Path,
        accelerator: Any,
        batch_size: int = 64,
        pretraining_corpus: Callable[[int], Pool] | None = None,
    ) -> None:
        self.pool, self.tokens, self.tokenizer = pool, tokens, tokenizer
        self.pretraining_corpus = pretraining_corpus  # n -> clean generated examples disjoint from the pool
        self.model_cfg, self.train_cfg = model_cfg, train_cfg
        self.root = Path(cache_dir) / "signals"
        self.accelerator = accelerator
        self.batch_size = batch_size
        self.used: list[dict[str, Any]] = []
        self._stack: list[dict[str, float]] = []
        self._base = {  # what every signal depends on (the tokenizer's ids; the precision "auto" resolved to)
            "pool": pool.fingerprint(),
            "model": model_description(model_cfg),
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "device": torch.device(accelerator.device).type,
            "precision": resolved_precision(accelerator, model_cfg.dtype),
            "version": VERSION,
        }

    # ------------------------------------------------------------------ caching

    def key(self, name: str, spec: dict[str, Any]) -> str:
        return digest({**self._base, "name": name, "spec": spec})

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    def _agree(self, value: Any) -> Any:
        """The main process's value, on every process (several processes compute signals together)."""
        if self.world == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value])[0]

    def _barrier(self) -> None:
        if self.world > 1:
            self.accelerator.wait_for_everyone()

    def cached(self, name: str, spec: dict[str, Any], build: Callable[[Path], None]) -> Path:
        """The folder of signal `name` for `spec`, computing it first if no process has (once, under a lock).

        With several processes (accelerate), every process calls this in the same order: the main one takes the
        lock and decides, and `build` runs on every process, each doing its part (training together, or every
        world-th row, see `shard_rows`) and leaving what only one should do (writing) to the main process.
        A signal built from other signals (influence from gradient features) records inclusive seconds: its own
        work plus the recorded seconds of what it used, so a run that finds it cached is charged the whole cost."""
        key = self.key(name, spec)
        path = self.root / name / key
        computed = False
        lock = HeartbeatLock(path.parent / f"{key}.lock")
        missing = self._agree(not (path / DONE).exists())
        if missing:

            def take_lock() -> None:
                path.parent.mkdir(parents=True, exist_ok=True)
                lock.acquire()

            together(self.accelerator, take_lock, main_only=True)  # the others wait, and stop if it fails
            try:
                if self._agree(not (path / DONE).exists()):
                    self._build(name, spec, path, build)
                    computed = True
            finally:
                if self.main:
                    lock.release()
            self._barrier()
        meta = json.loads((path / DONE).read_text())
        self._use(name, key, meta, cached=not computed)
        return path

    def _build(self, name: str, spec: dict[str, Any], path: Path, build: Callable[[Path], None]) -> None:
        work = path.with_name(path.name + ".partial")  # kept across interruptions: shards already done stay

        def make_work() -> None:
            if work.exists():
                log.info("signal %s/%s: continuing an interrupted computation", name, path.name)
            work.mkdir(parents=True, exist_ok=True)
            share_mode(work, is_dir=True)

        together(self.accelerator, make_work, main_only=True)
        done_before = work / "seconds.json"
        prior = json.loads(done_before.read_text())["seconds"] if done_before.exists() else 0.0
        frame = {"inner_wall": 0.0, "inner_recorded": 0.0}
        self._stack.append(frame)
        start = time.perf_counter()
        if self.main:
            log.info("signal %s: computing (%s)%s", name, path.name, f" on {self.world} processes" * (self.world > 1))
        try:  # a failure in any process's part (or the main one's writing at its end) stops every process
            together(self.accelerator, lambda: build(work))
        finally:
            wall = time.perf_counter() - start
            self._stack.pop()
            own = prior + wall - frame["inner_wall"]
            if self.main:
                atomic_write_json(done_before, {"seconds": own})
        seconds = own + frame["inner_recorded"]
        if self._stack:  # this build ran inside another one: its wall time is inside the parent's
            self._stack[-1]["inner_wall"] += wall

        def commit() -> None:
            meta = {"name": name, "spec": spec, "seconds": round(seconds, 3), "base": self._base}
            atomic_write_json(work / DONE, meta)
            if (path / DONE).exists():  # finished elsewhere meanwhile (a lock broken as stale): readers keep theirs
                log.warning("signal %s/%s: found complete when committing; keeping that one", name, path.name)
                shutil.rmtree(work, ignore_errors=True)
            else:
                if path.exists():  # a stale folder without its completion marker
                    shutil.rmtree(path)
                os.replace(work, path)

        together(self.accelerator, commit, main_only=True)

    def shard_rows(self, n: int) -> np.ndarray:
        """The rows of 0..n-1 this process computes when several processes share a signal (every world-th)."""
        return np.arange(self.accelerator.process_index, n, self.world)

    def _merge_parts(self, work: Path, arrays: dict[str, np.ndarray], rows: np.ndarray, n: int) -> None:
        """Each process saves its rows' values; the main process puts them together in pool order."""
        np.savez(work / f"part-{self.accelerator.process_index}.npz", rows=rows, **arrays)
        self._barrier()
        if not self.main:
            return
        merged: dict[str, np.ndarray] = {}
        for rank in range(self.world):
            part = work / f"part-{rank}.npz"
            with np.load(part) as data:
                for key in data.files:
                    if key == "rows":
                        continue
                    values = data[key]
                    if key not in merged:
                        merged[key] = np.zeros((n, *values.shape[1:]), dtype=np.float32)
                    merged[key][data["rows"]] = values
            part.unlink()
        for key, values in merged.items():
            np.save(work / f"{key}.npy", values)

    def _use(self, name: str, key: str, meta: dict[str, Any], cached: bool) -> None:
        seconds = float(meta.get("seconds", 0.0))
        if self._stack:  # used while building another signal: counted in that one's inclusive seconds
            self._stack[-1]["inner_recorded"] += seconds
            return
        entry = {"name": name, "key": key, "seconds": seconds, "cached": cached}
        if not any(u["key"] == key for u in self.used):
            self.used.append(entry)

    # ------------------------------------------------------------------ warm-up runs

    def warmup(
        self,
        *,
        epochs: int,
        seed: int,
        fraction: float | None = None,
        ids: list[str] | None = None,
        recipe: dict[str, Any] | None = None,
        lora: dict[str, Any] | None = None,
        schedule_epochs: int | None = None,
        base: dict[str, int] | None = None,
    ) -> WarmupRun:
        """The proxy trained by the one training loop on a random `fraction` of the pool (or the given ids) for
        `epochs`, with a checkpoint (weights and Adam's moments by parameter name) kept after every epoch.
        `recipe` overrides training-recipe values (e.g. lr); `lora` wraps the model in LoRA adapters first.
        With `schedule_epochs` (> epochs) the learning-rate schedule spans that many epochs and training stops after
        `epochs`: the model early in a full-length run, where the data-diet papers take their scores.
        With `base` ({"examples", "epochs"}) the proxy starts from that pretrained stand-in (pretrained_base)."""
        if epochs < 1:
            raise ValueError("a warm-up needs at least one epoch")
        if ids is not None:
            rows = np.sort(self.pool.index_of(ids))
        else:
            n = max(1, int(round((fraction if fraction is not None else 1.0) * self.pool.n)))
            rows = np.sort(stage_rng(seed, "warmup-subset").choice(self.pool.n, size=n, replace=False))
        train_cfg = OmegaConf.merge(self.train_cfg, {"epochs": epochs, **(recipe or {})})
        train_cfg.compute, train_cfg.steps = "epochs", None
        model_cfg = self._with_lora(lora)
        spec = {
            "rows": hashlib.sha256(rows.astype(np.int64).tobytes()).hexdigest(),
            "n_rows": int(len(rows)),
            "epochs": epochs,
            "seed": seed,
            "recipe": _recipe(train_cfg),
            "lora": OmegaConf.to_container(model_cfg.lora) if model_cfg.lora.enabled else None,  # what trains
        }
        span = epochs
        if schedule_epochs is not None and schedule_epochs > epochs:
            span = spec["schedule_epochs"] = schedule_epochs
        base_path = self.pretrained_base(**base) if base else None
        if base_path is not None:  # absent otherwise, so the keys of warm-ups from the model as configured stay
            spec["base"] = base_path.name

        init_seed = stream_seed(seed, "warmup-init")

        def build(work: Path) -> None:
            from harness.training import count_steps, train

            model = self._proxy(model_cfg, init_seed, base_path)
            train(
                model,
                self.tokens,
                [rows] * span,
                train_cfg,
                stream_seed(seed, "warmup-order"),
                work / "run",
                self.accelerator,
                pad_id=self.tokenizer.pad_token_id,
                model_id=digest(spec),
                epoch_checkpoints=work / "epochs",
                stop_at=count_steps([rows] * epochs, train_cfg.global_batch_size) if span > epochs else None,
            )
            if not self.main:
                return
            np.save(work / "rows.npy", rows)
            lrs = [
                float(torch.load(work / "epochs" / f"epoch-{e:03d}" / "state.pt", weights_only=False)["avg_lr"])
                for e in range(epochs)
            ]
            atomic_write_json(work / "warmup.json", {"avg_lrs": lrs})
            shutil.rmtree(work / "run" / "checkpoints", ignore_errors=True)

        path = self.cached("warmup", spec, build)
        info = json.loads((path / "warmup.json").read_text())
        return WarmupRun(
            path, self.key("warmup", spec), rows, epochs, tuple(info["avg_lrs"]), lora, init_seed, base_path
        )

    def pretrained_base(self, examples: int, epochs: int) -> Path:
        """The scratch proxy pretrained by the one training loop (the recipe's settings) for `epochs` passes over
        `examples` clean generated examples disjoint from the pool: the testbed's stand-in for the pretrained
        checkpoint that the papers' proxies start from. Cached like any signal; its folder holds `model.pt`."""
        if self.model_cfg.source != "scratch" or self.pretraining_corpus is None:
            what = "a pretrained model" if self.model_cfg.source != "scratch" else "a pool that is not the testbed"
            raise HarnessError(
                f"warmup_base=pretrained pretrains the testbed's scratch model on generated examples, and this run "
                f"has {what}; use selector.warmup_base=model"
            )
        corpus = self.pretraining_corpus(examples)
        train_cfg = OmegaConf.merge(self.train_cfg, {"epochs": epochs})
        train_cfg.compute, train_cfg.steps = "epochs", None
        spec = {"corpus": corpus.fingerprint(), "examples": examples, "epochs": epochs, "recipe": _recipe(train_cfg)}
        model_cfg = self._with_lora({"enabled": False})

        def build(work: Path) -> None:
            from harness.tokenization import tokenize_pool
            from harness.training import train

            tokens = tokenize_pool(corpus, self.tokenizer, model_cfg.max_length, model_cfg.add_bos_token, work)
            model = build_model(model_cfg, self.tokenizer, stream_seed(0, "pretrained-base-init"))
            train(
                model,
                tokens,
                [np.arange(corpus.n)] * epochs,
                train_cfg,
                stream_seed(0, "pretrained-base-order"),
                work / "run",
                self.accelerator,
                pad_id=self.tokenizer.pad_token_id,
                model_id=digest(spec),
            )
            if self.main:
                torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, work / "model.pt")
                shutil.rmtree(work / "run", ignore_errors=True)
                shutil.rmtree(work / "tokenized", ignore_errors=True)

        return self.cached("pretrained_base", spec, build)

    def _proxy(self, model_cfg: DictConfig, init_seed: int, base: Path | None) -> torch.nn.Module:
        """A fresh proxy: the model as configured, or (with `base`) the pretrained stand-in's weights under the
        same LoRA adapters."""
        if base is None:
            return build_model(model_cfg, self.tokenizer, init_seed)
        model = build_model(OmegaConf.merge(model_cfg, {"lora": {"enabled": False}}), self.tokenizer, init_seed)
        model.load_state_dict(torch.load(base / "model.pt", map_location="cpu", weights_only=True))
        return add_lora(model, model_cfg.lora, init_seed) if model_cfg.lora.enabled else model

    def _with_lora(self, lora: dict[str, Any] | None) -> DictConfig:
        """The proxy's model config, its LoRA settings replaced by `lora` when given ({"enabled": False}: train
        every parameter, even of a model configured with LoRA)."""
        cfg = OmegaConf.create(OmegaConf.to_container(self.model_cfg, resolve=True))
        if lora is not None:
            cfg.lora = OmegaConf.merge(cfg.lora, {"enabled": True, **lora})
        return cfg

    def trainable_names(self, lora: dict[str, Any] | None = None) -> list[str]:
        """Names of the parameters a warm-up with this `lora` setting trains (meta device: nothing is trained or
        loaded), so a selector can check its settings before it pays for a warm-up."""
        from harness.signals.per_example import trainable_names

        return trainable_names(meta_model(self._with_lora(lora), self.tokenizer))

    def model_at(self, warm: WarmupRun, epoch: int) -> torch.nn.Module:
        """The warm-up's model as it was at the end of `epoch` (-1: the last), on the device, in eval mode."""
        epoch = warm.epochs - 1 if epoch < 0 else epoch
        state = torch.load(warm.checkpoint(epoch), map_location="cpu", weights_only=False)
        model = self._proxy(self._with_lora(warm.lora), warm.init_seed, warm.base)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in state["model"].items():
                params[name].copy_(value.to(params[name].dtype))
        return model.to(self.accelerator.device).eval()

    def moments_at(self, warm: WarmupRun, epoch: int) -> dict[str, Any]:
        """Adam's moments (by parameter name), betas and eps of the warm-up at the end of `epoch`."""
        state = torch.load(warm.checkpoint(epoch), map_location="cpu", weights_only=False)
        return {"moments": state["moments"], "betas": tuple(state["betas"]), "eps": float(state["eps"])}

    # ------------------------------------------------------------------ per-example signals

    def _per_example(
        self,
        name: str,
        warm: WarmupRun,
        epoch: int,
        compute: Callable[[Any, np.ndarray], dict],
        rows: np.ndarray | None = None,
    ) -> dict:
        """Arrays over the whole pool (pool order), or over the given pool `rows` only (in their order), from one
        warm-up checkpoint, cached as .npy, read memory-mapped; with several processes each computes every
        world-th of them."""
        epoch = warm.epochs - 1 if epoch < 0 else epoch
        subset = None if rows is None else np.asarray(rows, dtype=np.int64)
        n = self.pool.n if subset is None else len(subset)

        def build(work: Path) -> None:
            model = self.model_at(warm, epoch)
            mine = self.shard_rows(n)  # positions in the pool, or in `rows`
            arrays = {
                k: np.asarray(v, dtype=np.float32)
                for k, v in compute(model, mine if subset is None else subset[mine]).items()
            }
            self._merge_parts(work, arrays, mine, n)

        spec: dict[str, Any] = {"warmup": warm.key, "epoch": epoch, "batch": self.batch_size}
        if subset is not None:  # the whole pool's key stays as it was, so its caches stay valid
            spec["rows"] = hashlib.sha256(subset.tobytes()).hexdigest()
        path = self.cached(name, spec, build)
        return {p.stem: np.load(p, mmap_mode="r") for p in sorted(path.glob("*.npy"))}

    def _args(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "device": self.accelerator.device, "pad_id": self.tokenizer.pad_token_id}

    def losses(self, warm: WarmupRun, epoch: int = -1, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """{'loss', 'el2n'}: per example, the mean response-token loss and EL2N (one batched forward pass each), over
        the pool, or over the pool `rows` given (in that order: a pass over a subset costs only the subset)."""
        from harness.signals.per_example import losses_and_el2n

        def compute(model: Any, rows: np.ndarray) -> dict:
            loss, el2n = losses_and_el2n(model, self.tokens, rows, **self._args())
            return {"loss": loss, "el2n": el2n}

        return self._per_example("losses", warm, epoch, compute, rows)

    def grad_norms(self, warm: WarmupRun, epoch: int = -1) -> np.ndarray:
        """GraNd: per-example gradient norms over the trainable parameters (batched per-example gradients)."""
        from harness.signals.per_example import grad_norms

        def compute(model: Any, rows: np.ndarray) -> dict:
            return {"grand": grad_norms(model, self.tokens, rows, **self._args())}

        return self._per_example("grad_norms", warm, epoch, compute)["grand"]

    def embeddings(self, warm: WarmupRun, epoch: int = -1) -> np.ndarray:
        """RDS+ embeddings: final hidden states, position-weighted mean, L2-normalised (n x hidden)."""
        from harness.signals.embeddings import embeddings

        def compute(model: Any, rows: np.ndarray) -> dict:
            return {"embeddings": embeddings(model, self.tokens, rows, **self._args())}

        return self._per_example("embeddings", warm, epoch, compute)["embeddings"]

    # ------------------------------------------------------------------ LESS gradient features and influence

    def validation_tokens(self) -> TokenizedPool:
        """The pool's validation examples, tokenized as the pool is (small: kept in memory)."""
        if getattr(self, "_val_tokens", None) is None:
            from harness.tokenization import tokenize_frame, warn_truncation

            self._val_tokens = tokenize_frame(
                self.pool, self.pool.validation, self.tokenizer, self.model_cfg.max_length, self.model_cfg.add_bos_token
            )
            warn_truncation(self._val_tokens, "validation examples", self.model_cfg.max_length)
        return self._val_tokens

    def gradient_features(self, warm: WarmupRun, epoch: int, *, validation: bool, settings: dict[str, Any]) -> Any:
        """Projected, L2-normalised gradient features of every pool example (Adam update direction from the
        checkpoint's moments) or of every validation example (plain gradient), as a memory-mapped store filled
        in committed shards (an interrupted computation continues where it stopped)."""
        from harness.signals.gradients import FeatureStore, gradient_features
        from harness.signals.projection import Projector

        data = self.validation_tokens() if validation else self.tokens
        # CPU and CUDA generators (and GPU models, torch versions) draw different projections
        generator = generator_identity(self.accelerator.device)
        spec = {"warmup": warm.key, "epoch": epoch, "validation": validation, "generator": generator, **settings}
        if validation:
            spec["validation_rows"] = digest(self.pool.validation[["task", "prompt", "response"]].values.tolist())

        def build(work: Path) -> None:
            model = self.model_at(warm, epoch)
            modules = settings.get("feature_modules")
            if modules:  # features over a named part of the trainable parameters only
                keep = set(matching_parameters(model, modules))
                for name, param in model.named_parameters():
                    param.requires_grad_(name in keep)
            n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
            if n_params == 0:
                raise HarnessError(f"feature_modules {modules} match no trainable parameter of the model")
            projector = Projector(
                n_params,
                settings["proj_dim"],
                settings["proj_seed"],
                settings["projection"],
                device=self.accelerator.device,
            )
            adam = {} if validation else self._adam(warm, epoch)
            shard_rows = min(4096, max(64, -(-data.n // 16)))  # enough shards for several processes to share
            store = FeatureStore(
                work / "store", data.n, settings["proj_dim"], dtype=settings["store_dtype"], shard_rows=shard_rows
            )

            def compute(start: int, stop: int) -> np.ndarray:
                return gradient_features(
                    model,
                    data,
                    np.arange(start, stop),
                    kind="sgd" if validation else "adam",
                    formula=settings["adam_formula"],
                    projector=projector,
                    **adam,
                    **self._args(),
                )

            rank, world = self.accelerator.process_index, self.world
            store.fill(compute, shards=[k for k in store.missing_shards() if k % world == rank], finish=False)
            self._barrier()
            if self.main:  # the one writer of features.npy: assembles the shards, marks it complete, drops them
                store.fill(compute)

        path = self.cached("gradient_features", spec, build)
        return np.load(path / "store" / FeatureStore.FILE, mmap_mode="r")

    def _adam(self, warm: WarmupRun, epoch: int) -> dict[str, Any]:
        state = torch.load(warm.checkpoint(epoch), map_location="cpu", weights_only=False)
        moments = {n: (m["exp_avg"], m["exp_avg_sq"]) for n, m in state["moments"].items()}
        steps = [int(m["step"]) for m in state["moments"].values()]
        return {"moments": moments, "step": max(steps, default=0), "betas": tuple(state["betas"]), "eps": state["eps"]}

    def influence(self, warm: WarmupRun, settings: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The N x |V| LESS influence matrix (cosines of training and validation gradient features per
        checkpoint, summed with each epoch's average learning rate as weight, renormalised) and the task of every
        validation column. Cached itself, so every aggregation and BIDS reuse it."""
        from harness.signals.influence import influence_matrix, lr_weights

        spec = {
            "warmup": warm.key,
            "validation_rows": digest(self.pool.validation[["task", "prompt", "response"]].values.tolist()),
            "generator": generator_identity(self.accelerator.device),
            **settings,
        }

        def build(work: Path) -> None:
            train = [self.gradient_features(warm, e, validation=False, settings=settings) for e in range(warm.epochs)]
            val = [self.gradient_features(warm, e, validation=True, settings=settings) for e in range(warm.epochs)]
            if self.main:  # the stores are complete on disk: one process scores them
                weights = lr_weights(warm.avg_lrs)
                matrix = influence_matrix(train, [np.asarray(v, dtype=np.float32) for v in val], weights)
                np.save(work / "influence.npy", matrix.astype(np.float32))

        path = self.cached("influence", spec, build)
        return np.load(path / "influence.npy", mmap_mode="r"), self.pool.validation["task"].to_numpy()


def _recipe(cfg: DictConfig) -> dict[str, Any]:
    from harness.training import recipe_of

    return json.loads(json.dumps(recipe_of(OmegaConf.to_container(cfg, resolve=True)), default=str))

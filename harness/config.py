"""Typed schemas for the composed config, custom resolvers, and validation into one-line errors."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.errors import HarnessError, first_line
from harness.evaluation.settings import EvalSchema
from harness.identity import run_name, task_overrides


@dataclass
class LoraSchema:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ScratchModelSchema:
    name: str = "tiny_llama"
    source: str = "scratch"
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_length: int = 64
    vocab_size: int = 512
    add_bos_token: bool = False
    dtype: str = "float32"
    lora: LoraSchema = field(default_factory=LoraSchema)


@dataclass
class PretrainedModelSchema:
    name: str = "hf"
    source: str = "pretrained"
    name_or_path: str = "???"
    revision: str | None = None
    max_length: int = 1024
    add_bos_token: bool = True
    dtype: str = "auto"
    trust_remote_code: bool = False
    chat_template: str | None = None
    lora: LoraSchema = field(default_factory=LoraSchema)


@dataclass
class TrainSchema:
    compute: str = "epochs"
    steps: int | None = None
    epochs: int = 10
    global_batch_size: int = 32
    micro_batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    scheduler: str = "cosine"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"
    checkpoint_every: int = 100
    keep_checkpoint: bool = False


def _testbed_schema() -> type:
    """data=testbed: name, source, delimiter, plus every field of the generator's TestbedConfig."""
    from harness.testbed import TestbedConfig

    hints = typing.get_type_hints(TestbedConfig)
    extra = [
        (f.name, hints[f.name], field(default_factory=f.default_factory))
        if f.default_factory is not dataclasses.MISSING
        else (f.name, hints[f.name], f.default)
        for f in dataclasses.fields(TestbedConfig)
    ]
    base = [("name", str, "testbed"), ("source", str, "testbed"), ("delimiter", str, " ")]
    return dataclasses.make_dataclass("TestbedDataSchema", base + extra)


@dataclass
class _TextPoolSchema:
    """What every file or hub pool shares: how rows map onto examples and how the prompt is built."""

    columns: dict[str, str | None] = field(
        default_factory=lambda: {"id": None, "task": None, "prompt": None, "response": None}
    )
    template: str = "{prompt}"
    default_task: str = "all"
    delimiter: str = " "
    chat_template: bool = False
    validation_tasks: dict[str, int] = field(default_factory=dict)  # {lm-eval task: n}: validation from benchmarks


@dataclass
class JsonlDataSchema(_TextPoolSchema):
    name: str = "jsonl"
    source: str = "jsonl"
    path: str = "???"
    validation_path: str | None = None


@dataclass
class HubDataSchema(_TextPoolSchema):
    name: str = "hub"
    source: str = "hub"
    dataset: str = "???"
    subset: str | None = None
    split: str = "train"
    revision: str | None = None
    data_files: Any = None
    validation_split: str | None = None


@dataclass
class SeedsSchema:
    """Stage seeds (null: a stream derived from `seed`); harness.seeding.STAGES names them."""

    selection: int | None = None
    init: int | None = None
    order: int | None = None


@dataclass
class PathsSchema:
    results: str = "results"
    cache: str = "results/cache"


@dataclass
class WandbSchema:
    name: str = "wandb"
    project: str = "data-selection-harness"
    entity: str | None = None
    mode: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class NoLoggerSchema:
    name: str = "none"


DATA_SCHEMAS = {
    "testbed": _testbed_schema(),
    "jsonl": JsonlDataSchema,
    "hub": HubDataSchema,
}
MODEL_SCHEMAS = {"scratch": ScratchModelSchema, "pretrained": PretrainedModelSchema}
LOGGER_SCHEMAS = {"none": NoLoggerSchema, "wandb": WandbSchema}


def free_mappings() -> set[str]:
    """Dotted keys whose values are mappings of the user's own keys (per-task shots, generation settings, task
    shares, ...): the dict-typed fields of the group schemas, where a new key is legitimate and takes Hydra's +."""
    groups = {"eval": [EvalSchema], "data": list(DATA_SCHEMAS.values())}
    out = set()
    for group, schemas in groups.items():
        for schema in schemas:
            hints = typing.get_type_hints(schema)
            fields = dataclasses.fields(schema)
            out.update(f"{group}.{f.name}" for f in fields if typing.get_origin(hints[f.name]) is dict)
    return out


TOP_LEVEL_KEYS = {
    "data",
    "model",
    "train",
    "selector",
    "eval",
    "logger",
    "budget",
    "seed",
    "seeds",
    "rerun",
    "paths",
    "plugins",
    "num_threads",
    "dist_timeout_minutes",
}
CHOICES = {
    "train.scheduler": ("linear", "cosine", "constant_with_warmup"),
    "train.mixed_precision": ("auto", "no", "bf16"),
    "train.compute": ("epochs", "steps"),
    "eval.suite": ("testbed", "lm_eval"),
}


def _slug(text: str) -> str:
    """A folder-safe name, e.g. for a hub model id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "model"


def cell_name(data: str, model: str, selector: str, budget: Any, seed: Any, *, _root_: Any = None) -> str:
    """Readable run-directory name of one cell: data/model/selector/b<budget>_s<seed>[,overrides that change
    the result] (the command line's overrides come from Hydra; see harness.identity.run_name)."""
    overrides = task_overrides() or []  # none outside a Hydra run
    return f"{data}/{model}/{selector}/{run_name(selector, budget, seed, overrides, root=_root_)}"


def register_resolvers() -> None:
    """Resolvers used by conf/, and the Slurm launcher's schema (safe to call more than once)."""
    from harness.launch import register_launcher_schema

    register_launcher_schema()
    if not OmegaConf.has_resolver("harness.cell"):
        OmegaConf.register_new_resolver("harness.cell", cell_name, use_cache=False)
    if not OmegaConf.has_resolver("harness.slug"):
        OmegaConf.register_new_resolver("harness.slug", _slug)


def parse_budget(value: Any, selector: str | None = None) -> float:
    """The budget as a float in (0, 1], or a one-line error saying what to pass."""
    whole = "leave budget out (selector=full keeps the whole pool whatever it is)"
    fix = whole if selector == "full" else "pass e.g. budget=0.15, or selector=full for the whole pool"
    if isinstance(value, bool):
        raise HarnessError(f"budget must be a number in (0, 1], got {value!r}; pass e.g. budget=0.15")
    try:
        b = float(value)
    except (TypeError, ValueError):
        raise HarnessError(f"budget must be a number in (0, 1], got {value!r}; pass e.g. budget=0.15") from None
    if not 0.0 < b <= 1.0:
        raise HarnessError(f"budget must be in (0, 1] (the fraction of the pool kept), got {value!r}; {fix}")
    return b


def _one_line(exc: OmegaConfBaseException) -> str:
    """OmegaConf's error as one line: 'key: what is wrong'."""
    msg = first_line(exc)
    key = getattr(exc, "full_key", None)
    return f"{key}: {msg}" if key and key not in msg else msg


def _typed(group: str, node: Any, schema: type, where: str = "") -> DictConfig:
    """Merge one group onto its schema so wrong types and unknown keys fail (`where`: the file that sets it)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as exc:
        raise HarnessError(
            f"bad config in '{group}': {_one_line(exc)}; fix the override or {where or f'conf/{group}/*.yaml'}"
        ) from None
    return merged


def _pick(group: str, node: Any, key: str, schemas: dict[str, type]) -> type:
    value = node.get(key) if isinstance(node, DictConfig) else None
    if value not in schemas:
        raise HarnessError(f"{group}.{key} must be one of {sorted(schemas)}, got {value!r}; fix conf/{group}/*.yaml")
    return schemas[value]


RECIPE_RULES: tuple[tuple[str, str, Any], ...] = (
    ("epochs", "at least 1", lambda v: v >= 1),
    ("global_batch_size", "at least 1", lambda v: v >= 1),
    ("micro_batch_size", "at least 1", lambda v: v >= 1),
    ("lr", "positive", lambda v: v > 0),
    ("weight_decay", "non-negative", lambda v: v >= 0),
    ("warmup_ratio", "in [0, 1]", lambda v: 0 <= v <= 1),
    ("adam_beta1", "in [0, 1)", lambda v: 0 <= v < 1),
    ("adam_beta2", "in [0, 1)", lambda v: 0 <= v < 1),
    ("adam_eps", "positive", lambda v: v > 0),
    ("max_grad_norm", "non-negative (0 turns clipping off)", lambda v: v >= 0),
    ("checkpoint_every", "at least 1", lambda v: v >= 1),
)
"""What every training-recipe value must satisfy (checked before any work)."""


FLOAT16_TRAINING = (
    "model.dtype=float16 would train float16 weights with AdamW and no loss scaling (unstable); "
    "pass model.dtype=bfloat16, or model.dtype=float32 (train.mixed_precision=bf16 for bf16 compute), "
    "or train LoRA adapters (model.lora.enabled=true), which stay float32"
)
"""The one-line refusal of training float16 parameters (config check and training loop)."""


def check_recipe(train: Any, where: str = "train") -> None:
    """A one-line error for a recipe value that cannot train (e.g. train.lr=-1)."""
    for key, rule, ok in RECIPE_RULES:
        value = train[key]
        if not ok(value):
            raise HarnessError(f"{where}.{key} must be {rule}, got {value!r}; fix the override or conf/train/*.yaml")
    if train.compute == "steps" and train.steps is not None and train.steps < 1:
        raise HarnessError(f"{where}.steps must be at least 1 (or null: the full pool's steps), got {train.steps}")
    if train.compute == "epochs" and train.steps is not None:
        raise HarnessError(
            f"{where}.steps is set but {where}.compute=epochs trains a number of epochs; "
            f"pass {where}.compute=steps to train {train.steps} steps, or {where}.steps=null"
        )


def check_eval(eval_cfg: Any, data: Any) -> None:
    """A one-line error for an evaluation setting lm-eval would reject only after training (a negative shot count,
    a limit below 1, bad generation settings, multi-turn shots without the chat template): the evaluation's own
    checks, run before anything else."""
    from harness.evaluation.settings import applies_chat_template, check_values

    if eval_cfg.batch_size < 1:
        raise HarnessError(f"eval.batch_size must be at least 1, got {eval_cfg.batch_size}")
    chat = applies_chat_template(eval_cfg.apply_chat_template, data.get("chat_template", False))
    plain = OmegaConf.to_container(eval_cfg, resolve=True)
    check_values(
        plain["num_fewshot"], plain["fewshot"], plain["limit"], plain["fewshot_as_multiturn"], chat, plain["gen_kwargs"]
    )


def check_plugins(plugins: Any) -> None:
    """`plugins` must be a list of folders (a bare string would be read letter by letter)."""
    if not (OmegaConf.is_list(plugins) or isinstance(plugins, (list, tuple))):
        raise HarnessError(f"plugins must be a list of folders, got {plugins!r}; pass e.g. plugins=[my_selectors]")
    bad = next((p for p in plugins if not isinstance(p, str) or not p), None)
    if bad is not None:
        raise HarnessError(f"plugins must name folders, got {bad!r}; pass e.g. plugins=[my_selectors]")


def validate(cfg: DictConfig) -> DictConfig:
    """Resolve and type-check the composed config; raises HarnessError with one line on any problem."""
    if cfg.model.get("source") == "pretrained" and OmegaConf.is_missing(cfg.model, "name_or_path"):
        raise HarnessError("model=hf needs model.name_or_path=<hub id or local directory>")
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise HarnessError(f"config cannot be resolved: {_one_line(exc)}") from None
    unknown = sorted(set(cfg.keys()) - TOP_LEVEL_KEYS)
    if unknown:
        raise HarnessError(f"unknown config key(s) {unknown}; the top level takes {sorted(TOP_LEVEL_KEYS)}")
    out = OmegaConf.create(OmegaConf.to_container(cfg))
    out.data = _typed("data", cfg.data, _pick("data", cfg.data, "source", DATA_SCHEMAS))
    out.model = _typed("model", cfg.model, _pick("model", cfg.model, "source", MODEL_SCHEMAS))
    out.logger = _typed("logger", cfg.logger, _pick("logger", cfg.logger, "name", LOGGER_SCHEMAS))
    out.train = _typed("train", cfg.train, TrainSchema)
    out.eval = _typed("eval", cfg.eval, EvalSchema)
    if "name" not in cfg.selector:
        raise HarnessError("selector config has no 'name'; every conf/selector/*.yaml names its selector")
    if out.logger.name == "wandb" and importlib.util.find_spec("wandb") is None:
        raise HarnessError("logger=wandb needs the wandb package; pip install -e '.[wandb]'")
    out.budget = parse_budget(cfg.budget, OmegaConf.select(cfg, "selector.name"))
    if not isinstance(cfg.seeds, DictConfig):
        raise HarnessError(f"seeds must be a mapping of stage seeds, got {cfg.seeds!r}; pass e.g. seeds.order=0")
    for key in ("seed", *(f"seeds.{stage}" for stage in cfg.seeds)):
        value = OmegaConf.select(cfg, key)
        if value is None and key != "seed":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise HarnessError(f"{key} must be a non-negative integer, got {value!r}; pass e.g. {key}=0")
    if cfg.seed >= 2**32:  # lm-eval seeds numpy's legacy generator with it, after training
        raise HarnessError(f"seed must be below 2**32 = {2**32} (evaluation seeds numpy with it), got {cfg.seed}")
    out.seeds = _typed("seeds", cfg.seeds, SeedsSchema, "conf/config.yaml")  # seeds.warmup would go unused
    out.paths = _typed("paths", cfg.paths, PathsSchema, "conf/config.yaml")
    if not isinstance(cfg.rerun, bool):
        raise HarnessError(f"rerun must be true or false, got {cfg.rerun!r}")
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(out, key)
        if value not in allowed:
            raise HarnessError(f"{key} must be one of {list(allowed)}, got {value!r}")
    check_recipe(out.train)
    if out.model.dtype == "float16" and not out.model.lora.enabled:
        raise HarnessError(FLOAT16_TRAINING)
    check_eval(out.eval, out.data)
    check_plugins(cfg.plugins)
    timeout = cfg.get("dist_timeout_minutes", 360)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise HarnessError(f"dist_timeout_minutes must be a positive number of minutes, got {timeout!r}")
    threads = cfg.get("num_threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise HarnessError(f"num_threads must be a positive integer or null (automatic), got {threads!r}")
    required = {"jsonl": "path", "hub": "dataset"}.get(out.data.source)
    if required and OmegaConf.is_missing(out.data, required):
        raise HarnessError(f"data={out.data.source} needs data.{required}=...; pass the pool to load")
    if out.data.source == "testbed":
        from harness.data import testbed_config

        try:
            testbed_config(out.data).validate()
        except ValueError as exc:
            raise HarnessError(f"data (testbed): {exc}") from None
    return out

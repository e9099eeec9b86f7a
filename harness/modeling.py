"""The proxy model and its tokenizer: a tiny Llama built from a config with a tokenizer trained on the
pool (cached), or any causal LM by hub id or local directory, with optional LoRA."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from harness.errors import HarnessError, first_line
from harness.hub import cached_model, hub_offline, looks_like_hub_id, offline_error, offline_mode
from harness.pool import Pool
from harness.storage import atomic_dir

log = logging.getLogger(__name__)

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def pool_corpus(pool: Pool, validation: bool = True) -> list[str]:
    """Text the scratch tokenizer is trained on: every pool (and validation) example as it is trained."""
    texts = []
    for frame in (pool.examples, pool.validation) if validation else (pool.examples,):
        texts.extend(p + pool.delimiter + r for p, r in zip(frame["prompt"], frame["response"]))
    return texts


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with single-digit pre-splitting (numbers stay digit by digit, as in Llama)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def scratch_tokenizer(pool: Pool, model_cfg: DictConfig, cache_dir: Path) -> PreTrainedTokenizerFast:
    """The pool's own tokenizer, trained once per (pool, vocab size) and reused from the cache."""
    key = hashlib.sha256(f"{pool.fingerprint()}:{model_cfg.vocab_size}:bpe-digits-v1".encode()).hexdigest()[:16]
    path = Path(cache_dir) / "tokenizers" / key

    def build(tmp: Path) -> None:
        log.info("training a %d-token BPE tokenizer on the pool", model_cfg.vocab_size)
        train_tokenizer(pool_corpus(pool), model_cfg.vocab_size).save_pretrained(tmp)

    atomic_dir(path, build)
    return PreTrainedTokenizerFast.from_pretrained(path)


def _cache_only(model_cfg: DictConfig) -> bool:
    """Whether a pretrained model loads from the local HF cache only: a hub id where the hub is offline (a cluster
    compute node) and the model was downloaded before. One that was not fails here, before anything waits."""
    name = str(model_cfg.name_or_path)
    if Path(name).expanduser().exists():
        return False
    if not looks_like_hub_id(name):
        raise HarnessError(
            f"model.name_or_path '{name}' is neither an existing folder nor a hub id; point it at a model folder "
            "(config.json and weights) or give a hub id such as meta-llama/Meta-Llama-3-8B"
        )
    if not hub_offline():
        return False
    if cached_model(name, model_cfg.revision):
        return True
    raise offline_error(
        "model",
        name,
        "download it once where there is network, with the same HF_HOME (hf download "
        f"{name}), or set model.name_or_path to a local directory",
    )


CHAT_TEMPLATES = {
    # open-instruct's Tulu format, which LESS's code (and BIDS's, built on it) writes around each turn
    "tulu": (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] | trim + '\n' }}"
        "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] | trim + '\n' }}"
        "{% else %}{{ '<|assistant|>\n' + message['content'] | trim + eos_token + '\n' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
}
"""Chat templates by name, for `model.chat_template` (base models ship none)."""


def chat_template(value: str) -> str:
    """The Jinja template `model.chat_template` names (a built-in's name, or a template given as is)."""
    if value in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[value]
    if "{%" in value or "{{" in value:
        return value
    raise HarnessError(
        f"model.chat_template must name a built-in template ({', '.join(sorted(CHAT_TEMPLATES))}) or be a Jinja "
        f"template string, got {value!r}; e.g. model.chat_template=tulu"
    )


def load_tokenizer(pool: Pool, model_cfg: DictConfig, cache_dir: Path) -> PreTrainedTokenizerBase:
    """The tokenizer for the configured model; a pad token is guaranteed."""
    if model_cfg.source == "scratch":
        return scratch_tokenizer(pool, model_cfg, cache_dir)
    cache_only = _cache_only(model_cfg)
    try:
        with offline_mode(cache_only):
            tok = AutoTokenizer.from_pretrained(
                model_cfg.name_or_path,
                revision=model_cfg.revision,
                trust_remote_code=model_cfg.trust_remote_code,
                local_files_only=cache_only,
            )
    except OSError as exc:
        raise HarnessError(
            f"cannot load a tokenizer from model '{model_cfg.name_or_path}': {first_line(exc)}; "
            "check model.name_or_path"
        ) from None
    if model_cfg.get("chat_template"):
        tok.chat_template = chat_template(str(model_cfg.chat_template))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def resolve_dtype(name: str) -> torch.dtype:
    """'auto' means bf16 where a GPU supports it, else float32."""
    if name == "auto":
        use_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if use_bf16 else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16}[
            name
        ]
    except KeyError:
        raise HarnessError(f"model.dtype must be auto, float32, bfloat16 or float16, got {name!r}") from None


def resolved_precision(accelerator: Any, dtype: str) -> dict[str, str]:
    """What `train.mixed_precision` and `model.dtype` (either may be `auto`) resolve to on this machine."""
    return {
        "mixed_precision": str(accelerator.mixed_precision),
        "model_dtype": str(resolve_dtype(str(dtype))).removeprefix("torch."),
    }


def scratch_config(model_cfg: DictConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> LlamaConfig:
    """The tiny Llama's architecture from the model config (sized to the tokenizer when there is one)."""
    special = {}
    if tokenizer is not None:
        special = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    return LlamaConfig(
        vocab_size=len(tokenizer) if tokenizer is not None else model_cfg.vocab_size,
        hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.intermediate_size,
        num_hidden_layers=model_cfg.num_hidden_layers,
        num_attention_heads=model_cfg.num_attention_heads,
        num_key_value_heads=model_cfg.num_key_value_heads,
        max_position_embeddings=model_cfg.max_length,
        tie_word_embeddings=True,
        **special,
    )


def build_model(model_cfg: DictConfig, tokenizer: PreTrainedTokenizerBase, init_seed: int) -> PreTrainedModel:
    """A fresh proxy model (scratch: seeded random init) or a pretrained one, wrapped with LoRA if asked."""
    if model_cfg.source == "scratch":
        config = scratch_config(model_cfg, tokenizer)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = LlamaForCausalLM(config)
        model.to(resolve_dtype(model_cfg.dtype))
    else:
        cache_only = _cache_only(model_cfg)
        try:
            with offline_mode(cache_only):
                model = AutoModelForCausalLM.from_pretrained(
                    model_cfg.name_or_path,
                    revision=model_cfg.revision,
                    dtype=resolve_dtype(model_cfg.dtype),
                    trust_remote_code=model_cfg.trust_remote_code,
                    local_files_only=cache_only,
                )
        except OSError as exc:
            raise HarnessError(
                f"cannot load model '{model_cfg.name_or_path}': {first_line(exc)}; check model.name_or_path"
            ) from None
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
    if model_cfg.lora.enabled:
        model = add_lora(model, model_cfg.lora, init_seed)
    return model


def meta_model(model_cfg: DictConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> PreTrainedModel:
    """The proxy's architecture on the meta device (no weights read or allocated), wrapped with LoRA when the
    config asks: counts parameters and names the trainable ones before anything is trained or downloaded."""
    from transformers import AutoConfig

    if model_cfg.source == "scratch":
        config = scratch_config(model_cfg, tokenizer)
    else:
        name = model_cfg.name_or_path
        try:
            config = AutoConfig.from_pretrained(
                name,
                revision=model_cfg.revision,
                trust_remote_code=model_cfg.trust_remote_code,
                local_files_only=hub_offline() or not looks_like_hub_id(name),
            )
        except (OSError, ValueError) as exc:
            raise HarnessError(
                f"cannot read the config of model '{name}' without downloading weights or network "
                f"({first_line(exc)}); download its config.json once (hf download {name} config.json) "
                "or point model.name_or_path at a local folder"
            ) from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        if model_cfg.lora.enabled:
            model = add_lora(model, model_cfg.lora, 0)
    return model


def matching_parameters(model: torch.nn.Module, modules: list[str]) -> list[str]:
    """Names of the trainable parameters whose name contains one of `modules` (gradient features' scope)."""
    return [n for n, p in model.named_parameters() if p.requires_grad and any(m in n for m in modules)]


def add_lora(model: PreTrainedModel, lora_cfg: DictConfig, init_seed: int) -> PreTrainedModel:
    """Wrap the model with LoRA adapters (peft); only the adapters train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        try:
            return get_peft_model(model, config)
        except ValueError as exc:  # e.g. "Target modules {...} not found in the base model"
            names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
            raise HarnessError(
                f"LoRA target modules {list(lora_cfg.target_modules)} do not fit this model ({first_line(exc)}); "
                f"its linear layers are named {names[:12]}"
            ) from None


def for_evaluation(model: Any) -> PreTrainedModel:
    """A plain transformers model for lm-eval: LoRA adapters merged into the weights."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.eval()


def model_description(model_cfg: DictConfig) -> dict[str, Any]:
    """What identifies the model in the record."""
    return json.loads(json.dumps(OmegaConf.to_container(model_cfg, resolve=True)))

"""The proxy model: scratch tokenizer cache, the hub-id code path on a local directory, LoRA."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import MICRO_POOL, tiny_llama
from omegaconf import OmegaConf
from transformers import LlamaForCausalLM

import harness.modeling as modeling
from harness.modeling import build_model, for_evaluation, load_tokenizer, pool_corpus, resolve_dtype, train_tokenizer
from harness.testbed import TestbedConfig, generate_testbed


@pytest.fixture(scope="module")
def pool():
    return generate_testbed(TestbedConfig(n_pool=200, n_eval_per_task=100, n_validation_per_task=20, n_facts=16))


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, pool):
    """A tiny Llama and its tokenizer saved with save_pretrained, as a hub download would be."""
    path = tmp_path_factory.mktemp("tiny-hub-model")
    texts = pool_corpus(pool, validation=False)
    tok = train_tokenizer(texts, 300)
    tiny_llama(tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def hf_cfg(path, lora: bool):
    return OmegaConf.create(
        {
            "name": "tiny",
            "source": "pretrained",
            "name_or_path": str(path),
            "revision": None,
            "max_length": 64,
            "add_bos_token": True,
            "dtype": "auto",
            "trust_remote_code": False,
            "lora": {"enabled": lora, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        }
    )


def test_scratch_tokenizer_is_trained_once_and_reused(pool, tmp_path, monkeypatch):
    cfg = OmegaConf.create({"source": "scratch", "vocab_size": 300})
    first = load_tokenizer(pool, cfg, tmp_path)
    monkeypatch.setattr(modeling, "train_tokenizer", lambda *a, **k: pytest.fail("tokenizer retrained"))
    second = load_tokenizer(pool, cfg, tmp_path)
    assert first.get_vocab() == second.get_vocab() and len(first) == 300
    assert len([p for p in (tmp_path / "tokenizers").iterdir() if p.is_dir()]) == 1
    assert first.tokenize("add 37 45 = 82").count("3") == 1  # digits stay single tokens


def test_pretrained_path_with_lora(pool, saved_model, tmp_path):
    cfg = hf_cfg(saved_model, lora=True)
    tok = load_tokenizer(pool, cfg, tmp_path)
    model = build_model(cfg, tok, init_seed=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    merged = for_evaluation(model)
    assert isinstance(merged, LlamaForCausalLM)
    assert not any("lora_" in n for n, _ in merged.named_parameters())


def test_auto_dtype_is_float32_without_a_bf16_gpu():
    expected = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    assert resolve_dtype("auto") == expected


def test_end_to_end_with_a_local_model_directory_and_lora(harness_cli, tmp_path, saved_model):
    code, out, err = harness_cli(
        [
            *MICRO_POOL,
            "model=hf",
            f"model.name_or_path={saved_model}",
            "model.max_length=64",
            "model.lora.r=4",
            "model.lora.alpha=8",
            "model.lora.dropout=0.0",
            "train.epochs=1",
            "train.lr=1e-3",
            "train.global_batch_size=16",
            "train.micro_batch_size=8",
        ]
    )
    assert code == 0, err
    runs = list((tmp_path / "results" / "runs").rglob("manifest.json"))
    assert len(runs) == 1
    manifest = json.loads(runs[0].read_text())
    assert manifest["status"] == "complete" and manifest["model"] == str(saved_model).strip("/").replace("/", "_")
    assert (runs[0].parent / "results.csv").is_file()


def test_a_base_model_without_a_chat_template_is_told_model_chat_template(harness_cli, tmp_path, saved_model):
    """A pretrained base model (no chat template) asked to evaluate with one: the line names model.chat_template,
    the documented fix for base models (it offered only another model); the scratch model, which has no such key,
    is not told it."""
    from conftest import MICRO, message_lines

    hf = [*MICRO_POOL, "model=hf", f"model.name_or_path={saved_model}", "model.max_length=64", "train.epochs=1"]
    code, _, err = harness_cli([*hf, "eval.apply_chat_template=true"])
    lines = message_lines(err)
    assert code == 2 and len(lines) == 1, err
    assert "needs a tokenizer with a chat template" in lines[0] and "model.chat_template=tulu" in lines[0]
    code, _, err = harness_cli([*MICRO, "eval.apply_chat_template=true"])
    assert code == 2 and "model.chat_template" not in err, err
    code, _, err = harness_cli([*hf, "eval.apply_chat_template=true", "model.chat_template=tulu", "eval.limit=2"])
    assert code == 0, err


def test_a_hub_model_in_the_local_cache_loads_where_the_hub_is_offline(pool, saved_model, tmp_path, monkeypatch):
    """A cluster compute node: no network (HF_HUB_OFFLINE=1, as the tests set), the model downloaded before into the
    shared HF cache. It loads from the cache, by hub id; a model not in the cache is one line naming the fix."""
    import shutil

    import huggingface_hub.constants as hub_constants

    from harness.errors import HarnessError

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-llama"
    shutil.copytree(saved_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = hf_cfg("someone/tiny-llama", lora=False)
    tok = load_tokenizer(pool, cfg, tmp_path)
    model = build_model(cfg, tok, init_seed=0)
    reference = LlamaForCausalLM.from_pretrained(saved_model)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    assert modeling.meta_model(cfg, tok).config.hidden_size == reference.config.hidden_size
    with pytest.raises(HarnessError, match="'someone/other-model' is not a local path .*hf download"):
        load_tokenizer(pool, hf_cfg("someone/other-model", lora=False), tmp_path)
    with pytest.raises(HarnessError, match="is neither an existing folder nor a hub id; point it at a model folder"):
        load_tokenizer(pool, hf_cfg(tmp_path / "no-such-model", lora=False), tmp_path)  # a typo in a local path


def test_a_named_chat_template_for_a_base_tokenizer_without_one(pool, saved_model, tmp_path):
    """Base models (Llama-3-8B) ship no chat template; model.chat_template=tulu gives the <|user|>/<|assistant|>
    turns of LESS's and BIDS's code. Without it the run id of a pretrained model stays what it was."""
    from harness.errors import HarnessError
    from harness.identity import identity, identity_hash
    from harness.tokenization import format_prompts

    assert load_tokenizer(pool, hf_cfg(saved_model, lora=False), tmp_path).chat_template is None
    cfg = hf_cfg(saved_model, lora=False)
    cfg.chat_template = "tulu"
    tok = load_tokenizer(pool, cfg, tmp_path)
    chat_pool = type(pool)(pool.name, pool.examples, pool.validation, delimiter=pool.delimiter, chat_template=True)
    assert format_prompts(chat_pool, ["add 1 2 ="], tok) == ["<|user|>\nadd 1 2 =\n<|assistant|>\n"]
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert tok.apply_chat_template(turns, tokenize=False) == f"<|user|>\nq\n<|assistant|>\na{tok.eos_token}\n"
    cfg.chat_template = "chatml"
    with pytest.raises(HarnessError, match="model.chat_template must name a built-in template .*tulu"):
        load_tokenizer(pool, cfg, tmp_path)
    base = {"data": {}, "model": dict(hf_cfg(saved_model, lora=False)), "train": {}, "eval": {}}
    before = identity_hash(identity(base))
    assert identity_hash(identity({**base, "model": {**base["model"], "chat_template": None}})) == before
    assert identity_hash(identity({**base, "model": {**base["model"], "chat_template": "tulu"}})) != before

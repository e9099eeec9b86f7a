"""Model signals: batched losses, EL2N, gradient norms, embeddings, projections and LESS features agree
with one-example-at-a-time references, and the feature store resumes after an interruption."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_llama
from peft import LoraConfig, get_peft_model

from harness.errors import HarnessError
from harness.modeling import pool_corpus, train_tokenizer
from harness.signals import gradients
from harness.signals.embeddings import embeddings
from harness.signals.gradients import (
    FeatureStore,
    adam_direction,
    adam_state_from_optimizer,
    gradient_features,
)
from harness.signals.per_example import (
    grad_norms,
    linear_owners,
    losses_and_el2n,
    per_example_grads,
    trainable_names,
)
from harness.signals.projection import Projector
from harness.testbed import TestbedConfig, generate_testbed
from harness.tokenization import tokenize_pool
from harness.training import collate, summed_response_loss

ROWS = np.arange(3, 200, 13)  # 16 rows of mixed lengths, not in length order
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    pool = generate_testbed(TestbedConfig(n_pool=200, n_validation_per_task=5, n_eval_per_task=5, n_facts=16))
    texts = pool_corpus(pool, validation=False)
    tok = train_tokenizer(texts, 300)
    data = tokenize_pool(pool, tok, 64, False, tmp_path_factory.mktemp("cache"))
    return tok, data


def plain_model(tok):
    return tiny_llama(tok, layers=2, hidden=32, heads=2, seed=1)


def lora_model(tok):
    """LoRA with dropout (must be off for signals) and non-zero B, so both adapter matrices get gradients."""
    model = get_peft_model(
        tiny_llama(tok, layers=2, hidden=32, heads=2, seed=2),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    )
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def attention_model(tok):
    """LESS's feature setting on a scratch model: only the attention projections are trainable."""
    model = tiny_llama(tok, layers=2, hidden=32, heads=2, seed=4)
    for name, p in model.named_parameters():
        p.requires_grad_(any(m in name for m in ("q_proj", "k_proj", "v_proj", "o_proj")))
    return model


class SharedBiasedLayer(torch.nn.Module):
    """One linear layer with a bias applied twice per token (its per-example gradient sums both calls),
    then a biased output head; the embedding is frozen, so every trainable parameter is a linear layer's."""

    def __init__(self, vocab_size: int, width: int = 16) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(5)
        self.embed = torch.nn.Embedding(vocab_size, width).requires_grad_(False)
        self.shared = torch.nn.Linear(width, width)
        self.head = torch.nn.Linear(width, vocab_size)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        h = torch.tanh(self.shared(torch.tanh(self.shared(self.embed(input_ids)))))
        return SimpleNamespace(logits=self.head(h))


def shared_biased_model(tok):
    return SharedBiasedLayer(len(tok))


def loop_grads(model, data, rows, pad_id) -> torch.Tensor:
    """Reference: one example, one backward pass of the training loss (attention mask included)."""
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    model.eval()
    out = []
    for r in rows:
        batch = collate(data, np.array([r]), pad_id)
        n_resp = int((batch["labels"] != -100).sum())
        model.zero_grad(set_to_none=True)
        (summed_response_loss(model, batch) / n_resp).backward()
        out.append(torch.cat([p.grad.reshape(-1) for p in params]))
    model.zero_grad(set_to_none=True)
    return torch.stack(out)


@pytest.mark.parametrize(
    "build", [plain_model, lora_model, attention_model, shared_biased_model], ids=["full", "lora", "qkvo", "shared"]
)
def test_batched_grad_norms_equal_one_example_backward_loop(setup, build):
    tok, data = setup
    model = build(tok)
    model.train()  # the functions switch dropout off and put the mode back
    norms = grad_norms(model, data, ROWS, batch_size=5, device=CPU, pad_id=tok.pad_token_id)
    assert model.training
    reference = loop_grads(model, data, ROWS, tok.pad_token_id)
    np.testing.assert_allclose(norms, reference.double().norm(dim=1).numpy(), rtol=1e-5)
    flat = per_example_grads(model, data, ROWS[:6], device=CPU, pad_id=tok.pad_token_id)
    assert flat.shape == (6, sum(p.numel() for p in model.parameters() if p.requires_grad))
    torch.testing.assert_close(flat, reference[:6], rtol=1e-4, atol=1e-6)
    if build is lora_model:
        assert all("lora_" in n for n in trainable_names(model))
        assert (norms > 0).all()
    # the linear-layer path (LoRA, attention projections) and the vmap path (anything else) both apply
    assert (linear_owners(model) is None) == (build is plain_model)


@pytest.mark.parametrize("build", [plain_model, lora_model], ids=["full", "lora"])
def test_batched_losses_and_el2n_equal_per_example_loop(setup, build):
    tok, data = setup
    model = build(tok)
    model.train()
    losses, el2n = losses_and_el2n(model, data, ROWS, batch_size=4, device=CPU, pad_id=tok.pad_token_id)
    assert losses.dtype == np.float32 and el2n.dtype == np.float32 and model.training
    model.eval()
    for i, r in enumerate(ROWS):
        batch = collate(data, np.array([r]), tok.pad_token_id)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"]).logits[0, :-1].double()
        targets = batch["labels"][0, 1:]
        keep = targets != -100
        probs = logits[keep].softmax(-1)
        onehot = F.one_hot(targets[keep], probs.size(-1)).double()
        expect_el2n = (probs - onehot).norm(dim=1).mean().item()
        expect_loss = F.cross_entropy(logits[keep], targets[keep]).item()
        assert losses[i] == pytest.approx(expect_loss, rel=1e-5)
        assert el2n[i] == pytest.approx(expect_el2n, rel=1e-5)
    assert 0 < el2n.min() and el2n.max() < math.sqrt(2)


def test_losses_are_float32_math_under_bf16(setup):
    tok, data = setup
    model = plain_model(tok)
    ref_losses, ref_el2n = losses_and_el2n(model, data, ROWS, batch_size=8, device=CPU, pad_id=tok.pad_token_id)
    model.to(torch.bfloat16)
    losses, el2n = losses_and_el2n(model, data, ROWS, batch_size=8, device=CPU, pad_id=tok.pad_token_id)
    np.testing.assert_allclose(losses, ref_losses, rtol=0.03)
    np.testing.assert_allclose(el2n, ref_el2n, rtol=0.03)
    norms = grad_norms(model, data, ROWS[:4], batch_size=4, device=CPU, pad_id=tok.pad_token_id)
    assert norms.dtype == np.float32 and np.isfinite(norms).all() and (norms > 0).all()


def test_embeddings_are_unit_norm_deterministic_and_position_weighted(setup):
    tok, data = setup
    model = lora_model(tok)
    model.train()
    emb = embeddings(model, data, ROWS, batch_size=5, device=CPU, pad_id=tok.pad_token_id)
    assert emb.shape == (len(ROWS), 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    again = embeddings(model, data, ROWS[::-1], batch_size=3, device=CPU, pad_id=tok.pad_token_id)
    np.testing.assert_allclose(again[::-1], emb, atol=1e-5)
    model.eval()
    r = int(ROWS[2])
    ids = torch.from_numpy(data.example(r).astype(np.int64))[None]
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
    t = torch.arange(1, ids.size(1) + 1, dtype=torch.float32)
    pooled = (t[:, None] * hidden).sum(0) / t.sum()
    np.testing.assert_allclose(emb[2], (pooled / pooled.norm()).numpy(), atol=1e-5)


@pytest.mark.parametrize("kind", ["rademacher", "sparse"])
def test_projection_equals_materialised_matrix_in_every_process(kind):
    n_params, dim = 1000, 64
    x = torch.randn(7, n_params, generator=torch.Generator().manual_seed(0))
    cached = Projector(n_params, dim, seed=5, kind=kind, block_entries=64 * 96)  # 11 blocks, last one short
    assert cached.n_blocks == 11
    dense = cached.materialize()
    torch.testing.assert_close(cached.project(x), x @ dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached.project(x), x @ dense, rtol=1e-5, atol=1e-5)  # now from the cache
    uncached = Projector(n_params, dim, seed=5, kind=kind, block_entries=64 * 96, cache_bytes=0)
    assert torch.equal(uncached.project(x), cached.project(x))
    assert uncached.fingerprint() == cached.fingerprint()
    other = Projector(n_params, dim, seed=6, kind=kind, block_entries=64 * 96)
    assert not torch.allclose(other.project(x), cached.project(x))
    if kind == "rademacher":
        assert set(torch.unique(dense).tolist()) == {-1 / 8, 1 / 8}
        assert abs(float((dense > 0).float().mean()) - 0.5) < 0.02
    else:
        nonzero = dense != 0
        assert (nonzero.sum(1) == 4).all()  # one position in each of the 4 output segments
        assert (nonzero.reshape(n_params, 4, 16).sum(2) == 1).all()
        torch.testing.assert_close(dense[nonzero].abs(), torch.full((4 * n_params,), 0.5))


@pytest.mark.parametrize("kind", ["rademacher", "sparse"])
def test_projection_roughly_preserves_norms_and_angles(kind):
    n_params, dim = 5000, 1024
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(20, n_params, generator=gen)
    x[10:] = x[10:] * torch.rand(10, n_params, generator=gen).lt(0.05)  # some sparse vectors too
    y = Projector(n_params, dim, seed=0, kind=kind).project(x)
    ratio = y.norm(dim=1) / x.norm(dim=1)
    assert (ratio - 1).abs().max() < 0.15
    assert abs(float(ratio.mean()) - 1) < 0.05
    a, b = F.normalize(x[:5], dim=1), F.normalize(x[5:10], dim=1)
    pa, pb = F.normalize(y[:5], dim=1), F.normalize(y[5:10], dim=1)
    assert ((pa @ pb.T) - (a @ b.T)).abs().max() < 0.15


def warmed_up_lora(tok, data):
    """A LoRA model after a few AdamW steps, with its optimizer (no weight decay)."""
    model = lora_model(tok)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.0)
    model.train()
    torch.manual_seed(0)
    for step in range(3):
        rows = np.arange(step * 8, step * 8 + 8)
        batch = collate(data, rows, tok.pad_token_id)
        n_resp = int((batch["labels"] != -100).sum())
        opt.zero_grad()
        (summed_response_loss(model, batch) / n_resp).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model, opt


def test_adam_direction_is_the_next_adamw_step_and_matches_hand_formulas(setup):
    tok, data = setup
    model, opt = warmed_up_lora(tok, data)
    state = adam_state_from_optimizer(model, opt.state_dict())
    assert state.step == 3 and state.betas == (0.9, 0.99) and state.eps == 1e-6
    names = trainable_names(model)
    m = torch.cat([state.moments[n][0].reshape(-1) for n in names]).double()
    v = torch.cat([state.moments[n][1].reshape(-1) for n in names]).double()
    r = int(ROWS[4])
    g = loop_grads(model, data, [r], tok.pad_token_id)[0]
    gd = g.double()
    m1, v1 = 0.9 * m + 0.1 * gd, 0.99 * v + 0.01 * gd**2
    hand_paper = (m1 / (1 - 0.9**4)) / ((v1 / (1 - 0.99**4)).sqrt() + 1e-6)
    hand_authors = m1 / (v1 + 1e-6).sqrt()
    paper = adam_direction(g, m.float(), v.float(), state.step, state.betas, state.eps, "paper")
    authors = adam_direction(g[None], m.float(), v.float(), state.step, state.betas, state.eps, "authors")[0]
    torch.testing.assert_close(paper.double(), hand_paper, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(authors.double(), hand_authors, rtol=1e-4, atol=1e-6)

    # "paper" is exactly the update AdamW makes when this example is the next batch (lr 1e-3, no decay)
    before = torch.cat([p.detach().reshape(-1).clone() for n, p in model.named_parameters() if n in names])
    params = dict(model.named_parameters())
    for n, chunk in zip(names, torch.split(g, [params[n].numel() for n in names])):
        params[n].grad = chunk.reshape(params[n].shape).clone()
    opt.step()
    after = torch.cat([p.detach().reshape(-1) for n, p in model.named_parameters() if n in names])
    torch.testing.assert_close((before - after) / 1e-3, paper, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("grouping", ["one group", "two batches a group", "one batch a group"])
def test_gradient_features_equal_hand_computation_from_optimizer_state(setup, grouping, monkeypatch):
    tok, data = setup
    model, opt = warmed_up_lora(tok, data)
    state = adam_state_from_optimizer(model, opt.state_dict())
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if grouping == "two batches a group":  # batches of 6 rows: projected 12 + 4
        monkeypatch.setattr(gradients, "PROJECT_ROWS", 12)
    elif grouping == "one batch a group":  # the byte budget holds fewer than two batches
        monkeypatch.setattr(gradients, "PROJECT_BYTES", n_params * 4 * 8)
    projector = Projector(n_params, 256, seed=11, block_entries=256 * 500)
    projected, project = [], projector.project
    monkeypatch.setattr(projector, "project", lambda flat: projected.append(len(flat)) or project(flat))
    common = dict(projector=projector, batch_size=6, device=CPU, pad_id=tok.pad_token_id)
    adam = dict(moments=state.moments, step=state.step, betas=state.betas, eps=state.eps)
    feats = gradient_features(model, data, ROWS, kind="adam", **adam, **common)
    sgd = gradient_features(model, data, ROWS, kind="sgd", **common)
    groups = {"one group": [16], "two batches a group": [12, 4], "one batch a group": [6, 6, 4]}[grouping]
    assert projected == groups + groups
    assert feats.shape == (len(ROWS), 256) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)

    names = trainable_names(model)
    m = torch.cat([state.moments[n][0].reshape(-1) for n in names]).double()
    v = torch.cat([state.moments[n][1].reshape(-1) for n in names]).double()
    g = loop_grads(model, data, ROWS, tok.pad_token_id).double()
    b1, b2 = state.betas
    t = state.step + 1
    m_hat = (b1 * m + (1 - b1) * g) / (1 - b1**t)
    v_hat = (b2 * v + (1 - b2) * g**2) / (1 - b2**t)
    direction = m_hat / (v_hat.sqrt() + state.eps)
    dense = projector.materialize().double()
    expect_adam = F.normalize(direction @ dense, dim=1).numpy()
    expect_sgd = F.normalize(g @ dense, dim=1).numpy()
    np.testing.assert_allclose(feats, expect_adam, atol=2e-4)
    np.testing.assert_allclose(sgd, expect_sgd, atol=2e-4)
    assert np.abs(feats - sgd).max() > 0.05  # the Adam direction really differs from the gradient


def test_gradient_features_reject_bad_input(setup):
    tok, data = setup
    model = lora_model(tok)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    common = dict(batch_size=4, device=CPU, pad_id=tok.pad_token_id)
    with pytest.raises(HarnessError, match="parameters"):
        gradient_features(model, data, ROWS, kind="sgd", projector=Projector(n_params + 1, 8, 0), **common)
    with pytest.raises(HarnessError, match="moments"):
        gradient_features(model, data, ROWS, kind="adam", projector=Projector(n_params, 8, 0), **common)
    with pytest.raises(HarnessError, match="no Adam moments"):
        gradient_features(model, data, ROWS, kind="adam", moments={}, projector=Projector(n_params, 8, 0), **common)
    with pytest.raises(HarnessError, match="adam or sgd"):
        gradient_features(model, data, ROWS, kind="sign", projector=Projector(n_params, 8, 0), **common)
    with pytest.raises(HarnessError, match="kind"):
        Projector(10, 8, 0, kind="gaussian")


def test_feature_store_resumes_after_interruption_with_identical_features(setup, tmp_path):
    tok, data = setup
    model = lora_model(tok)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    projector = Projector(n_params, 64, seed=2)
    rows = np.arange(0, 200, 7)  # 29 rows -> shards of 8, 8, 8, 5

    def compute(start, stop):
        calls.append(start)
        return gradient_features(
            model, data, rows[start:stop], kind="sgd", projector=projector, batch_size=3, device=CPU, pad_id=0
        )

    calls: list[int] = []
    whole = np.array(FeatureStore(tmp_path / "whole", len(rows), 64, shard_rows=8).fill(compute))

    def interrupted(start, stop):
        if start >= 16:
            raise KeyboardInterrupt
        return compute(start, stop)

    store = FeatureStore(tmp_path / "resumed", len(rows), 64, shard_rows=8, meta={"kind": "sgd"})
    with pytest.raises(KeyboardInterrupt):
        store.fill(interrupted)
    with pytest.raises(HarnessError, match="incomplete"):
        store.open()
    again = FeatureStore(tmp_path / "resumed", len(rows), 64, shard_rows=8, meta={"kind": "sgd"})
    assert again.missing_shards() == [2, 3]
    calls.clear()
    resumed = again.fill(compute)
    assert calls == [16, 24]  # only the missing shards were computed
    assert isinstance(resumed, np.memmap) and resumed.dtype == np.float16 and not resumed.flags.writeable
    assert np.array_equal(np.array(resumed), whole)
    np.testing.assert_allclose(np.linalg.norm(whole.astype(np.float32), axis=1), 1.0, atol=2e-3)
    with pytest.raises(HarnessError, match="other features"):
        FeatureStore(tmp_path / "resumed", len(rows), 32, shard_rows=8, meta={"kind": "sgd"})


def _random_rows(start: int, stop: int, dim: int = 16) -> np.ndarray:
    """Unit rows that depend on their row numbers only (a stand-in for gradient features)."""
    rows = np.stack([np.random.default_rng(i).standard_normal(dim) for i in range(start, stop)])
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_feature_store_filled_by_two_writers_equals_one_writer(tmp_path, dtype):
    """Two stores on one path (two processes, maybe on two nodes) each commit their own shards to their own
    files; the finishing one assembles features.npy: the same bytes as one writer, and the shard files go."""
    n, dim, shard_rows = 37, 16, 5  # 8 shards, the last of 2 rows; boundaries not page-aligned

    def compute(start, stop):
        return _random_rows(start, stop, dim)

    single = np.array(FeatureStore(tmp_path / "one", n, dim, dtype=dtype, shard_rows=shard_rows).fill(compute))
    a = FeatureStore(tmp_path / "two", n, dim, dtype=dtype, shard_rows=shard_rows, meta={"x": 1})
    b = FeatureStore(tmp_path / "two", n, dim, dtype=dtype, shard_rows=shard_rows, meta={"x": 1})
    assert a.fill(compute, shards=[k for k in a.missing_shards() if k % 2 == 0], finish=False) is None
    assert b.fill(compute, shards=[k for k in b.missing_shards() if k % 2 == 1], finish=False) is None
    assert sorted(p.name for p in (tmp_path / "two" / FeatureStore.SHARDS).iterdir()) == [
        f"{k:06d}.npy" for k in range(8)
    ]
    assert not (tmp_path / "two" / FeatureStore.FILE).exists() and not a.complete
    assert a.missing_shards() == b.missing_shards() == []
    with pytest.raises(HarnessError, match="incomplete"):
        b.open()
    calls: list[int] = []
    joined = a.fill(lambda start, stop: calls.append(start) or compute(start, stop))
    assert calls == []  # every shard was committed by one of the writers
    assert isinstance(joined, np.memmap) and joined.dtype == np.dtype(dtype) and joined.shape == (n, dim)
    assert np.array_equal(np.array(joined), single)
    assert (tmp_path / "two" / FeatureStore.FILE).read_bytes() == (tmp_path / "one" / FeatureStore.FILE).read_bytes()
    assert not (tmp_path / "two" / FeatureStore.SHARDS).exists()
    assert b.complete and np.array_equal(np.array(b.open()), single)
    assert [p.name for p in (tmp_path / "two").iterdir() if p.name.endswith(".tmp")] == []


def test_feature_store_interrupted_assembly_keeps_the_shards_and_resumes_without_recomputing(tmp_path, monkeypatch):
    n, dim, shard_rows = 23, 16, 4  # 6 shards
    calls: list[int] = []

    def compute(start, stop):
        calls.append(start)
        return _random_rows(start, stop, dim)

    store = FeatureStore(tmp_path / "s", n, dim, shard_rows=shard_rows)
    store.fill(compute, finish=False)
    assert calls == [0, 4, 8, 12, 16, 20]
    read_shard, reads = FeatureStore._read_shard, []

    def failing(self, k):
        reads.append(k)
        if k == 3:
            raise OSError("disk gone mid-assembly")
        return read_shard(self, k)

    monkeypatch.setattr(FeatureStore, "_read_shard", failing)
    with pytest.raises(OSError, match="mid-assembly"):
        store.fill(compute)
    assert reads == [0, 1, 2, 3]
    assert not store.complete and not (tmp_path / "s" / FeatureStore.FILE).exists()
    assert [p.name for p in (tmp_path / "s").iterdir() if p.name.endswith(".tmp")] == []  # no half-written file
    again = FeatureStore(tmp_path / "s", n, dim, shard_rows=shard_rows)
    assert again.missing_shards() == []
    with pytest.raises(HarnessError, match="incomplete"):
        again.open()
    monkeypatch.setattr(FeatureStore, "_read_shard", read_shard)
    calls.clear()
    features = again.fill(compute)
    assert calls == []  # no shard computed again
    assert np.array_equal(np.array(features), _random_rows(0, n, dim).astype(np.float16))
    assert not (tmp_path / "s" / FeatureStore.SHARDS).exists()

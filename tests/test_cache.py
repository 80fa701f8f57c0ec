"""The frozen-block cache: training from cached states equals training through every block."""

import json
import logging

import numpy as np
import pytest
import torch

from raftlm.cache import HiddenStore, build_store, frozen_blocks, skip_frozen
from raftlm.config import Config
from raftlm.core import Example, RaftlmError
from raftlm.methods import METHODS
from raftlm.models import decoder_layers
from raftlm.pipeline import make_trainable, new_predictor, train_run
from raftlm.training import build_features, frozen_blocks_to_cache, make_collator

WORDS = ["awful", "bad", "fine", "good", "great"]
EXAMPLES = [Example(f"review {i}: the product was {WORDS[i % 5]}. rating:", 1.0 + i % 5) for i in range(6)]


def _setup(method: str, trainable: str, grid: str = "1-5", ce_weight: float = 0.0):
    method_cfg = {"method": method, "grid": grid, "ce_weight": ce_weight, "target_range": "none"}
    cfg = Config.build({"model": {"name": "tiny-random-llama", "trainable": trainable}, "method": method_cfg})
    predictor = new_predictor(cfg, EXAMPLES)
    make_trainable(predictor, cfg)
    predictor.model.train()
    loss_fn = METHODS[method].loss(predictor, cfg.method)
    feats = build_features(predictor, EXAMPLES, method, None)
    return cfg, predictor, loss_fn, feats


def _loss_and_grads(predictor, loss_fn, inputs, frozen: int):
    from raftlm.scoring import PromptBatch

    model = predictor.model
    model.zero_grad()
    batch = PromptBatch(
        inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"], False, inputs.get("hidden")
    )
    with skip_frozen(model, frozen):
        loss = loss_fn(model, batch, targets=inputs["targets"], answer_len=inputs["answer_len"])
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@pytest.mark.parametrize(
    "method, trainable, grid",
    [
        ("raft", "top-1", "1-5"),
        ("ce", "top-1", "1-5"),
        ("ce", "top-1", "0:5:0.5"),  # multi-token answers: CE reads whole sequences, cached too
        ("head-pooled", "top-1", "1-5"),
        ("head-special-token", "none", "1-5"),  # a head on a frozen backbone: every block cached
        ("head-attn", "top-1", "1-5"),
        ("head-attn", "none", "1-5"),
        ("ce-ntl", "top-1", "0:5:0.5"),
    ],
)
def test_cached_loss_and_gradients_equal_the_uncached_path(tmp_path, method, trainable, grid):
    cfg, predictor, loss_fn, feats = _setup(method, trainable, grid)
    frozen = frozen_blocks_to_cache(predictor, cfg)
    assert frozen == (2 if trainable == "none" else 1)
    store = build_store(
        predictor.model,
        [f["prompt_ids"] + f["answer_ids"] for f in feats],
        frozen,
        predictor.pad_id,
        tmp_path,
    )
    plain = make_collator(predictor.pad_id)(feats)
    cached = make_collator(predictor.pad_id, store=store)(feats)
    loss0, grads0 = _loss_and_grads(predictor, loss_fn, plain, 0)
    loss1, grads1 = _loss_and_grads(predictor, loss_fn, cached, frozen)
    torch.testing.assert_close(loss1, loss0, atol=1e-6, rtol=1e-5)
    assert grads0 and grads0.keys() == grads1.keys()
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], atol=1e-6, rtol=1e-4, msg=name)
    assert any(g.abs().sum() > 0 for g in grads0.values())


def test_ce_weight_adds_the_cross_entropy_of_the_nearest_grid_value():
    from raftlm.losses import RAFTLoss

    class Fixed:  # a scorer returning fixed log-probabilities: p = (0, 0, .5, .5, 0) over grid 1..5
        def __call__(self, model, batch):
            return torch.log(torch.tensor([[1e-30, 1e-30, 0.5, 0.5, 1e-30]]))

    values = torch.arange(1.0, 6.0)
    target = torch.tensor([4.2])  # nearest grid value 4, p('4') = .5
    plain = RAFTLoss(Fixed(), values)(None, None, target)
    mixed = RAFTLoss(Fixed(), values, ce_weight=0.5)(None, None, target)
    # (4.2 - 3.5)^2 = 0.49; + 0.5 * ln 2 = 0.34657
    torch.testing.assert_close(plain, torch.tensor(0.49))
    torch.testing.assert_close(mixed, torch.tensor(0.49 + 0.5 * np.log(2), dtype=torch.float32))


def test_a_short_run_over_a_large_set_trains_uncached():
    """Caching runs the frozen blocks over every example once: worth it only if training visits as many."""
    cfg, predictor, _, _ = _setup("raft", "top-1")
    cfg.training.max_steps, cfg.training.batch_size, cfg.training.grad_accum = 250, 8, 2  # 4,000 visits
    assert frozen_blocks_to_cache(predictor, cfg, n_train=4000) == 1
    assert frozen_blocks_to_cache(predictor, cfg, n_train=4001) == 0


def test_nothing_to_cache_for_full_lora_or_multi_token_raft():
    cfg, predictor, _, _ = _setup("raft", "full")
    assert frozen_blocks_to_cache(predictor, cfg) == 0
    cfg, predictor, _, _ = _setup("raft", "top-1", grid="0:5:0.5")
    assert frozen_blocks_to_cache(predictor, cfg) == 0
    assert frozen_blocks(predictor.model, "top-5") == 0  # more blocks than the model has


def test_a_store_too_big_for_memory_goes_to_disk_and_one_too_big_for_disk_is_refused(tmp_path):
    store = HiddenStore([3, 2], 4, tmp_path, ram_bytes=1)  # nothing fits in "RAM": memory-mapped file
    assert store.path is not None and store.path.parent == tmp_path
    store.put(1, torch.ones(2, 4))
    torch.testing.assert_close(store.get(1), torch.ones(2, 4))
    store.close()
    assert not list(tmp_path.iterdir())
    with pytest.raises(RaftlmError, match="cache_frozen: false"):
        HiddenStore([10**9], 10**4, tmp_path, ram_bytes=1)  # 40 TB


def test_each_process_of_a_launch_takes_its_share_of_memory_and_disk_for_its_copy(tmp_path, monkeypatch):
    """Every rank builds the whole store: two on one machine held two copies, each sized against all the
    memory and all the free disk (the second copy could fill the disk the first one measured)."""
    import shutil

    # 5 rows x 4 dims x 4 bytes = 80 bytes; a quarter of 400 bytes fits one copy in RAM
    alone = HiddenStore([3, 2], 4, tmp_path, ram_bytes=400)
    assert alone.path is None
    monkeypatch.setenv("WORLD_SIZE", "4")  # no local size said: the whole launch shares the machine
    shared = HiddenStore([3, 2], 4, tmp_path, ram_bytes=400)
    assert shared.path is not None
    shared.close()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two of the four on this machine
    free = shutil.disk_usage(tmp_path)._replace(free=170)  # 0.9 x 170 = 153 bytes: one copy, not two
    monkeypatch.setattr(shutil, "disk_usage", lambda path: free)
    with pytest.raises(
        RaftlmError, match=r"one for each of 2 processes on this machine.*cache_frozen: false"
    ):
        HiddenStore([3, 2], 4, tmp_path, ram_bytes=0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    HiddenStore([3, 2], 4, tmp_path, ram_bytes=0).close()
    assert not list(tmp_path.iterdir())
    # the cache pays off counting every process's visits, however the launcher says how many there are
    cfg, predictor, _, _ = _setup("raft", "top-1")
    cfg.training.max_steps, cfg.training.batch_size, cfg.training.grad_accum = 10, 4, 1  # 40 visits
    monkeypatch.delenv("WORLD_SIZE")
    assert frozen_blocks_to_cache(predictor, cfg, 80) == 0
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")  # accelerate launch on CPUs over MPI: 80 visits
    assert frozen_blocks_to_cache(predictor, cfg, 80) > 0


def test_a_cached_run_trains_and_leaves_no_cache_behind(tmp_path, toy_csv, monkeypatch):
    import raftlm.training

    built = []
    monkeypatch.setattr(
        raftlm.training, "build_store", lambda *a, **k: built.append(1) or build_store(*a, **k)
    )
    cfg = Config.build(
        {
            "model": {"name": "tiny-random-llama", "trainable": "top-1"},
            "data": {"dataset": f"csv:{toy_csv}"},
            "training": {"output_dir": str(tmp_path / "run"), "max_steps": 8, "batch_size": 4, "lr": 1e-2},
        }
    )  # 8 x 4 visits >= the 32 training examples: cached
    run = train_run(cfg)
    # one store for the training sequences, one for the validation prompts
    assert built == [1, 1] and not list(run.glob(".hidden-cache-*")) and (run / "eval_results.json").exists()
    cfg.training.cache_frozen, cfg.training.output_dir = False, str(tmp_path / "plain")
    plain = train_run(cfg)
    assert built == [1, 1]

    def curve(r):
        return [
            x for x in map(json.loads, (r / "metrics.jsonl").read_text().splitlines()) if "eval_rmse" in x
        ]

    cached, uncached = curve(run), curve(plain)
    assert len(cached) == len(uncached) >= 1
    for a, b in zip(cached, uncached, strict=True):  # training and validation from cached states alike
        assert a["step"] == b["step"] and a["eval_rmse"] == pytest.approx(b["eval_rmse"], rel=1e-4)


@pytest.mark.parametrize("method", ["raft", "head-pooled"])
def test_validation_scores_cached_prompts_without_running_the_frozen_blocks(tmp_path, method):
    from raftlm.cache import cached_prompts
    from raftlm.models import decoder_layers

    cfg, predictor, _, _ = _setup(method, "top-1")
    texts = [e.text for e in LONG]
    plain = predictor.predict(texts, batch_size=3)
    store = build_store(predictor.model, predictor.encode(texts), 1, predictor.pad_id, tmp_path)
    calls = []
    mlp = decoder_layers(predictor.model)[0].mlp  # (the block itself is still called, as an identity)
    hook = mlp.register_forward_hook(lambda *a: calls.append(1))
    try:
        with cached_prompts(predictor, texts, store, 1):
            cached = predictor.predict(texts, batch_size=3)
            assert calls == []  # the frozen block never ran
            other = predictor.predict(texts[:2], batch_size=3)  # not the cached texts: the usual path
            assert calls == [1]
        assert predictor.frozen_states is None
    finally:
        hook.remove()
    np.testing.assert_allclose(cached.values, plain.values, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(other.values, plain.values[:2], rtol=1e-5, atol=1e-6)
    if method == "raft":
        np.testing.assert_allclose(cached.probs, plain.probs, rtol=1e-4, atol=1e-7)


LONG = [
    Example(f"review {i}: " + "so very " * (3 * i) + f"{WORDS[i % 5]}. rating:", 1.0 + i % 5)
    for i in range(7)
]

SHUFFLED = [LONG[i] for i in (3, 0, 6, 1, 5, 2, 4)]


@pytest.mark.parametrize(
    "method, grid, ce_weight, cached",
    [
        ("raft", "1-5", 1.0, True),
        ("raft", "1-5", 0.0, False),
        ("ce", "0:5:0.5", 0.0, True),  # multi-token answers of different lengths
        ("raft", "0:5:0.5", 1.0, False),  # multi-token grid strings: the loss reads a KV cache, per chunk
        ("head-pooled", "1-5", 0.0, False),
        ("head-attn", "1-5", 0.0, True),
        ("ce-ntl", "0:5:0.5", 0.0, True),  # CE + NTL: both means over examples
    ],
)
def test_length_chunks_give_the_batchs_loss_and_gradients_with_fewer_pad_tokens(
    tmp_path, method, grid, ce_weight, cached
):
    from raftlm.scoring import PromptBatch
    from raftlm.training import chunked_loss, length_chunks

    cfg, predictor, loss_fn, _ = _setup(method, "top-1", grid, ce_weight)
    feats = build_features(predictor, SHUFFLED, method, None)  # rows not in length order
    store = None
    if cached:
        seqs = [f["prompt_ids"] + f["answer_ids"] for f in feats]
        store = build_store(predictor.model, seqs, 1, predictor.pad_id, tmp_path)
    inputs = make_collator(predictor.pad_id, store=store)(feats)
    batch = PromptBatch(
        inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"], False, inputs.get("hidden")
    )
    lengths = inputs["attention_mask"].sum(-1)
    chunks = length_chunks(inputs["attention_mask"], 3)
    # shortest first, cut where the fewest tokens run (raft: lengths 15 29 | 49 68 83 | 105 119 -> 2 x 29
    # + 3 x 83 + 2 x 119 = 545 tokens; equal thirds 3 x 49 + 2 x 83 + 2 x 119 = 551)
    assert [len(r) for r, _ in chunks] == [2, 3, 2]
    assert [w for _, w in chunks] == [int(lengths[r].max()) for r, _ in chunks]
    assert sum(len(r) * w for r, w in chunks) < 0.7 * inputs["input_ids"].numel()
    mlp_rows = []  # rows the last block's MLP ran on: every token, or (real_tokens) the real ones only
    hook = decoder_layers(predictor.model)[-1].mlp.down_proj.register_forward_hook(
        lambda m, args, out: mlp_rows.append(args[0].shape[:-1].numel())
    )
    head_rows = []  # rows the LM head ran on, per call: once per loss, on the whole batch, however chunked
    head_hook = predictor.model.get_output_embeddings().register_forward_hook(
        lambda m, args, out: head_rows.append(args[0].shape[0])
    )
    results = []
    for k, real_tokens in ((1, False), (2, False), (3, False), (7, False), (1, True), (3, True)):
        predictor.model.zero_grad()
        mlp_rows.clear()
        head_rows.clear()
        with skip_frozen(predictor.model, 1 if cached else 0):
            loss = chunked_loss(
                loss_fn, predictor.model, batch, inputs["targets"], inputs["answer_len"], k, real_tokens
            )
        groups = length_chunks(inputs["attention_mask"], k)
        if getattr(getattr(loss_fn, "scorer", None), "paths", None):  # the loss reads a KV cache: per chunk,
            assert len(head_rows) == 2 * len(groups)  # the first tokens, then the tails from the cache
        else:
            assert sum(mlp_rows) == (lengths.sum() if real_tokens else sum(len(r) * w for r, w in groups))
            assert head_rows == [len(lengths)]
        loss.backward()
        grads = {n: p.grad.clone() for n, p in predictor.model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads))
    hook.remove()
    head_hook.remove()
    (loss1, grads1), *rest = results
    assert any(g.abs().sum() > 0 for g in grads1.values())
    for loss_k, grads_k in rest:
        torch.testing.assert_close(loss_k, loss1, atol=1e-6, rtol=1e-5)
        for name in grads1:
            torch.testing.assert_close(grads_k[name], grads1[name], atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("method", ["encoder-cls", "encoder-mean"])
def test_length_chunks_give_an_encoders_loss_and_gradients(method):
    from raftlm.scoring import PromptBatch
    from raftlm.training import chunked_loss

    method_cfg = {"method": method, "grid": "1-5", "target_range": "none"}
    cfg = Config.build({"model": {"name": "tiny-random-bert"}, "method": method_cfg})
    predictor = new_predictor(cfg, LONG)
    make_trainable(predictor, cfg)
    loss_fn = METHODS[method].loss(predictor, cfg.method)
    head = next(
        m for m in predictor.model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1
    )
    torch.nn.init.normal_(head.weight, std=0.5)  # a head that reads the states (its zero start reads none)
    inputs = make_collator(predictor.pad_id)(build_features(predictor, SHUFFLED, method, None))
    batch = PromptBatch(inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"], False)
    results = []
    for k in (1, 3):
        predictor.model.zero_grad()
        loss = chunked_loss(loss_fn, predictor.model, batch, inputs["targets"], inputs["answer_len"], k, True)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in predictor.model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    (loss1, grads1), (loss3, grads3) = results
    torch.testing.assert_close(loss3, loss1, atol=1e-6, rtol=1e-5)
    assert grads1.keys() == grads3.keys() and any(g.abs().sum() > 0 for g in grads1.values())
    for name in grads1:
        torch.testing.assert_close(grads3[name], grads1[name], atol=1e-6, rtol=1e-4, msg=name)


def test_length_chunks_default_to_two_on_a_cpu_and_one_elsewhere():
    from types import SimpleNamespace

    from raftlm.scoring import left_pad
    from raftlm.training import RegressionTrainer

    cpu = left_pad([[1, 2, 3], [4]], 0)
    other = SimpleNamespace(input_ids=torch.empty((2, 3), device="meta"))  # a GPU batch's stand-in
    chunks = lambda n, b: RegressionTrainer.chunks(SimpleNamespace(length_chunks=n), b)  # noqa: E731
    assert (chunks(None, cpu), chunks(None, other), chunks(3, cpu), chunks(1, other)) == (2, 1, 3, 1)
    with pytest.raises(RaftlmError, match="length_chunks=0: use a positive integer"):
        Config.build({"training": {"length_chunks": 0}})


def test_the_raft_loss_built_from_a_config_takes_its_ce_target():
    """Two-hot unless told (the default since benchmarks/results/two-hot-probe/compare.md); nearest on request."""
    for given, built in ((None, "two-hot"), ("nearest", "nearest"), ("two-hot", "two-hot")):
        method_cfg = {"method": "raft", "grid": "1-5", "ce_target": given, "target_range": "none"}
        cfg = Config.build({"model": {"name": "tiny-random-llama"}, "method": method_cfg})
        predictor = new_predictor(cfg, EXAMPLES)
        loss_fn = METHODS["raft"].loss(predictor, cfg.method)
        assert (loss_fn.ce_target, loss_fn.ce_weight) == (built, 1.0)


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"output_attentions": True}, "no rule for the model's 'attentions' output"),
        ({"token_type_ids": torch.zeros(3)}, r"no rule for a \(3,\) model input"),
    ],
)
def test_length_chunks_refuse_what_they_cannot_join_in_one_line(extra, message):
    from raftlm.scoring import PromptBatch
    from raftlm.training import chunked_loss

    cfg, predictor, _, _ = _setup("raft", "full")
    inputs = make_collator(predictor.pad_id)(build_features(predictor, SHUFFLED, "raft", None))
    batch = PromptBatch(inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"], False)

    def loss_fn(model, b, **_):
        return model(**b.model_inputs(), **extra, logits_to_keep=1).logits.sum()

    with pytest.raises(RaftlmError, match=f"length chunks: {message}: train with --length-chunks 1"):
        chunked_loss(loss_fn, predictor.model, batch, inputs["targets"], inputs["answer_len"], 3)
    assert "forward" not in vars(predictor.model.model)  # the transformer's own forward again
    loss_fn_plain = lambda model, b, **_: model(**b.model_inputs(), logits_to_keep=1).logits.sum()  # noqa: E731
    chunked_loss(loss_fn_plain, predictor.model, batch, inputs["targets"], inputs["answer_len"], 3)


def test_a_sweeps_runs_share_their_cached_states_and_train_as_without(tmp_path, toy_csv, monkeypatch, caplog):
    """`raftlm experiment` builds a store once for the runs that differ only in LR or seed
    (``cache.reuse_stores``): 2 LRs x 2 seeds build the training and validation stores once per seed (the
    tiny model's random weights are its seed's: other frozen weights, other states), and every cell's
    numbers equal those of the same sweep building them in every run."""
    import contextlib

    import yaml

    import raftlm.cache as cache
    from raftlm.experiment import run_sweep

    built, real = [], cache._build
    monkeypatch.setattr(cache, "_build", lambda *a, **k: built.append(len(a[1])) or real(*a, **k))

    def sweep(name: str) -> dict:
        path = tmp_path / f"{name}.yaml"
        spec = {
            "output_dir": str(tmp_path / name),
            "base": {
                "model": {"trainable": "top-1"},
                "training": {"max_steps": 8, "eval_steps": 4, "batch_size": 4},
            },
            "datasets": [f"csv:{toy_csv}"],
            "models": ["tiny-random-llama"],
            "methods": [{"method": "raft"}],
            "lrs": [1e-3, 1e-2],
            "seeds": [0, 1],
        }
        path.write_text(yaml.safe_dump(spec))
        rows = json.loads((run_sweep(str(path)) / "results.json").read_text())
        return {r["cell_id"]: (r["validation_rmse"], r["rmse"], r["spearman"]) for r in rows}

    caplog.set_level(logging.INFO, logger="raftlm")
    shared = sweep("shared")
    assert built == [32, 4] * 2 and len(shared) == 4  # the 32 training and 4 validation prompts
    assert caplog.text.count("frozen-block cache: the states of 32 sequences, built for an earlier run") == 2
    built.clear()
    monkeypatch.setattr(cache, "reuse_stores", contextlib.nullcontext)
    assert sweep("every-run") == shared and built == [32, 4] * 4
    assert cache._KEPT is None


def test_a_kept_store_is_keyed_by_the_frozen_weights_and_sequences_and_equals_a_fresh_build(tmp_path):
    """Inside ``reuse_stores``: the same model, sequences and settings give the kept store back; a weight
    of a trained block above the frozen ones does not change it, one of a frozen block or the
    embeddings does, as do other sequences; its rows are a fresh build's, bit for bit, and its owner's
    close() keeps them for the next run; the least recently used of more than KEEP stores is let go."""
    from raftlm.cache import reuse_stores

    _, predictor, _, feats = _setup("raft", "top-1")
    model, seqs = predictor.model, [f["prompt_ids"] + f["answer_ids"] for f in feats]
    embed = model.get_input_embeddings()  # a 0-dim buffer, as Gemma's embedding scale, is hashed too
    embed.register_buffer("scale", torch.tensor(1.0), persistent=False)

    def build(s=seqs):
        return build_store(model, s, 1, predictor.pad_id, tmp_path, 4)

    fresh = build()
    with reuse_stores():
        kept = build()
        assert np.array_equal(kept.rows, fresh.rows) and kept is not fresh
        kept.close()  # its run ended: the rows stay for the next
        assert build() is kept and kept.rows is not None
        with torch.no_grad():
            decoder_layers(model)[1].mlp.down_proj.weight.add_(1.0)  # above the frozen block: same states
        assert build() is kept
        with torch.no_grad():
            decoder_layers(model)[0].mlp.down_proj.weight.add_(1.0)  # a frozen block: other states
        changed = build()
        assert changed is not kept and not np.array_equal(changed.rows, kept.rows)
        embed.scale.fill_(2.0)  # (unused by the tiny model's forward: only the key sees it)
        assert build() is not changed
        embed.scale.fill_(1.0)
        assert build() is changed
        other = build(seqs[:3])
        assert other is not changed and build() is changed  # KEEP = 2: both stay
        build(seqs[:2])  # a third: the least recently used (other) is let go
        assert not other.kept and changed.kept
    assert not changed.kept and not list(tmp_path.iterdir())

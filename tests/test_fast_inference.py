"""The fast inference paths answer like the plain one: the static-cache decoder against full recomputation, the
tensor n-gram guard against Hugging Face's, and bf16 / int8 weights against fp32 on a trained model."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import DynamicCache, NoRepeatNGramLogitsProcessor

from chex_model.chex import ChEX
from chex_model.generator import ban_repeated_ngrams
from chex_model.precision import apply_precision, int8_supported, resolve_precision
from model_support import tiny_config


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_the_ngram_guard_bans_what_hugging_face_bans(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    hf = NoRepeatNGramLogitsProcessor(n)
    for length in range(1, 14):
        history = torch.randint(0, 5, (6, length), generator=gen)  # a 5-token alphabet: many repeats
        logits = torch.randn(6, 9, generator=gen)
        assert torch.equal(ban_repeated_ngrams(history, logits.clone(), n), hf(history, logits.clone()))


def _recomputed_greedy(gen, features: torch.Tensor, steps: int) -> list[list[int]]:
    """Greedy decoding that re-runs the whole sentence from the prefix at every step (no incremental cache)."""
    out = []
    for f in features:
        seq = [gen.bos_id]
        for _ in range(steps):
            ids = torch.tensor([seq])
            cache = DynamicCache(ddp_cache_data=gen.prefix(f[None]), config=gen.lm.config)
            logits = gen.lm(input_ids=ids, cache=cache, position_ids=torch.arange(len(seq))[None]).logits[:, -1]
            hf = NoRepeatNGramLogitsProcessor(gen.cfg.no_repeat_ngram) if gen.cfg.no_repeat_ngram else None
            token = int((hf(ids, logits) if hf else logits).argmax())
            if token == gen.eos_id:
                break
            seq.append(token)
        out.append(seq[1:])
    return out


@pytest.mark.parametrize("no_repeat", [0, 2])
def test_static_cache_decoding_equals_recomputing_every_step(no_repeat: int) -> None:
    torch.manual_seed(0)
    cfg = tiny_config()
    cfg.generator.no_repeat_ngram = no_repeat
    gen = ChEX.build(cfg).generator.eval()
    assert gen.lm.config._attn_implementation == "sdpa"  # fused scaled-dot-product attention, not the eager matmuls
    gen.eos_id = -1 if no_repeat else gen.eos_id  # random weights: without stopping, every step is compared
    features = torch.randn(5, gen.prefix.net[0].in_features) * 3
    with torch.no_grad():
        assert gen._greedy(features, 12) == _recomputed_greedy(gen, features, 12)


def test_precision_choice_follows_the_device() -> None:
    assert resolve_precision("fp32") == "fp32"
    assert resolve_precision("auto") == ("int8" if int8_supported() else "fp32")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8")
    with pytest.raises(ValueError, match="int8 runs on an x86 CPU only"):
        resolve_precision("int8", "cuda")


def _answers(model, batch) -> list:
    prompts = batch.anatomy.prompts
    return [r for image in batch.images[:, 0] for r in model.query(image, prompts=prompts)]


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_fast_precisions_answer_like_fp32_on_a_trained_model(trained_tiny, precision: str) -> None:
    if precision == "int8" and not int8_supported():
        pytest.skip("this PyTorch build has no x86 int8 kernels")
    model, batch, _, _ = trained_tiny
    reference = _answers(model, batch)
    fast = copy.deepcopy(model)
    assert apply_precision(fast, precision) == precision
    answers = _answers(fast, batch)
    boxes = np.array([a.box for a in answers]) - np.array([r.box for r in reference])
    assert np.abs(boxes).max() <= 1e-2
    differ = [(r.prompt, r.sentence, a.sentence) for r, a in zip(reference, answers) if r.sentence != a.sentence]
    assert len(differ) <= 0.1 * len(reference), differ  # at least 90 % of greedy sentences identical
    assert len({r.sentence for r in reference}) >= 8  # a model that says many different things, not one string


@pytest.mark.parametrize("argv", [
    ["query", "x.png", "--box", "1,2"],  # a bad box
    ["query", "README.md", "--box", "0.5,0.5,0.2,0.2", "--model", "/nonexistent"],  # no checkpoint there
    ["query", "README.md", "--prompt", "Effusion", "--precision", "fp8"],
    ["train", "--config", "/nonexistent.yaml"],
    ["tune", "--config", "/nonexistent.yaml"],
])
def test_a_bad_argument_is_answered_before_torch_is_imported(argv: list[str]) -> None:
    """Start-up cost is imports: a usage error must come from argument and file checks alone."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys\nfrom pipelines.cli import main\ntry:\n    rc = main()\nexcept SystemExit as e:\n    rc = e.code\n"
            "print('exit', rc, 'torch' in sys.modules)\n")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=root)
    assert out.stdout.strip() == "exit 2 False", (out.stdout, out.stderr[-800:])
    assert len(out.stderr.strip().splitlines()) == 1 and "error" in out.stderr


def test_cpu_bf16_training_autocast_computes_the_same_losses() -> None:
    from chex_model.precision import cpu_has_bf16, training_autocast
    from model_support import phantom_batch

    torch.manual_seed(0)
    model = ChEX.build(tiny_config()).train()
    batch = phantom_batch()
    torch.manual_seed(1)
    plain = model(batch)
    probe = torch.nn.Linear(4, 4)
    with training_autocast(torch.device("cpu"), True):
        torch.manual_seed(1)
        fast = model(batch)
        dtype = probe(torch.ones(1, 4)).dtype
    if not cpu_has_bf16():  # emulated bf16 would be slower: autocast stays off
        assert dtype == torch.float32
        return
    assert dtype == torch.bfloat16
    for k in plain:
        assert float(fast[k]) == pytest.approx(float(plain[k]), rel=0.1, abs=0.05), k
    with training_autocast(torch.device("cpu"), False):
        assert probe(torch.ones(1, 4)).dtype == torch.float32


def test_a_model_held_entirely_in_bf16_trains_as_deepspeed_bf16_holds_it() -> None:
    """DeepSpeed's bf16 engine casts every parameter, norms included, to bf16 (the GPU step of bench/gpu.sh): the
    multitask losses (fp32 box targets pooled from bf16 features) stay close to fp32's and back-propagate."""
    from model_support import phantom_batch

    torch.manual_seed(0)
    model = ChEX.build(tiny_config()).train()
    batch = phantom_batch()
    torch.manual_seed(1)
    plain = model(batch)
    half = copy.deepcopy(model).to(torch.bfloat16)
    batch.images = batch.images.bfloat16()  # the trainer's _batch_to: images in the engine's dtype, targets fp32
    torch.manual_seed(1)
    fast = half(batch)
    sum(fast.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in half.generator.parameters() if p.requires_grad)
    for k in plain:
        assert float(fast[k]) == pytest.approx(float(plain[k]), rel=0.1, abs=0.05), k

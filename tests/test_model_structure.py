"""ChEX wiring: shapes, attention masks, freezing, checkpoints, box and box + text queries, the paper-size counts."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from chex_model.checkpoint import CheckpointError
from chex_model.chex import ChEX
from chex_model.config import ChexConfig, preset
from chex_model.image_encoder import normalize
from model_support import phantom_batch, tiny_config


@pytest.fixture(scope="module")
def model() -> ChEX:
    torch.manual_seed(0)
    return ChEX.build(tiny_config()).eval()


@pytest.fixture(scope="module")
def feats(model):
    images = phantom_batch().images[:2]
    with torch.no_grad():
        return model.encode_image(normalize(images, model.cfg.image))


def test_output_shapes(model, feats) -> None:
    d, m = model.cfg.d_model, model.cfg.detector.n_boxes
    grid = model.cfg.clip.image_size // model.cfg.clip.patch_size
    assert feats.patches.shape == (2, grid, grid, d) and feats.pos.shape == (grid, grid, d) and feats.global_token.shape == (2, d)
    with torch.no_grad():
        det = model.detect(feats, model.encode_prompts(["Left lung", "Pleural effusion", "Heart"]))
    assert det.boxes.shape == (2, 3, m, 4) and det.box_scores.shape == (2, 3, m) and det.box_features.shape == (2, 3, m, d)
    assert det.features.shape == (2, 3, d) and det.box.shape == (2, 3, 4) and det.score.shape == (2, 3)
    assert ((det.boxes >= 0) & (det.boxes <= 1)).all() and ((det.box_scores > 0) & (det.box_scores < 1)).all()
    # the prompt's box encloses its present boxes
    x1y1 = det.box[..., :2] - det.box[..., 2:] / 2
    bx = det.boxes[..., :2] - det.boxes[..., 2:] / 2
    present = det.box_scores > model.cfg.detector.present_threshold
    best = det.box_scores == det.box_scores.max(-1, keepdim=True).values
    chosen = torch.where(present.any(-1, keepdim=True), present, best)
    assert (x1y1[..., None, :] <= bx + 1e-6)[chosen].all()


@pytest.mark.parametrize("post_decoder", [False, True])
def test_perturbing_one_prompt_leaves_the_others_unchanged(model, feats, post_decoder) -> None:
    prompts = model.encode_prompts(["Left lung", "Pleural effusion", "Heart", "Spine"])[None].expand(2, -1, -1).clone()
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    with torch.no_grad():
        a = model.detect(feats, prompts, mask, post_decoder=post_decoder)
        changed = prompts.clone()
        changed[:, 1] += torch.randn_like(changed[:, 1])
        changed[1, 3] = 100.0  # a padded prompt is never attended
        b = model.detect(feats, changed, mask, post_decoder=post_decoder)
    others = [0, 2]
    for field in ("boxes", "box_scores", "features"):
        torch.testing.assert_close(getattr(a, field)[:, others], getattr(b, field)[:, others], rtol=0, atol=1e-6)
        assert not torch.allclose(getattr(a, field)[:, 1], getattr(b, field)[:, 1])
    torch.testing.assert_close(a.features[0, 3], b.features[0, 3], rtol=0, atol=1e-6)


def test_padding_and_batch_composition_do_not_change_results(model, feats) -> None:
    prompts = model.encode_prompts(["Left lung", "Heart"])
    with torch.no_grad():
        alone = model.detect(type(feats)(feats.patches[:1], feats.pos, feats.global_token[:1]), prompts[:1])
        padded = model.detect(feats, torch.stack([prompts, prompts]), torch.tensor([[True, False], [True, True]]))
    torch.testing.assert_close(alone.features[0, 0], padded.features[0, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(alone.boxes[0, 0], padded.boxes[0, 0], rtol=0, atol=1e-6)


def test_frozen_parameters_get_no_gradient_and_run_in_eval_mode() -> None:
    cfg = tiny_config()
    cfg.image.freeze_layers, cfg.image.freeze_projection = 2, True  # embeddings + ln_pre + block 0, and the head
    model = ChEX.build(cfg).train()
    enc = model.image_encoder.clip.vision_model
    frozen = [enc.embeddings, enc.pre_layrnorm, enc.encoder.layers[0], enc.post_layernorm, model.image_encoder.clip.visual_projection]
    assert all(not m.training for m in frozen + [model.prompt_encoder.text])
    assert enc.encoder.layers[1].training and model.detector.training and model.image_encoder.conv.training
    batch = phantom_batch()
    from chex_model.multitask import multitask_losses

    out = multitask_losses(model, batch)
    sum(out.values()).backward()
    for name, p in model.named_parameters():
        is_frozen = name.startswith("prompt_encoder.") or any(p is q for m in frozen for q in m.parameters())
        assert p.requires_grad is not is_frozen, name
        if is_frozen:
            assert p.grad is None, name
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for prefix in ("image_encoder.clip.vision_model.encoder.layers.1.", "image_encoder.conv.stages.0.", "detector.layers.0.",
                   "detector.box_head",
                   "post_decoder.gate", "generator.prefix.", "generator.lm.transformer.h.0."):
        assert any(n.startswith(prefix) and g is not None and g.abs().sum() > 0 for n, g in grads.items()), prefix
    model.image_encoder.freeze_all()
    assert not model.image_encoder.conv.training
    assert not any(p.requires_grad for p in model.image_encoder.parameters())


def test_conv_branch_lands_on_the_patch_grid_and_is_translation_equivariant() -> None:
    """The branch adds local features cell by cell: a lesion moved by one patch moves its features by one cell."""
    from chex_model.conv_branch import ConvBranch
    from chex_model.typed_config import ConfigError

    torch.manual_seed(0)
    branch = ConvBranch([8, 8, 16, 16], 12).eval()
    image = torch.zeros(1, 1, 256, 256)
    image[..., 112:128, 104:128] = 1.0  # 91 px receptive field: its influence stays clear of the zero-padded border
    shifted = torch.roll(image, shifts=(16, 16), dims=(2, 3))
    with torch.no_grad():
        (a, mean_a), (b, _) = branch(image), branch(shifted)
    assert a.shape == (1, 16, 16, 12) and mean_a.shape == (1, 12)
    torch.testing.assert_close(mean_a, a.mean(dim=(1, 2)))
    torch.testing.assert_close(a[0, 3:12, 3:12], b[0, 4:13, 4:13], rtol=0, atol=1e-5)  # cells clear of the padding
    assert not torch.allclose(a[0, 7, 7], b[0, 7, 7])
    cfg = dataclasses.asdict(tiny_config())
    cfg["image"]["conv_widths"] = [16, 32]
    with pytest.raises(ConfigError, match="conv_widths"):
        ChexConfig.from_dict(cfg)


def test_save_load_round_trip_gives_identical_outputs(model, feats, tmp_path) -> None:
    model.save_pretrained(tmp_path / "ckpt")
    again = ChEX.from_pretrained(tmp_path / "ckpt")
    assert again.cfg == model.cfg
    images = phantom_batch().images[:1]
    a = model.query(images[0, 0], prompts=["Left lung"], boxes=[(0.5, 0.5, 0.3, 0.3)], max_new_tokens=8)
    b = again.query(images[0, 0], prompts=["Left lung"], boxes=[(0.5, 0.5, 0.3, 0.3)], max_new_tokens=8)
    assert [r.to_dict() for r in a] == [r.to_dict() for r in b]
    sa, sb = model.state_dict(), again.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        ChEX.from_pretrained(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="no such folder"):
        ChEX.from_pretrained(tmp_path / "missing")


def test_box_and_box_plus_text_queries(model, feats) -> None:
    box = torch.tensor([[[0.3, 0.5, 0.25, 0.5]]]).expand(2, -1, -1)
    prompt = model.encode_prompts(["Pleural effusion"])[None].expand(2, -1, -1)
    with torch.no_grad():
        box_only = model.encode_boxes(feats, box)
        fused = model.encode_boxes(feats, box, prompts=prompt, has_prompt=torch.ones(2, 1, dtype=torch.bool))
        text_only = model.detect(feats, prompt).features
        moved = model.encode_boxes(feats, torch.tensor([[[0.7, 0.5, 0.25, 0.5]]]).expand(2, -1, -1))
    for other in (box_only, text_only, ):
        assert (fused - other).abs().max() > 1e-3
    assert (moved - box_only).abs().max() > 1e-3  # the box decides what is pooled
    results = model.query(phantom_batch().images[0, 0], prompts=["Pleural effusion"], boxes=[(0.3, 0.5, 0.25, 0.5)],
                          box_prompts=[((0.3, 0.5, 0.25, 0.5), "Pleural effusion")], max_new_tokens=4,
                          classes=[("Pleural effusion", "No pleural effusion")])
    assert [r.prompt for r in results] == ["Pleural effusion", None, "Pleural effusion"]
    assert results[1].box == results[2].box == [0.3, 0.5, 0.25, 0.5] and results[1].score is None
    assert len(results[0].boxes) == model.cfg.detector.n_boxes and 0 < results[0].score < 1
    probs = [r.probabilities["Pleural effusion"] for r in results]
    assert all(0 < p < 1 for p in probs) and len(set(probs)) == 3


def test_prompt_cache_is_bounded_and_consistent(model) -> None:
    enc = model.prompt_encoder
    enc.clear_cache()
    old = enc.cache_size
    enc.cache_size = 3
    try:
        first = enc.encode(["a b", "c d", "e f", "g h"])
        assert len(enc._cache) == 3
        torch.testing.assert_close(enc.encode(["a b"])[0], first[0])
        fresh = enc._encode(["e f", "a b"])
        torch.testing.assert_close(enc.encode(["e f", "a b"]), torch.stack([fresh["e f"], fresh["a b"]]), rtol=0, atol=0)
    finally:
        enc.cache_size = old
        enc.clear_cache()


def test_a_text_embeds_the_same_bits_whatever_shares_its_batch(model) -> None:
    """Resume exactness rests on this: a resumed run's cache fills with different batches than the first run's."""
    enc = model.prompt_encoder
    texts = ["Pleural effusion", "Right lower lung zone", "No acute cardiopulmonary process.", "Heart", *[f"zone {i}" for i in range(11)]]
    alone = {t: enc._encode([t])[t] for t in texts}
    reference = torch.stack([alone[t] for t in texts])
    assert len({len(enc.tokenizer([t])["input_ids"][0]) for t in texts}) > 1
    with torch.no_grad():  # the usual padded batch agrees to float noise (on this machine it differs in the last bits)
        batched = model.prompt_encoder.text(**enc.tokenizer(texts, padding=True, return_tensors="pt")).text_embeds
    torch.testing.assert_close(batched, reference, rtol=0, atol=1e-4)
    for order in (texts, texts[::-1], texts[3:] + texts[:3]):
        together = enc._encode(order)
        assert all(torch.equal(together[t], alone[t]) for t in texts)


COUNTS = {  # the reference's exact per-component parameter counts (chex-reference.md §7.1)
    "image_encoder": 87_849_216, "prompt_encoder": 63_428_096, "detector": 28_134_405, "post_decoder": 12_620_801,
    "generator.lm": 354_823_168, "generator.prefix": 504_612_864,
}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def test_paper_preset_matches_reference_parameter_counts() -> None:
    with torch.device("meta"):
        model = ChEX.build(preset("paper"))
    for name, expected in COUNTS.items():
        got = _count(model.get_submodule(name))
        assert abs(got - expected) / expected < 0.02, (name, got, expected)
    trainable_stage1 = _count(model.image_encoder.clip.vision_model.encoder.layers[8:]) + COUNTS["detector"]
    assert sum(p.numel() for p in model.image_encoder.parameters() if p.requires_grad) == trainable_stage1 - COUNTS["detector"]
    with torch.device("meta"):
        factorized = ChEX.build(preset("factorized"))
    assert _count(factorized.generator.prefix) < 20_000_000


def test_presets_load_and_reject_bad_values(tmp_path) -> None:
    from chex_model.typed_config import ConfigError

    assert preset("paper") == ChexConfig()
    tiny = preset("tiny")
    assert dataclasses.replace(tiny, preset="x").d_model == 64
    with pytest.raises(ConfigError):
        preset("huge")
    with pytest.raises(ConfigError):
        ChexConfig.from_dict({"generator": {"prefix_mode": "lora"}})
    with pytest.raises(ConfigError):
        ChexConfig.from_dict({"detector": {"n_box": 3}})

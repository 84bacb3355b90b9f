"""The model really learns: box regression, classification and sentence generation on a fixed phantom batch."""
from __future__ import annotations

import dataclasses
import math

import torch

from chex_model.chex import ChEX
from chex_model.image_encoder import normalize
from model_support import anatomy_box_l1, phantom_batch, texts_of, tiny_config, train


def test_tiny_model_reproduces_sentences_and_cuts_box_l1(trained_tiny) -> None:
    model, batch, initial, history = trained_tiny
    final = anatomy_box_l1(model, batch)
    assert initial / final >= 5, (initial, final)
    assert history[-1]["anat_gen"] < 0.1 * history[0]["anat_gen"]
    assert history[-1]["anat_cls"] < 0.5 * math.log(2)  # ln 2: "X" and "No X" equally likely, i.e. nothing learned
    with torch.no_grad():
        feats = model.encode_image(normalize(batch.images, model.cfg.image))
        rois = model.encode_boxes(feats, batch.anatomy.boxes)
    targets = [(n, a, t) for n, row in enumerate(texts_of(batch)) for a, t in enumerate(row) if t]
    assert len({t for _, _, t in targets}) >= 8  # image-dependent sentences, not one memorized string
    greedy = [model.generate(rois[n])[a] for n, a, _ in targets]
    assert greedy == [t for _, _, t in targets]
    beams = model.generate(rois[0], num_beams=3)
    assert [b for b, t in zip(beams, texts_of(batch)[0]) if t] == [t for t in texts_of(batch)[0] if t]


def test_every_loss_term_is_finite_and_falls() -> None:
    torch.manual_seed(1)
    model = ChEX.build(tiny_config())
    batch = phantom_batch()
    _, history = train(model, batch, steps=60, lr=2e-3)
    assert set(history[0]) == {
        "patho_box_l1", "patho_box_giou", "patho_box_score", "patho_cls", "anat_box_l1", "anat_box_giou",
        "anat_box_score", "anat_cls", "anat_mse", "anat_gen", "sent_contr", "sent_mse", "global_contr", "sent_gen",
        "patho_ground", "anat_ground",  # the tiny preset's box_reference
        "patho_gen",
    }
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    early = {k: sum(h[k] for h in history[:4] if k in h) / 4 for k in history[0]}
    late = {k: sum(h[k] for h in history[-4:] if k in h) / 4 for k in history[0]}
    for key, factor in (("patho_box_l1", 0.7), ("patho_cls", 0.85), ("anat_gen", 0.7), ("sent_gen", 0.7),
                        ("sent_mse", 0.7), ("anat_box_l1", 0.7), ("patho_ground", 0.7), ("anat_ground", 0.7),
                        ("patho_gen", 0.7)):
        assert late[key] < factor * early[key], (key, early[key], late[key])


def test_generator_loss_ignores_padding() -> None:
    torch.manual_seed(2)
    model = ChEX.build(tiny_config()).eval()
    gen = model.generator
    feats = torch.randn(2, model.cfg.d_model)
    short, long = "Heart size is normal.", "There is a small right pleural effusion with adjacent atelectasis."
    with torch.no_grad():
        both = gen.loss(feats, [short, long]).item()
        alone = [gen.loss(feats[i : i + 1], [t]).item() for i, t in enumerate((short, long))]
    ids, mask = gen.encode_targets([short, long])
    n_targets = (mask[:, 1:]).sum(1).tolist()  # predicted tokens per sentence (eos included, padding excluded)
    expected = (alone[0] * n_targets[0] + alone[1] * n_targets[1]) / sum(n_targets)
    assert abs(both - expected) < 1e-4
    assert ids[0, mask[0].sum():].eq(gen.eos_id).all() and mask[0].sum() < mask[1].sum()


def test_sentences_of_all_queries_come_from_one_batch(trained_tiny) -> None:
    model, batch, _, _ = trained_tiny
    with torch.no_grad():
        feats = model.encode_image(normalize(batch.images[:1], model.cfg.image))
        rois = model.encode_boxes(feats, batch.anatomy.boxes[:1])[0]
    together = model.generate(rois)
    one_by_one = [model.generate(rois[i : i + 1])[0] for i in range(len(rois))]
    assert together == one_by_one


def test_region_encoding_must_be_known() -> None:
    import pytest

    from chex_model.multitask import multitask_losses

    model = ChEX.build(tiny_config())
    with pytest.raises(ValueError, match="region_encoding"):
        multitask_losses(model, dataclasses.replace(phantom_batch(), pathology=None, sentences=None), region_encoding="x")


def _repeats(seq: list[int], n: int) -> bool:
    grams = [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]
    return len(grams) != len(set(grams))


def test_repetition_guard_blocks_repeated_ngrams_and_changes_nothing_before() -> None:
    def generator(no_repeat: int):
        torch.manual_seed(4)
        cfg = tiny_config()
        cfg.generator.no_repeat_ngram = no_repeat
        return ChEX.build(cfg).eval().generator

    plain, guarded = generator(0), generator(2)
    feats = torch.randn(8, plain.prefix.net[0].in_features)
    free = [[plain.bos_id, *row] for row in plain._greedy(feats, 24)]
    held = [[guarded.bos_id, *row] for row in guarded._greedy(feats, 24)]
    assert any(_repeats(row, 2) for row in free)  # the untrained model loops, so the guard has work to do
    assert not any(_repeats(row, 2) for row in held)
    for f, h in zip(free, held):
        first = next((i for i in range(2, len(f) + 1) if _repeats(f[:i], 2)), len(f))
        assert h[: first - 1] == f[: first - 1]  # identical up to the token that would have repeated a bigram
    beams = [[guarded.bos_id, *row] for row in guarded._beam(feats, 24, 3)]
    assert not any(_repeats(row, 2) for row in beams)

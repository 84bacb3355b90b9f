"""`configs/pipeline/paper.yaml` resolves to the reference's method (chex-reference.md §2.7, §5): every stage's trained
parts, schedule and loss weights, computed from the YAML, against the spec's table; the model and evaluation
settings; and a run without the CheXbert files stops at its start with one line."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from chex_model.chex import ChEX
from chex_model.config import ClipGeometry
from model_support import tiny_config
from pipelines.training.trainer import set_trainable
from pipelines.workflow.config import load_pipeline_config
from pipelines.workflow.runner import Pipeline

ROOT = Path(__file__).resolve().parent.parent

# chex-reference.md §2.7, one row per stage: trains, lr, warm-up, epochs, weight decay, and the loss coefficients.
# patho-det 10 = 10 x (5 L1 + 2 gIoU + 3 box score); anat-det 0.1 = 0.1 x (5 L1 + 2 gIoU), no box-score term.
SPEC = {
    "detection": (["image_encoder_top", "detector"], 1e-4, 1000, 50, 1e-5,
                  {"patho_box_l1": 10 * 5, "patho_box_giou": 10 * 2, "patho_box_score": 10 * 3, "patho_cls": 1.0,
                   "anat_box_l1": 0.1 * 5, "anat_box_giou": 0.1 * 2, "anat_cls": 0.005, "global_contr": 1.0,
                   "sent_contr": 0.005}),
    "post_decoder": (["post_decoder"], 1e-3, 1000, 200, 1e-5,
                     {"anat_cls": 0.01, "anat_mse": 0.04, "sent_contr": 0.005, "sent_mse": 0.02}),
    "txtgen_pretrain": (["generator"], 3e-4, 10000, 50, 1e-5, {"text_gen": 1.0}),
    "generation": (["post_decoder", "generator"], 3e-4, 10000, 20, 1e-3,
                   {"anat_gen": 1.0, "sent_gen": 0.5, "anat_mse": 0.04, "sent_mse": 0.02}),
}


@pytest.fixture(scope="module")
def paper() -> Pipeline:
    import os

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        return Pipeline(load_pipeline_config(ROOT / "configs/pipeline/paper.yaml"))
    finally:
        os.chdir(cwd)


def test_every_stage_matches_the_reference_table(paper: Pipeline) -> None:
    stages = paper.resolved()["train"]["stages"]
    assert [s["name"] for s in stages] == list(SPEC)
    train = paper.train_cfg
    assert train.batch_size == 256 and train.grad_clip == 1.0 and train.data.seed == 42 and train.data.image_size == 224
    for s in stages:
        trains, lr, warmup, epochs, wd, weights = SPEC[s["name"]]
        assert (s["trains"], s["lr"], s["warmup_steps"], s["epochs"], s["weight_decay"]) == (trains, lr, warmup, epochs, wd)
        assert s["min_lr"] == 1e-7
        assert {k: v for k, v in s["loss_weights"].items() if v} == pytest.approx(weights), s["name"]
    by_name = {s["name"]: s for s in stages}
    assert by_name["detection"]["sources"] == ["mimic_cxr", "vindr_cxr"]
    assert all(by_name[n]["sources"] == ["mimic_cxr"] for n in ("post_decoder", "txtgen_pretrain", "generation"))
    assert by_name["post_decoder"]["region_encoding"] == by_name["generation"]["region_encoding"] == "random"
    assert by_name["txtgen_pretrain"]["region_encoding"] == "text"
    # stage 1 has no post decoder; its box tokens are dropped with 0.3 in stage 2 and 0.1 in stage 3
    assert [by_name[n]["post_decoder"] for n in SPEC] == [False, True, True, True]
    assert by_name["post_decoder"]["box_token_drop"] == 0.3 and by_name["generation"]["box_token_drop"] == 0.1


def test_stage_one_trains_the_last_four_vit_blocks_and_the_detector() -> None:
    cfg = tiny_config()
    cfg.clip = ClipGeometry(image_size=64, patch_size=16, vision_width=32, vision_layers=12, vision_heads=2, text_width=64,
                            text_layers=1, text_heads=2, text_vocab=1024)
    cfg.image.conv_widths = []
    model = ChEX.build(cfg)
    set_trainable(model, ["image_encoder_top", "detector"])
    blocks = model.image_encoder.clip.vision_model.encoder.layers
    assert [all(p.requires_grad for p in b.parameters()) for b in blocks] == [False] * 8 + [True] * 4
    assert all(p.requires_grad for p in model.detector.parameters())
    assert not any(p.requires_grad for m in (model.post_decoder, model.generator, model.prompt_encoder) for p in m.parameters())


def test_model_data_and_evaluation_are_the_reference(paper: Pipeline) -> None:
    r = paper.resolved()
    m = r["model"]
    assert (m["d_model"], m["detector"]["n_layers"], m["detector"]["n_boxes"], m["post_decoder"]["n_layers"]) == (512, 6, 3, 3)
    assert m["detector"]["projector_dropout"] and m["detector"]["feature_norm"] == "max1"
    assert not m["detector"]["box_reference"] and m["detector"]["box_text_fusion"] == "decoded"
    assert m["loss"]["anatomy_cls"] == "reference" and m["loss"]["anatomy_temperature"] == 0.25
    assert m["loss"]["anatomy_negatives"] == 10 and m["generator"]["pretrain_repeats"] == 4
    assert m["generator"]["no_repeat_ngram"] == 0 and m["generator"]["prefix_mode"] == "mlp"
    t = r["train"]
    assert t["clip_dir"] == "pretrained/chexzero" and t["lm_dir"] == "pretrained/gpt-2-pubmed-medium"
    assert t["calibration"]["enabled"] is False
    d = t["data"]
    assert d["anatomy_synonyms"] and d["multi_regions"] and d["max_sentences"] == 0
    assert (d["pathology_classes"], d["anatomy_regions"]) == (10, 20)
    e = r["evaluate"]
    assert e["labeler"].startswith("chexbert:") and e["report_prompt_set"] == "reference"
    assert math.isclose(e["bootstrap"]["boxes"], 250) and e["bootstrap"]["text"] == 10


def test_the_paper_pipeline_without_chexbert_stops_with_one_line(monkeypatch, capsys) -> None:
    from pipelines.cli import main

    monkeypatch.chdir(ROOT)
    assert main(["pipeline", "run", "--config", "configs/pipeline/paper.yaml"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "pretrained/chexbert/chexbert.pth" in err and "pretrained/bert-base-uncased" in err


def test_report_policy_switch_names_a_prompt_set(tmp_path, capsys) -> None:
    from evaluation.config import EvalConfig
    from pipelines.cli import main

    assert EvalConfig(report_prompt_set="reference").report_prompt_set == "reference"
    assert main(["evaluate", "--predictor", "oracle", "--data", str(tmp_path), "--report-policy", "ours-typo"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot read prompt set" in err and "ours-typo" in err

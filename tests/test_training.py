"""Training on Ray Train + DeepSpeed from the ingested synthetic tables: two workers learn, stages chain through the
exported model, MLflow records lineage, a killed worker resumes to the same weights as an uninterrupted run, and a
two-trial sweep yields two child runs and a best config. Few trainer starts: each test runs one short workflow."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipelines.training.config import StageConfig, TrainConfig, load_train_config
from pipelines.training.trainer import Trainer, lr_lambda
from train_support import kill_once_trainer

ROOT = Path(__file__).resolve().parents[1]


# The engine tests pin the detection stage to the reference's balance (anatomy boxes at 1 % of the pathology boxes,
# the pretrained-style partial encoder): the demo's heavier anatomy weights turn float-level differences between a
# resumed and an uninterrupted run into ~3e-4 weight differences, beyond the resume test's tolerance.
ENGINE_DETECTION = {"trains": ["image_encoder_top", "detector"],
                    "loss_weights": {"patho_box_l1": 50.0, "patho_box_giou": 20.0, "patho_box_score": 30.0, "patho_cls": 1.0,
                                     "anat_box_l1": 0.5, "anat_box_giou": 0.2, "anat_box_score": 0.3, "anat_cls": 0.005,
                                     "global_contr": 1.0, "sent_contr": 0.005}}


def _config(workdir: Path, tables: Path, workers: int, stages: list[dict], engine: str = "deepspeed") -> TrainConfig:
    cfg = load_train_config(ROOT / "configs/train/demo.yaml")
    cfg.workdir, cfg.workers, cfg.engine = str(workdir), workers, engine
    cfg.batch_size, cfg.micro_batch = 4 * workers, 4
    cfg.deepspeed = str(ROOT / "configs/deepspeed/zero2_cpu.json")
    cfg.data.tables = str(tables)
    cfg.pretrain.clip.enabled = cfg.pretrain.lm.enabled = False  # tests/test_pretrain.py runs the pre-training stages
    by_name = {s["name"]: s for s in cfg.stages}
    cfg.stages = [{**by_name[s["name"]], **s} for s in stages]
    return cfg


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def _runs(cfg: TrainConfig):
    mlflow.set_tracking_uri(cfg.tracking_uri())
    return mlflow.search_runs(experiment_names=[cfg.mlflow.experiment], output_format="list")


def _history(cfg: TrainConfig, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in mlflow.MlflowClient(cfg.tracking_uri()).get_metric_history(run_id, key)]


def test_lr_schedule_warms_up_then_follows_the_cosine():
    stage = StageConfig(steps=100, lr=1e-3, min_lr=1e-5, warmup_steps=10)
    f = lr_lambda(stage)
    assert [f(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    for step in (10, 40, 75, 100):
        t = (step - 10) / 90
        expected = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * t))
        assert stage.lr * f(step) == pytest.approx(expected)


def test_deepspeed_batch_sizes_are_derived_from_one_batch_size():
    cfg = load_train_config(ROOT / "configs/train/demo.yaml")
    cfg.deepspeed = str(ROOT / cfg.deepspeed)
    cfg.batch_size, cfg.micro_batch, cfg.workers = 32, 4, 2
    ds = cfg.deepspeed_config()
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (32, 4, 4)
    assert ds["zero_optimization"]["stage"] == 2 and ds["gradient_clipping"] == 1.0
    cfg.batch_size = 30
    with pytest.raises(Exception, match="not a multiple"):
        cfg.accumulation()


def test_vindr_is_oversampled_exactly_on_a_counted_epoch(ingested):
    from pipelines.training.data import build_dataset, oversampling_factor

    tables, manifest = ingested
    ds, info = build_dataset(tables, "train", 32, None, seed=1)
    n_mimic, n_vindr = manifest["datasets"]["mimic_cxr/train"]["rows"], manifest["datasets"]["vindr_cxr/train"]["rows"]
    assert info["counts"] == {"mimic_cxr": n_mimic, "vindr_cxr": n_vindr}
    k = oversampling_factor(n_mimic, n_vindr)
    assert k == max(1, round(n_mimic / n_vindr)) and info["vindr_factor"] == k
    rows = pl.DataFrame(ds.select_columns(["sample_id", "source"]).take_all())
    counts = rows.group_by("source").len().sort("source")
    assert dict(counts.iter_rows()) == {"mimic_cxr": n_mimic, "vindr_cxr": k * n_vindr}
    per_image = rows.filter(pl.col("source") == "vindr_cxr").group_by("sample_id").len()["len"]
    assert per_image.min() == per_image.max() == k  # every VinDr image exactly k times, none dropped
    forced, info = build_dataset(tables, "train", 32, None, seed=1, vindr_factor=k + 2)
    sources = [r["source"] for r in forced.select_columns(["source"]).take_all()]
    assert sources.count("vindr_cxr") == (k + 2) * n_vindr


def test_frontal_only_drops_lateral_mimic_views(ingested):
    from pipelines.training.data import build_dataset, table_paths

    tables, _ = ingested
    views = pl.read_parquet(table_paths(tables, "mimic_cxr", "train"), columns=["sample_id", "view_position"])
    frontal = set(views.filter(pl.col("view_position").is_in(["PA", "AP"]))["sample_id"])
    assert 0 < len(frontal) < len(views)  # the synthetic studies have lateral views too
    ds, info = build_dataset(tables, "train", 32, None, seed=1, frontal_only=True)
    rows = ds.select_columns(["sample_id", "source"]).take_all()
    assert {r["sample_id"] for r in rows if r["source"] == "mimic_cxr"} == frontal
    assert info["counts"]["mimic_cxr"] == len(frontal) and any(r["source"] == "vindr_cxr" for r in rows)


def test_two_workers_learn_and_stages_chain(ingested, ray_local, tmp_path):
    """Two DeepSpeed ZeRO-2 workers: validation loss falls from the step-0 baseline; both ranks' optimizer shards are in
    the checkpoint; the post-decoder stage starts from the detection export and changes only what it trains."""
    from pipelines.training.stages import run_workflow

    tables, manifest = ingested
    cfg = _config(tmp_path, tables, workers=2, stages=[
        {"name": "detection", "steps": 14, "val_every": 7, "lr": 3e-3, "warmup_steps": 2, **ENGINE_DETECTION},
        {"name": "post_decoder", "steps": 2, "val_every": 2, "warmup_steps": 1},
    ])
    cfg.data.augment.enabled = False  # learning is measured on the unaugmented images; the resume test augments
    det, post = run_workflow(cfg)

    runs = {r.info.run_name: r for r in _runs(cfg)}
    parent = runs["workflow"]
    for res in (det, post):
        run = runs[res.name]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["mlflow.source.git.commit"] and "git_dirty" in run.data.tags
        assert float(run.data.params["stage.lr"]) == pytest.approx(next(s["lr"] for s in cfg.stages if s["name"] == res.name))
        logged = {i.dataset.name: (i.dataset.digest, {t.key: t.value for t in i.tags}) for i in run.inputs.dataset_inputs}
        expected = ["mimic_cxr/train", "mimic_cxr/val"] + (["vindr_cxr/train", "vindr_cxr/val"] if res is det else [])
        expected = [n for n in expected if n in manifest["datasets"]]
        assert sorted(logged) == sorted(expected)  # the post-decoder stage reads MIMIC-CXR only, as the reference
        for name in expected:
            digest, tags = logged[name]
            assert manifest["datasets"][name]["digest"] == tags["sha256"] and tags["sha256"].startswith(digest)
        assert "model/config.json" in [f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "model")]
    assert [s for s, _ in _history(cfg, runs["detection"].info.run_id, "val/loss")] == [0, 7, 14]  # step-0 baseline
    stage = cfg.stage_configs()[0]
    before = _train_split_loss(cfg, stage, tables, cfg.workdir + "/init_model")
    after = _train_split_loss(cfg, stage, tables, det.model_dir)
    assert after < 0.7 * before, (before, after)
    assert len(_history(cfg, runs["detection"].info.run_id, "loss")) == 14

    shards = sorted(p.name for p in Path(det.checkpoint, "deepspeed").glob("*optim_states.pt"))
    assert len(shards) == 2 and {"rank_0", "rank_1"} <= {"rank_" + n.split("rank_")[1][0] for n in shards}

    d, p = _weights(det.model_dir), _weights(post.model_dir)
    frozen = [k for k in d if k.startswith(("detector.", "image_encoder."))]
    trained = [k for k in d if k.startswith("post_decoder.")]
    assert frozen and trained
    assert all(torch.equal(d[k], p[k]) for k in frozen)
    assert any(not torch.equal(d[k], p[k]) for k in trained)


def test_a_killed_worker_resumes_to_the_same_weights(ingested, ray_local, tmp_path):
    """A 4-step run whose worker dies after step 3 restarts from the step-2 checkpoint (model, optimizer, scheduler,
    data position) and ends with the weights of an uninterrupted 4-step run."""
    from pipelines.training.stages import run_stage, stage_input

    tables, _ = ingested
    results, cfgs = [], []
    marker = tmp_path / "killed.failed-once"
    for name, trainer in (("plain", Trainer), ("killed", kill_once_trainer(3, str(marker)))):
        cfg = _config(tmp_path / name, tables, workers=1, stages=[
            {"name": "detection", "steps": 4, "val_every": 2, "lr": 2e-3, "warmup_steps": 1, **ENGINE_DETECTION}])
        cfg.max_failures, cfg.data.reproducible = 1, True
        stage = cfg.stage_configs()[0]
        results.append(run_stage(cfg, stage, stage_input(cfg, "detection"), trainer=trainer))
        cfgs.append(cfg)
    assert marker.exists()  # the worker really died once
    plain, killed = (_weights(r.model_dir) for r in results)
    init = _weights(tmp_path / "plain" / "init_model")
    moved = max((plain[k] - init[k]).abs().max().item() for k in plain)
    assert moved > 1e-3  # training moved the weights far more than the tolerance below
    for key in plain:  # bit for bit
        assert torch.equal(killed[key], plain[key]), key
    (run,) = _runs(cfgs[1])  # the restarted worker continued the same MLflow run from the step-2 checkpoint
    assert [s for s, _ in _history(cfgs[1], run.info.run_id, "val/loss")] == [0, 2, 4]  # no second step-0 baseline
    plain_loss = _history(cfgs[0], _runs(cfgs[0])[0].info.run_id, "loss")
    killed_loss = _history(cfgs[1], run.info.run_id, "loss")
    assert [s for s, _ in killed_loss] == [1, 2, 3, 4]
    assert np.allclose([v for _, v in killed_loss], [v for _, v in plain_loss], rtol=1e-5)


def test_a_two_trial_sweep_ranks_trials_by_an_evaluation_metric_on_val(ingested, ray_local, tmp_path):
    """Trials ranked by an evaluation metric on the val split (Chest ImaGenome region classification, the task whose
    val split has targets in the test tables; scored by the evaluation code at each report):
    two child runs carry it, the best is the highest, and its values are written into a copy of the config."""
    from evaluation.config import EvalConfig, Bootstrap
    from evaluation.evaluate import Evaluation
    from evaluation.runner import ModelRunner
    from chex_model.chex import ChEX
    from pipelines.training.sweep import AshaConfig, ParamSpace, SweepConfig, run_sweep

    tables, _ = ingested
    cfg = _config(tmp_path / "train", tables, workers=1, stages=[{"name": "detection"}])
    train_yaml = tmp_path / "train.yaml"
    train_yaml.write_text(yaml.safe_dump({**_as_yaml(cfg)}))
    sweep = SweepConfig(train=str(train_yaml), stage="detection", workdir=str(tmp_path / "tune"), num_samples=2,
                        metric="val/rc_cig/auroc_weighted", mode="max", steps=4, val_every=2,
                        space={"lr": ParamSpace("loguniform", 1e-4, 3e-3)}, asha=AshaConfig(grace_period=2))
    res = run_sweep(sweep)
    assert res.trials == 2
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'tune' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[cfg.mlflow.experiment], output_format="list")
    parent = [r for r in runs if r.info.run_name == "sweep-detection"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == res.parent_run_id]
    assert len(parent) == 1 and len(children) == 2
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children)  # a stopped trial's run is ended too
    lrs = sorted(float(r.data.params["stage.lr"]) for r in children)
    assert lrs[0] != lrs[1] and all(1e-4 <= lr <= 3e-3 for lr in lrs)
    uri = f"sqlite:///{tmp_path / 'tune' / 'mlflow.db'}"
    reported = {float(r.data.params["stage.lr"]): [v for s, v in _history_uri(uri, r.info.run_id, "val/rc_cig/auroc_weighted") if s > 0]
                for r in children}  # step 0 is the MLflow-only baseline; the rest went to Tune
    final = {lr: float(np.mean(v[-5:])) for lr, v in reported.items()}  # ranked by the mean of the last 5 reports
    best_lr = next(lr for lr in final if lr == pytest.approx(res.best_params["lr"]))
    assert final[best_lr] == pytest.approx(max(final.values()), abs=1e-9)  # the best trial scores highest (ties allowed)
    best = load_train_config(res.best_config)
    assert best.stage_configs()[0].lr == pytest.approx(best_lr)
    assert replace(best.stage_configs()[0], lr=0) == replace(cfg.stage_configs()[0], lr=0)
    assert parent[0].data.params["best.lr"] == str(res.best_params["lr"])
    # the reported metric is the evaluation's, recomputed here on a trial's last checkpoint (Tune ends trials at
    # their last report, before an export)
    state_file = max((tmp_path / "tune" / "trials").glob("*/ray/*/checkpoint_*/state.json"), key=lambda p: p.stat().st_mtime)
    state = json.loads(state_file.read_text())
    ev = EvalConfig(tasks=["rc_cig"], split="val", search=False, max_images=64, bootstrap=Bootstrap(boxes=0, text=0))
    model = ChEX.from_pretrained(state_file.parent / "model")
    result = Evaluation(tables, ev, runner=ModelRunner(model, show_progress=False)).run()["rc_cig"]
    history = dict(_history_uri(uri, state["mlflow_run_id"], "val/rc_cig/auroc_weighted"))
    assert result.metrics["auroc_weighted"]["value"] == pytest.approx(history[state["step"]], abs=1e-6)


def _history_uri(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in mlflow.MlflowClient(uri).get_metric_history(run_id, key)]


def _train_split_loss(cfg: TrainConfig, stage: StageConfig, tables: Path, model_dir) -> float:
    """The stage's weighted loss of a model on every (unaugmented) training image, computed here in the test process."""
    from chex_model.chex import ChEX
    from pipelines.training.data import encode_row, table_paths
    from pipelines.training.trainer import validate

    rows = []
    for source in ("mimic_cxr", "vindr_cxr"):
        for row in pl.read_parquet(table_paths(tables, source, "train")).iter_rows(named=True):
            rows.append(encode_row({**row, "source": source, "copy": 0}, 128, None, seed=0))
    batches = [{k: np.stack([r[k] for r in rows[i:i + 4]]) for k in rows[0]} for i in range(0, len(rows), 4)]
    torch.manual_seed(0)
    model = ChEX.from_pretrained(model_dir)
    every_image = replace(cfg, data=replace(cfg.data, val_max_images=10**6))
    return validate(model, batches, every_image, stage, torch.device("cpu"), torch.float32)["val/loss"]


def _as_yaml(cfg: TrainConfig) -> dict:
    from dataclasses import asdict

    return asdict(cfg)

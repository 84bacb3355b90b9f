"""``chex pipeline run`` end to end on a tiny synthetic set: every stage runs, a second run skips them all, a changed
training config reruns training, evaluation and registration only, and a failing stage keeps what came before."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

from pipelines.cli import main

REPO = Path(__file__).resolve().parents[1]


def write_configs(tmp: Path, lr: float = 1e-3, metric: str = "od_vindr/mAP", sweep: bool = False) -> Path:
    train = yaml.safe_load((REPO / "configs/train/demo.yaml").read_text())
    train.update(workers=1, batch_size=4, micro_batch=4, engine="ddp", deepspeed="")
    train["stages"] = [{**train["stages"][0], "steps": 2, "val_every": 2, "warmup_steps": 1, "lr": lr}]
    for kind in ("clip", "lm"):  # both backbones pre-trained by the pipeline, briefly
        train["pretrain"][kind].update(steps=2, val_every=2, warmup_steps=1, batch_size=4, micro_batch=4)
    (tmp / "train.yaml").write_text(yaml.safe_dump(train))
    (tmp / "evaluate.yaml").write_text(yaml.safe_dump({"tasks": ["od_vindr", "rc_cig"], "bootstrap": {"boxes": 5, "text": 2},
                                                        "examples": 1, "max_new_tokens": 4}))
    pipeline = {"workdir": str(tmp / "work"), "synth": {"studies": 8, "seed": 3, "image_scale": 0.1},
                "ingest": str(REPO / "configs/ingest.yaml"), "image_size": 64, "train": str(tmp / "train.yaml"),
                "evaluate": str(tmp / "evaluate.yaml"), "register": {"name": "chex-test", "metric": metric}}
    if sweep:
        (tmp / "sweep.yaml").write_text(yaml.safe_dump({
            "stage": "detection", "num_samples": 2, "steps": 2, "val_every": 1, "workers": 1,
            "space": {"lr": {"kind": "loguniform", "low": 1e-4, "high": 1e-2}}}))
        pipeline["sweep"] = str(tmp / "sweep.yaml")
    (tmp / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    return tmp / "pipeline.yaml"


def stages_of(out: str) -> dict[str, str]:
    """Stage -> "ran" / "skipped (unchanged)" / "failed", from the display's plain lines (``[  1:02] ingest: done in
    4.1 s · ...``)."""
    said = {"done": "ran", "skipped (unchanged)": "skipped (unchanged)", "FAILED": "failed"}
    return {m[0]: said[m[1]] for m in re.findall(r"^\[[^\]]+\] (\S+): (done|skipped \(unchanged\)|FAILED)", out, re.M)}


@pytest.mark.slow
def _check_the_store(tmp_path: Path):
    """What three pipeline runs left in MLflow: parent and child runs, lineage, the resolved config, dataset inputs,
    both registered versions (calibrated, answering a query). Returns the client and the experiment."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("chex-pipeline")
    parents = client.search_runs([exp.experiment_id], "tags.mlflow.runName = 'pipeline'", order_by=["attributes.start_time ASC"])
    assert len(parents) == 3
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert {r.info.run_name for r in children} >= {"synth", "ingest", "clip_pretrain", "lm_pretrain", "detection", "register"}
    from pipelines.lineage import model_lineage

    chain = model_lineage("models:/chex-test@candidate", uri)
    assert {"clip_pretrain", "lm_pretrain", "detection"} <= {t["name"] for t in chain["training"]}
    assert any(r.info.run_name.startswith("evaluate") for r in children)
    logged = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=parents[0].info.run_id, artifact_path="resolved_config.json", tracking_uri=uri)).read_text())
    assert logged["model"]["preset"] == "tiny" and "feature_norm" in logged["model"]["detector"]  # the full model config
    assert logged["train"]["stages"][0]["post_decoder"] is False  # stage settings with their defaults resolved
    ingest = next(r for r in children if r.info.run_name == "ingest")
    manifest = json.loads((tmp_path / "work" / "ingested" / "manifest.json").read_text())
    assert {i.dataset.name: i.dataset.digest for i in ingest.inputs.dataset_inputs}["vindr_cxr/test"] == \
        manifest["datasets"]["vindr_cxr/test"]["digest"][:16]
    versions = client.search_model_versions("name = 'chex-test'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    model = mlflow.pyfunc.load_model("models:/chex-test@candidate")
    assert len(model.unwrap_python_model().model.presence_calibration) == 29  # the registered model carries it
    detection = next(r for r in children if r.info.run_name == "detection")
    assert "calibration/atelectasis/positives" in detection.data.metrics
    image = tmp_path / "work" / "evaluation" / "figures"
    assert any(image.glob("*.png"))
    png = next(image.glob("od_vindr_example*.png")).read_bytes()  # image bytes, as a REST client sends them
    answer = model.predict(__import__("pandas").DataFrame([{"image": __import__("base64").b64encode(png).decode(),
                                                             "prompts": ["Cardiomegaly"], "boxes": None}]))
    assert answer[0]["answers"][0]["prompt"] == "Cardiomegaly"
    return client, exp


def test_pipeline_runs_skips_reruns_what_changed_and_survives_a_failure(tmp_path, ray_local, capsys):
    config = write_configs(tmp_path)
    assert main(["pipeline", "run", "--config", str(config)]) == 0
    first = stages_of(capsys.readouterr().out)
    assert list(first) == ["synth", "ingest", "clip_pretrain", "lm_pretrain", "train:detection", "evaluate", "register"]
    assert set(first.values()) == {"ran"}
    state = json.loads((tmp_path / "work" / "pipeline_state.json").read_text())
    backbones = {k: state[f"{k}_pretrain"]["outputs"]["weights_sha256"] for k in ("clip", "lm")}
    assert state["train:detection"]["inputs"]["init"] == backbones  # stage 1 starts from the pre-trained backbones
    for k, digest in backbones.items():
        folder = Path(state[f"{k}_pretrain"]["outputs"]["model_dir"])
        assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == digest
    trained = state["train:detection"]["outputs"]
    calibration = Path(trained["model_dir"]) / "presence_calibration.json"  # fitted after the detector trained
    assert len(json.loads(calibration.read_text())) == 29
    assert trained["calibration_sha256"] == hashlib.sha256(calibration.read_bytes()).hexdigest()
    assert state["evaluate"]["inputs"]["calibration"] == trained["calibration_sha256"]
    assert Path(state["evaluate"]["outputs"]["showcase_file"]).is_file()  # the test images' reports, printed above

    assert main(["pipeline", "run", "--config", str(config)]) == 0
    assert set(stages_of(capsys.readouterr().out).values()) == {"skipped (unchanged)"}

    write_configs(tmp_path, lr=5e-4)  # only the training config changes
    assert main(["pipeline", "run", "--config", str(config)]) == 0
    third = stages_of(capsys.readouterr().out)
    assert third == {"synth": "skipped (unchanged)", "ingest": "skipped (unchanged)", "clip_pretrain": "skipped (unchanged)",
                     "lm_pretrain": "skipped (unchanged)", "train:detection": "ran", "evaluate": "ran", "register": "ran"}

    client, exp = _check_the_store(tmp_path)

    capsys.readouterr()  # artifact downloads above draw progress bars; only the failing run's output counts below
    write_configs(tmp_path, lr=5e-4, metric="od_vindr/no_such_metric")  # registration fails
    assert main(["pipeline", "run", "--config", str(config)]) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert "stage register failed" in err and err.strip().count("\n") == 0
    log_file = re.search(r"its log: (\S+)\)", err)[1]  # the failed stage's log file, named in the error
    assert Path(log_file) == tmp_path / "work" / "logs" / "register.log" and "no_such_metric" in Path(log_file).read_text()
    assert stages_of(captured.out)["register"] == "failed"
    state = json.loads((tmp_path / "work" / "pipeline_state.json").read_text())
    assert state["register"]["status"] == "failed"
    assert state["evaluate"]["status"] == "succeeded" and Path(state["evaluate"]["outputs"]["results_file"]).is_file()

    assert main(["pipeline", "run", "--config", str(config), "--only", "nope"]) == 1
    assert "unknown stage" in capsys.readouterr().err

    write_configs(tmp_path, lr=5e-4, sweep=True)  # a sweep tunes the detection stage, which then trains with its best lr
    assert main(["pipeline", "run", "--config", str(config)]) == 0
    fifth = stages_of(capsys.readouterr().out)
    assert list(fifth) == ["synth", "ingest", "clip_pretrain", "lm_pretrain", "sweep", "train:detection", "evaluate", "register"]
    assert fifth["ingest"] == fifth["lm_pretrain"] == "skipped (unchanged)" and {fifth[s] for s in list(fifth)[4:]} == {"ran"}
    state = json.loads((tmp_path / "work" / "pipeline_state.json").read_text())
    best = state["sweep"]["outputs"]["params"]["lr"]
    assert 1e-4 <= best <= 1e-2 and state["sweep"]["outputs"]["trials"] == 2
    assert state["train:detection"]["inputs"]["stage"]["lr"] == best
    sweep_run = client.get_run(state["sweep"]["outputs"]["run_id"])
    assert sweep_run.data.tags["mlflow.parentRunId"] == client.search_runs(
        [exp.experiment_id], "tags.mlflow.runName = 'pipeline'", order_by=["attributes.start_time DESC"])[0].info.run_id
    assert sweep_run.data.params["best.lr"] == str(best)


def test_shipped_pipeline_configs_load():
    from pipelines.workflow.config import PipelineConfig
    from chex_model.typed_config import load_config

    from dataclasses import asdict

    from preprocessing.synth.generate import SynthConfig

    from pipelines.workflow.config import load_pipeline_config

    quality = load_pipeline_config(REPO / "configs/pipeline/quality.yaml")  # the demo with more budget
    assert quality.synth.studies > load_pipeline_config(REPO / "configs/pipeline/demo.yaml").synth.studies
    demo = load_config(PipelineConfig, REPO / "configs/pipeline/demo.yaml")
    paper = load_config(PipelineConfig, REPO / "configs/pipeline/paper.yaml")
    assert demo.raw == "" and paper.raw and paper.train.endswith("paper.yaml")
    synth = SynthConfig(**asdict(demo.synth))  # as the synth stage builds it
    vindr_train, vindr_test, nih = synth.counts()
    assert vindr_train == demo.synth.vindr_train and vindr_test == demo.synth.studies // 4 and nih == demo.synth.studies // 2


def test_kuberay_rayjob_runs_the_paper_pipeline_on_gpu_workers():
    import re
    import tomllib

    from chex_model.typed_config import load_config
    from pipelines.training.config import load_train_config
    from pipelines.workflow.config import PipelineConfig

    job = yaml.safe_load((REPO / "infra/kuberay/rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["entrypoint"].split()[:3] == ["chex", "pipeline", "run"]
    config = job["spec"]["entrypoint"].split("--config")[1].split()[0]
    paper = load_config(PipelineConfig, REPO / config)
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_pin = next(re.search(r"==([\d.]+)", d).group(1) for d in pins if d.startswith("ray["))
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray_pin
    workers = cluster["workerGroupSpecs"]
    gpus = sum(int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) * g["maxReplicas"]
               for g in workers)
    assert gpus >= load_train_config(REPO / paper.train).workers  # room for every training worker's GPU
    mounts = {m["mountPath"] for g in [cluster["headGroupSpec"], *workers]
              for m in g["template"]["spec"]["containers"][0]["volumeMounts"]}
    shared = {m for m in mounts if m != "/dev/shm"}
    assert all(any(Path(p).is_relative_to(m) for m in shared) for p in (paper.workdir, paper.raw))
    assert ray_pin in (REPO / "infra/Dockerfile").read_text()

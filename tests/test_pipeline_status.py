"""``chex pipeline status``: after a run every stage is cached; a changed training key makes that stage and the ones
after it stale, naming the key; a new, changed or removed raw file makes ingest and everything after it stale, naming
the files; ``--json`` parses. No pipeline runs here: the state file is written as the runner writes it after a
successful run (each stage's real key and inputs, made-up outputs that exist), on a tiny synthetic raw tree."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from test_pipeline import write_configs

from pipelines.cli import main

REPO = Path(__file__).resolve().parents[1]
STAGES = ["ingest", "clip_pretrain", "lm_pretrain", "train:detection", "evaluate", "register"]
RUN_ID, FINISHED = "parent0run0id", "2025-01-02T03:04:05Z"


def configs(tmp: Path, raw: Path | None, lr: float = 1e-3, clip_lr: float | None = None, sweep: bool = False) -> Path:
    """test_pipeline's tiny pipeline, reading ``raw`` (so synth is not a stage; None: synth is)."""
    path = write_configs(tmp, lr=lr, sweep=sweep)
    if raw is not None:
        pipeline = yaml.safe_load(path.read_text())
        pipeline.pop("synth")
        path.write_text(yaml.safe_dump({**pipeline, "raw": str(raw)}))
    if clip_lr is not None:
        train = yaml.safe_load((tmp / "train.yaml").read_text())
        train["pretrain"]["clip"]["lr"] = clip_lr
        (tmp / "train.yaml").write_text(yaml.safe_dump(train))
    return path


def pipeline_of(config: Path):
    from pipelines.workflow.config import load_pipeline_config
    from pipelines.workflow.runner import Pipeline

    return Pipeline(load_pipeline_config(config))


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def fake_outputs(stage, pipeline, inputs: dict) -> dict:
    """Outputs shaped like the stage's real ones: its paths exist, its digests are made up; ingest also leaves the
    lineage of the raw files it consumed, as the ingest job writes it."""
    from pipelines.ingest.incremental import LINEAGE, RAW_FILES, raw_files_table
    from pipelines.ingest.plan import scan_sources, source_roots

    folder = pipeline.workdir / stage.name.replace(":", "-")
    out = {}
    for k in stage.paths:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / k).mkdir() if k.endswith("_dir") else (folder / k).touch()
        out[k] = str(folder / k)
    if stage.name == "synth":
        from preprocessing.synth.generate import SynthConfig, synthesize

        synthesize(folder / "raw_dir", SynthConfig(**inputs["synth"], workers=1))
        return {**out, "key": digest("synth")}
    if stage.name != "ingest":
        return {**out, **{"sweep": {"params": {"lr": 0.002}}, "evaluate": {"key": digest("evaluation")},
                          "register": {"name": "chex-test", "version": 1, "aliases": ["candidate"], "champion": 1}}.get(
            stage.name, {"weights_sha256": digest(stage.name), "calibration_sha256": digest(stage.name + "cal")})}
    roots = source_roots(Path(inputs["raw"]), pipeline.ingest_cfg)
    files = scan_sources(roots)
    stats = {str(f.path): f"stat:{f.size}:{f.mtime_ns}" for fs in files.values() for f in fs}
    (folder / "tables_dir" / LINEAGE).mkdir()
    pq.write_table(raw_files_table(roots, files, stats), folder / "tables_dir" / LINEAGE / RAW_FILES)
    return {**out, "datasets": {"mimic_cxr/train": digest("mimic"), "vindr_cxr/test": digest("vindr")}}


def record_success(pipeline) -> dict:
    """pipeline_state.json as ``chex pipeline run`` leaves it after every stage succeeded."""
    from pipelines.ingest.manifest import code_version
    from pipelines.workflow.stages import Context

    up, state = {}, {}
    for stage in pipeline.stages:
        key, inputs = stage.key(Context(pipeline, up))
        up[stage.name] = fake_outputs(stage, pipeline, inputs)
        state[stage.name] = {"key": key, "status": "succeeded", "inputs": inputs, "attempt": "20250102-030000-abc123",
                             "outputs": up[stage.name], "code": code_version(REPO), "pipeline_run": RUN_ID,
                             "finished_at": FINISHED, "seconds": 12.5,
                             "log": f"logs/{stage.name.replace(':', '-')}.log"}
    write_state(pipeline.workdir, state)
    return state


def write_state(work: Path, state: dict) -> None:
    (work / "pipeline_state.json").write_text(json.dumps(state, indent=2, sort_keys=True))


def recorded(config: Path) -> dict:
    pipeline = pipeline_of(config)
    pipeline.workdir.mkdir(parents=True)
    return record_success(pipeline)


@pytest.fixture
def world(tmp_path):
    """A raw tree, the configs, and the state file of a successful run: ``(tmp, raw, config, state)``."""
    from preprocessing.synth.generate import SynthConfig, synthesize

    raw = tmp_path / "raw"
    synthesize(raw, SynthConfig(studies=4, seed=1, image_scale=0.05, workers=1))
    config = configs(tmp_path, raw)
    assert pipeline_of(config).stage_names == STAGES
    return tmp_path, raw, config, recorded(config)


def verdicts(config: Path) -> dict:
    from pipelines.workflow.status import pipeline_status

    return {s.name: s for s in pipeline_status(pipeline_of(config))}


def row(out: str, stage: str) -> str:
    return next(line for line in out.splitlines() if line.split() and line.split()[0] == stage)


def test_after_a_run_every_stage_is_cached_with_its_run(world, capsys):
    tmp, _, config, _ = world
    found = verdicts(config)
    assert list(found) == STAGES
    for s in found.values():
        assert (s.state, s.reasons, s.pipeline_run, s.finished_at) == ("cached", [], RUN_ID, FINISHED)
        assert RUN_ID in s.notes[0] and FINISHED in s.notes[0] and len(s.notes) == 1  # same code: no rebuild note
    assert main(["pipeline", "status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    for name in STAGES:
        assert row(out, name).split()[1] == "cached" and RUN_ID in row(out, name)
    assert out.splitlines()[-1] == "0 of 6 stages would run"
    assert "mlflow ui --backend-store-uri sqlite:///" in out
    assert not (tmp / "work" / "mlflow.db").exists()


def test_a_changed_training_key_makes_that_stage_and_the_later_ones_stale(world, capsys):
    tmp, raw, config, _ = world
    configs(tmp, raw, lr=5e-4)
    found = verdicts(config)
    assert {n: s.state for n, s in found.items()} == {
        "ingest": "cached", "clip_pretrain": "cached", "lm_pretrain": "cached",
        "train:detection": "stale", "evaluate": "stale", "register": "stale"}
    assert found["train:detection"].reasons == ["stage.lr: 0.001 -> 0.0005"]
    assert found["evaluate"].reasons == ["after train:detection reruns"]
    assert found["register"].reasons == ["after evaluate reruns"]
    assert main(["pipeline", "status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert row(out, "train:detection").split()[1:] == ["stale", "stage.lr:", "0.001", "->", "0.0005"]
    assert out.splitlines()[-1] == "3 of 6 stages would run"


def test_a_pretraining_change_reruns_only_the_stages_that_read_its_weights(world):
    tmp, raw, config, state = world
    configs(tmp, raw, clip_lr=1e-3)  # was 3e-4; the LM pre-training does not read CLIP's weights
    found = verdicts(config)
    before = state["clip_pretrain"]["inputs"]["pretrain"]["lr"]
    assert found["clip_pretrain"].reasons == [f"pretrain.lr: {before} -> 0.001"]
    assert found["lm_pretrain"].state == "cached"
    assert found["train:detection"].reasons == ["after clip_pretrain reruns"]


def test_new_changed_and_removed_raw_files_make_ingest_and_everything_after_it_stale(world):
    _, raw, config, _ = world
    nih = raw / "nih-chest-xrays" / "images_001" / "images"
    shutil.copy(next(nih.glob("*.png")), nih / "00000099_000.png")
    dicom = sorted((raw / "vindr-cxr/1.0.0/test").glob("*.dicom"))[0]
    with dicom.open("ab") as f:
        f.write(b"\0")
    report = sorted((raw / "mimic-cxr/2.0.0/files").glob("p*/p*/s*.txt"))[0]
    report.unlink()
    found = verdicts(config)
    assert found["ingest"].reasons == [
        f"raw files: 1 new (nih-chest-xrays/images_001/images/00000099_000.png); "
        f"1 changed ({dicom.relative_to(raw).as_posix()}); 1 removed ({report.relative_to(raw).as_posix()})"]
    assert [s.state for s in found.values()] == ["stale"] * 6
    assert found["clip_pretrain"].reasons == found["lm_pretrain"].reasons == ["after ingest reruns"]
    assert found["evaluate"].reasons == ["after ingest and train:detection rerun"]


def test_json_is_one_document(world, capsys):
    tmp, raw, config, _ = world
    configs(tmp, raw, lr=5e-4)
    assert main(["pipeline", "status", "--config", str(config), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in doc["stages"]] == STAGES
    assert [s["name"] for s in doc["stages"] if s["would_run"]] == ["train:detection", "evaluate", "register"]
    assert doc["stages"][3]["reasons"] == ["stage.lr: 0.001 -> 0.0005"] and doc["stages"][0]["pipeline_run"] == RUN_ID
    assert doc["summary"]["would_run"] == 3 and doc["summary"]["stages"] == 6


def test_deleted_outputs_are_named(world):
    _, _, config, state = world
    model = state["train:detection"]["outputs"]["model_dir"]
    shutil.rmtree(model)
    found = verdicts(config)
    assert found["train:detection"].reasons == [f"output missing: model_dir ({model})"]
    assert [found[n].state for n in STAGES] == ["cached"] * 3 + ["stale"] * 3


def test_failed_and_interrupted_stages_continue_their_attempt(world):
    tmp, _, config, state = world
    entry = {k: state["register"][k] for k in ("key", "inputs", "log")}
    state["register"] = {**entry, "status": "failed", "attempt": "att-1", "error": "KeyError: 'od_vindr/nope'"}
    write_state(tmp / "work", state)
    found = verdicts(config)
    assert [found[n].state for n in STAGES] == ["cached"] * 5 + ["stale"]
    why = found["register"].reasons[0]
    assert why.startswith("last run failed: KeyError: 'od_vindr/nope'; a rerun continues attempt att-1")
    assert why.endswith(f"log: {tmp / 'work' / 'logs' / 'register.log'}")

    entry = {k: state["train:detection"][k] for k in ("key", "inputs", "log")}
    state["train:detection"] = {**entry, "status": "running", "attempt": "att-2"}  # the pipeline was killed during it
    write_state(tmp / "work", state)
    found = verdicts(config)
    why = found["train:detection"].reasons[0]
    assert "did not finish" in why and "continues attempt att-2" in why
    assert found["evaluate"].reasons == ["after train:detection reruns"]  # it has no outputs to compute a key from


def test_other_code_is_a_note_not_a_rerun(world):
    tmp, _, config, state = world
    state["train:detection"]["code"] = {"package_version": "0.0.1", "git_commit": "0" * 40, "git_dirty": False}
    write_state(tmp / "work", state)
    found = verdicts(config)
    assert found["train:detection"].state == "cached"
    assert "commit 0000000000" in found["train:detection"].notes[1]
    assert "--from train:detection" in found["train:detection"].notes[1]
    assert all(len(found[n].notes) == 1 for n in STAGES if n != "train:detection")


def test_a_gone_raw_folder_and_a_never_run_workdir_need_no_traceback(world, capsys):
    tmp, raw, config, _ = world
    shutil.rmtree(raw)
    found = verdicts(config)
    assert "configured source folder(s) not found" in found["ingest"].reasons[0]
    assert [s.state for s in found.values()] == ["stale"] * 6
    (tmp / "work" / "pipeline_state.json").unlink()
    assert main(["pipeline", "status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert [row(out, n).split()[1:3] for n in STAGES] == [["never", "run"]] * 6
    assert out.splitlines()[-1] == "6 of 6 stages would run"
    assert main(["pipeline", "status", "--config", str(tmp / "nope.yaml")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    (tmp / "bad.yaml").write_text("workdir: x\nbogus: 1\n")
    assert main(["pipeline", "status", "--config", str(tmp / "bad.yaml")]) == 1
    assert "unknown key(s) ['bogus']" in capsys.readouterr().err


def test_status_starts_neither_ray_nor_mlflow(world):
    tmp, _, config, _ = world
    code = ("import sys; from pipelines.cli import main; rc = main(['pipeline', 'status', '--json', '--config', "
            f"{str(config)!r}]); print('RESULT', rc, 'ray' in sys.modules, 'mlflow' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "RESULT 0 False False" in done.stderr.splitlines(), done.stderr
    assert json.loads(done.stdout)["summary"]["would_run"] == 0
    assert not (tmp / "work" / "mlflow.db").exists()


def test_a_stage_reads_no_outputs_of_an_earlier_stage_that_has_none(tmp_path):
    """Synth and sweep as stages: a stage that would read the outputs of one that did not succeed waits for it
    (ingest does not fall back to another raw folder; the swept stage does not train without the sweep's values)."""
    config = configs(tmp_path, None, sweep=True)
    state = recorded(config)
    assert list(state) == ["synth", "ingest", "clip_pretrain", "lm_pretrain", "sweep", "train:detection", "evaluate",
                           "register"]
    assert state["train:detection"]["inputs"]["stage"]["lr"] == 0.002  # the sweep's value, as the runner applies it
    assert {s.state for s in verdicts(config).values()} == {"cached"}
    del state["sweep"]
    state["synth"] = {**state["synth"], "status": "failed", "error": "OSError: disk full"}
    del state["synth"]["outputs"]
    write_state(tmp_path / "work", state)
    found = verdicts(config)
    assert found["ingest"].reasons == ["after synth reruns"]
    assert found["sweep"].state == "never run"
    assert found["train:detection"].reasons == ["after sweep runs"]  # its stage config needs the sweep's values first
    assert [found[n].state for n in ("clip_pretrain", "evaluate", "register")] == ["stale"] * 3


def test_records_of_an_older_version(world, capsys):
    """Entries without code, pipeline run, time or log; an ingest record from before raw files were fingerprinted."""
    tmp, _, config, state = world
    for entry in state.values():
        for k in ("code", "pipeline_run", "finished_at", "seconds", "log"):
            del entry[k]
    write_state(tmp / "work", state)
    assert [s.notes for s in verdicts(config).values()] == [["unchanged"]] * 6
    del state["ingest"]["inputs"]["raw_files"]
    state["ingest"]["key"] = "an older key"
    write_state(tmp / "work", state)
    assert verdicts(config)["ingest"].reasons == ["the raw files' fingerprints: not recorded by the version that ran it"]
    assert main(["pipeline", "status", "--config", str(config)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "6 of 6 stages would run"

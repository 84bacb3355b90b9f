"""The `chex` command's argument errors, typed config loading, and the cluster-launcher file."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import polars as pl
import pytest
import yaml

from pipelines.cli import main
from chex_model.typed_config import ConfigError, from_dict, load_config
from pipelines.ingest.config import IngestConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv, fragment", [
    (["synth", "--out", "x", "--studies", "-3"], "must be a positive integer"),
    (["synth", "--out", "x", "--image-scale", "9"], "within [0.02, 2]"),
    (["ingest", "--raw", "r"], "--out"),
    (["nonsense"], "invalid choice"),
])
def test_bad_arguments_give_one_clear_line(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and fragment in err and "Traceback" not in err


def test_missing_raw_folder_is_one_line_exit_1(tmp_path, capsys):
    assert main(["ingest", "--raw", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a folder" in err


def test_bad_config_key_is_one_line_exit_1(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("image_size: 256\nsources:\n  mimic: here\n")
    assert main(["ingest", "--raw", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "sources.: unknown key(s) ['mimic']" in err and err.count("\n") == 1


def test_synth_then_ingest_from_the_command_line(tmp_path, ray_local, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    assert main(["synth", "--out", str(raw), "--studies", "3", "--image-scale", "0.05", "--workers", "1"]) == 0
    assert "mimic_studies=3" in capsys.readouterr().out
    # 3 studies give MS-CXR no grounded phrase: a configured source with header-only tables fails the job
    assert main(["ingest", "--raw", str(raw), "--out", str(out), "--image-size", "32"]) == 1
    assert "error: source ms_cxr under" in capsys.readouterr().err and not out.exists()
    cfg = tmp_path / "ingest.yaml"
    cfg.write_text("sources: {ms_cxr: null}\n")   # the user says to skip it
    args = ["ingest", "--raw", str(raw), "--out", str(out), "--image-size", "32", "--config", str(cfg)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "ingest done" in printed and "mimic_cxr" in printed and "ms_cxr" not in printed
    assert pl.read_parquet(out / "rejects" / "rejects.parquet").height == 0
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_shipped_yaml_equals_the_dataclass_defaults():
    assert load_config(IngestConfig, REPO / "configs" / "ingest.yaml") == IngestConfig()


def test_config_types_are_checked():
    with pytest.raises(ConfigError, match="image_size: expected int"):
        from_dict(IngestConfig, {"image_size": "big"})
    assert from_dict(IngestConfig, {"image_size": 128, "sources": {"nih_cxr": None}}).sources.nih_cxr is None


def test_ray_cluster_yaml_is_a_complete_launcher_config():
    cfg = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    for key in ("cluster_name", "max_workers", "provider", "available_node_types", "head_node_type",
                "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in cfg, key
    assert cfg["head_node_type"] in cfg["available_node_types"]
    for node in cfg["available_node_types"].values():
        assert "node_config" in node and "resources" in node
    workers = [n for k, n in cfg["available_node_types"].items() if k != cfg["head_node_type"]]
    assert sum(n["max_workers"] for n in workers) >= cfg["max_workers"] >= 1
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_version = next(re.search(r"==([\d.]+)", p).group(1) for p in pins if p.startswith("ray["))
    assert f":{ray_version}-" in cfg["docker"]["image"]
    assert any("constraints.txt" in c and "gpu" in c for c in cfg["setup_commands"])
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["gpu"] and extras["cluster"]
    gpu_nodes = [n for n in workers if n["node_config"]["InstanceType"].startswith(("g", "p"))]
    assert gpu_nodes, "no GPU worker node type"
    # checkpoints go to the volume every node mounts
    from pipelines.training.config import load_train_config

    storage = load_train_config(REPO / "configs/train/paper.yaml").storage_path
    shared = [o.split(":")[1] for o in cfg["docker"]["run_options"] if o.startswith("-v ")]
    assert any(Path(storage).is_relative_to(m) for m in shared), (storage, shared)
    assert any(m in " ".join(cfg["initialization_commands"]) for m in shared)


@pytest.mark.parametrize("text, fragment", [
    ("stages:\n  - {name: a, trains: [wings]}\n", "unknown trainable part(s) ['wings']"),
    ("engine: horovod\n", "engine must be one of"),
    ("batch_size: 10\nmicro_batch: 4\nworkers: 2\nstages: [{name: a}]\n", "not a multiple of micro_batch x workers"),
    ("stages:\n  - {name: a, lr: fast}\n", "stages[0].lr"),
])
def test_bad_training_config_is_one_line_exit_1(tmp_path, capsys, text, fragment):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(text)
    assert main(["train", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err


def test_training_cli_refuses_a_missing_config_and_an_unknown_stage(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"workdir: {tmp_path / 'w'}\ndeepspeed: {REPO / 'configs/deepspeed/zero2_cpu.json'}\n"
                   "stages: [{name: detection}]\n")
    assert main(["train", "--config", str(cfg), "--stage", "generation"]) == 1
    assert "unknown stage(s) ['generation']" in capsys.readouterr().err


@pytest.mark.parametrize("space, fragment", [
    ("{lr: {kind: loguniform, low: 0.0, high: 1.0}}", "low > 0 for loguniform"),
    ("{lr: {kind: normal, low: 1, high: 2}}", "kind must be one of"),
    ("{speed: {kind: uniform, low: 1, high: 2}}", "'speed' is not a stage setting"),
    ("{}", "empty search space"),
])
def test_bad_sweep_config_is_one_line_exit_1(tmp_path, capsys, space, fragment):
    cfg = tmp_path / "tune.yaml"
    cfg.write_text(f"space: {space}\n")
    assert main(["tune", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1


def test_shipped_training_and_sweep_configs_load():
    from pipelines.training.config import load_train_config
    from pipelines.training.sweep import load_sweep_config

    for name in ("demo", "paper"):
        cfg = load_train_config(REPO / f"configs/train/{name}.yaml")
        assert [s.name for s in cfg.stage_configs()] == ["detection", "post_decoder", "txtgen_pretrain", "generation"]
        assert (REPO / cfg.deepspeed).is_file()
    paper = load_train_config(REPO / "configs/train/paper.yaml")
    assert paper.batch_size == 256 and paper.accumulation() == 1 and paper.use_gpu
    assert load_sweep_config(REPO / "configs/tune/demo.yaml").space["lr"].kind == "loguniform"


def test_a_config_builds_on_its_base_key_by_key_and_stage_by_name(tmp_path):
    from chex_model.typed_config import ConfigError
    from pipelines.training.config import load_train_config

    base = load_train_config(REPO / "configs/train/demo.yaml")
    quality = load_train_config(REPO / "configs/train/quality.yaml")
    by_name = {s.name: s for s in base.stage_configs()}
    for s in quality.stage_configs():
        assert s.lr == by_name[s.name].lr and s.loss_weights == by_name[s.name].loss_weights  # kept from the base
        assert s.steps > by_name[s.name].steps  # the override
    assert [s.name for s in quality.stage_configs()] == list(by_name)
    assert quality.pretrain.clip.micro_batch == base.pretrain.clip.micro_batch
    assert quality.pretrain.clip.steps != base.pretrain.clip.steps or quality.pretrain.lm.steps != base.pretrain.lm.steps
    (tmp_path / "a.yaml").write_text("base: b.yaml\nworkers: 1\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_train_config(tmp_path / "a.yaml")


def test_one_pretrained_backbone_without_the_other_is_one_clear_error(tmp_path):
    from chex_model.typed_config import ConfigError
    from pipelines.training.config import load_train_config

    (tmp_path / "t.yaml").write_text(f"base: {REPO / 'configs/train/demo.yaml'}\npretrain: {{lm: {{enabled: false}}}}\n")
    with pytest.raises(ConfigError, match="GPT-2 backbone is neither pre-trained nor given"):
        load_train_config(tmp_path / "t.yaml")
    (tmp_path / "t.yaml").write_text(f"base: {REPO / 'configs/train/demo.yaml'}\npretrain: {{lm: {{enabled: false}}}}\n"
                                     "lm_dir: pretrained/gpt2\n")
    assert load_train_config(tmp_path / "t.yaml").pretrained_backbones() == {"clip": True, "lm": False}

"""The pipeline's deploy stage: it reruns only when the champion changes, it needs a long-lived cluster, and a new
champion replaces the served version in place while a request in flight still gets its answer."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import httpx
import pytest

from serve_support import free_port


def _ctx(champion: str, **deploy):
    from pipelines.workflow.config import DeploySettings, PipelineConfig

    cfg = PipelineConfig(workdir="/tmp/w", deploy=DeploySettings(enabled=True, **deploy))
    return SimpleNamespace(pipeline=SimpleNamespace(cfg=cfg), upstream={"register": {"name": "m", "champion": champion}})


def test_the_deploy_key_moves_with_the_champion_only() -> None:
    from pipelines.workflow.stages import DeployStage

    stage = DeployStage()
    assert stage.key(_ctx("1"))[0] == stage.key(_ctx("1"))[0]
    assert stage.key(_ctx("2"))[0] != stage.key(_ctx("1"))[0]
    assert stage.key(_ctx("1", port=9000))[0] != stage.key(_ctx("1"))[0]
    assert stage.inputs(_ctx("3"))["model"] == "models:/m/3"


def test_deploy_without_a_cluster_is_one_config_error() -> None:
    from chex_model.typed_config import ConfigError
    from pipelines.workflow.config import load_pipeline_config
    from pipelines.workflow.runner import Pipeline

    cfg = load_pipeline_config("configs/pipeline/demo.yaml")
    cfg.deploy.enabled = True
    pipe = Pipeline(cfg)
    assert pipe.stage_names[-2:] == ["register", "deploy"]
    with pytest.raises(ConfigError, match="--address"):
        pipe.run()


def _wait_version(url: str, version: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/model", timeout=5).json().get("version") == version:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} never served version {version}")


def test_a_new_champion_replaces_the_served_version_while_requests_finish(ray_local, tiny_model_dir, tmp_path) -> None:
    import mlflow
    from ray import serve

    from pipelines.registry import register
    from pipelines.serving.deploy import Deployment, deploy
    from pipelines.tracking import ensure_experiment
    from test_registry import png_bytes

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=ensure_experiment(uri, "deploy-test"))
    with mlflow.start_run():
        register(tiny_model_dir, "chex-deploy", "od_vindr/mAP", 0.2)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        out = deploy(Deployment("models:/chex-deploy/1", uri, port=port))
        assert out["url"] == f"{url}/"
        _wait_version(url, "1")
        with mlflow.start_run():
            register(tiny_model_dir, "chex-deploy", "od_vindr/mAP", 0.3)
        answers: list[tuple[int, str]] = []
        done = threading.Event()

        def ask() -> None:  # requests back to back all through the replacement
            while not done.is_set():
                got = httpx.post(f"{url}/v1/report", files={"image": ("x.png", png_bytes())}, timeout=120)
                answers.append((got.status_code, got.json().get("model", {}).get("version")))

        client = threading.Thread(target=ask)
        client.start()
        deploy(Deployment("models:/chex-deploy/2", uri, port=port))
        _wait_version(url, "2")
        time.sleep(1)
        done.set()
        client.join()
        assert {code for code, _ in answers} == {200}  # no request dropped while the replicas were replaced
        assert answers[0][1] == "1" and answers[-1][1] == "2"  # and they did span the switch
    finally:
        serve.shutdown()

"""The model registry: a registered ChEX pyfunc answers queries; ``champion`` moves only to a better evaluation."""
from __future__ import annotations

import base64
import contextlib
import io

import numpy as np
import pytest


def png_bytes(seed: int = 0) -> bytes:
    from PIL import Image

    img = (np.random.default_rng(seed).uniform(0, 255, (96, 80))).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_champion_moves_only_to_better_versions_and_pyfunc_answers(tiny_model_dir, tmp_path):
    import mlflow
    import pandas as pd

    from pipelines.tracking import ensure_experiment
    from pipelines.registry import CANDIDATE, CHAMPION, register

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=ensure_experiment(uri, "registry-test"))
    client = mlflow.MlflowClient(uri)
    regs = []
    for value in (0.30, 0.20, 0.50):
        with mlflow.start_run():
            regs.append(register(tiny_model_dir, "chex-test", "rg_mimic/METEOR", value, evaluation_run_id="e"))
    assert [r.version for r in regs] == ["1", "2", "3"]
    assert [CHAMPION in r.aliases for r in regs] == [True, False, True]
    assert regs[1].champion_version == "1"
    assert str(client.get_model_version_by_alias("chex-test", CHAMPION).version) == "3"
    assert str(client.get_model_version_by_alias("chex-test", CANDIDATE).version) == "3"

    model = mlflow.pyfunc.load_model(f"models:/chex-test@{CANDIDATE}")
    image = base64.b64encode(png_bytes()).decode()
    out = model.predict(pd.DataFrame([{"image": image, "prompts": ["Pleural effusion"], "boxes": [[0.5, 0.5, 0.4, 0.4]],
                                       "report": True}]))
    assert len(out) == 1 and len(out[0]["answers"]) == 2
    text, box = out[0]["answers"]
    assert text["prompt"] == "Pleural effusion" and len(text["box"]) == 4 and isinstance(text["sentence"], str)
    assert box["query_box"] == [0.5, 0.5, 0.4, 0.4]
    assert "sentences" in out[0]["report"]

    from chex_model.chex import ChEX
    from pipelines.pyfunc_model import image_pixels

    direct = ChEX.from_pretrained(tiny_model_dir).query(image_pixels(image), ["Pleural effusion"])[0]
    assert text["box"] == direct.box and text["sentence"] == direct.sentence  # the pyfunc is the same model


class Unpickled(AssertionError):
    """Raised by the patched pickle entry points: something tried to unpickle."""


def refuse_unpickling(monkeypatch) -> None:
    """Every pickle / cloudpickle load entry point raises from here on (checked, so the guard cannot be a no-op)."""
    import pickle

    def refuse(*args, **kwargs):
        raise Unpickled("unpickling attempted")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    cloudpickle = pytest.importorskip("cloudpickle")
    monkeypatch.setattr(cloudpickle, "loads", refuse)
    monkeypatch.setattr(cloudpickle, "load", refuse)
    with pytest.raises(Unpickled):
        pickle.loads(pickle.dumps(1))


def test_registered_pyfunc_loads_and_answers_without_unpickling(tiny_model_dir, tmp_path, monkeypatch):
    """The wrapper travels as code (models from code), the weights as safetensors + JSON: loading a registered
    version with every pickle loader refusing still answers, while a pickled wrapper (the old way) is refused."""
    import hashlib

    import mlflow
    import pandas as pd
    import yaml

    from chex_model.chex import ChEX
    from pipelines.pyfunc_model import ChexPyfunc, image_pixels
    from pipelines.registry import register
    from pipelines.tracking import ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=ensure_experiment(uri, "no-pickle"))
    with mlflow.start_run():
        register(tiny_model_dir, "chex-safe", "od_vindr/mAP", 0.1)
        pickled = mlflow.pyfunc.log_model(name="old", python_model=ChexPyfunc(), artifacts={"chex": str(tiny_model_dir)},
                                          pip_requirements=["chex-pipeline"]).model_uri

    tree = __import__("pathlib").Path(mlflow.artifacts.download_artifacts("models:/chex-safe/1", dst_path=str(tmp_path / "dl")))
    files = {p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith(".pkl")]
    flavor = yaml.safe_load((tree / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in flavor
    folder = flavor["artifacts"]["chex"]["path"] + "/"
    weights = {p.relative_to(tiny_model_dir).as_posix(): p for p in tiny_model_dir.rglob("*") if p.is_file()}
    assert {f.removeprefix(folder) for f in files if f.startswith(folder)} == set(weights)
    for rel, src in weights.items():  # the checkpoint folder is carried byte for byte
        sha = hashlib.sha256((tree / folder / rel).read_bytes()).hexdigest()
        assert sha == hashlib.sha256(src.read_bytes()).hexdigest()
    rest = {f for f in files if not f.startswith(folder)}
    assert rest <= {"MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt", "registered_model_meta",
                    "pyfunc_model.py"} and "pyfunc_model.py" in rest
    for f in rest:
        (tree / f).read_text(encoding="utf-8")  # text (the wrapper's source among it), not a binary pickle

    image = png_bytes(3)
    direct = ChEX.from_pretrained(tiny_model_dir)
    expect_text = direct.query(image_pixels(image), ["Cardiomegaly"], [[0.4, 0.5, 0.3, 0.3]])
    expect_box = direct.query(image_pixels(image), [], [[0.6, 0.4, 0.2, 0.2]])
    refuse_unpickling(monkeypatch)
    with pytest.raises(Unpickled):
        mlflow.pyfunc.load_model(pickled)  # the guard catches a pickled wrapper
    model = mlflow.pyfunc.load_model("models:/chex-safe/1")
    out = model.predict(pd.DataFrame([  # mixed rows: the second lacks prompts and report
        {"image": base64.b64encode(image).decode(), "prompts": ["Cardiomegaly"], "boxes": [[0.4, 0.5, 0.3, 0.3]],
         "report": True},
        {"image": image, "boxes": [[0.6, 0.4, 0.2, 0.2]]}]))
    assert [len(o["answers"]) for o in out] == [2, 1] and "report" in out[0] and "report" not in out[1]
    for got, want in zip(out[0]["answers"] + out[1]["answers"], expect_text + expect_box):
        assert len(got["box"]) == 4 and isinstance(got["sentence"], str)
        assert got["box"] == want.box and got["sentence"] == want.sentence
    assert isinstance(out[0]["report"]["sentences"], list)


def test_register_then_lineage_walks_back_to_the_raw_digests(ingested, tiny_model_dir, tmp_path, capsys):
    import json

    import mlflow

    from pipelines.cli import main
    from evaluation.config import Bootstrap, EvalConfig
    from pipelines.evaluation_run import run_evaluation
    from pipelines.tracking import dataset_inputs, log_dataset
    from pipelines.tracking import ensure_experiment
    from pipelines.training.fit import EXPORT_TAG

    tables, manifest = ingested
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    # a workflow with one stage run, recorded the way pipelines.training.stages records them
    with mlflow.start_run(experiment_id=ensure_experiment(uri, "chex-train"), run_name="workflow"):
        with mlflow.start_run(run_name="generation", nested=True, tags={EXPORT_TAG: str(tiny_model_dir.resolve())}) as stage:
            mlflow.log_params({"stage.name": "generation", "train.model_preset": "tiny"})
            for spec in dataset_inputs(tables, ["mimic_cxr/train"], "training"):
                log_dataset(spec)
    payload = run_evaluation(tables, EvalConfig(tasks=["rc_cig"], bootstrap=Bootstrap(boxes=5)), tmp_path / "eval", tiny_model_dir, uri,
                             show_progress=False)
    capsys.readouterr()
    assert main(["register", "--model", str(tiny_model_dir), "--results", str(tmp_path / "eval" / "results.json"),
                 "--name", "chex-demo", "--metric", "rc_cig/auroc_weighted"]) == 0
    assert "aliases candidate, champion" in capsys.readouterr().out
    assert main(["lineage", "models:/chex-demo@champion", "--tracking-uri", uri, "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)
    assert chain["model"]["version"] == "1" and set(chain["model"]["aliases"]) == {"candidate", "champion"}
    assert chain["evaluation"]["run_id"] == payload["mlflow_run_id"]
    assert "rc_cig/auroc_weighted" in chain["evaluation"]["scores"]
    assert [t["run_id"] for t in chain["training"]] == [stage.info.run_id]
    assert chain["training"][0]["config"]["train.model_preset"] == "tiny"
    digests = {d["name"]: d["digest"] for d in chain["datasets"]}
    assert digests["mimic_cxr/train"] == manifest["datasets"]["mimic_cxr/train"]["digest"]
    assert digests["mimic_cxr/test"] == manifest["datasets"]["mimic_cxr/test"]["digest"]
    assert {k: v["digest"] for k, v in chain["raw_inputs"].items()} == {k: v["digest"] for k, v in manifest["raw_inputs"].items()}
    assert main(["lineage", "models:/chex-demo", "--tracking-uri", uri]) == 2  # neither alias nor version: one line
    assert main(["lineage", "models:/chex-demo/1", "--tracking-uri", uri]) == 0
    text = capsys.readouterr().out
    assert "evaluation run" in text and "raw inputs" in text and manifest["raw_inputs"]["mimic_cxr_jpg"]["digest"] in text


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_registry_against_a_real_mlflow_server(backend, tiny_model_dir, tmp_path):
    """The same registration through a local tracking server (REST store, proxied artifacts) instead of a SQLite file,
    on both backend stores: SQLite, and PostgreSQL as production runs it (a throwaway cluster on loopback)."""
    import mlflow
    import pandas as pd

    from infra import local_postgres
    from infra.mlflow_server import local_server
    from pipelines.registry import CHAMPION, register

    if backend == "postgresql" and not local_postgres.available():
        pytest.skip(f"PostgreSQL backend not tested: {local_postgres.why_unavailable()}")
    with contextlib.ExitStack() as stack:
        store = (f"sqlite:///{tmp_path / 'server.db'}" if backend == "sqlite"
                 else stack.enter_context(local_postgres.local_postgres()))
        uri = stack.enter_context(local_server(store, str(tmp_path / "artifacts")))
        assert uri.startswith("http://127.0.0.1:")
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("server-test")
        with mlflow.start_run():
            reg = register(tiny_model_dir, "chex-served", "od_vindr/mAP", 0.4)
        assert reg.aliases == ["candidate", CHAMPION]
        model = mlflow.pyfunc.load_model(f"models:/chex-served@{CHAMPION}")
        out = model.predict(pd.DataFrame([{"image": png_bytes(1), "prompts": ["Cardiomegaly"], "boxes": None}]))
        assert out[0]["answers"][0]["prompt"] == "Cardiomegaly"
        if backend == "postgresql":  # the version and its alias really live in PostgreSQL
            import psycopg

            with contextlib.closing(psycopg.connect(store)) as conn, conn.cursor() as cur:
                cur.execute("SELECT name, alias, version FROM registered_model_aliases")
                assert sorted(cur.fetchall()) == sorted([("chex-served", CHAMPION, 1), ("chex-served", "candidate", 1)])
    assert any((tmp_path / "artifacts").rglob("model.safetensors"))  # the artifacts went through the server


def test_serve_and_query_resolve_a_registry_uri(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """`models:/NAME@ALIAS` -> the registered checkpoint (fetched once into the cache) and its card; `chex query`
    answers from it; the pyfunc refuses a path where image bytes belong."""
    import hashlib

    import mlflow

    from pipelines.cli import main
    from pipelines.pyfunc_model import image_pixels
    from pipelines.registry import register
    from pipelines.serving.model_source import ModelNotFound, resolve_model
    from pipelines.tracking import ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("CHEX_MODEL_CACHE", str(tmp_path / "cache"))
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=ensure_experiment(uri, "resolve-test"))
    with mlflow.start_run() as evaluation:
        mlflow.log_metric("od_vindr/mAP", 0.25)
    with mlflow.start_run():
        register(tiny_model_dir, "chex-r", "od_vindr/mAP", 0.25, evaluation_run_id=evaluation.info.run_id)
    src = resolve_model("models:/chex-r@champion", uri)
    assert (src.folder / "config.json").is_file() and src.folder.is_relative_to(tmp_path / "cache")
    card = src.info()
    digest = hashlib.sha256((tiny_model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert card["version"] == "1" and "champion" in card["aliases"] and card["weights_sha256"] == digest
    assert card["metrics"] == {"od_vindr/mAP": 0.25} and card["decided_by"] == "od_vindr/mAP=0.25"
    assert src.pinned == "models:/chex-r/1" and src.tracking_uri == uri  # what replicas load: this version, not the alias
    assert resolve_model("models:/chex-r/1", uri).folder == src.folder  # cached, not fetched again
    for bad in ("models:/chex-r@nope", "models:/nope@champion", "models:/chex-r", str(tmp_path)):
        with pytest.raises(ModelNotFound):
            resolve_model(bad, uri)
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes())
    assert main(["query", str(image), "--prompt", "Left lung", "--model", "models:/chex-r@champion", "--tracking-uri", uri]) == 0
    assert __import__("json").loads(capsys.readouterr().out)["model"]["version"] == "1"
    monkeypatch.delenv("CHEX_MODEL", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # no demo store here: the default names what to do
    assert main(["query", str(image), "--prompt", "Left lung"]) == 2
    assert "make demo" in capsys.readouterr().err
    with pytest.raises(ValueError):
        image_pixels(str(image))  # a path is not base64 image bytes

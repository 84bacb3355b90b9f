"""The `chex` command: one entry point, one subcommand per pipeline stage."""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

MODEL_ENV = "CHEX_MODEL"


class _Parser(argparse.ArgumentParser):
    """Bad arguments end in one clear line (no usage dump, no traceback)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _scale(text: str) -> float:
    value = float(text)
    if not 0.02 <= value <= 2.0:
        raise argparse.ArgumentTypeError(f"must be within [0.02, 2], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="chex", description="ChEX pipeline: synthetic data, ingestion, queries against a trained model.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    synth = sub.add_parser("synth", help="write synthetic raw datasets in their real on-disk layouts")
    synth.add_argument("--out", type=Path, required=True, help="folder to write the raw datasets into")
    synth.add_argument("--studies", type=_positive, default=40, help="MIMIC-CXR studies (other sources scale with it)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-scale", type=_scale, default=1.0, help="1.0 = realistic sizes (~2500x3000)")
    synth.add_argument("--workers", type=int, default=0, help="render processes (0 = all cores)")

    ingest = sub.add_parser("ingest", help="raw datasets -> Parquet tables + rejects + manifest (Ray Data)")
    _ingest_args(ingest)
    ingest.add_argument("--raw", type=Path, required=True, help="folder holding the dataset roots (see configs/ingest.yaml)")
    ingest.add_argument("--out", type=Path, required=True, help="output folder for tables/, rejects/, manifest.json")

    demo = sub.add_parser("demo", help="synthesize the embedded default data and ingest it")
    _ingest_args(demo)
    demo.add_argument("--workdir", type=Path, default=Path("demo_run"))
    demo.add_argument("--studies", type=_positive, default=24)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--image-scale", type=_scale, default=1.0)

    train = sub.add_parser("train", help="multitask training: the workflow's stages on Ray Train + DeepSpeed")
    train.add_argument("--config", type=Path, default=Path("configs/train/demo.yaml"), help="training workflow YAML")
    train.add_argument("--stage", action="append", default=[], help="run only this stage (repeatable; default all)")
    train.add_argument("--address", default=None, help="Ray cluster address ('auto' or host:port); default local")
    train.add_argument("--workers", type=_positive, default=None, help="override the number of training workers")
    train.add_argument("--gpus", action="store_true", help="one GPU per worker (NCCL; use a bf16 DeepSpeed config)")
    train.add_argument("--workdir", type=Path, default=None, help="override the workflow's output folder")

    tune = sub.add_parser("tune", help="Ray Tune sweep of one stage (ASHA, MLflow child run per trial)")
    tune.add_argument("--config", type=Path, default=Path("configs/tune/demo.yaml"), help="sweep YAML")
    tune.add_argument("--address", default=None, help="Ray cluster address ('auto' or host:port); default local")
    tune.add_argument("--samples", type=_positive, default=None, help="override the number of trials")

    ev = sub.add_parser("evaluate", help="score a model on the paper's nine tasks (results JSON, table, figures, MLflow)")
    ev.add_argument("--model", type=Path, default=None, help="model folder (save_pretrained); not needed for --predictor oracle/random")
    ev.add_argument("--data", type=Path, required=True, help="ingest output folder (holds manifest.json and tables/)")
    ev.add_argument("--config", type=Path, default=None, help="evaluation YAML (default: configs/evaluate/default.yaml settings)")
    ev.add_argument("--tasks", default=None, help="comma-separated tasks or groups: all, od, sg, rc, re, rg, od_vindr, ...")
    ev.add_argument("--split", default=None, help="split to score (default test); the search uses val")
    ev.add_argument("--predictor", choices=("model", "oracle", "random"), default=None,
                    help="oracle = ground truth (the metrics' ceiling), random = chance level")
    ev.add_argument("--max-images", type=_positive, default=None, help="at most this many images per task and split")
    ev.add_argument("--no-search", action="store_true", help="keep the configured post-processing (no validation search)")
    ev.add_argument("--out", type=Path, default=None, help="output folder (default: <model>/../evaluation or runs/evaluate)")
    ev.add_argument("--tracking-uri", default=None, help="MLflow store (default: the training workdir's, else <out>/mlflow.db)")

    pipe = sub.add_parser("pipeline", help="the whole workflow: synth -> ingest -> train -> evaluate -> register")
    pipe_sub = pipe.add_subparsers(dest="action", required=True, parser_class=_Parser)
    prun = pipe_sub.add_parser("run", help="run the stages whose inputs changed (a stage with the same inputs is skipped)")
    prun.add_argument("--config", type=Path, default=Path("configs/pipeline/demo.yaml"), help="pipeline YAML")
    prun.add_argument("--from", dest="from_stage", default=None, help="rerun from this stage on (e.g. ingest, train:detection)")
    prun.add_argument("--only", default=None, help="run just this stage (its inputs must be up to date)")
    prun.add_argument("--address", default=None, help="Ray cluster address ('auto' or host:port); default local")

    reg = sub.add_parser("register", help="register an evaluated model in the MLflow Model Registry (candidate; champion if better)")
    reg.add_argument("--model", type=Path, required=True, help="model folder (save_pretrained)")
    reg.add_argument("--results", type=Path, required=True, help="the results.json of its chex evaluate run")
    reg.add_argument("--name", default="chex", help="registered model name (default chex)")
    reg.add_argument("--metric", default="rg_mimic/METEOR", help="task/metric that decides champion (default rg_mimic/METEOR)")
    reg.add_argument("--lower-is-better", action="store_true", help="the metric improves downwards")

    lin = sub.add_parser("lineage", help="registered model -> evaluation -> training runs -> dataset digests -> raw inputs")
    lin.add_argument("model_uri", help="models:/<name>@<alias> or models:/<name>/<version>")
    lin.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"), help="MLflow store (default $MLFLOW_TRACKING_URI)")
    lin.add_argument("--json", action="store_true", help="print the chain as JSON")

    q = sub.add_parser("query", help="ask a trained model about one X-ray: text prompts, boxes, or a full report")
    q.add_argument("image", type=Path, help="JPEG, PNG or DICOM file")
    q.add_argument("--prompt", action="append", default=[], help="text query (repeatable), e.g. 'Pleural effusion'")
    q.add_argument("--box", action="append", type=_box, default=[], help="box query cx,cy,w,h normalized to the image (repeatable)")
    q.add_argument("--box-prompt", nargs=2, action="append", default=[], metavar=("CX,CY,W,H", "TEXT"),
                   help="box + text query: the box's ROI fused with the prompt (repeatable)")
    q.add_argument("--classify", nargs=2, action="append", default=[], metavar=("POSITIVE", "NEGATIVE"),
                   help="also give P(POSITIVE) vs NEGATIVE for every answer (repeatable)")
    q.add_argument("--report", nargs="?", const="report", default=None, metavar="PROMPT_SET",
                   help="write a full grounded report (built-in set name or YAML path; default 'report')")
    q.add_argument("--model", type=Path, default=None, help=f"checkpoint folder (default: ${MODEL_ENV} or demo_run/model)")
    q.add_argument("--out", type=Path, default=None, help="also draw the answers on the X-ray into this PNG")
    q.add_argument("--beams", type=_positive, default=1, help="beam width (1 = greedy)")
    q.add_argument("--max-tokens", type=_positive, default=None, help="longest sentence in tokens")
    q.add_argument("--int8", action="store_true", help="int8 language model on the CPU (~3x faster generation)")
    return parser


def _box(text: str) -> tuple[float, float, float, float]:
    from chex_model.inference import validate_box

    try:
        return validate_box([float(v) for v in text.split(",")])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad box {text!r}: {exc}") from None


class UsageError(Exception):
    """A bad argument found after parsing (missing file, unreadable image): one line, exit code 2."""


def _query(args: argparse.Namespace) -> None:
    from chex_model.chex import ChEX
    from chex_model.draw import Annotation, render
    from chex_model.inference import prepare_image
    from preprocessing.image_io import ImageDecodeError

    try:
        box_prompts = [(_box(b), t) for b, t in args.box_prompt]
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"argument --box-prompt: {exc}") from None
    if not (args.prompt or args.box or box_prompts or args.report):
        raise UsageError("give --prompt, --box, --box-prompt or --report")
    if args.image.is_dir():
        raise UsageError(f"image {args.image} is a directory, not an image file")
    if not args.image.is_file():
        raise UsageError(f"image {args.image} not found")
    model_dir = args.model or Path(os.environ.get(MODEL_ENV, "demo_run/model"))
    if not (model_dir / "config.json").is_file():
        raise UsageError(f"no ChEX checkpoint in {model_dir} (train one, or pass --model DIR)")
    model = ChEX.from_pretrained(model_dir)
    try:  # the very pixels ingest would store for this file (same decode, same resize)
        prepared = prepare_image(args.image, model.image_encoder.image_size)
    except (ImageDecodeError, ValueError, OSError) as exc:
        raise UsageError(f"cannot read image {args.image}: {exc}") from None
    if args.int8:
        from chex_model.cpu_inference import quantize_for_cpu

        quantize_for_cpu(model)
    out: dict = {"image": str(args.image), "model": str(model_dir)}
    notes: list[Annotation] = []
    gen = {"max_new_tokens": args.max_tokens, "num_beams": args.beams}
    if args.prompt or args.box or box_prompts:
        results = model.query(prepared, args.prompt, args.box, box_prompts=box_prompts,
                              classes=[tuple(c) for c in args.classify], **gen)
        out["results"] = [r.to_dict() for r in results]
        notes += [Annotation(r.prompt or "box", r.box, r.sentence) for r in results]
    if args.report:
        rep = model.report(prepared, args.report, **gen)
        out["report"] = rep.to_dict()
        notes += [Annotation(s.query, s.box if s.finding else None, s.sentence) for s in rep.sentences]
        if rep.undetermined:
            notes.append(Annotation("cannot tell", None, ", ".join(rep.undetermined)))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        render(prepared.original, notes).save(args.out)
        out["picture"] = str(args.out)
    print(json.dumps(out, indent=2))


def _train(args: argparse.Namespace) -> None:
    from infra.ray_runtime import init_ray
    from pipelines.train import run_workflow
    from pipelines.train_config import load_train_config

    cfg = load_train_config(_existing(args.config, "--config"))
    if args.workers:
        cfg.workers = args.workers
    if args.gpus:
        cfg.use_gpu = True
    if args.workdir:
        cfg.workdir = str(args.workdir)
    cfg.accumulation()
    init_ray(args.address)
    for res in run_workflow(cfg, only=args.stage or None):
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(res.metrics.items()) if k.startswith("val/"))
        print(f"stage {res.name}: model {res.model_dir} ({shown})")
    print(f"MLflow: {cfg.tracking_uri()} (experiment {cfg.mlflow.experiment})")


def _evaluate(args: argparse.Namespace) -> None:
    from evaluation.config import EvalConfig
    from infra.config import load_config
    from pipelines.evaluate import RESULTS, TABLE, run_evaluation

    cfg = load_config(EvalConfig, _existing(args.config, "--config") if args.config else None)
    overrides = {"tasks": args.tasks.split(",") if args.tasks else None, "split": args.split, "predictor": args.predictor,
                 "max_images": args.max_images}
    cfg = EvalConfig(**{**cfg.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
    if args.no_search:
        cfg.search = False
    if cfg.predictor == "model" and args.model is None:
        raise UsageError("--model is required (or --predictor oracle / random)")
    if args.model is not None and not (args.model / "config.json").is_file():
        raise UsageError(f"--model {args.model} is not a ChEX model folder (no config.json)")
    if not (args.data / "tables").is_dir():
        raise UsageError(f"--data {args.data} has no tables/ folder: give the ingest output folder")
    if any(t.startswith(("re_", "rg_")) for t in cfg.tasks):
        from evaluation.meteor import require_java

        require_java()
        if cfg.labeler.startswith("chexbert:"):
            parts = cfg.labeler.removeprefix("chexbert:").split(",")
            checkpoint = Path(parts[0])
            bert = Path(parts[1]) if len(parts) > 1 and parts[1] else checkpoint.parent / "bert"
            if not checkpoint.is_file() or not bert.is_dir():
                raise UsageError(f"labeler {cfg.labeler}: needs the checkpoint file {checkpoint} and the BERT folder {bert}")
    out = args.out or (args.model.resolve().parent / "evaluation" if args.model else Path("runs/evaluate") / cfg.predictor)
    payload = run_evaluation(args.data, cfg, out, args.model, args.tracking_uri)
    print((Path(out) / TABLE).read_text())
    print(f"results: {Path(out) / RESULTS}; MLflow run {payload['mlflow_run_id']} in {payload['tracking_uri']}")


def _pipeline(args: argparse.Namespace) -> None:
    from pipelines.workflow import Pipeline, load_pipeline_config

    cfg = load_pipeline_config(_existing(args.config, "--config"))
    pipeline = Pipeline(cfg)
    records = pipeline.run(args.from_stage, args.only, args.address)
    for r in records:
        print(f"stage {r.name}: {'skipped (unchanged)' if r.skipped else 'ran'}")
    outputs = {r.name: r.outputs for r in records}
    if "evaluate" in outputs:
        print(Path(outputs["evaluate"]["table_file"]).read_text())
        picture = Path(outputs["evaluate"]["table_file"]).parent / "figures" / "rg_mimic_example0.png"
        if picture.is_file():
            print(f"grounded report of a test image (boxes + generated sentences, true report below): {picture}")
    if "register" in outputs:
        reg = outputs["register"]
        print(f"registered {reg['name']} v{reg['version']} ({', '.join(reg['aliases'])}); champion v{reg['champion']}")
    venv_mlflow = Path(sys.executable).parent / "mlflow"
    ui = f"{venv_mlflow if venv_mlflow.is_file() else 'mlflow'} ui --backend-store-uri {cfg.tracking()}"
    print(f"MLflow UI (then open http://127.0.0.1:5000): {ui}")


def _register(args: argparse.Namespace) -> None:
    import mlflow

    from pipelines.lineage import code_tags, ensure_experiment
    from pipelines.registry import register

    if not (args.model / "config.json").is_file():
        raise UsageError(f"--model {args.model} is not a ChEX model folder (no config.json)")
    try:
        results = json.loads(_existing(args.results, "--results").read_text())
        task, _, key = args.metric.partition("/")
        value = float(results["tasks"][task]["metrics"][key]["value"])
    except (KeyError, ValueError, TypeError) as exc:
        raise UsageError(f"--results {args.results} has no value for --metric {args.metric} ({exc})") from None
    if value != value:
        raise UsageError(f"--metric {args.metric} is NaN in {args.results}: pick a task that had samples")
    mlflow.set_tracking_uri(results["tracking_uri"])
    mlflow.set_experiment(experiment_id=ensure_experiment(results["tracking_uri"], "chex-registry"))
    with mlflow.start_run(run_name=f"register-{args.name}", tags={**code_tags(), "model_dir": str(args.model.resolve())}):
        reg = register(args.model, args.name, args.metric, value, results.get("mlflow_run_id"), not args.lower_is_better)
    print(f"registered {reg.name} v{reg.version} ({args.metric} = {value:.4g}) with aliases {', '.join(reg.aliases)}; "
          f"champion: v{reg.champion_version}")


def _lineage(args: argparse.Namespace) -> None:
    from pipelines.model_lineage import format_lineage, model_lineage

    if not args.tracking_uri:
        raise UsageError("give --tracking-uri (or set MLFLOW_TRACKING_URI)")
    from mlflow.exceptions import MlflowException

    try:
        chain = model_lineage(args.model_uri, args.tracking_uri)
    except (ValueError, MlflowException) as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    print(json.dumps(chain, indent=2) if args.json else format_lineage(chain))


def _tune(args: argparse.Namespace) -> None:
    from pipelines.tune import load_sweep_config, run_sweep

    sweep = load_sweep_config(_existing(args.config, "--config"))
    if args.samples:
        sweep.num_samples = args.samples
    res = run_sweep(sweep, args.address)
    print(f"{res.trials} trials; best {sweep.metric} = {res.best_metrics[sweep.metric]:.4g} with {res.best_params}")
    print(f"best config: {res.best_config}")


def _existing(path: Path, flag: str) -> Path:
    if not path.is_file():
        raise UsageError(f"{flag} {path} does not exist")
    return path


def _ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="ingest YAML (default: built-in = configs/ingest.yaml)")
    p.add_argument("--image-size", type=_positive, default=None, help="override the stored image side")
    p.add_argument("--address", default=None, help="Ray cluster address ('auto' or host:port); default local")
    p.add_argument("--force", action="store_true", help="rebuild even if inputs and config are unchanged")


def _synth(out: Path, studies: int, seed: int, image_scale: float, workers: int = 0) -> None:
    from preprocessing.synth.generate import SynthConfig, synthesize

    counts = synthesize(out, SynthConfig(studies=studies, seed=seed, image_scale=image_scale, workers=workers))
    print(f"synthetic raw data in {out}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


def _synth_matches(raw: Path, studies: int, seed: int, image_scale: float) -> bool:
    """True when `raw` holds a complete tree generated with these settings (so the demo can reuse it)."""
    from preprocessing.synth.generate import MARKER, SynthConfig, marker

    try:
        return json.loads((raw / MARKER).read_text()) == marker(SynthConfig(studies=studies, seed=seed, image_scale=image_scale))
    except (OSError, ValueError):
        return False


def _ingest(args: argparse.Namespace, raw: Path, out: Path) -> None:
    from infra.config import load_config
    from pipelines.ingest import run_ingest
    from pipelines.ingest_config import IngestConfig
    from pipelines.summary import summary_table

    cfg = load_config(IngestConfig, args.config)
    if args.image_size:
        cfg.image_size = args.image_size
    if not raw.is_dir():
        raise FileNotFoundError(f"--raw {raw} is not a folder")
    manifest = run_ingest(raw, out, cfg, address=args.address, force=args.force)
    state = "unchanged, nothing to do (use --force to rebuild)" if manifest.get("skipped") else f"done in {manifest['seconds']} s"
    print(f"ingest {state}: {out}/manifest.json")
    print(summary_table(out))


def _demo(args: argparse.Namespace) -> None:
    raw = args.workdir / "raw"
    if not _synth_matches(raw, args.studies, args.seed, args.image_scale):
        shutil.rmtree(raw, ignore_errors=True)
        _synth(raw, args.studies, args.seed, args.image_scale)
    _ingest(args, raw, args.workdir / "ingested")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("openjpeg").setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from chex_model.checkpoint import CheckpointError
    from evaluation.meteor import MissingJavaError
    from infra.config import ConfigError
    from pipelines.workflow import StageFailed

    commands = {"synth": lambda: _synth(args.out, args.studies, args.seed, args.image_scale, args.workers),
                "ingest": lambda: _ingest(args, args.raw, args.out), "demo": lambda: _demo(args), "query": lambda: _query(args),
                "train": lambda: _train(args), "tune": lambda: _tune(args), "evaluate": lambda: _evaluate(args),
                "register": lambda: _register(args), "pipeline": lambda: _pipeline(args), "lineage": lambda: _lineage(args)}
    try:
        commands[args.command]()
    except UsageError as exc:
        print(f"chex {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except StageFailed as exc:
        print(f"chex {args.command}: error: {exc} (earlier stages' results are kept: rerun to continue from there)", file=sys.stderr)
        return 1
    except (ConfigError, CheckpointError, FileNotFoundError, MissingJavaError) as exc:
        print(f"chex {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

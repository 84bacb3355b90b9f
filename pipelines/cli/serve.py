"""`chex serve`: a registered model (or a model folder) online as a Ray Serve application with the HTTP API and page."""
from __future__ import annotations

import argparse
import signal
import socket
import threading

from pipelines.cli.args import UsageError, add_ray_address, positive

PRECISIONS = ("auto", "fp32", "bf16", "int8")  # chex_model.precision.PRECISIONS (no torch for --help)


def _autoscale(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX replicas, got {text!r}") from None
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"need 1 <= MIN <= MAX, got {text!r}")
    return lo, hi


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model online: HTTP API (/docs) and a web page, on Ray Serve")
    p.add_argument("model", nargs="?", default=None,
                   help="models:/NAME@ALIAS, models:/NAME/VERSION or a model folder (default: $CHEX_MODEL, else the "
                        "champion of the last `make demo`)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store of a models:/ URI (default $MLFLOW_TRACKING_URI, "
                                                       "else the demo's)")
    add_ray_address(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; any other needs $CHEX_API_TOKEN)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=positive, default=1, help="fixed number of model replicas (default 1)")
    scale.add_argument("--autoscale", type=_autoscale, default=None, metavar="MIN,MAX", help="autoscale replicas")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="weights for inference (default auto)")
    p.add_argument("--int8", action="store_const", dest="precision", const="int8", help="same as --precision int8")
    p.add_argument("--max-batch", type=positive, default=8, help="largest dynamic batch of requests (1 = no batching)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long a batch waits to fill (default 10)")
    p.add_argument("--max-image-mb", type=positive, default=20, help="largest image upload (default 20 MB)")
    p.add_argument("--max-queries", type=positive, default=32, help="most queries in one request (default 32)")
    p.add_argument("--gpus", type=float, default=0.0, help="GPUs per replica (default 0)")
    p.add_argument("--cpus", type=positive, default=1, help="CPUs (and PyTorch threads) per replica (default 1)")
    p.set_defaults(run=run_serve)


def _check_bind(host: str, port: int) -> str | None:
    """The token's sha256 when one is set; UsageError for a public bind without one or a port already taken."""
    from pipelines.serving.bind import token_digest

    try:
        digest = token_digest(host)
    except ValueError as exc:
        raise UsageError(f"--{exc}") from None
    if not 0 < port < 65536:
        raise UsageError(f"--port {port} is not a TCP port")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return digest


def run_serve(args: argparse.Namespace) -> None:
    token_sha256 = _check_bind(args.host, args.port)
    from pipelines.serving.model_source import ModelNotFound, resolve_model

    try:  # in the driver first: a missing model is one line here, and the download lands in the shared cache
        source = resolve_model(args.model, args.tracking_uri)
    except ModelNotFound as exc:
        raise UsageError(str(exc)) from None
    import ray
    from ray import serve

    from pipelines.ray_runtime import init_ray
    from pipelines.serving.api_inputs import Limits
    from pipelines.serving.app import ServeSettings, application

    settings = ServeSettings(source.pinned, source.tracking_uri, args.precision, token_sha256,  # every replica alike
                             Limits(args.max_image_mb * 1024 * 1024, args.max_queries), args.max_batch,
                             args.batch_wait_ms / 1000)
    init_ray(args.address, include_dashboard=False, configure_logging=True, logging_level="WARNING")
    serve.start(http_options={"host": args.host, "port": args.port}, logging_config={"log_level": "WARNING"})
    serve.run(application(settings, args.replicas, args.autoscale, args.gpus, args.cpus), name="chex", route_prefix="/",
              blocking=False)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {source.name} v{source.version or '-'} ({source.folder}) at http://{shown}:{args.port}/ "
          f"(API docs: /docs); Ctrl-C stops", flush=True)
    _wait_for_signal()
    print("stopping: replicas finish the requests in flight", flush=True)
    serve.shutdown()  # replicas finish their in-flight requests (graceful_shutdown_timeout_s) before they stop
    ray.shutdown()


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()

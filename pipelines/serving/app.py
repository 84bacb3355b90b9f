"""The Ray Serve application: a FastAPI ingress over ChEX replicas that load the model once and answer concurrent
requests in dynamic batches (:func:`chex_model.batched.answer_batch`: one encoder pass, one generation batch).

Routes: ``/`` (the page), ``/static/*``, ``/healthz``, ``/readyz``, ``/v1/model``, ``/v1/samples``, ``/v1/query``,
``/v1/report`` (docs/serving.md). The bearer token, when set, is held only as its sha256 digest.
"""
# no `from __future__ import annotations`: FastAPI must see the handlers' real types (Request) through Serve's
# ingress wrapping
import asyncio
import hashlib
import hmac
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from ray import serve

from pipelines.serving.api_inputs import (
    BadInput, Limits, QueryBody, ReportBody, base64_image, decoded_image, parse_request_field, query_job, report_job,
)

PAGE = Path(__file__).parent / "page"
API_VERSION = "1"


@dataclass
class ServeSettings:
    """What each replica is built from (plain data: it travels to the replicas)."""

    model: str | None = None  # registry URI or folder; None: the default (see model_source)
    tracking_uri: str | None = None
    precision: str = "auto"
    token_sha256: str | None = None  # sha256 hex of CHEX_API_TOKEN; None: no token asked
    limits: Limits = field(default_factory=Limits)
    max_batch_size: int = 8  # 1: no batching
    batch_wait_s: float = 0.01


api = FastAPI(title="ChEX", version=API_VERSION, description="Grounded descriptions of chest X-rays: text, box and "
              "box + text queries, and full reports (docs/serving.md).")


@api.exception_handler(BadInput)
async def _bad_input(_: Request, exc: BadInput) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=exc.status)


@api.exception_handler(RequestValidationError)
async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    err = exc.errors()[0]
    return JSONResponse({"detail": f"{'.'.join(map(str, err['loc']))}: {err['msg']}"}, status_code=400)


def _body_doc(model) -> dict[str, Any]:
    """OpenAPI request body of a route that takes JSON (base64 image) or multipart (``image`` file + ``request``)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "format": "binary", "description": "JPEG, PNG or DICOM file"},
            "request": {"type": "string", "description": f"JSON object: the fields of {model.__name__} but image"}}}},
    }}}


async def _read(request: Request, limits: Limits) -> tuple[dict[str, Any], bytes]:
    """The request's fields and image bytes, from multipart (``image`` file + ``request`` JSON) or JSON (base64)."""
    length = int(request.headers.get("content-length") or 0)
    if length > limits.max_image_bytes * 4 // 3 + 1024 * 1024:  # base64 grows 4/3; room for the fields
        raise BadInput(f"request of {length / 2**20:.1f} MB is over the {limits.max_image_bytes / 2**20:.0f} MB image limit", 413)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=2)
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise BadInput("image: missing (upload the file as multipart field \"image\")")
        request_field = form.get("request")
        fields = parse_request_field(request_field if isinstance(request_field, str) else None)
        if "image" in fields:
            raise BadInput("request: give the image once, as the uploaded file")
        return fields, await upload.read(limits.max_image_bytes + 1)
    if kind == "application/json":
        try:
            fields = await request.json()
        except ValueError:
            raise BadInput("body: not JSON") from None
        if not isinstance(fields, dict):
            raise BadInput("body: must be a JSON object")
        image = base64_image(fields)
        return {k: v for k, v in fields.items() if k != "image"}, image
    raise BadInput(f"content-type {kind or 'none'}: send multipart/form-data or application/json", 415)


@serve.deployment(name="chex", health_check_period_s=10, health_check_timeout_s=60, graceful_shutdown_timeout_s=30,
                  graceful_shutdown_wait_loop_s=1, max_ongoing_requests=64)
@serve.ingress(api)
class ChexServer:
    """One replica: the model loaded once (on the replica's GPU when it has one), requests batched."""

    def __init__(self, settings: ServeSettings) -> None:
        import torch

        from chex_model.chex import ChEX
        from chex_model.precision import apply_precision
        from pipelines.serving.model_source import resolve_model

        self.settings = settings
        source = resolve_model(settings.model, settings.tracking_uri)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = ChEX.from_pretrained(source.folder).to(device).eval()
        precision = apply_precision(self.model, settings.precision)
        self.info = {**source.info(), "precision": precision, "device": device, "api_version": API_VERSION,
                     "image_size": self.model.image_encoder.image_size}
        self.answered_by = {"name": source.name, "version": source.version}
        self.answer.set_max_batch_size(settings.max_batch_size)
        self.answer.set_batch_wait_timeout_s(settings.batch_wait_s)

    def check_health(self) -> None:
        """Ray Serve's replica health check: the model is still there."""
        if self.model is None:
            raise RuntimeError("model not loaded")

    def _authorize(self, request: Request) -> None:
        want = self.settings.token_sha256
        if want is None:
            return
        got = request.headers.get("authorization", "")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), want):
            raise BadInput("missing or wrong bearer token (Authorization: Bearer <CHEX_API_TOKEN>)", 401)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def answer(self, jobs: list) -> list:
        from chex_model.batched import answer_batch

        return await asyncio.to_thread(answer_batch, self.model, jobs)  # the event loop keeps taking requests

    async def _answer_one(self, job) -> Any:
        job.image = await asyncio.to_thread(decoded_image, job.image, self.model.image_encoder.image_size,
                                            self.settings.limits)
        out = await self.answer(job)
        if isinstance(out, ValueError):
            raise BadInput(str(out).splitlines()[0])
        return out

    def _envelope(self, job, started: float) -> dict[str, Any]:
        return {"model": self.answered_by, "image": {"width": job.image.width, "height": job.image.height},
                "seconds": round(time.perf_counter() - started, 4)}

    @api.get("/healthz")
    def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    def readyz(self) -> dict[str, str]:
        return {"status": "ready"}

    @api.get("/v1/model")
    def model_info(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return self.info

    @api.get("/v1/samples")
    def samples(self, request: Request) -> dict[str, list[str]]:
        from pipelines.serving.samples import SAMPLES

        self._authorize(request)
        return {"samples": list(SAMPLES)}

    @api.get("/v1/samples/{name}")
    def sample(self, name: str, request: Request) -> Response:
        from pipelines.serving.samples import SAMPLES, sample_png

        self._authorize(request)
        if name not in SAMPLES:
            raise BadInput(f"no sample {name!r}; one of {', '.join(SAMPLES)}", 404)
        return Response(sample_png(name), media_type="image/png")

    async def _serve(self, request: Request, make_job) -> tuple[dict[str, Any], Any]:
        """Authorize, read, check (``make_job``), answer in a batch: the envelope and the answer."""
        started = time.perf_counter()
        self._authorize(request)
        fields, image = await _read(request, self.settings.limits)
        job = make_job(fields, image, self.settings.limits)
        answer = await self._answer_one(job)
        return self._envelope(job, started), answer

    @api.post("/v1/query", openapi_extra=_body_doc(QueryBody))
    async def query(self, request: Request) -> dict[str, Any]:
        envelope, results = await self._serve(request, query_job)
        return {**envelope, "results": [r.to_dict() for r in results]}

    @api.post("/v1/report", openapi_extra=_body_doc(ReportBody))
    async def report(self, request: Request) -> dict[str, Any]:
        envelope, rep = await self._serve(request, report_job)
        return {**envelope, "report": rep.to_dict()}

    @api.get("/", include_in_schema=False)
    def page(self) -> FileResponse:
        return FileResponse(PAGE / "index.html")

    @api.get("/static/{name}", include_in_schema=False)
    def static(self, name: str) -> FileResponse:
        files = {p.name: p for p in PAGE.iterdir() if p.is_file()}  # only the page's own files, by name
        if name not in files:
            raise BadInput(f"no file {name!r}", 404)
        return FileResponse(files[name])


def application(settings: ServeSettings, replicas: int = 1, autoscale: tuple[int, int] | None = None,
                gpus: float = 0.0, cpus: float = 1.0) -> serve.Application:
    """The bound application: ``replicas`` fixed replicas, or autoscaling between ``autoscale`` (min, max). Ray gives
    each replica ``cpus`` CPUs, and PyTorch as many threads (OMP_NUM_THREADS)."""
    options: dict[str, Any] = {"ray_actor_options": {"num_cpus": cpus, "num_gpus": gpus}}
    if autoscale:
        options["autoscaling_config"] = {"min_replicas": autoscale[0], "max_replicas": autoscale[1],
                                         "target_ongoing_requests": settings.max_batch_size}
    else:
        options["num_replicas"] = replicas
    return ChexServer.options(**options).bind(settings)

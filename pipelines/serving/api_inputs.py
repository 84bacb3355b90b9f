"""What an HTTP request may carry, checked before it reaches the model: a bad request becomes one 4xx message.

Images arrive as bytes only (multipart upload or base64), never as a path: the server reads no file a request names.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chex_model.batched import QueryJob, ReportJob

REPORT_SETS = ("report", "reference")  # built-in prompt sets a request may name
MAX_PROMPT_CHARS = 300


class BadInput(Exception):
    """A request the API refuses: ``status`` (400, 413) and one message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    max_image_bytes: int = 20 * 1024 * 1024
    max_queries: int = 32
    max_tokens: int = 64


class BoxPrompt(BaseModel):
    model_config = ConfigDict(extra="forbid")
    box: list[float]
    prompt: str


class QueryBody(BaseModel):
    """A query: any mix of text prompts, boxes and box + text prompts, with optional class pairs."""

    model_config = ConfigDict(extra="forbid")
    image: str | None = Field(None, description="base64 of the image file (JSON requests only)")
    prompts: list[str] = []
    boxes: list[list[float]] = []
    box_prompts: list[BoxPrompt] = []
    classes: list[tuple[str, str]] = []
    max_tokens: int | None = None


class ReportBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str | None = Field(None, description="base64 of the image file (JSON requests only)")
    prompt_set: str = "report"
    max_tokens: int | None = None


def _model_of(cls: type[BaseModel], fields: dict[str, Any]) -> BaseModel:
    try:
        return cls.model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "request"
        raise BadInput(f"{where}: {err['msg']}") from None


def parse_request_field(text: str | None) -> dict[str, Any]:
    """The multipart ``request`` field (JSON object text) -> dict; absent -> {}."""
    if not text:
        return {}
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"request: not JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(fields, dict):
        raise BadInput("request: must be a JSON object")
    return fields


def _text(value: str, what: str) -> str:
    text = value.strip()
    if not text:
        raise BadInput(f"{what}: empty prompt")
    if len(text) > MAX_PROMPT_CHARS:
        raise BadInput(f"{what}: prompt longer than {MAX_PROMPT_CHARS} characters")
    return text


def _box(values: list[float], what: str) -> list[float]:
    from chex_model.box_input import validate_box

    try:
        return list(validate_box(values))
    except ValueError as exc:
        raise BadInput(f"{what}: {exc}") from None


def _tokens(value: int | None, limits: Limits) -> int | None:
    if value is not None and not 1 <= value <= limits.max_tokens:
        raise BadInput(f"max_tokens: must be in 1..{limits.max_tokens}")
    return value


def query_job(fields: dict[str, Any], image: bytes, limits: Limits) -> QueryJob:
    body = _model_of(QueryBody, fields)
    n = len(body.prompts) + len(body.boxes) + len(body.box_prompts)
    if n == 0:
        raise BadInput("give at least one of prompts, boxes or box_prompts")
    if n > limits.max_queries:
        raise BadInput(f"{n} queries in one request; at most {limits.max_queries}", 413)
    return QueryJob(
        image, [_text(p, f"prompts.{i}") for i, p in enumerate(body.prompts)],
        [_box(b, f"boxes.{i}") for i, b in enumerate(body.boxes)],
        [(_box(bp.box, f"box_prompts.{i}.box"), _text(bp.prompt, f"box_prompts.{i}.prompt"))
         for i, bp in enumerate(body.box_prompts)],
        [(_text(p, f"classes.{i}"), _text(q, f"classes.{i}")) for i, (p, q) in enumerate(body.classes)],
        _tokens(body.max_tokens, limits),
    )


def report_job(fields: dict[str, Any], image: bytes, limits: Limits) -> ReportJob:
    body = _model_of(ReportBody, fields)
    if body.prompt_set not in REPORT_SETS:
        raise BadInput(f"prompt_set: unknown {body.prompt_set!r}; one of {', '.join(REPORT_SETS)}")
    return ReportJob(image, body.prompt_set, _tokens(body.max_tokens, limits))


def base64_image(fields: dict[str, Any]) -> bytes:
    """The ``image`` of a JSON request (base64 text) -> bytes."""
    value = fields.get("image")
    if not isinstance(value, str) or not value:
        raise BadInput("image: missing (send it base64 in \"image\", or upload it as multipart field \"image\")")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput("image: not valid base64") from None


def decoded_image(data: bytes, size: int, limits: Limits):
    """Image file bytes (JPEG, PNG, DICOM) -> the model's :class:`~chex_model.inference.PreparedImage`, decoded by the
    same function ingest uses (through a private temporary file), or BadInput."""
    from chex_model.inference import prepare_image
    from preprocessing.image_io import ImageDecodeError

    if not data:
        raise BadInput("image: empty file")
    if len(data) > limits.max_image_bytes:
        raise BadInput(f"image: {len(data) / 2**20:.1f} MB is over the {limits.max_image_bytes / 2**20:.0f} MB limit", 413)
    fd, path = tempfile.mkstemp(prefix="chex-upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return prepare_image(path, size)
    except (ImageDecodeError, ValueError, OSError) as exc:
        reason = exc.reason if isinstance(exc, ImageDecodeError) else str(exc)
        # the server's own file names and Python object reprs stay inside
        reason = re.sub(r"\s*<_io\.[^>]*>", "", reason.replace(path, "the upload")).splitlines()[0][:200]
        raise BadInput(f"image: cannot read it as JPEG, PNG or DICOM ({reason})") from None
    finally:
        os.unlink(path)

"""Credentials never leave the process in a URI: the one place that strips them before anything is logged.

A URI's userinfo (``http://alice:token@host``, ``postgresql://user:pw@db/mlflow``) is dropped, so what is
recorded stays a working address for a client whose credentials come from its environment; its credential query
parameters (``password``, ``token``, S3 pre-signed ``X-Amz-Signature``, Azure SAS ``sig`` ...) become ``***``. Everything that reaches MLflow parameters, tags, artifacts, logs or the console goes through here first;
credentials travel the way MLflow documents instead (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` or
``MLFLOW_TRACKING_TOKEN``, and the workers' environment for storage keys).
"""
from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
# query parameters that carry a secret (compared lower-case)
SECRET_PARAMS = frozenset({
    "password", "passwd", "pwd", "pass", "secret", "client_secret", "token", "access_token", "refresh_token",
    "id_token", "auth", "authorization", "api_key", "apikey", "key", "access_key", "secret_key", "sig", "signature",
    "sas", "x-amz-signature", "x-amz-credential", "x-amz-security-token", "awsaccesskeyid", "x-goog-signature",
    "x-goog-credential", "sslpassword",
})
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def redact_uri(uri: str) -> str:
    """``uri`` without its userinfo and with its credential query values masked; anything that is not a URI comes
    back unchanged."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if not parts.scheme or "://" not in uri:
        return uri
    netloc = parts.netloc
    if "@" in netloc:
        netloc = netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in SECRET_PARAMS for k, _ in pairs):
            query = urlencode([(k, MASK if k.lower() in SECRET_PARAMS else v) for k, v in pairs], safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return uri   # untouched (urlunsplit would normalize e.g. sqlite:/// paths)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Every URI inside free text (a log line, a printed hint, a JSON document) redacted."""
    return _URI.sub(lambda m: redact_uri(m.group(0)), text)


def redact(value: Any) -> Any:
    """A config, parameter dict or list with every string redacted, recursively; other values unchanged."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


class RedactFilter(logging.Filter):
    """A log handler filter: every URI in a record's message is redacted before any handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True

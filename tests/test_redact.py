"""Credentials in URIs never survive `pipelines.redact`: userinfo is dropped, credential query values become ***."""
from __future__ import annotations

import random
import string

import pytest

from pipelines.redact import redact, redact_text, redact_uri


@pytest.mark.parametrize(("uri", "expected"), [
    ("http://alice:s3cret-token@host:5077", "http://host:5077"),
    ("https://tok3n@tracking.example.org/api", "https://tracking.example.org/api"),
    ("postgresql+psycopg://mlflow:pw@db:5432/mlflow", "postgresql+psycopg://db:5432/mlflow"),
    ("s3://bucket/run?X-Amz-Date=20261204&X-Amz-Signature=abc123", "s3://bucket/run?X-Amz-Date=20261204&X-Amz-Signature=***"),
    ("https://acct.blob.core.windows.net/c?sv=2020-08-04&sig=ab%2Fcd", "https://acct.blob.core.windows.net/c?sv=2020-08-04&sig=***"),
    ("http://host:5000/?token=t&page=2", "http://host:5000/?token=***&page=2"),
    ("sqlite:///runs/mlflow.db", "sqlite:///runs/mlflow.db"),
    ("file:///tmp/mlruns", "file:///tmp/mlruns"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("/data/chex/runs", "/data/chex/runs"),
    ("runs/demo", "runs/demo"),
])
def test_redact_uri(uri, expected):
    assert redact_uri(uri) == expected


def test_text_and_nested_values():
    text = "tracking at http://bob:pw1@h:1/ and db postgresql://u:pw2@db/x; done"
    assert redact_text(text) == "tracking at http://h:1/ and db postgresql://db/x; done"
    cfg = {"tracking_uri": "http://a:pw3@h", "stages": [{"uri": "s3://b/k?X-Amz-Security-Token=pw4"}], "n": 3}
    assert redact(cfg) == {"tracking_uri": "http://h", "stages": [{"uri": "s3://b/k?X-Amz-Security-Token=***"}],
                           "n": 3}


def test_random_secrets_never_survive():
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + "-._~!$&'()*+,;="
    for _ in range(500):
        secret = "".join(rng.choice(alphabet) for _ in range(rng.randint(6, 24))).replace("@", "")
        user = "".join(rng.choice(string.ascii_lowercase) for _ in range(5))
        for uri in (f"https://{user}:{secret}@h.example:8443/p", f"http://h/p?password={secret}&x=1"):
            out = redact_uri(uri)
            assert secret not in out and "h" in out, (uri, out)


def test_log_records_are_redacted_before_any_handler_writes_them():
    import io
    import logging

    from pipelines.redact import RedactFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactFilter())
    log = logging.getLogger("chex.test.redact")
    log.addHandler(handler)
    try:
        log.warning("connecting to %s", "http://alice:pw9@host:5000/api?token=pw8")
    finally:
        log.removeHandler(handler)
    assert stream.getvalue() == "connecting to http://host:5000/api?token=***\n"

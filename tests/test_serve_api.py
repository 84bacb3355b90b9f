"""`chex serve` over real HTTP: answers equal the model's own, every bad input is one 4xx line, no server path is
ever read, the token guards a protected server, and a public bind without a token is refused."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from serve_support import running_server


@pytest.fixture(scope="module")
def xray_png(tmp_path_factory) -> bytes:
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:260, 0:300]
    img = (120 + 60 * np.sin(x / 25.0) + 40 * ((x - 150) ** 2 / 90**2 + (y - 130) ** 2 / 100**2 < 1) + rng.normal(0, 8, (260, 300)))
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def local_model(trained_tiny_dir):
    """The same folder loaded here with the server's default precision, to compare answers against."""
    from chex_model.chex import ChEX
    from chex_model.precision import apply_precision

    model = ChEX.from_pretrained(trained_tiny_dir)
    apply_precision(model, "auto")
    return model


QUERY = {"prompts": ["Pleural effusion", "Right lung"], "boxes": [[0.5, 0.5, 0.3, 0.4]],
         "box_prompts": [{"box": [0.3, 0.45, 0.25, 0.5], "prompt": "Left lung"}],
         "classes": [["Pleural effusion", "No pleural effusion"]]}


def _post(url: str, path: str, image: bytes, fields: dict | None = None, **kw) -> httpx.Response:
    data = {"request": json.dumps(fields)} if fields is not None else {}
    return httpx.post(f"{url}{path}", files={"image": ("x.png", image, "image/png")}, data=data, timeout=60, **kw)


def test_a_query_answers_as_the_model_does_in_multipart_and_json(served, xray_png, local_model) -> None:
    got = _post(served.url, "/v1/query", xray_png, QUERY)
    assert got.status_code == 200, got.text
    body = got.json()
    image = np.asarray(Image.open(io.BytesIO(xray_png)))
    want = local_model.query(image, QUERY["prompts"], QUERY["boxes"], box_prompts=[([0.3, 0.45, 0.25, 0.5], "Left lung")],
                             classes=[("Pleural effusion", "No pleural effusion")])
    assert body["image"] == {"width": 300, "height": 260}
    assert body["model"]["name"] == served.model_dir.name
    assert [r["sentence"] for r in body["results"]] == [w.sentence for w in want]
    assert any(r["sentence"] for r in body["results"])  # the trained model says something
    for r, w in zip(body["results"], want):
        np.testing.assert_allclose(r["box"], w.box, atol=1e-3)
        assert r["prompt"] == w.prompt and r["probabilities"].keys() == w.probabilities.keys()
    as_json = httpx.post(f"{served.url}/v1/query", json={**QUERY, "image": base64.b64encode(xray_png).decode()}, timeout=60)
    assert as_json.status_code == 200 and as_json.json()["results"] == body["results"]


def test_a_report_and_the_model_card(served, xray_png, local_model) -> None:
    got = _post(served.url, "/v1/report", xray_png, {"prompt_set": "report"})
    assert got.status_code == 200, got.text
    want = local_model.report(np.asarray(Image.open(io.BytesIO(xray_png))), "report")
    assert [s["sentence"] for s in got.json()["report"]["sentences"]] == [s.sentence for s in want.sentences]
    assert got.json()["report"]["undetermined"] == want.undetermined
    card = httpx.get(f"{served.url}/v1/model").json()
    digest = hashlib.sha256((served.model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert card["weights_sha256"] == digest and card["name"] == served.model_dir.name
    assert httpx.get(f"{served.url}/healthz").json() == {"status": "ok"}
    assert "/v1/query" in httpx.get(f"{served.url}/openapi.json").json()["paths"]


def test_concurrent_requests_each_get_their_own_answer(served, xray_png) -> None:
    """Requests batched together answer as they do alone (the batch mixes prompts, boxes and reports)."""
    asks = [("/v1/query", {"prompts": [p]}) for p in ("Pleural effusion", "Cardiomegaly", "Left lung", "Trachea")]
    asks += [("/v1/query", {"boxes": [[0.4, 0.5, 0.2, 0.3]]}), ("/v1/report", {})]
    alone = [_post(served.url, path, xray_png, f).json() for path, f in asks]
    with ThreadPoolExecutor(len(asks)) as pool:
        together = list(pool.map(lambda a: _post(served.url, a[0], xray_png, a[1]).json(), asks))
    for a, t in zip(alone, together):
        assert a.get("results", a.get("report")) == t.get("results", t.get("report"))


BAD = [
    ("an unreadable image", "/v1/query", b"this is not an image", {"prompts": ["x"]}, 400, "cannot read it"),
    ("an empty file", "/v1/query", b"", {"prompts": ["x"]}, 400, "empty"),
    ("a box outside [0, 1]", "/v1/query", None, {"boxes": [[0.5, 0.5, 1.4, 0.2]]}, 400, "boxes.0"),
    ("a box of 3 numbers", "/v1/query", None, {"boxes": [[0.5, 0.5, 0.2]]}, 400, "boxes.0"),
    ("an empty prompt", "/v1/query", None, {"prompts": ["  "]}, 400, "empty prompt"),
    ("no query at all", "/v1/query", None, {}, 400, "at least one"),
    ("too many prompts", "/v1/query", None, {"prompts": ["Trachea"] * 40}, 413, "at most 32"),
    ("an unknown field", "/v1/query", None, {"prompts": ["x"], "path": "/etc/passwd"}, 400, "path"),
    ("a prompt-set path", "/v1/report", None, {"prompt_set": "/etc/passwd"}, 400, "unknown"),
    ("a prompt-set file name", "/v1/report", None, {"prompt_set": "../../configs/x.yaml"}, 400, "unknown"),
    ("a zero token budget", "/v1/query", None, {"prompts": ["x"], "max_tokens": 0}, 400, "max_tokens"),
]


@pytest.mark.parametrize("what,path,image,fields,status,text", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_4xx_line(served, xray_png, what, path, image, fields, status, text) -> None:
    got = _post(served.url, path, xray_png if image is None else image, fields)
    assert got.status_code == status, got.text
    detail = got.json()["detail"]
    assert isinstance(detail, str) and text in detail and "\n" not in detail and "Traceback" not in detail


def test_malformed_requests_and_server_paths(served, xray_png) -> None:
    """A path where an image belongs is never opened: the JSON image is base64 bytes, and /etc/passwd is not."""
    url = served.url
    for body in ({"image": "/etc/passwd", "prompts": ["x"]}, {"image": str(served.model_dir / "config.json"), "prompts": ["x"]}):
        got = httpx.post(f"{url}/v1/query", json=body, timeout=30)
        assert got.status_code == 400 and "base64" in got.json()["detail"]
    as_b64 = base64.b64encode(b"/etc/passwd").decode()  # valid base64 of a path: decoded as image bytes, not opened
    got = httpx.post(f"{url}/v1/query", json={"image": as_b64, "prompts": ["x"]}, timeout=30)
    assert got.status_code == 400 and "cannot read it" in got.json()["detail"] and "root:" not in got.text
    got = httpx.post(f"{url}/v1/query", files={"image": ("x.png", xray_png)}, data={"request": "{not json"}, timeout=30)
    assert got.status_code == 400 and "not JSON" in got.json()["detail"]
    got = httpx.post(f"{url}/v1/query", content=b"prompts=x", headers={"content-type": "text/plain"}, timeout=30)
    assert got.status_code == 415
    big = b"\0" * (21 * 1024 * 1024)
    got = _post(url, "/v1/query", big, {"prompts": ["x"]})
    assert got.status_code == 413 and "limit" in got.json()["detail"]
    assert httpx.get(f"{url}/static/..%2F..%2Fapp.py").status_code == 404
    assert httpx.get(f"{url}/v1/samples/nope").status_code == 404


def test_a_token_guards_the_api_and_a_public_bind_needs_one(trained_tiny_dir, xray_png, tmp_path) -> None:
    env = {k: v for k, v in __import__("os").environ.items() if k != "CHEX_API_TOKEN"}
    out = subprocess.run([str(Path(sys.executable).parent / "chex"), "serve", str(trained_tiny_dir), "--host", "0.0.0.0"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and "CHEX_API_TOKEN" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    token = "s3cret-" + hashlib.sha256(b"t").hexdigest()[:12]
    with running_server(trained_tiny_dir, tmp_path / "serve.log", "--max-batch", "1", token=token) as srv:
        assert _post(srv.url, "/v1/query", xray_png, {"prompts": ["x"]}).status_code == 401
        wrong = _post(srv.url, "/v1/query", xray_png, {"prompts": ["x"]}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = _post(srv.url, "/v1/query", xray_png, {"prompts": ["x"]}, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        assert httpx.get(f"{srv.url}/healthz").status_code == 200  # liveness stays open
    assert token not in (tmp_path / "serve.log").read_text()

"""The web page of `chex serve` (pipelines/serving/page/) in a real browser, headless Chromium driven by Selenium,
against a real server (the session's ``served`` fixture): what the page shows must be what the API answers for the
same image and query: sentences (exactly, in order) and boxes (within 2 % of the displayed image)."""
from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
DOCS_SCREENSHOT = ROOT / "docs" / "img" / "serve_page.png"
TOL = 0.02  # of the displayed image's side
WAIT_S = 30

# each drawn answer box as [cx, cy, w, h], normalized to the displayed image (#image), in data-index order
BOXES_JS = """
const s = document.querySelector('#image').getBoundingClientRect();
const norm = (r) => [(r.left + r.width / 2 - s.left) / s.width, (r.top + r.height / 2 - s.top) / s.height,
                     r.width / s.width, r.height / s.height];
const q = document.querySelector('#query-box');
return {answers: [...document.querySelectorAll('#overlay .answer-box')].map(
            b => ({index: +b.dataset.index, box: norm(b.getBoundingClientRect()), absent: b.classList.contains('absent')})),
        query: q ? norm(q.getBoundingClientRect()) : null};
"""
SENTENCES_JS = """
return [...document.querySelectorAll('#sentences li.sentence')].map(
    li => ({index: +li.dataset.index, text: li.querySelector('.text').textContent,
            absent: li.classList.contains('absent')}));
"""


def _chrome_paths() -> tuple[str, str]:
    """Chromium and chromedriver, or a skip that says which is missing (printed too: never a silent skip)."""
    pytest.importorskip("selenium", reason="selenium is not installed: the page test needs it")
    browser = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver") or next((p for p in ("/usr/bin/chromedriver",) if Path(p).exists()), None)
    missing = [name for name, path in (("chromium", browser), ("chromedriver", driver)) if not path]
    if missing:
        reason = f"page test skipped: {' and '.join(missing)} not found on PATH (apt-get install chromium chromium-driver)"
        print(reason)
        pytest.skip(reason)
    return browser, driver


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads):
    browser_path, driver_path = _chrome_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    yield driver
    driver.quit()


@pytest.fixture()
def xray(tmp_path) -> Path:
    """A synthetic 300x260 grayscale 'X-ray': a gradient with a bright ellipse."""
    yy, xx = np.mgrid[0:260, 0:300]
    pixels = (40 + 120 * xx / 300 + 40 * yy / 260).astype(np.uint8)
    image = Image.fromarray(pixels, "L")
    ImageDraw.Draw(image).ellipse((70, 60, 190, 200), fill=220)
    path = tmp_path / "synthetic_xray.png"
    image.save(path)
    return path


# ---- helpers ----------------------------------------------------------------------------------------------------

def _wait(driver, condition, what: str, timeout: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition, message=f"timed out waiting for {what}")


def _idle(driver) -> None:
    """Wait until no request of the page is in flight (app.js keeps body[data-state] busy for a whole action)."""
    _wait(driver, lambda d: d.execute_script("return document.body.dataset.state") == "idle", "the page to be idle")


def _error(driver) -> str:
    return driver.execute_script("const e = document.querySelector('#error'); return e.hidden ? '' : e.textContent;")


def _open_page(driver, served) -> None:
    driver.get(served.url + "/")
    loaded = lambda d: d.find_element("id", "model-info").get_attribute("data-name")  # noqa: E731
    _wait(driver, lambda d: loaded(d) or d.find_element("id", "auth").is_displayed(), "the model info or token input")
    _idle(driver)
    if not loaded(driver) and served.token:  # a guarded server, and no token in this tab yet: the page asks for it
        driver.find_element("id", "token").send_keys(served.token)
        driver.find_element("id", "token-save").click()
        _wait(driver, loaded, "the model info")
        _idle(driver)
    assert loaded(driver), _error(driver)


def _upload(driver, path: Path) -> None:
    driver.find_element("id", "file").send_keys(str(path))
    _idle(driver)


def _ask(driver, prompt: str) -> None:
    box = driver.find_element("id", "prompt")
    box.clear()
    if prompt:
        box.send_keys(prompt)
    driver.find_element("id", "ask").click()
    _idle(driver)


def _api(served, path: str, image: bytes, request: dict, name: str = "image.png") -> httpx.Response:
    headers = {"Authorization": f"Bearer {served.token}"} if served.token else {}
    return httpx.post(served.url + path, files={"image": (name, image, "application/octet-stream")},
                      data={"request": json.dumps(request)}, headers=headers, timeout=60)


def _assert_close(got, want, what: str) -> None:
    assert got is not None and len(got) == 4, f"{what}: no box drawn"
    assert np.allclose(got, want, atol=TOL), f"{what}: drawn at {np.round(got, 4).tolist()}, API box {want}"


def _assert_page_shows(driver, items: list[dict], what: str) -> None:
    """The sentences (exact text, order) and boxes on the page are the API's ``items`` (each with sentence, box)."""
    assert not _error(driver), f"{what}: the page shows an error: {_error(driver)}"
    sentences = driver.execute_script(SENTENCES_JS)
    assert [s["index"] for s in sentences] == list(range(len(items)))
    assert [s["text"] for s in sentences] == [it["sentence"] for it in items], what
    drawn = driver.execute_script(BOXES_JS)["answers"]
    assert [b["index"] for b in drawn] == list(range(len(items))), f"{what}: one box per sentence"
    for item, box in zip(items, drawn):
        _assert_close(box["box"], item["box"], f"{what}, box {box['index']}")


def _drag_box(driver, start: tuple[float, float], end: tuple[float, float]) -> list[float]:
    """Drag the mouse on #image from ``start`` to ``end`` (fractions of its size); the [cx, cy, w, h] intended."""
    from selenium.webdriver.common.action_chains import ActionChains

    stage = driver.find_element("id", "image")
    rect = driver.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", stage)
    width, height = rect
    # Selenium 4 offsets are from the element's centre
    x0, y0 = round(start[0] * width - width / 2), round(start[1] * height - height / 2)
    dx, dy = round((end[0] - start[0]) * width), round((end[1] - start[1]) * height)
    (ActionChains(driver).move_to_element_with_offset(stage, x0, y0).click_and_hold()
     .move_by_offset(dx // 2, dy // 2).move_by_offset(dx - dx // 2, dy - dy // 2).release().perform())
    x_start, y_start = (x0 + width / 2) / width, (y0 + height / 2) / height
    w, h = dx / width, dy / height
    return [x_start + w / 2, y_start + h / 2, w, h]


def _downloaded(folder: Path, name: str) -> Path:
    path = folder / name
    deadline = time.monotonic() + 10
    while not path.exists() or path.stat().st_size == 0 or list(folder.glob("*.crdownload")):
        assert time.monotonic() < deadline, f"no download {name} in {sorted(p.name for p in folder.iterdir())}"
        time.sleep(0.1)
    return path


# ---- tests ------------------------------------------------------------------------------------------------------

def _box_queries(driver, served, image: bytes) -> None:
    """A box drawn with the mouse, no prompt: a box query for that box; then the same box with a prompt."""
    intended = _drag_box(driver, (0.25, 0.3), (0.6, 0.8))
    sent = driver.execute_script("return window.lastRequest")  # still the text query: drawing sends nothing
    assert sent["body"] == {"prompts": ["Pleural effusion"]}
    drawn = driver.execute_script(BOXES_JS)["query"]
    _assert_close(drawn, intended, "the drawn query box")
    _ask(driver, "")
    sent = driver.execute_script("return window.lastRequest")
    assert sent["path"] == "/v1/query" and list(sent["body"]) == ["boxes"], sent
    _assert_close(sent["body"]["boxes"][0], intended, "the box the page sent")
    box_answer = _api(served, "/v1/query", image, sent["body"]).json()
    assert box_answer["results"][0]["query_box"] == sent["body"]["boxes"][0]
    _assert_page_shows(driver, box_answer["results"], "box query")

    _ask(driver, "Right lung")
    sent = driver.execute_script("return window.lastRequest")
    assert sent["body"] == {"box_prompts": [{"box": box_answer["results"][0]["query_box"], "prompt": "Right lung"}]}
    _assert_page_shows(driver, _api(served, "/v1/query", image, sent["body"]).json()["results"], "box + text query")

    driver.find_element("id", "clear-box").click()
    assert driver.execute_script(BOXES_JS)["query"] is None


def _sample_and_screenshot(driver, served, tmp_path) -> None:
    """A sample X-ray from the list asked by text, hovering highlights only its box; then its report, screenshot."""
    # 6. a sample X-ray from the list, asked by text; hovering a sentence highlights its box (and only its box)
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select

    samples = httpx.get(served.url + "/v1/samples", timeout=30).json()["samples"]
    name = "right pleural effusion" if "right pleural effusion" in samples else samples[0]
    Select(driver.find_element("id", "sample")).select_by_value(name)
    _idle(driver)
    sample = httpx.get(f"{served.url}/v1/samples/{name}", timeout=30).content
    assert driver.execute_script("return document.querySelector('#picture').naturalWidth") == Image.open(io.BytesIO(sample)).width
    _ask(driver, "Pleural effusion")
    results = _api(served, "/v1/query", sample, {"prompts": ["Pleural effusion"]}).json()["results"]
    _assert_page_shows(driver, results, "text query on a sample")
    ActionChains(driver).move_to_element(driver.find_element("css selector", 'li.sentence[data-index="0"]')).perform()
    highlighted = driver.execute_script(
        "return [...document.querySelectorAll('.answer-box.highlight')].map(b => +b.dataset.index)")
    assert highlighted == [0]

    # 7. the sample's full report (checked too), its first sentence hovered: the screenshot for docs/serving.md
    driver.find_element("id", "report").click()
    _idle(driver)
    sample_report = _api(served, "/v1/report", sample, {"prompt_set": "report"}).json()["report"]
    _assert_page_shows(driver, sample_report["sentences"], "report on a sample")
    if sample_report["sentences"]:
        ActionChains(driver).move_to_element(driver.find_element("css selector", 'li.sentence[data-index="0"]')).perform()
    driver.save_screenshot(str(tmp_path / "serve_page.png"))
    assert (tmp_path / "serve_page.png").stat().st_size > 10_000
    if os.environ.get("CHEX_UPDATE_SCREENSHOT"):  # the picture in docs/serving.md; a plain run leaves the tree clean
        shutil.copyfile(tmp_path / "serve_page.png", DOCS_SCREENSHOT)


def test_page_answers_match_the_api(browser, served, xray, downloads, tmp_path) -> None:
    driver = browser
    image = xray.read_bytes()

    # 1. the page loads and shows the model that serves
    _open_page(driver, served)
    model = httpx.get(served.url + "/v1/model", timeout=30).json()
    info = driver.find_element("id", "model-info").text
    assert model["name"] in info and model["weights_sha256"][:12] in info, info
    assert not driver.find_element("id", "auth").is_displayed(), "no token is needed: no token input"
    assert not driver.find_element("id", "error").is_displayed()

    # 2. an X-ray from the file picker is displayed at its aspect ratio
    _upload(driver, xray)
    shown = driver.execute_script("const i = document.querySelector('#picture'); const r = "
                                  "document.querySelector('#image').getBoundingClientRect(); "
                                  "return [i.hidden, i.naturalWidth, i.naturalHeight, r.width, r.height];")
    assert shown[:3] == [False, 300, 260], shown
    assert abs(shown[3] / shown[4] - 300 / 260) < 0.02, shown
    assert not driver.find_element("id", "placeholder").is_displayed()

    # 3. a text query: the sentences and boxes the page shows are the API's
    _ask(driver, "Pleural effusion")
    assert driver.execute_script("return window.lastRequest") == {"path": "/v1/query",
                                                                  "body": {"prompts": ["Pleural effusion"]}}
    text_answer = _api(served, "/v1/query", image, {"prompts": ["Pleural effusion"]}).json()
    _assert_page_shows(driver, text_answer["results"], "text query")
    assert text_answer["model"]["name"] in driver.find_element("id", "answer-model").text

    # downloads: the JSON of the last answer, and the annotated picture at the image's size
    driver.find_element("id", "download-json").click()
    saved = json.loads(_downloaded(downloads, "synthetic_xray-chex.json").read_text())
    assert saved["results"] == text_answer["results"]
    driver.find_element("id", "download-png").click()
    with Image.open(_downloaded(downloads, "synthetic_xray-chex.png")) as png:
        assert png.size == (300, 260)

    # 4. mouse-drawn box queries
    _box_queries(driver, served, image)

    # 5. the full report: same sentences, same order, same boxes; statements of absence marked
    driver.find_element("id", "report").click()
    _idle(driver)
    assert driver.execute_script("return window.lastRequest") == {"path": "/v1/report", "body": {"prompt_set": "report"}}
    report = _api(served, "/v1/report", image, {"prompt_set": "report"}).json()["report"]
    _assert_page_shows(driver, report["sentences"], "report")
    shown = driver.execute_script(SENTENCES_JS)
    assert [s["absent"] for s in shown] == [not s["finding"] for s in report["sentences"]]

    # 6-7. a sample and the screenshot
    _sample_and_screenshot(driver, served, tmp_path)


def test_page_shows_the_api_error(browser, served, tmp_path) -> None:
    """A file that is no image: the placeholder stands in for the preview, and asking shows the API's 400 detail."""
    driver = browser
    _open_page(driver, served)
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not an X-ray\n")
    _upload(driver, bogus)
    assert "preview not shown" in driver.find_element("id", "stage-note").text
    _ask(driver, "Pleural effusion")
    answer = _api(served, "/v1/query", bogus.read_bytes(), {"prompts": ["Pleural effusion"]}, name="notes.txt")
    assert answer.status_code == 400
    error = driver.find_element("id", "error")
    assert error.is_displayed() and answer.json()["detail"] in error.text, error.text
    assert driver.execute_script(SENTENCES_JS) == []


def test_page_draws_boxes_on_a_dicom_placeholder(browser, served, tmp_path) -> None:
    """DICOM cannot be shown by a browser: a placeholder of the image's size (from the API's answer) carries the boxes."""
    from tests_support import write_dicom

    driver = browser
    _open_page(driver, served)
    yy, xx = np.mgrid[0:320, 0:200]
    path = tmp_path / "chest.dcm"
    write_dicom(path, (200 * xx + 100 * yy).astype(np.uint16), "MONOCHROME2", 16)
    _upload(driver, path)
    assert driver.find_element("id", "stage-note").text == "DICOM: preview not shown"
    assert driver.find_element("id", "placeholder").is_displayed()
    assert not driver.find_element("id", "picture").is_displayed()

    _ask(driver, "Pleural effusion")
    answer = _api(served, "/v1/query", path.read_bytes(), {"prompts": ["Pleural effusion"]}, name="chest.dcm").json()
    assert answer["image"] == {"width": 200, "height": 320}
    width, height = driver.execute_script("const r = document.querySelector('#image').getBoundingClientRect(); "
                                          "return [r.width, r.height];")
    assert abs(width / height - 200 / 320) < 0.02, (width, height)
    _assert_page_shows(driver, answer["results"], "text query on a DICOM")


# fetch wrapped before app.js runs: a /v1 call without the right bearer token gets the server's 401 (the real server's
# token check is the API tests' business; starting a second server here would cost ~30-60 s); every call is recorded
FAKE_TOKEN_GATE_JS = """
window.__calls = [];
const realFetch = window.fetch.bind(window);
window.fetch = (url, options = {}) => {
  const auth = new Headers(options.headers || {}).get('Authorization');
  window.__calls.push({url: String(url), auth});
  if (String(url).startsWith('/v1/') && auth !== 'Bearer %s')
    return Promise.resolve(new Response(JSON.stringify({detail: 'missing or wrong bearer token'}),
                                        {status: 401, headers: {'content-type': 'application/json'}}));
  return realFetch(url, options);
};
"""


def test_page_asks_for_the_token_on_401(browser, served, xray) -> None:
    """On a 401 the page asks for the token, keeps it in the tab's session storage and sends it as a bearer token on
    every /v1 call from then on."""
    driver = browser
    token = served.token or "page-test-token"
    gate = driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": FAKE_TOKEN_GATE_JS % token})
    try:
        driver.get(served.url + "/")
        driver.execute_script("sessionStorage.clear()")
        driver.refresh()
        _wait(driver, lambda d: d.find_element("id", "auth").is_displayed(), "the token input")
        _idle(driver)
        assert "401: missing or wrong bearer token" in _error(driver)
        driver.find_element("id", "token").send_keys(token)
        driver.find_element("id", "token-save").click()
        _wait(driver, lambda d: d.find_element("id", "model-info").get_attribute("data-name"), "the model info")
        _idle(driver)
        assert not driver.find_element("id", "auth").is_displayed() and not _error(driver)
        assert driver.execute_script("return sessionStorage.getItem('chex-token')") == token
        _upload(driver, xray)
        _ask(driver, "Pleural effusion")
        assert len(driver.execute_script(SENTENCES_JS)) == 1 and not _error(driver)
        calls = driver.execute_script("return window.__calls")
        after = calls[[c["auth"] for c in calls].index(f"Bearer {token}"):]
        assert {c["url"] for c in after} >= {"/v1/model", "/v1/samples", "/v1/query"}
        assert all(c["auth"] == f"Bearer {token}" for c in after), after
    finally:
        driver.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": gate["identifier"]})
        driver.execute_script("sessionStorage.clear()")

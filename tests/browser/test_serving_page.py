"""The serving app's page in Chromium with the network off, as a user meets it: `mlcycle serve`
on a real registry's champion (a tiny CNN on synthetic 8x8 digits of 3 classes).

Each test watches the page: the answer and its bars, the warning for a blank canvas, the error
for a file that is not an image, the preview of an upload, the icon and the links."""

from __future__ import annotations

import json
import urllib.request
import uuid

import numpy as np
import pytest
from PIL import Image

from tasks.core.files import read_split
from tests.browser.conftest import OfflinePage
from tests.integration.helpers import serving_champion

pytestmark = pytest.mark.slow

CLASSES = ("class_0", "class_1", "class_2")
NOT_AN_IMAGE = "digit.txt: not an image PIL can read; expected a PNG or JPEG file"


@pytest.fixture(scope="module")
def served(mlflow_server, prefect_server, tmp_path_factory):
    """A workspace with champion v1 and `mlcycle serve` running on it."""
    # a model of its own: the serving tests register "served" on the same session server
    root = tmp_path_factory.mktemp("serving-page")
    with serving_champion(mlflow_server, prefect_server, root, name="served-page") as served:
        yield served


@pytest.fixture
def page(offline_page: OfflinePage, served) -> OfflinePage:
    """The page, loaded, its model line filled in; ``page.sent`` lists the predict requests."""
    _, url, first = served
    offline_page.sent = []
    offline_page.page.on(
        "request",
        lambda request: "/predict" in request.url and offline_page.sent.append(request.url),
    )
    offline_page.goto(url)
    offline_page.page.wait_for_function(
        "document.getElementById('model').textContent.includes('served-page v')"
    )
    assert f"served-page v{first.version} (@champion)" in offline_page.page.text_content("#model")
    return offline_page


def draw_a_stroke(page: OfflinePage) -> None:
    pad = page.page.locator("#pad").bounding_box()
    page.page.mouse.move(pad["x"] + 140, pad["y"] + 40)
    page.page.mouse.down()
    page.page.mouse.move(pad["x"] + 140, pad["y"] + 240, steps=10)
    page.page.mouse.up()


def predict_drawing(page: OfflinePage) -> str:
    draw_a_stroke(page)
    page.page.click("#predict")
    page.page.wait_for_selector("#bars .bar")
    return page.page.text_content("#answer")


def bar_widths(page: OfflinePage) -> dict[str, float]:
    """Each class's bar as drawn: its rendered width in pixels."""
    return {
        row.get_attribute("data-class"): row.locator(".fill").bounding_box()["width"]
        for row in page.page.locator("#bars .bar").all()
    }


def test_a_drawn_digit_gets_an_answer_and_a_bar_per_class(page, tmp_path):
    answer = predict_drawing(page)
    page.page.screenshot(path=str(tmp_path / "drawn.png"))
    assert answer in CLASSES
    widths = bar_widths(page)
    assert set(widths) == set(CLASSES)
    assert widths[answer] == max(widths.values())  # the longest bar is the answer's
    assert widths[answer] >= 66  # the best of 3 classes has 1/3 or more of the 200-pixel scale
    assert page.page.locator(f'#bars .bar.best[data-class="{answer}"]').count() == 1
    assert "prediction id (for POST /feedback): " in page.page.text_content("#pid")
    assert page.page.text_content("#error") == page.page.text_content("#warning") == ""
    assert page.sent and page.blocked == [] and page.console_errors == []


def test_predict_on_a_blank_canvas_asks_for_a_digit_and_sends_nothing(page, tmp_path):
    page.page.click("#predict")
    warning = page.page.locator("#warning")
    assert warning.is_visible() and warning.text_content() == (
        "Draw a digit first: the canvas is empty."
    )
    page.page.screenshot(path=str(tmp_path / "blank.png"))
    assert page.page.text_content("#answer") == ""
    assert page.page.locator("#bars .bar").count() == 0

    predict_drawing(page)  # drawing clears the warning; then Clear empties the canvas again
    assert page.page.text_content("#warning") == ""
    page.page.click("#clear")
    sent = len(page.sent)
    page.page.click("#predict")
    assert page.page.text_content("#warning").startswith("Draw a digit first")
    assert page.page.text_content("#answer") == ""
    page.page.wait_for_timeout(300)  # a request, had one been sent, would be listed by now
    assert len(page.sent) == sent == 1
    assert page.blocked == [] and page.console_errors == []


def test_a_file_that_is_not_an_image_shows_its_error_and_clears_the_answer(page, tmp_path):
    predict_drawing(page)
    text_file = tmp_path / "digit.txt"
    text_file.write_text("seven\n")
    page.page.set_input_files("#upload", str(text_file))
    page.page.wait_for_function("document.getElementById('error').textContent !== ''")
    page.page.screenshot(path=str(tmp_path / "bad-upload.png"))
    error = page.page.locator("#error")
    assert error.is_visible() and error.text_content() == NOT_AN_IMAGE
    assert page.page.text_content("#answer") == ""  # the drawing's answer is gone
    assert page.page.locator("#bars .bar").count() == 0
    assert page.page.text_content("#pid") == ""
    assert not page.page.locator("#preview").is_visible()  # nothing to show: not an image
    assert "object at 0x" not in page.page.inner_text("body")
    # the browser logs the refused upload (HTTP 422) and nothing else
    assert [e for e in page.console_errors if "422" not in e] == []
    assert page.blocked == []


def test_an_uploaded_image_is_shown_beside_its_answer(page, served, tmp_path):
    workspace, url, _ = served
    test, _ = read_split(workspace.processed, "test")
    digit = tmp_path / "digit.png"
    Image.fromarray(np.kron(test.images[0][..., 0], np.ones((8, 8), dtype=np.uint8))).save(digit)
    predict_drawing(page)
    page.page.set_input_files("#upload", str(digit))
    page.page.wait_for_selector("#bars .bar")
    page.page.wait_for_selector("#preview img", state="visible")
    page.page.screenshot(path=str(tmp_path / "good-upload.png"))

    preview = page.page.locator("#preview img")
    assert preview.evaluate("img => img.complete && img.naturalWidth") == 64
    box = preview.bounding_box()
    assert box["width"] >= 100 and box["height"] >= 100  # large enough to see the digit
    assert page.page.text_content("#preview figcaption") == "uploaded: digit.png"
    assert page.page.evaluate(
        "() => { const p = document.getElementById('pad');"
        " return p.getContext('2d').getImageData(0, 0, p.width, p.height).data"
        ".every((v, i) => i % 4 === 3 || v === 0); }"
    ), "the canvas still shows the earlier drawing beside the upload's answer"
    answer = page.page.text_content("#answer")
    assert answer == upload_answer(url, digit.read_bytes())
    assert set(bar_widths(page)) == set(CLASSES)
    assert page.page.text_content("#error") == ""
    assert page.blocked == [] and page.console_errors == []


def upload_answer(url: str, png: bytes) -> str:
    """What the API answers for the same file, posted as a form upload."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="digit.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{url}/predict/image",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["predictions"][0]["class_name"]


def test_the_page_has_an_icon_and_links_to_the_docs_and_the_metadata(page, served, tmp_path):
    _, url, first = served
    icon_width = page.page.evaluate(
        """() => new Promise(done => {
            const icon = new Image();
            icon.onload = () => done(icon.naturalWidth);
            icon.onerror = () => done(0);
            icon.src = document.querySelector("link[rel~='icon']").href;
        })"""
    )
    assert icon_width > 0, "the favicon did not load as an image"
    assert page.console_errors == []  # a missing favicon is a 404 in the console

    page.page.click("text=Model metadata (/metadata)")
    page.page.wait_for_url(f"{url}/metadata")
    metadata = json.loads(page.page.inner_text("body"))
    assert metadata["model_name"] == "served-page" and metadata["version"] == first.version

    page.page.go_back()
    page.page.click("text=API docs (/docs)")
    page.page.wait_for_url(f"{url}/docs")
    page.page.locator('.opblock-summary-path[data-path="/predict"]').wait_for()
    page.page.screenshot(path=str(tmp_path / "docs.png"))
    assert page.blocked == [] and page.console_errors == []

"""The web page: its JSON API through an HTTP client, and the page itself in headless Chromium
(an upload, the class read off the page, a screenshot)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fixtures_browser import chromium, needs_chromium

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from leafnet.app import Predictor, create_app
from leafnet.config import command_config
from leafnet.predict import predict
from leafnet.runs import load_classifier


@pytest.fixture(scope="module")
def app(tiny_run: Path):
    return create_app(Predictor(load_classifier(tiny_run), torch.device("cpu")), max_upload_mb=1)


def photo(images: Path) -> Path:
    return sorted(images.rglob("*.jpg"))[0]


def test_predict_answers_what_the_predict_command_answers(
    app, tiny_run: Path, tiny_train_images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = photo(tiny_train_images)
    reply = TestClient(app).post("/api/predict", files={"file": (image.name, image.read_bytes())})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    (expected,) = predict(command_config("predict", [f"ckpt={tiny_run}", f"input={image}"]))
    capsys.readouterr()
    assert body["class"] == expected["predicted"]
    assert body["probabilities"].keys() == expected["probabilities"].keys()
    for name, p in expected["probabilities"].items():
        assert body["probabilities"][name] == pytest.approx(p, abs=1e-6)


def test_explain_adds_the_networks_view_and_gradcam(app, tiny_train_images: Path) -> None:
    image = photo(tiny_train_images)
    reply = TestClient(app).post("/api/explain", files={"file": (image.name, image.read_bytes())})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["input"].startswith("data:image/png;base64,")
    assert body["gradcam"].startswith("data:image/png;base64,") and body["gradcam"] != body["input"]


@pytest.mark.parametrize(
    ("name", "data", "status", "says"),
    [
        ("notes.txt", b"not an image at all", 415, "not a readable image"),
        ("big.jpg", b"\xff" * (2**20 + 10), 413, "larger than 1 MB"),
        ("empty.jpg", b"", 400, "empty"),
        ("cut.jpg", None, 415, "cut.jpg"),  # a truncated JPEG
    ],
)
def test_bad_uploads_get_a_4xx_with_one_line(
    app, tiny_train_images: Path, name: str, data: bytes | None, status: int, says: str
) -> None:
    if data is None:
        data = photo(tiny_train_images).read_bytes()[:200]
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("leafnet-upload-*"))
    reply = TestClient(app).post("/api/predict", files={"file": (name, data)})
    assert reply.status_code == status, reply.text
    detail = reply.json()["detail"]
    assert says in detail and "\n" not in detail
    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("leafnet-upload-*")) == before


def test_the_page_is_served(app) -> None:
    reply = TestClient(app).get("/")
    assert reply.status_code == 200 and "Broad_beans" in reply.text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """`app` served by uvicorn on a free local port, in a thread; yields its URL."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def served(app):
    with serving(app) as url:
        yield url


@needs_chromium
def test_a_photo_dropped_on_the_page_shows_its_class(
    served: str, tiny_run: Path, tiny_train_images: Path, tmp_path: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    image = photo(tiny_train_images)
    (expected,) = predict(command_config("predict", [f"ckpt={tiny_run}", f"input={image}"]))
    with sync_api.sync_playwright() as p:
        browser = chromium(p)
        page = browser.new_page(viewport={"width": 900, "height": 600})
        page.goto(served)
        page.set_input_files("#files", str(image))
        page.wait_for_selector(".result .class", timeout=30_000)
        assert page.inner_text(".result .class") == expected["predicted"]
        assert page.locator(".result img").count() == 3
        assert page.locator(".result figcaption").all_inner_texts() == [
            "your photo",
            "as the network saw it",
            "where it looked (Grad-CAM)",
        ]
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert (tmp_path / "page.png").stat().st_size > 10_000


HOSTILE = '<img src=x onerror="window.pwned=1">'


@pytest.fixture
def hostile_served(tiny_run: Path):
    """The page of a model whose first class folder was named like markup."""
    predictor = Predictor(load_classifier(tiny_run), torch.device("cpu"))
    predictor.class_names = [HOSTILE, *predictor.class_names[1:]]
    with serving(create_app(predictor)) as url:
        yield url


@needs_chromium
def test_class_names_are_shown_as_text_never_run(
    hostile_served: str, tiny_train_images: Path, tmp_path: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(photo(tiny_train_images).read_bytes()[:300])
    with sync_api.sync_playwright() as p:
        browser = chromium(p)
        page = browser.new_page()
        page.goto(hostile_served)
        assert HOSTILE in page.inner_text(".sub")
        page.set_input_files("#files", [str(photo(tiny_train_images)), str(broken)])
        page.wait_for_selector(".result table", timeout=30_000)
        page.wait_for_selector(".result .error", timeout=30_000)
        cells = page.locator(".result td").all_inner_texts()
        error = page.inner_text(".result .error")
        pwned = page.evaluate("window.pwned")
        browser.close()
    assert pwned is None
    assert HOSTILE in cells  # the name itself, as text
    assert error.startswith("broken.jpg: not a readable image") and "/tmp" not in error


def test_an_upload_over_the_limit_is_refused_as_it_arrives(app) -> None:
    """2 MB against a 1 MB page: refused by its size before the multipart parser reads it."""
    reply = TestClient(app).post("/api/predict", files={"file": ("big.jpg", b"\xff" * (2 * 2**20))})
    assert reply.status_code == 413
    assert reply.json()["detail"] == "the upload is larger than the page accepts (max_upload_mb)"


def test_a_slow_upload_does_not_hold_up_the_page(served: str) -> None:
    """A client trickling an upload in: the page still answers at once."""
    import httpx

    host, port = served.removeprefix("http://").split(":")
    boundary = "leafnetboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="slow.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    size = 900_000
    stop = threading.Event()

    def trickle() -> None:
        with socket.create_connection((host, int(port))) as conn:
            conn.sendall(
                (
                    f"POST /api/predict HTTP/1.1\r\nHost: {host}\r\n"
                    f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                    f"Content-Length: {len(head) + size}\r\n\r\n"
                ).encode()
                + head
            )
            sent = 0
            while sent < size and not stop.is_set():
                conn.sendall(b"\xff" * 10_000)
                sent += 10_000
                time.sleep(0.05)

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    try:
        time.sleep(0.5)  # the upload is under way
        started = time.perf_counter()
        reply = httpx.get(served + "/", timeout=10)
        waited = time.perf_counter() - started
    finally:
        stop.set()
        sender.join(timeout=10)
    assert reply.status_code == 200 and waited < 1.0, waited


def test_a_slow_decode_does_not_hold_up_the_page(
    tiny_run: Path, tiny_train_images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A photo that takes seconds to decode (a huge PNG, say) is worked on in a thread: the page
    still answers at once, and photos beyond the busy limit get 503 rather than a queue."""
    import httpx

    predictor = Predictor(load_classifier(tiny_run), torch.device("cpu"))
    real_view = predictor.view

    def slow_view(data: bytes, filename: str) -> torch.Tensor:
        time.sleep(3)
        return real_view(data, filename)

    monkeypatch.setattr(predictor, "view", slow_view)
    image = photo(tiny_train_images)
    replies: list[int] = []

    def upload(url: str) -> None:
        files = {"file": (image.name, image.read_bytes())}
        replies.append(httpx.post(url + "/api/predict", files=files, timeout=30).status_code)

    with serving(create_app(predictor, busy_limit=1)) as url:
        first = threading.Thread(target=upload, args=(url,))
        first.start()
        time.sleep(0.5)  # the first photo is being decoded
        started = time.perf_counter()
        page = httpx.get(url + "/", timeout=10)
        waited = time.perf_counter() - started
        upload(url)  # a second photo while the first holds the only slot
        first.join(timeout=30)
    assert page.status_code == 200 and waited < 1.0, waited
    assert sorted(replies) == [200, 503]

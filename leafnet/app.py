"""`python -m leafnet.app ckpt=<run dir | ckpt> [port=8000] [host=127.0.0.1]`: a web page for predictions.

A local page (FastAPI, `pip install 'leafnet[app]'`) where a user drops one or many leaf photos
and sees, for each, the predicted class, every class's probability, the image as the network saw
it (the checkpoint's preprocessing: letterboxed by default) and the Grad-CAM overlay of where it
looked. Endpoints:

- `GET /`: the page;
- `POST /api/predict` (multipart field `file`): `{"class": ..., "probabilities": {class: p}}`;
- `POST /api/explain` (same field): the same plus `input` and `gradcam`, PNG data URLs.

An upload that is not an image, or is larger than `max_upload_mb`, gets a 4xx with a one-line
`detail`, never a 500 and never a server path. A request body over the limit is refused as it
arrives (`BodyLimit`), before anything is written to disk. Decoding and the network run in worker
threads, at most `busy_limit` at a time (the rest get 503 at once), so a slow or large upload
never stalls the page or other requests. Uploads are decoded from a temporary folder that is
removed at once; nothing else is written.
"""

import base64
import html
import io
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from PIL import Image

from leafnet.config import command_config
from leafnet.data.images import BadImage, load_for_model, to_display, to_float
from leafnet.errors import LeafnetError, cli_errors
from leafnet.inference import load_model
from leafnet.module import LeafClassifier


def _png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _overlay(view: torch.Tensor, cam: torch.Tensor) -> Image.Image:
    """The Grad-CAM heatmap [S, S] in [0, 1] over the network's view (uint8 [3, S, S])."""
    from matplotlib import colormaps

    heat = colormaps["jet"](cam.numpy())[..., :3] * 255
    base = view.permute(1, 2, 0).float().numpy()
    return Image.fromarray((0.55 * base + 0.45 * heat).clip(0, 255).astype("uint8"))


class Predictor:
    """The checkpoint's classifier behind a lock: one request uses the network at a time (Grad-CAM
    hooks into it)."""

    def __init__(self, classifier: LeafClassifier, device: torch.device) -> None:
        self.classifier, self.device = classifier, device
        self.class_names = list(classifier.hparams.class_names)
        self._lock = threading.Lock()

    def view(self, data: bytes, filename: str) -> torch.Tensor:
        """The upload as the network sees it ([3, S, S]); raises BadImage."""
        suffix = Path(filename or "upload").suffix.lower()[:10] or ".img"
        with tempfile.TemporaryDirectory(prefix="leafnet-upload-") as folder:
            path = Path(folder) / f"upload{suffix}"
            path.write_bytes(data)
            return load_for_model(path, self.classifier.prep)

    def predict(self, view: torch.Tensor) -> dict[str, Any]:
        with self._lock, torch.no_grad():
            probs = self.classifier.predict_proba(view.unsqueeze(0).to(self.device))[0].cpu()
        best = int(probs.argmax())
        return {
            "class": self.class_names[best],
            "probabilities": {n: float(p) for n, p in zip(self.class_names, probs, strict=True)},
        }

    def explain(self, view: torch.Tensor) -> dict[str, Any]:
        from leafnet.figures import gradcam

        result = self.predict(view)
        x = to_float(view.to(self.device), self.classifier.prep)
        with self._lock:
            cam, _, _ = gradcam(self.classifier.net, x)
        shown = to_display(view, self.classifier.prep)  # uint8, whatever the resize mode
        return {
            **result,
            "input": _png_data_url(Image.fromarray(shown.permute(1, 2, 0).numpy())),
            "gradcam": _png_data_url(_overlay(shown, cam)),
        }


class _TooLarge(Exception):
    """Raised inside the app when a request body passes the limit."""


class BodyLimit:
    """ASGI middleware: a request body larger than `limit` bytes is answered 413 as soon as it
    says so (Content-Length) or as soon as that many bytes have arrived, before the multipart
    parser spools it to disk."""

    ENVELOPE = 64 * 1024  # the multipart envelope around the file: boundaries, part headers

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit + self.ENVELOPE

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length", b"").decode()
        if length.isdigit() and int(length) > self.limit:
            await self._refuse(send)
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(send)

    @staticmethod
    async def _refuse(send: Any) -> None:
        body = b'{"detail":"the upload is larger than the page accepts (max_upload_mb)"}'
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def create_app(predictor: Predictor, max_upload_mb: float = 20.0, busy_limit: int = 2) -> Any:
    """The FastAPI application: the page and the two JSON endpoints."""
    # Imported here (the `app` extra); this module has no `from __future__ import annotations`
    # so that FastAPI can read the endpoints' UploadFile annotations.
    from fastapi import FastAPI, File, HTTPException, UploadFile
    from fastapi.responses import HTMLResponse

    limit = int(max_upload_mb * 2**20)
    app = FastAPI(title="leafnet", description="Leaf-disease classification of uploaded photos")
    app.add_middleware(BodyLimit, limit=limit)
    busy = threading.BoundedSemaphore(busy_limit)

    def read_view(file: UploadFile) -> torch.Tensor:
        data = file.file.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(413, f"{file.filename}: larger than {max_upload_mb:g} MB")
        if not data:
            raise HTTPException(400, f"{file.filename}: the upload is empty")
        try:
            return predictor.view(data, file.filename or "upload")
        except BadImage as err:
            raise HTTPException(
                415, f"{file.filename}: not a readable image ({err.reason})"
            ) from None

    def work(file: UploadFile, explain: bool) -> dict[str, Any]:
        # Plain functions: FastAPI runs them in worker threads, off the event loop.
        if not busy.acquire(blocking=False):
            raise HTTPException(503, "the model is busy with other photos; try again in a moment")
        try:
            view = read_view(file)
            return predictor.explain(view) if explain else predictor.predict(view)
        except LeafnetError as err:  # Grad-CAM without captum
            raise HTTPException(501, str(err)) from None
        finally:
            busy.release()

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.replace("{{classes}}", html.escape(", ".join(predictor.class_names)))

    @app.post("/api/predict")
    def api_predict(file: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008
        return work(file, explain=False)

    @app.post("/api/explain")
    def api_explain(file: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008
        return work(file, explain=True)

    return app


def serve(cfg: DictConfig) -> None:
    """Load the checkpoint and serve the page until Ctrl-C."""
    try:
        import uvicorn
    except ImportError:
        raise LeafnetError("the web page needs its extra: pip install 'leafnet[app]'") from None
    classifier, device = load_model(cfg)
    app = create_app(Predictor(classifier, device), float(cfg.max_upload_mb))
    print(f"leafnet: serving {cfg.ckpt} on http://{cfg.host}:{cfg.port} (Ctrl-C stops)")
    uvicorn.run(app, host=str(cfg.host), port=int(cfg.port), log_level="warning")


@cli_errors
def main(argv: Sequence[str] | None = None) -> None:
    serve(command_config("app", sys.argv[1:] if argv is None else argv, required=("ckpt",)))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>leafnet</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E%3Cpath d='M2 14C2 6 8 2 14 2c0 6-4 12-12 12z' fill='%236b8f5a'/%3E%3C/svg%3E">
<style>
 body { font-family: system-ui, sans-serif; margin: 2rem; color: #1d2a1d; background: #f6f8f4; }
 h1 { margin: 0 0 .2rem; } .sub { color: #5b6b5b; margin: 0 0 1rem; }
 #drop { display: block; border: 2px dashed #6b8f5a; border-radius: 10px; padding: 1.5rem; text-align: center;
         background: #fff; cursor: pointer; } #drop.over { background: #eef6e8; }
 .result { display: flex; gap: 1rem; align-items: flex-start; background: #fff; margin-top: 1rem;
           padding: 1rem; border-radius: 10px; box-shadow: 0 1px 3px #0002; }
 .result img { width: 224px; height: 224px; border-radius: 6px; object-fit: contain; background: #eee; }
 figure { margin: 0; } figcaption { font-size: .85rem; color: #5b6b5b; text-align: center; }
 .nothumb { width: 224px; height: 60px; color: #5b6b5b; text-align: center; padding-top: 1rem; }
 .class { font-size: 1.2rem; font-weight: 600; } .error { color: #a00; }
 table { border-collapse: collapse; margin-top: .5rem; } td { padding: .1rem .6rem .1rem 0; }
 .bar { background: #6b8f5a; height: .6rem; border-radius: 3px; }
</style></head>
<body>
<h1>leafnet</h1>
<p class="sub">Drop leaf photos to classify them. Classes: {{classes}}.</p>
<label id="drop">Drop photos here, or click to choose
 <input id="files" type="file" accept="image/*" multiple hidden></label>
<div id="results"></div>
<script>
// Every value from the server or the file goes in as text (textContent, img.src), never as HTML:
// class names are folder names, and a folder may be named like markup.
const results = document.getElementById("results");
function el(tag, props = {}, children = []) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}
function figure(src, caption) {
  const img = el("img", { alt: caption });
  img.onerror = () => img.replaceWith(el("div", { className: "nothumb", textContent: "no preview" }));
  if (typeof src === "string" && (src.startsWith("data:image/") || src.startsWith("blob:"))) img.src = src;
  return el("figure", {}, [img, el("figcaption", { textContent: caption })]);
}
function detailText(detail, status) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => (d && d.msg) || JSON.stringify(d)).join("; ");
  return `the server answered ${status}`;
}
async function classify(file) {
  const thumb = URL.createObjectURL(file);
  const status = el("div", { className: "status", textContent: "working..." });
  const card = el("div", { className: "result" }, [
    figure(thumb, "your photo"), el("div", {}, [el("b", { textContent: file.name }), status]),
  ]);
  results.prepend(card);
  const fail = (message) => {
    status.replaceWith(el("div", { className: "error", textContent: message }));
  };
  const body = new FormData();
  body.append("file", file);
  let reply, data;
  try {
    // The server works on a few photos at a time and answers 503 beyond that: wait and retry.
    for (let tries = 0; ; tries++) {
      reply = await fetch("/api/explain", { method: "POST", body });
      if (reply.status !== 503 || tries >= 60) break;
      status.textContent = "waiting for the model...";
      await new Promise((done) => setTimeout(done, 1000));
    }
  } catch (err) {
    return fail(`${file.name}: the server could not be reached (${err.message})`);
  }
  try {
    data = await reply.json();
  } catch (err) {
    return fail(`${file.name}: the server answered ${reply.status} ${reply.statusText} without a result`);
  }
  if (!reply.ok) return fail(detailText(data && data.detail, reply.status));
  const table = el("table", {}, Object.entries(data.probabilities).map(([name, p]) => {
    const bar = el("div", { className: "bar" });
    bar.style.width = `${Math.round(120 * Number(p))}px`;
    return el("tr", {}, [
      el("td", { textContent: name }),
      el("td", { textContent: `${(100 * Number(p)).toFixed(1)}%` }),
      el("td", {}, [bar]),
    ]);
  }));
  card.replaceChildren(
    figure(thumb, "your photo"),
    figure(data.input, "as the network saw it"),
    figure(data.gradcam, "where it looked (Grad-CAM)"),
    el("div", {}, [el("b", { textContent: file.name }), el("div", { className: "class", textContent: data["class"] }), table]),
  );
}
// One photo after another: each card shows as soon as its photo is done.
async function classifyAll(files) {
  for (const file of files) await classify(file);
}
const input = document.getElementById("files");
input.addEventListener("change", () => classifyAll([...input.files]));
const drop = document.getElementById("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  classifyAll([...e.dataTransfer.files]);
});
</script>
</body></html>
"""


if __name__ == "__main__":
    main()

"""The browser's measuring code (static/js/phone/): its JavaScript tests, its fixtures, the
onnxruntime-web files it is served, and a real run in headless Chromium.

- ``node --test tests/js`` (statistics, batcher, hidden tabs, request files, the protocol side)
  runs here, so ``make test`` runs it; skipped only where node is not installed.
- The statistics fixtures are regenerated from devices.measure.stats and must equal the committed
  ones (tests/js/make_stats_fixtures.py).
- Only the files the WebAssembly backend loads are served (links into node_modules), collected by
  ``collectstatic`` as in production and sent by WhiteNoise with the MIME types browsers need
  (``application/wasm`` lets Chromium compile while it downloads).
- The overhead probe the worker writes as protobuf is a valid ONNX model that copies its input.
- Chromium runs the timing worker on a conv layer exported by torch (with its overhead probe) and
  on a network from a request's zip, on a plain and on a cross-origin-isolated page (threads > 1
  load the same files).
"""
from __future__ import annotations

import base64
import importlib.util
import io
import json
import re
import shutil
import socketserver
import subprocess
import threading
import zipfile
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.test import override_settings

REPO = Path(__file__).resolve().parents[1]
JS_TESTS = REPO / "tests" / "js"
ORT_DIST = REPO / "node_modules" / "onnxruntime-web" / "dist"
ORT_SERVED = REPO / "static" / "vendor" / "onnxruntime-web"
#: What the WebAssembly build loads: its ES module, which imports the Emscripten glue (also the
#: script of each thread), which fetches the binary. The rest of dist (webgl, webgpu, jsep, jspi,
#: asyncify, bundles, maps: ~125 MB) is not served.
ORT_FILES = {"ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"}
WORKER = "js/phone/measure-worker.mjs"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
TIMEOUT_MS = 180_000
# A short protocol: the figures are not asserted, only their sanity.
PROTOCOL = {"warmup": 3, "rounds": 3, "runs_per_round": 10, "max_spread": 0.5, "max_retries": 1}


# --------------------------------------------------------------------------- node tests, fixtures


def test_it_passes_the_javascript_tests():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the JavaScript tests (tests/js) cannot run")
    result = subprocess.run([node, "--test", "tests/js/"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert re.search(r"^# pass [1-9]", result.stdout, re.MULTILINE), result.stdout[-2000:]


def _fixture_writer():
    spec = importlib.util.spec_from_file_location("make_stats_fixtures", JS_TESTS / "make_stats_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_it_keeps_the_statistics_fixtures_current(tmp_path):
    writer = _fixture_writer()
    written = writer.write(tmp_path)
    committed = JS_TESTS / "fixtures" / writer.FILE_NAME
    assert written.read_bytes() == committed.read_bytes(), (
        "tests/js/fixtures/stats.json is stale: run .venv/bin/python tests/js/make_stats_fixtures.py")
    cases = json.loads(committed.read_text())["stats"]
    assert {"one sample", "all tied", "outliers in a long right tail"} <= {case["name"] for case in cases}


@pytest.mark.parametrize("shape", [[1, 16, 32, 32], [1, 3, 224, 224], [4, 1000]])
def test_the_overhead_probe_is_an_onnx_model_that_copies_its_input(shape, tmp_path):
    import numpy as np
    import onnx
    import onnxruntime

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = ("import { identityModel } from './static/js/phone/onnx-probe.mjs';"
              f"process.stdout.write(Buffer.from(identityModel({json.dumps(shape)})).toString('base64'));")
    result = subprocess.run([node, "--input-type=module", "-e", script], cwd=REPO, capture_output=True, text=True,
                            timeout=60, check=True)
    data = base64.b64decode(result.stdout)
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Identity"]
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    assert np.array_equal(session.run(None, {"x": x})[0], x)


# --------------------------------------------------------------------------- served files


def test_it_pins_the_browser_libraries_exactly():
    pinned = json.loads((REPO / "package.json").read_text())["dependencies"]
    for name in ("onnxruntime-web", "fflate"):
        assert re.fullmatch(r"\d+\.\d+\.\d+", pinned[name]), f"{name} is not pinned exactly: {pinned[name]}"
        installed = json.loads((REPO / "node_modules" / name / "package.json").read_text())["version"]
        assert installed == pinned[name], f"node_modules has {name} {installed}, package.json pins {pinned[name]}"


def test_it_serves_only_the_files_the_webassembly_backend_loads():
    assert {path.name for path in ORT_SERVED.iterdir()} == ORT_FILES
    for name in ORT_FILES:
        link = ORT_SERVED / name
        assert link.is_symlink() and link.resolve() == (ORT_DIST / name).resolve(), f"{name} is not a link into dist"
        assert Path(finders.find(f"vendor/onnxruntime-web/{name}")).resolve() == (ORT_DIST / name).resolve()
    served = sum((ORT_SERVED / name).stat().st_size for name in ORT_FILES)
    whole = sum(path.stat().st_size for path in ORT_DIST.iterdir())
    assert served < 16 * 2**20 < 100 * 2**20 < whole
    # The chain the worker follows: it imports the module, which names the glue, which names the binary.
    assert 'from "../../vendor/onnxruntime-web/ort.wasm.min.mjs"' in (REPO / "static" / WORKER).read_text()
    assert "ort-wasm-simd-threaded.mjs" in (ORT_DIST / "ort.wasm.min.mjs").read_text()
    assert "ort-wasm-simd-threaded.wasm" in (ORT_DIST / "ort-wasm-simd-threaded.mjs").read_text()
    assert Path(finders.find("vendor/fflate/browser.js")).resolve() == \
        (REPO / "node_modules" / "fflate" / "esm" / "browser.js").resolve()


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> Path:
    """``collectstatic`` into a fresh folder, as ``make run`` and production do."""
    root = tmp_path_factory.mktemp("static-root")
    with override_settings(STATIC_ROOT=root):
        call_command("collectstatic", "--noinput", "--verbosity", "0")
    return root


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


@pytest.fixture(scope="module")
def static_server(collected, tmp_path_factory):
    """WhiteNoise (what the app serves static files with) over the collected files, plus a folder
    of test pages at /pages/; ``isolated`` pages get the phone page's headers of cross-origin
    isolation, and static files the app's own (so a worker script without them fails the test)."""
    from whitenoise import WhiteNoise

    from django.conf import settings

    from webapp.lib.isolation import ISOLATION_HEADERS

    pages = tmp_path_factory.mktemp("pages")

    def add_headers(headers, path, url) -> None:
        if url.startswith("/static/"):  # what the app's WhiteNoise adds (its settings' function)
            settings.WHITENOISE_ADD_HEADERS_FUNCTION(headers, path, url)
        elif "/isolated/" in url:  # what the phone page's view adds
            for name, value in ISOLATION_HEADERS.items():
                headers[name] = value

    def not_found(environ, start_response):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]

    app = WhiteNoise(not_found, root=str(collected), prefix="static/", add_headers_function=add_headers,
                     autorefresh=True)
    app.add_files(str(pages), prefix="pages/")
    server = make_server("127.0.0.1", 0, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", pages
    finally:
        server.shutdown()
        server.server_close()


def test_collectstatic_keeps_the_files_and_whitenoise_sends_their_types(collected, static_server):
    import urllib.request

    for name in ORT_FILES:
        assert (collected / "vendor" / "onnxruntime-web" / name).read_bytes() == (ORT_DIST / name).read_bytes()
    url, _ = static_server
    expected = {"vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm": "application/wasm",
                "vendor/onnxruntime-web/ort-wasm-simd-threaded.mjs": "text/javascript",
                "vendor/onnxruntime-web/ort.wasm.min.mjs": "text/javascript",
                "vendor/fflate/browser.js": "text/javascript",
                WORKER: "text/javascript"}
    for path, media_type in expected.items():
        with urllib.request.urlopen(urllib.request.Request(f"{url}/static/{path}", method="HEAD"), timeout=30) as answer:
            assert answer.status == 200
            assert answer.headers["Content-Type"].split(";")[0] == media_type, path
            assert answer.headers["Cross-Origin-Resource-Policy"] == "same-origin", path
            # Workers of a cross-origin-isolated page load only scripts that carry the policy.
            if media_type == "text/javascript":
                assert answer.headers["Cross-Origin-Embedder-Policy"] == "require-corp", path


# --------------------------------------------------------------------------- Chromium


def _onnx(module, shape) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.onnx.export(module.eval(), torch.randn(*shape), buffer, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])
    return buffer.getvalue()


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    """A conv layer and a small network."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    shape = (1, 16, 32, 32)
    return {
        "conv.onnx": _onnx(nn.Conv2d(16, 32, 3, padding=1), shape),
        "net.onnx": _onnx(nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, stride=2)),
                          shape),
    }


PAGE = """<!doctype html><meta charset="utf-8"><title>timing worker</title>
<script type="module">
const worker = new Worker("/static/js/phone/measure-worker.mjs", {type: "module"});
const ask = (message, answer) => new Promise((resolve, reject) => {
  const listen = ({data}) => {
    if (data.id !== message.id && data.type !== "ready") return;
    worker.removeEventListener("message", listen);
    data.type === answer ? resolve(data) : reject(new Error(data.message));
  };
  worker.addEventListener("message", listen);
  worker.postMessage(message);
});
const bytes = async (name) => new Uint8Array(await (await fetch(name)).arrayBuffer());
window.measure = async (protocol) => {
  const ready = await ask({type: "init", threads: 2}, "ready");
  const shape = [1, 16, 32, 32];
  const layers = await ask({type: "time", id: 1, protocol, samples: true, probe: true,
    models: [{index: 0, label: "conv", bytes: await bytes("conv.onnx"), input_shape: shape}]}, "timed");
  const zip = await (await fetch("request.zip")).arrayBuffer();
  const opened = await ask({type: "open", id: 2, request: 42, zip}, "opened");
  const networks = await ask({type: "time-zip", id: 3, request: 42, part: "networks", protocol}, "timed");
  return {ready, layers, opened, networks, isolated: self.crossOriginIsolated, cores: navigator.hardwareConcurrency};
};
</script>"""


def _request_zip(models: dict[str, bytes]) -> bytes:
    manifest = {"request": 42, "layers": [{"index": 5, "file": "conv.onnx", "input_shape": [1, 16, 32, 32]}],
                "networks": [{"index": 0, "file": "net.onnx", "input_shape": [1, 16, 32, 32], "label": "net"}]}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
        for name in ("conv.onnx", "net.onnx"):
            archive.writestr(name, models[name])
    return buffer.getvalue()


def _assert_sane(result: dict, resolution_ms: float) -> None:
    stats = result["stats"]
    assert stats["n"] == PROTOCOL["rounds"] * result["batches_per_round"]
    assert 0 < stats["min_ms"] <= stats["p10_ms"] <= stats["median_ms"] <= stats["p90_ms"]
    assert stats["min_ms"] <= stats["mean_ms"] and stats["std_ms"] >= 0
    assert result["batches_per_round"] >= 2 and result["calls_per_batch"] >= 1
    # Every kept batch lasted at least 100 x the timer's resolution.
    assert result["shortest_batch_ms"] >= 100 * resolution_ms


@pytest.mark.slow
@pytest.mark.parametrize("isolated", [False, True], ids=["plain", "cross-origin-isolated"])
def test_it_times_onnx_models_in_a_chromium_worker(static_server, models, isolated):
    from playwright.sync_api import sync_playwright

    url, pages = static_server
    folder = pages / ("isolated" if isolated else "plain")
    folder.mkdir(exist_ok=True)
    (folder / "index.html").write_text(PAGE)
    for name, data in models.items():
        (folder / name).write_bytes(data)
    (folder / "request.zip").write_bytes(_request_zip(models))
    fetched: dict[str, tuple[int, str]] = {}
    problems: list[str] = []

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 390, "height": 844})
            context.set_default_timeout(TIMEOUT_MS)
            context.on("response", lambda r: fetched.__setitem__(r.url.split("/static/", 1)[-1],
                                                                  (r.status, r.headers.get("content-type", ""))))
            page = context.new_page()
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.goto(f"{url}/pages/{folder.name}/index.html")
            out = page.evaluate("(protocol) => window.measure(protocol)", PROTOCOL)
        finally:
            browser.close()

    assert not problems, problems
    missing = {path: answer for path, answer in fetched.items() if answer[0] >= 400 and "favicon" not in path}
    assert not missing, missing
    ready = out["ready"]
    assert out["isolated"] is isolated
    assert ready["ort_version"] == json.loads((REPO / "package.json").read_text())["dependencies"]["onnxruntime-web"]
    assert ready["backend"] == "wasm" and ready["cross_origin_isolated"] is isolated
    assert ready["threads"] == (min(2, out["cores"]) if isolated else 1)
    assert 0 < ready["resolution_ms"] <= 1
    layers = out["layers"]
    assert layers["resolution_ms"] == ready["resolution_ms"] and layers["factor"] == 100
    [conv] = layers["results"]
    _assert_sane(conv, ready["resolution_ms"])
    probe = layers["probes"]["[1,16,32,32]"]  # the overhead probe of the conv's input shape
    assert 0 < probe["min_ms"] == conv["overhead_ms"]
    assert conv["overhead_share"] == pytest.approx(probe["min_ms"] / conv["stats"]["min_ms"])
    assert conv["drowns"] is (conv["overhead_share"] > 0.5)
    assert 1 <= len(conv["samples_ms"]) <= conv["stats"]["n"]
    assert out["opened"]["layers"] == [5] and out["opened"]["networks"] == ["net"]
    [net] = out["networks"]["results"]
    assert net["label"] == "net"
    _assert_sane(net, ready["resolution_ms"])
    # Every onnxruntime-web file the page asked for is one we serve, answered with its type.
    ort = {path.rsplit("/", 1)[-1]: answer for path, answer in fetched.items()
           if path.startswith("vendor/onnxruntime-web/")}
    assert set(ort) <= ORT_FILES and "ort-wasm-simd-threaded.wasm" in ort, fetched
    assert all(status == 200 for status, _ in ort.values()), ort
    assert ort["ort-wasm-simd-threaded.wasm"][1] == "application/wasm"
    print(f"\nChromium ({'isolated' if isolated else 'plain'}): timer {ready['resolution_ms']} ms, "
          f"conv min {conv['stats']['min_ms']:.4f} ms ({conv['calls_per_batch']} calls a batch), "
          f"probe min {probe['min_ms']:.4f} ms, net min {net['stats']['min_ms']:.4f} ms")

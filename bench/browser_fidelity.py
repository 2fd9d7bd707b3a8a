"""How well a phone's browser table predicts whole networks: onnxruntime-web in headless Chromium.

A phone measures its look-up table in its own browser (static/js/phone/: the timing worker, its
batcher, an overhead probe per input shape), where the clock is coarse and every call crosses from
JavaScript into WebAssembly. This benchmark runs that code unchanged in headless Chromium on this
machine, on random prunings of MobileNetV1-0.5 at 32 px (bench/lut_fidelity.py's prunings, each
with its one-step pair), and reports per origin (127.0.0.1, a secure context; a made-up host name,
an http page that is not one). The page is served with the phone page's headers, so on the secure
origin it is cross-origin isolated as the phone page is (a WebAssembly thread per core, a 5 µs
clock); on plain http it gets one thread and a 100 µs clock:

- the table: every layer signature the networks need plus the engine's call-overhead entry, in a
  request zip as the server builds it, timed by the phone page's own batching (batches of 16
  layers, each with the overhead probes of its input shapes) with the engine's protocol;
- raw and calibrated error of the table's sum (``LatencyTableModel.raw_ms``, the engine's estimate)
  against every network timed whole in the same browser (two interleaved passes); calibration fitted
  on other prunings only (2-fold and leave-one-out, lut_fidelity's ``fidelity``); the same for a
  sum corrected by each entry's own probe, and for MACs;
- the whole-network measurement's own spread and pass-to-pass difference;
- overhead: the share of entries that drown in it (the worker's flag: the probe of their input
  shape is more than half their time), the share faster than one tick of the clock, the timer
  resolution each origin gets;
- cost: table entries per minute in the browser, next to the Python measurer (``LocalMeasurer``
  with ONNX Runtime, the agent's and the server's), whose own fidelity on the same prunings is
  measured in the same run for comparison.

Measured on this machine's CPU (the Python measurer on one thread, the browser on the threads its
origin gives it); nothing here is a pass/fail test.

Usage: python bench/browser_fidelity.py [--prunings 24] [--passes 2] [--seed 0] [--out FILE]
       python bench/browser_fidelity.py --smoke     (minutes: checks the code, no figure means anything)
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import socketserver
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Mapping, Sequence
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np
import torch
from playwright.sync_api import sync_playwright
from whitenoise import WhiteNoise

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adaptation.netadapt.lut import MemoryLatencyTable  # noqa: E402
from adaptation.netadapt.resources import CALL_OVERHEAD_SIGNATURE, LatencyTableModel  # noqa: E402
from bench.lut_fidelity import (BLOCK, CHANNEL_STEP, NETWORK_PROTOCOL, TABLE_PROTOCOL, build_networks,  # noqa: E402
                                fidelity, fold_calibrations, load_average, mape, measure_case,
                                steps_from_block_multiple, summarise)
from bench.tradeoff import commit, machine  # noqa: E402
from devices.measure.builders import model_to_onnx, signature_input_shape, signature_onnx  # noqa: E402
from devices.measure.local import device_facts  # noqa: E402
from devices.measure.signature import LayerSignature  # noqa: E402
from devices.measure.stats import TimingStats  # noqa: E402
from webapp.lib.isolation import ISOLATION_HEADERS, add_static_headers  # noqa: E402

MODEL = ("mobilenet_v1", 0.5)
SIZE = 32
CASE = 1  # lut_fidelity's case number of (MobileNetV1, 32 px): the same prunings for a seed
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
#: A made-up host name (RFC 6761 reserves .test), mapped to 127.0.0.1: an http origin that is not
#: a secure context, as a phone gets on a LAN address without https.
PLAIN_HOST = "phone.test"
REQUEST = 1
#: The worker's threshold (batcher.mjs drownsInOverhead): the probe is more than this share.
DROWN_SHARE = 0.5
SMOKE_PROTOCOL = replace(TABLE_PROTOCOL, warmup=2, rounds=2, runs_per_round=5, max_retries=0)
SMOKE_NETWORKS = replace(NETWORK_PROTOCOL, warmup=2, rounds=2, runs_per_round=5)

# The phone page's way through a request (agent-session.mjs PhoneSession.serve), without the
# websocket: open the zip once, time its layers in the page's batches with the overhead probes,
# then the networks. Progress goes to the console.
PAGE = f"""<!doctype html><meta charset="utf-8"><title>browser fidelity</title>
<script type="module">
import {{ layerBatches }} from "/static/js/phone/agent-session.mjs";
const worker = new Worker("/static/js/phone/measure-worker.mjs", {{type: "module"}});
let nextId = 1;
const ask = (message, answer) => new Promise((resolve, reject) => {{
  const id = nextId++;
  const listen = ({{data}}) => {{
    if (data.id !== id && data.type !== "ready") return;
    worker.removeEventListener("message", listen);
    data.type === answer ? resolve(data) : reject(new Error(data.message));
  }};
  worker.addEventListener("message", listen);
  worker.postMessage({{...message, id}});
}});
window.start = async (zipUrl) => {{
  const ready = await ask({{type: "init", threads: navigator.hardwareConcurrency || 1}}, "ready");
  const zip = await (await fetch(zipUrl)).arrayBuffer();
  const opened = await ask({{type: "open", request: {REQUEST}, zip}}, "opened");
  return {{ready, layers: opened.layers, networks: opened.networks, secure_context: self.isSecureContext,
           cross_origin_isolated: self.crossOriginIsolated, user_agent: navigator.userAgent,
           cores: navigator.hardwareConcurrency}};
}};
window.timeTable = async (indices, protocol) => {{
  const results = [];
  for (const batch of layerBatches(indices)) {{
    const timed = await ask({{type: "time-zip", request: {REQUEST}, part: "layers", indices: batch, protocol,
                              probe: true}}, "timed");
    results.push(...timed.results);
    console.log(`table ${{results.length}}/${{indices.length}}`);
  }}
  return results;
}};
window.timeNetworks = (protocol) => ask({{type: "time-zip", request: {REQUEST}, part: "networks", protocol}}, "timed");
</script>"""


# ----------------------------------------------------------------------------- pure helpers

def request_zip(signatures: Sequence[LayerSignature], networks_onnx: Sequence[bytes],
                input_shape: Sequence[int], request: int = REQUEST) -> bytes:
    """A request's files as the server hands them to an agent (devices/agent_files.py
    request_archive, without its database row): ``manifest.json``, ``layers/<i>.onnx`` (the same
    one-layer graphs every table holds) and ``networks/<i>.onnx``."""
    manifest = {"request": request, "runtime": "onnxruntime-web", "threads": 1, "runtime_version": "",
                "layers": [], "networks": []}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for index, signature in enumerate(signatures):
            name = f"layers/{index}.onnx"
            archive.writestr(name, signature_onnx(signature))
            manifest["layers"].append({"index": index, "file": name, "key": signature.key(),
                                       "input_shape": list(signature_input_shape(signature))})
        for index, data in enumerate(networks_onnx):
            name = f"networks/{index}.onnx"
            archive.writestr(name, data)
            manifest["networks"].append({"index": index, "file": name, "label": str(index),
                                         "input_shape": list(input_shape)})
        archive.writestr("manifest.json", json.dumps(manifest))
    return buffer.getvalue()


def probe_corrected_ms(signatures: Sequence[LayerSignature], min_ms: Mapping[LayerSignature, float],
                       probe_ms: Mapping[LayerSignature, float]) -> float:
    """The call-overhead entry once plus each layer's entry less its own input shape's probe
    (never below zero): ``LatencyTableModel.raw_ms`` with a per-shape overhead instead of one."""
    return min_ms[CALL_OVERHEAD_SIGNATURE] + sum(max(min_ms[s] - probe_ms[s], 0.0) for s in signatures)


def overhead_figures(results: Sequence[Mapping], resolution_ms: float) -> dict:
    """Of the layer entries (the call-overhead entry left out): the share that drowns in per-call
    overhead (its probe is more than ``DROWN_SHARE`` of its minimum), the share whose minimum is
    under one tick of the clock (a single call could not be timed at all: only batching measures
    them), and the quartiles of the overhead share."""
    shares = np.array([r["overhead_share"] for r in results], dtype=float)
    minima = np.array([r["stats"]["min_ms"] for r in results], dtype=float)
    return {"entries": int(len(results)), "drown_share": float(np.mean(shares > DROWN_SHARE)),
            "worker_drowns_share": float(np.mean([bool(r["drowns"]) for r in results])),
            "under_one_tick_share": float(np.mean(minima < resolution_ms)),
            "overhead_share_quartiles": [float(q) for q in np.percentile(shares, [25, 50, 75])],
            "entry_min_ms_quartiles": [float(q) for q in np.percentile(minima, [25, 50, 75])],
            "probe_min_ms_range": [float(min(r["overhead_ms"] for r in results)),
                                   float(max(r["overhead_ms"] for r in results))]}


def per_minute(count: int, seconds: float) -> float:
    return 60.0 * count / seconds if seconds > 0 else float("inf")


def loo_rows(estimate: np.ndarray, measured: np.ndarray) -> list[dict]:
    """Per pruning (the even networks): raw estimate, the leave-one-out calibrated prediction and
    its relative error."""
    raw, lat = estimate[0::2], measured[0::2]
    calibrations = fold_calibrations(raw, lat, len(lat))
    predicted = [cal(r) for cal, r in zip(calibrations, raw)]
    return [{"raw_ms": float(r), "calibrated_ms": float(p), "error": float((p - m) / m)}
            for r, p, m in zip(raw, predicted, lat)]


# ----------------------------------------------------------------------------- serving, browser

class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


def isolating_headers(headers, path: str, url: str) -> None:
    """The app's headers: static files as ``WHITENOISE_ADD_HEADERS_FUNCTION`` sends them, and the
    page with the phone page's isolation headers (which count in a secure context only)."""
    add_static_headers(headers, path, url)
    if "/pages/" in url:
        for name, value in ISOLATION_HEADERS.items():  # wsgiref's Headers has no update()
            headers[name] = value


def serve(pages: Path) -> tuple[WSGIServer, int]:
    """WhiteNoise (what the app serves static files with, and their MIME types) over static/ and
    ``pages`` at /pages/, on 127.0.0.1, with the phone page's headers: on the secure origin the
    page is cross-origin isolated (a thread per core, a fine clock), as the phone page is."""
    def not_found(environ, start_response):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]

    app = WhiteNoise(not_found, root=str(ROOT / "static"), prefix="static/", autorefresh=True,
                     add_headers_function=isolating_headers)
    app.add_files(str(pages), prefix="pages/")
    server = make_server("127.0.0.1", 0, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def _progress(text: str, total: int) -> None:
    """Prints the page's "table N/total" now and then."""
    done = text.removeprefix("table ").split("/")[0]
    if text.startswith("table ") and done.isdigit() and (int(done) % 128 == 0 or int(done) == total):
        print(f"    {text}", flush=True)


def measure_in_browser(browser, base: str, layer_count: int, table_protocol: dict, network_protocol: dict,
                       passes: int) -> dict:
    """One origin: the table in the page's batches, then the networks whole in ``passes`` passes."""
    problems: list[str] = []
    context = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        page = context.new_page()
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("console", lambda message: _progress(message.text, layer_count))
        page.goto(f"{base}/pages/index.html")
        page.wait_for_function("typeof window.timeNetworks === 'function'")
        started = page.evaluate("(url) => window.start(url)", f"{base}/pages/request.zip")
        if started["layers"] != list(range(layer_count)):
            raise RuntimeError(f"the page opened layers {started['layers'][:5]}..., not 0..{layer_count - 1}")
        tick = time.perf_counter()
        table = page.evaluate("([indices, protocol]) => window.timeTable(indices, protocol)",
                              [started["layers"], table_protocol])
        table_s = time.perf_counter() - tick
        tick = time.perf_counter()
        timed = [page.evaluate("(protocol) => window.timeNetworks(protocol)", network_protocol)
                 for _ in range(passes)]
        networks_s = time.perf_counter() - tick
    finally:
        context.close()
    if problems:
        raise RuntimeError(f"the page failed: {problems}")
    return {"started": started, "table": table, "table_seconds": table_s, "networks": timed,
            "networks_seconds": networks_s}


# ----------------------------------------------------------------------------- figures

def browser_row(networks: list[dict], needed: list[LayerSignature], measured: dict, origin: str) -> dict:
    """Fidelity, overhead and cost figures of one origin's measurements."""
    by_index = {r["index"]: r for r in measured["table"]}
    stats = {sig: TimingStats.from_dict(by_index[i]["stats"]) for i, sig in enumerate(needed)}
    table = MemoryLatencyTable({"runtime": "onnxruntime-web", "threads": 1})
    table.add(stats)
    engine = LatencyTableModel(table)
    min_ms = {sig: s.min_ms for sig, s in stats.items()}
    probe_ms = {sig: by_index[i]["overhead_ms"] for i, sig in enumerate(needed)}
    per_pass = np.array([[r["stats"]["min_ms"] for r in sorted(p["results"], key=lambda r: r["index"])]
                         for p in measured["networks"]])
    lat_all = per_pass.min(axis=0)
    raw = np.array([engine.raw_ms(net["signatures"]) for net in networks])
    probed = np.array([probe_corrected_ms(net["signatures"], min_ms, probe_ms) for net in networks])
    plain = np.array([sum(min_ms[s] for s in net["signatures"]) for net in networks])
    macs = np.array([float(net["macs"]) for net in networks])
    from_block = steps_from_block_multiple(networks)
    resolution = measured["started"]["ready"]["resolution_ms"]
    layers = [by_index[i] for i, sig in enumerate(needed) if sig != CALL_OVERHEAD_SIGNATURE]
    lat = lat_all[0::2]
    row = {
        "runtime": "onnxruntime-web", "origin": origin,
        "secure_context": measured["started"]["secure_context"],
        "cross_origin_isolated": measured["started"]["cross_origin_isolated"],
        "threads": measured["started"]["ready"]["threads"], "timer_resolution_ms": resolution,
        "onnxruntime_web": measured["started"]["ready"]["ort_version"],
        "user_agent": measured["started"]["user_agent"],
        "prunings": int(len(lat)), "latency_min_ms": float(lat.min()), "latency_max_ms": float(lat.max()),
        **fidelity(raw, lat_all, {f"{BLOCK}k": from_block, f"{BLOCK}k+{CHANNEL_STEP}": ~from_block}),
        "probe_corrected": fidelity(probed, lat_all),
        "macs": fidelity(macs, lat_all),
        "plain_sum_mape": mape(plain[0::2], lat),
        "delta_measured_median": float(np.median(np.abs(lat_all[0::2] - lat_all[1::2]) / lat)),
        "delta_measured_positive": float(np.mean(lat_all[0::2] - lat_all[1::2] > 0)),
        "network_spread_median": float(np.median([
            (r["stats"]["p90_ms"] - r["stats"]["p10_ms"]) / r["stats"]["median_ms"]
            for p in measured["networks"] for r in p["results"]])),
        "overhead_entry_ms": min_ms[CALL_OVERHEAD_SIGNATURE],
        "overhead": overhead_figures(layers, resolution),
        "calls_per_batch_quartiles": [float(q) for q in np.percentile(
            [r["calls_per_batch"] for r in measured["table"]], [25, 50, 75])],
        "entries": len(needed), "table_seconds": measured["table_seconds"],
        "entries_per_minute": per_minute(len(needed), measured["table_seconds"]),
        "networks_seconds": measured["networks_seconds"],
    }
    if len(per_pass) > 1:
        row["pass_to_pass_latency"] = float(np.mean(np.abs(per_pass[0] - per_pass[1]) / lat_all))
    cal = loo_rows(raw, lat_all)
    cal_probe = loo_rows(probed, lat_all)
    row["per_pruning"] = [{"network": 2 * k, "measured_ms": float(lat[k]),
                           "passes_ms": [float(v) for v in per_pass[:, 2 * k]],
                           "plain_sum_ms": float(plain[2 * k]), **cal[k],
                           "probe_corrected_ms": cal_probe[k]["raw_ms"],
                           "probe_corrected_error": cal_probe[k]["error"]} for k in range(len(lat))]
    row["table"] = {sig.key(): [round(by_index[i]["stats"]["min_ms"], 5), round(by_index[i]["stats"]["median_ms"], 5),
                                round(by_index[i]["overhead_ms"], 5), by_index[i]["calls_per_batch"]]
                    for i, sig in enumerate(needed)}
    return row


def python_row(networks: list[dict], result: dict) -> dict:
    """lut_fidelity's figures of the Python measurer on the same networks, plus its cost."""
    summary = summarise(networks, result)
    per_pass = np.array([[s["min_ms"] for s in stats] for stats in result["passes"]])
    lat_all = per_pass.min(axis=0)
    cal = loo_rows(np.array(result["raw_ms"]), lat_all)
    return {"runtime": "onnxruntime", "origin": "python", **summary,
            "overhead_entry_ms": result["overhead_ms"], "entries": result["entries"],
            "table_seconds": result["table_seconds"],
            "entries_per_minute": per_minute(result["entries"], result["table_seconds"]),
            "networks_seconds": result["networks_seconds"],
            "per_pruning": [{"network": 2 * k, "measured_ms": float(lat_all[2 * k]),
                             "passes_ms": [float(v) for v in per_pass[:, 2 * k]], **cal[k]}
                            for k in range(len(cal))]}


def print_report(report: dict) -> None:
    rows = report["rows"]
    print("\nwhole networks, MobileNetV1-0.5 at 32 px (MAPE over prunings; cal: affine calibration fitted on other "
          "prunings;\nprobe: entries corrected by their own shape's probe; rep: pass-to-pass difference; spread: "
          "(p90-p10)/median of a network's samples)")
    print(f"{'runtime':<16}{'origin':<8}{'ms (min-max)':>15}{'raw':>7}{'r':>7}{'cal 2f':>8}{'cal LOO':>8}"
          f"{'worst':>7}{'probe':>7}{'MACs':>7}{'rep':>6}{'spread':>7}")
    for r in rows:
        probe = f"{r['probe_corrected']['calibrated_mape_loo']:.1%}" if "probe_corrected" in r else "-"
        print(f"{r['runtime']:<16}{r['origin']:<8}{r['latency_min_ms']:>7.3f}-{r['latency_max_ms']:<7.3f}"
              f"{r['raw_mape']:>7.1%}{r['pearson'] or float('nan'):>7.3f}{r['calibrated_mape_2fold']:>8.1%}"
              f"{r['calibrated_mape_loo']:>8.1%}{r['calibrated_max_error_loo']:>7.1%}{probe:>7}"
              f"{r['macs']['calibrated_mape_loo']:>7.1%}{r.get('pass_to_pass_latency', float('nan')):>6.1%}"
              f"{r['network_spread_median']:>7.1%}")
    print("\none-step deltas (step: measured saving / latency; err: median |estimated - measured| / latency; "
          "sign: share right)")
    print(f"{'runtime':<16}{'origin':<8}{'step':>7}{'err':>7}{'sign':>6}")
    for r in rows:
        print(f"{r['runtime']:<16}{r['origin']:<8}{r.get('delta_measured_median', float('nan')):>7.2%}"
              f"{r['delta_error_median']:>7.2%}{r['delta_sign_agreement']:>6.0%}")
    print("\noverhead and clock (drown: probe > 50% of the entry; < tick: entry min under one timer tick; "
          "share: probe / entry, median)")
    print(f"{'origin':<8}{'secure':>7}{'timer ms':>9}{'call ms':>9}{'probe ms':>16}{'drown':>7}{'< tick':>7}"
          f"{'share':>7}{'calls/batch':>12}")
    for r in rows:
        if r["runtime"] != "onnxruntime-web":
            continue
        o = r["overhead"]
        print(f"{r['origin']:<8}{str(r['secure_context']):>7}{r['timer_resolution_ms']:>9.3f}"
              f"{r['overhead_entry_ms']:>9.4f}{o['probe_min_ms_range'][0]:>8.4f}-{o['probe_min_ms_range'][1]:<7.4f}"
              f"{o['drown_share']:>7.0%}{o['under_one_tick_share']:>7.0%}{o['overhead_share_quartiles'][1]:>7.0%}"
              f"{r['calls_per_batch_quartiles'][1]:>12.0f}")
    print("\nwhole-network latency in the browser over the Python measurer's (median over prunings): "
          + ", ".join(f"{r['origin']} {r['latency_over_python_median']:.1f}x" for r in rows[1:]))
    print("\ncost")
    print(f"{'runtime':<16}{'origin':<8}{'entries':>8}{'table s':>9}{'entries/min':>12}{'networks s':>11}")
    for r in rows:
        print(f"{r['runtime']:<16}{r['origin']:<8}{r['entries']:>8}{r['table_seconds']:>9.1f}"
              f"{r['entries_per_minute']:>12.0f}{r['networks_seconds']:>11.1f}")
    s = report["summary"]
    print(f"\nsecure origin: calibrated error (LOO) {s['secure_calibrated_mape_loo']:.1%}, target "
          f"{s['target_calibrated_mape']:.0%}: {'met' if s['target_met'] else 'NOT met'}; "
          f"{report['minutes']:.1f} min in all; load average {report['load_start']} at start, "
          f"{report['load_end']} at end")


# ----------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prunings", type=int, default=24, help="random prunings (each with its one-step pair)")
    parser.add_argument("--passes", type=int, default=2, help="whole-network passes per runtime")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="4 prunings, short protocols: checks the code only")
    parser.add_argument("--out", default=None, help="results file (default bench/results/browser_fidelity.json, "
                        "bench/out/browser_fidelity_smoke.json with --smoke)")
    args = parser.parse_args()
    table_protocol, network_protocol = TABLE_PROTOCOL, NETWORK_PROTOCOL
    if args.smoke:
        args.prunings = min(args.prunings, 4)
        table_protocol, network_protocol = SMOKE_PROTOCOL, SMOKE_NETWORKS
    if args.prunings < 3:
        parser.error("--prunings must be at least 3 (a calibration needs other prunings to fit on)")
    out = Path(args.out) if args.out else (ROOT / "bench" / ("out/browser_fidelity_smoke.json" if args.smoke
                                                             else "results/browser_fidelity.json"))
    torch.set_num_threads(1)
    started, load_start = time.perf_counter(), load_average()
    print(f"load average at start: {load_start}", flush=True)
    analysis, x, networks, mismatched = build_networks(*MODEL, SIZE, args.prunings, args.seed, CASE)
    needed = LatencyTableModel(MemoryLatencyTable()).missing(sig for net in networks for sig in net["signatures"])
    rows = []

    load = load_average()
    result = measure_case(networks, x, "onnxruntime", args.passes, np.random.default_rng([args.seed, CASE, 0]))
    rows.append({**python_row(networks, result), "load_before": load})
    print(f"  python onnxruntime: {result['entries']} entries in {result['table_seconds']:.1f} s, "
          f"calibrated {rows[-1]['calibrated_mape_loo']:.1%} (LOO)", flush=True)

    # The browser's protocol message: the engine's protocol less the thread count (its own field).
    browser_table = {k: v for k, v in asdict(table_protocol).items() if k != "threads"}
    browser_networks = {k: v for k, v in asdict(network_protocol).items() if k != "threads"}
    with tempfile.TemporaryDirectory() as folder:
        pages = Path(folder)
        (pages / "index.html").write_text(PAGE)
        (pages / "request.zip").write_bytes(request_zip(
            needed, [model_to_onnx(net["model"], x) for net in networks], list(x.shape)))
        server, port = serve(pages)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, headless=True,
                    args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {PLAIN_HOST} 127.0.0.1"])
                chromium_version = browser.version
                try:
                    for origin, host in (("secure", "127.0.0.1"), ("plain", PLAIN_HOST)):
                        load = load_average()
                        measured = measure_in_browser(browser, f"http://{host}:{port}", len(needed),
                                                      browser_table, browser_networks, args.passes)
                        rows.append({**browser_row(networks, needed, measured, origin), "load_before": load})
                        r = rows[-1]
                        print(f"  browser {origin}: timer {r['timer_resolution_ms']} ms, {r['entries']} entries "
                              f"in {r['table_seconds']:.0f} s, networks {r['networks_seconds']:.0f} s; raw "
                              f"{r['raw_mape']:.1%}, calibrated {r['calibrated_mape_loo']:.1%} (LOO)", flush=True)
                finally:
                    browser.close()
        finally:
            server.shutdown()
            server.server_close()

    secure = next(r for r in rows if r["origin"] == "secure")
    python_ms = np.array([p["measured_ms"] for p in rows[0]["per_pruning"]])
    for r in rows[1:]:
        r["latency_over_python_median"] = float(np.median(
            np.array([p["measured_ms"] for p in r["per_pruning"]]) / python_ms))
    target = 0.05
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit(), "minutes": (time.perf_counter() - started) / 60,
        "load_start": load_start, "load_end": load_average(), "smoke": args.smoke, "seed": args.seed,
        "model": f"{MODEL[0]}-{MODEL[1]:g}", "size": SIZE, "prunings": args.prunings, "passes": args.passes,
        "groups": len(analysis.groups), "signature_mismatches": mismatched,
        "device": {**device_facts(), "vector": machine()["vector"]},
        "chromium": chromium_version, "chromium_args": CHROMIUM_ARGS,
        "table_protocol": asdict(table_protocol), "network_protocol": asdict(network_protocol),
        "networks": [{"config": net["config"], "step_group": net["step_group"], "macs": net["macs"]}
                     for net in networks],
        "summary": {
            "target_calibrated_mape": target,
            "secure_calibrated_mape_loo": secure["calibrated_mape_loo"], "target_met": secure["calibrated_mape_loo"] <= target,
            **{f"{r['origin']}_{key}": r[key] for r in rows
               for key in ("raw_mape", "calibrated_mape_loo", "calibrated_max_error_loo", "entries_per_minute")},
            **{f"{r['origin']}_timer_resolution_ms": r["timer_resolution_ms"] for r in rows if "timer_resolution_ms" in r},
            **{f"{r['origin']}_drown_share": r["overhead"]["drown_share"] for r in rows if "overhead" in r},
            **{f"{r['origin']}_latency_over_python": r["latency_over_python_median"] for r in rows[1:]},
        },
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print_report(report)
    print(f"\nresults: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()

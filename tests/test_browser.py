"""The job page in a real browser: Chromium (Playwright) signs up, uploads (the model's page shows
the check's progress, then its verdict), starts a job, watches it.

Same servers as tests/test_e2e.py (tests/e2e_support.py). Every wait is on the page's state
(Playwright's ``wait_for_function`` and ``expect``, each with a timeout). The worker starts once
the job page's websocket has its snapshot of the queued job, so the chart must fill from live
events: at least two iteration points are seen while the status badge still says running, then
the final point once it says finished. The finished page is saved as docs/job-page.png.
"""
from __future__ import annotations

import json

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect, sync_playwright

from devices.models import SYSTEM_DEVICE_NAME
from tests.e2e_support import JOB_DEADLINE_S, PRODUCTION, REPO

pytestmark = [pytest.mark.slow, pytest.mark.services]
if PRODUCTION:
    pytestmark.append(pytest.mark.django_db(transaction=True))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
SCREENSHOT = REPO / "docs" / "job-page.png"
PASSWORD = "a long enough test password"
# The settings of tests/test_e2e.py's job (see there), typed into the form.
# A budget that two 6% steps cannot reach and a cap of two iterations: the job always runs exactly
# two (on a busy machine one step used to overshoot an 85% budget and end the job after one point).
JOB = {"budget": 50, "initial_reduction": 0.06, "decay": 0.9, "short_term_steps": 5, "long_term_epochs": 0.3,
       "holdout_size": 0.15, "max_iterations": 2}
TIMEOUT_MS = 60_000
POLL_MS = 200  # page polls that leave the CPU to the job's latency measurements (not every frame)
JOB_TIMEOUT_MS = JOB_DEADLINE_S * 1000

# The chart's state as job.js keeps it: datasets 0 (iterations, the original at key -1) and 3 (final).
CHART_STATE = """() => {
  const chart = Chart.getChart(document.getElementById("tradeoff-chart"));
  const badge = document.getElementById("job-status");
  const status = Array.from(badge.classList).find((c) => c.startsWith("status-")).slice(7);
  return {status: status, label: badge.textContent.trim(),
          iterations: chart.data.datasets[0].data.filter((p) => p.key >= 0).length,
          final: chart.data.datasets[3].data.map((p) => p.name),
          tables: document.querySelectorAll("#proposals tbody[data-iteration]").length,
          phases: Array.from(document.querySelectorAll("#proposals tr.phases .phase-text"), (e) => e.textContent)};
}"""
ENDED = "['finished', 'failed', 'cancelled'].includes(state.status)"


def is_snapshot(payload) -> bool:
    return isinstance(payload, str) and json.loads(payload).get("type") == "snapshot"


def wait_for_state(page, condition: str, app, what: str, timeout_ms: int = JOB_TIMEOUT_MS) -> dict:
    """The chart state once ``condition`` (JS over ``state``) holds, or the job has ended."""
    try:
        handle = page.wait_for_function(f"() => {{ const state = ({CHART_STATE})(); "
                                        f"return ({condition}) || {ENDED} ? state : false; }}",
                                        polling=POLL_MS, timeout=timeout_ms)
    except PlaywrightError as error:
        pytest.fail(f"waiting for {what}: {error}\n{app.logs_text()}")
    return handle.json_value()  # the state that met the condition, as it was then


def test_it_shows_chart_points_while_the_job_runs(live_app, digits_cnn_state_dict, tmp_path):
    app = live_app
    spec, weights = digits_cnn_state_dict
    weights_file = tmp_path / "digits-cnn.pt"
    weights_file.write_bytes(weights)
    problems: list[str] = []
    snapshots: list[dict] = []  # the job page's snapshot messages
    sockets: list[str] = []

    def watch_socket(socket) -> None:  # runs before any frame of that socket is dispatched
        sockets.append(socket.url)
        socket.on("framereceived", lambda payload: snapshots.append(json.loads(payload))
                  if is_snapshot(payload) else None)

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        page = context.pages[0] if context.pages else context.new_page()
        try:
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text} ({m.location})")
                    if m.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("websocket", watch_socket)

            # Sign up.
            page.goto(app.url("/accounts/signup/"))
            page.fill("#id_username", "frank")
            page.fill("#id_password1", PASSWORD)
            page.fill("#id_password2", PASSWORD)
            page.click("button[type=submit]:has-text('Create account')")
            expect(page.locator("header .user-menu summary")).to_have_text("frank")

            # Upload the model (upload.js sends it and shows the model's page in place): the page
            # says "Checking" and polls the model's status (check.js) until the checking worker's
            # verdict, then shows it.
            polled = []
            page.on("request", lambda request: polled.append(request.url) if request.url.endswith("/status/") else None)
            page.goto(app.url("/models/upload/"))
            page.fill("#id_name", "digits cnn")
            page.select_option("#id_arch", spec.arch)
            page.fill("#id_width", str(spec.width))
            page.fill("#id_num_classes", str(spec.num_classes))
            page.select_option("#id_in_channels", str(spec.in_channels))
            page.fill("#id_resolution", str(spec.resolution))
            page.set_input_files("#id_file", str(weights_file))
            page.click("button[type=submit]:has-text('Upload and check')")
            expect(page.locator("main h1")).to_contain_text("digits cnn")
            expect(page.locator("main h1 .status")).to_have_text("Ready", timeout=JOB_TIMEOUT_MS)
            assert polled and all(url.startswith(app.url("/models/")) for url in polled), polled

            # Start a job with the form: the job page opens, its socket gets the queued job's snapshot.
            page.goto(app.url("/jobs/new/"))
            page.select_option("#id_model", label="digits cnn")
            page.select_option("#id_dataset", label="scikit-learn digits")
            page.select_option("#id_device", label=SYSTEM_DEVICE_NAME)
            page.select_option("#id_metric", "latency")
            page.select_option("#id_budget_mode", "percent")
            for name, value in JOB.items():
                page.fill(f"#id_{name}", str(value))
            with page.expect_websocket() as opened:
                page.click("button[type=submit]:has-text('Start')")
            expect(page.locator("#job-status")).to_have_text("Queued")
            job_id = int(page.url.rstrip("/").rsplit("/", 1)[-1])
            if not snapshots:
                opened.value.wait_for_event("framereceived", is_snapshot)
            assert snapshots[0]["job"] == {**snapshots[0]["job"], "id": job_id, "status": "queued"}

            app.start_worker()
            first = wait_for_state(page, "state.status === 'running' && state.iterations >= 1", app,
                                   "the first iteration point")
            assert first["status"] == "running", f"the job ended before a point was seen: {first}"
            running = wait_for_state(page, "state.status === 'running' && state.iterations >= 2", app,
                                     "a second iteration point")
            assert running["status"] == "running", f"the job ended with fewer than 2 live points: {running}"
            assert running["label"] == "Running"
            final = wait_for_state(page, "false", app, "the job to end")
            assert final["status"] == "finished", f"{final}\n{page.inner_text('#job-log')}"
            assert final["label"] == "Finished"
            assert final["final"] == ["final"]
            assert final["iterations"] >= running["iterations"] >= first["iterations"] >= 1
            # Each live iteration says where its time went (job.js draws it from the event).
            assert len(final["phases"]) == final["iterations"], final["phases"]
            assert all("waiting for proposals" in line for line in final["phases"]), final["phases"]
            assert final["tables"] == final["iterations"]  # one proposals block a point
            job = page.request.get(app.url(f"/api/v1/jobs/{job_id}")).json()
            assert job["status"] == "finished" and len(job["iterations"]) == final["iterations"] + 1
            ratio = job["result"]["measured_ratio"]  # the log's finish line says what decided the budget
            assert f"measured side by side: {100 * ratio:.1f}% of the original" in page.inner_text("#job-log")
            assert sockets == [f"{app.ws_url}/ws/jobs/{job_id}/"], "the page lost its connection and reconnected"

            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
        except BaseException:  # what the page showed goes with the failure (captured output)
            try:
                print(f"page {page.url}:\n{page.inner_text('main', timeout=5000)}")
            except PlaywrightError:
                pass
            print(f"browser problems: {problems}\n{app.logs_text()}")
            raise
        finally:
            context.close()
    assert problems == []

/* Job page: the live trade-off chart, the proposals table and the log, fed by one websocket.
 *
 * The server sends a snapshot (every stored event) and then one message per new event; each
 * event carries the job's sequence number, and anything at or below the last one seen is a
 * repeat (a reconnect's snapshot, or the same event by two paths) and is dropped.
 */
(function () {
  "use strict";

  const page = JSON.parse(document.getElementById("job-data").textContent);
  const statusBadge = document.getElementById("job-status");
  const waitingLine = document.getElementById("job-waiting");
  const cancelForm = document.getElementById("cancel-form");
  const errorLine = document.getElementById("job-error");
  const measureLine = document.getElementById("measure-progress");
  const connectionLine = document.getElementById("connection");
  const logList = document.getElementById("job-log");
  const proposals = document.getElementById("proposals");
  const proposalsEmpty = document.getElementById("proposals-empty");
  const downloadsStale = document.getElementById("downloads-stale");

  const STATUS_LABELS = {queued: "Queued", running: "Running", waiting: "Waiting",
                         finished: "Finished", failed: "Failed", cancelled: "Cancelled"};
  const latencyAxis = page.metric === "latency";
  const xUnit = latencyAxis ? "ms" : page.unit;

  let lastSeq = 0;
  let status = page.status;
  let socket = null;
  let retryMs = 1000;
  let snapshotSeen = false;

  // ------------------------------------------------------------------ reading payloads

  const isNumber = (v) => typeof v === "number" && isFinite(v);
  // A whole-network measurement: a number of ms, or timing statistics (the minimum is the estimator).
  function measuredMs(p) {
    if (isNumber(p.measured_ms)) return p.measured_ms;
    const m = p.measured;
    if (isNumber(m)) return m;
    if (m && typeof m === "object") return isNumber(m.min_ms) ? m.min_ms : (isNumber(m.median_ms) ? m.median_ms : null);
    return null;
  }
  // x of a point: the measured latency when there is one, else the estimate.
  function xOf(p) {
    const measured = latencyAxis ? measuredMs(p) : null;
    return isNumber(measured) ? measured : p.resource;
  }
  const pct = (accuracy) => (isNumber(accuracy) ? 100 * accuracy : null);
  function fmtX(x) {
    if (!isNumber(x)) return "—";
    return xUnit === "ms" ? x.toFixed(3) + " ms" : Math.round(x).toLocaleString() + " " + xUnit;
  }

  // ------------------------------------------------------------------ the chart

  function series(label, color, extra) {
    return Object.assign({label: label, data: [], borderColor: color, backgroundColor: color,
                          pointRadius: 4, pointHoverRadius: 6}, extra || {});
  }
  const ITERATIONS = 0, MEASURED = 1, ORIGINAL = 2, FINAL = 3, UNIFORM = 4, FINETUNED = 5;
  const chart = new Chart(document.getElementById("tradeoff-chart"), {
    type: "scatter",
    data: {datasets: [
      series("NetAdapt iterations (holdout)", "#0969da", {showLine: true}),
      series("measured", "#8250df", {pointStyle: "triangle", pointRadius: 5}),
      series("original", "#1f2328", {pointStyle: "rectRot", pointRadius: 7}),
      series("final (validation)", "#1a7f37", {pointStyle: "star", pointRadius: 9, borderWidth: 2}),
      series("uniform baseline (validation)", "#9a6700", {showLine: true, borderDash: [6, 4]}),
      series("fine-tuned points (validation)", "#cf222e", {pointStyle: "crossRot", pointRadius: 8, borderWidth: 2}),
    ]},
    options: {
      animation: false,
      maintainAspectRatio: false,
      scales: {
        x: {title: {display: true, text: latencyAxis ? "Latency on the device (ms)" : page.unit}},
        y: {title: {display: true, text: "Accuracy (%)"}},
      },
      plugins: {
        legend: {labels: {filter: (item, data) => data.datasets[item.datasetIndex].data.length > 0}},
        tooltip: {callbacks: {label: (ctx) => {
          const p = ctx.raw;
          return `${p.name}: ${fmtX(p.x)} (${p.xKind}), ${p.y.toFixed(2)}% ${p.accuracy} accuracy`;
        }}},
      },
    },
  });

  // Keep one point per key (an iteration number, "holdout"...), sorted along x for the lines.
  function putPoint(index, key, point) {
    const data = chart.data.datasets[index].data;
    const at = data.findIndex((p) => p.key === key);
    point.key = key;
    if (at >= 0) data[at] = point; else data.push(point);
    if (index === ITERATIONS || index === UNIFORM) data.sort((a, b) => a.order - b.order);
  }
  function point(name, x, y, accuracy, xKind, order) {
    return {name: name, x: x, y: y, accuracy: accuracy, xKind: xKind, order: order || 0};
  }

  // ------------------------------------------------------------------ the page's other parts

  function log(message, level, created) {
    const item = document.createElement("li");
    item.className = level || "info";
    const time = created ? new Date(created).toLocaleTimeString() + " " : "";
    item.textContent = time + message;
    const atBottom = logList.scrollTop + logList.clientHeight >= logList.scrollHeight - 4;
    logList.appendChild(item);
    if (atBottom) logList.scrollTop = logList.scrollHeight;
  }

  function showStatus(newStatus, error, waitingFor) {
    // A flash about the job ("Job #7 is queued.") is stale once its status moves on.
    if (newStatus !== page.status) document.querySelectorAll(".messages").forEach((m) => { m.hidden = true; });
    status = newStatus;
    waitingLine.hidden = newStatus !== "waiting" || !waitingFor;
    if (waitingFor) waitingLine.textContent = waitingFor.charAt(0).toUpperCase() + waitingFor.slice(1);
    statusBadge.textContent = STATUS_LABELS[newStatus] || newStatus;
    statusBadge.className = "status status-" + newStatus;
    if (cancelForm && page.active_statuses.indexOf(newStatus) < 0) cancelForm.hidden = true;
    if (error) {
      errorLine.textContent = error;
      errorLine.hidden = false;
    }
  }

  function cell(row, text, tag) {
    const td = document.createElement(tag || "td");
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function secondsText(s) {
    if (s < 60) return s < 10 ? `${s.toFixed(2)} s` : `${s.toFixed(1)} s`;
    const total = Math.round(s);
    return `${Math.floor(total / 60)} min ${String(total % 60).padStart(2, "0")} s`;
  }

  // Where the iteration's time went: a stacked bar and its legend (as the server renders them).
  function addPhasesRow(body, p) {
    const wall = p.wall_s;
    if (!isNumber(wall) || wall <= 0) return;
    const parts = Object.keys(page.phase_labels || {})
      .filter((key) => isNumber((p.phases_s || {})[key]) && p.phases_s[key] > 0)
      .map((key) => ({key: key, label: page.phase_labels[key], seconds: p.phases_s[key],
                      share: 100 * p.phases_s[key] / wall}));
    if (!parts.length) return;
    const row = document.createElement("tr");
    row.className = "phases";
    const td = cell(row, "");
    td.colSpan = 5;
    const bar = document.createElement("div");
    bar.className = "phase-bar";
    bar.setAttribute("role", "img");
    bar.setAttribute("aria-label", `Where the iteration's ${secondsText(wall)} went`);
    const text = document.createElement("span");
    text.className = "phase-text";
    text.appendChild(document.createTextNode(`${secondsText(wall)}: `));
    parts.forEach((part, i) => {
      const piece = document.createElement("span");
      piece.className = `phase-${part.key}`;
      piece.style.width = `${part.share.toFixed(1)}%`;
      bar.appendChild(piece);
      const legend = document.createElement("span");
      legend.className = `phase-${part.key}`;
      legend.textContent = `${part.label} ${secondsText(part.seconds)} (${part.share.toFixed(0)}%)`;
      if (i) text.appendChild(document.createTextNode(" · "));
      text.appendChild(legend);
    });
    td.appendChild(bar);
    td.appendChild(text);
    body.appendChild(row);
  }

  function addIterationRows(p) {
    if (proposals.querySelector(`tbody[data-iteration="${p.number}"]`)) return;  // rendered by the server
    const body = document.createElement("tbody");
    body.dataset.iteration = p.number;
    const head = document.createElement("tr");
    const measured = measuredMs(p);
    cell(head, `Iteration ${p.number}: ${p.chosen_group} · ${fmtX(p.resource)} · measured ` +
               `${isNumber(measured) ? measured.toFixed(3) + " ms" : "—"} · holdout ` +
               `${pct(p.holdout_accuracy).toFixed(2)}%`, "th").colSpan = 5;
    body.appendChild(head);
    addPhasesRow(body, p);
    (p.proposals || []).forEach((proposal) => {
      const chosen = proposal.group === p.chosen_group;
      const row = document.createElement("tr");
      if (chosen) row.className = "chosen";
      cell(row, proposal.group + (chosen ? " ✓" : ""));
      cell(row, String(proposal.channels));
      cell(row, fmtX(proposal.resource));
      cell(row, "");
      cell(row, isNumber(proposal.holdout_accuracy) ? pct(proposal.holdout_accuracy).toFixed(2) + "%" : "—");
      body.appendChild(row);
    });
    // Keep the blocks in iteration order even if an earlier one arrives late.
    const next = Array.from(proposals.tBodies).find((b) => Number(b.dataset.iteration) > p.number);
    proposals.insertBefore(body, next || null);
    proposalsEmpty.hidden = true;
  }

  // ------------------------------------------------------------------ events

  const handlers = {
    "job.status": (p, e) => {
      showStatus(p.status, p.error, p.waiting_for);
      const detail = p.error || p.waiting_for;
      log(`Status: ${STATUS_LABELS[p.status] || p.status}${detail ? " (" + detail + ")" : ""}`,
          p.status === "failed" ? "error" : "info", e.created);
    },
    "job.start": (p, e) => {
      const measured = latencyAxis ? measuredMs(p) : null;
      const xKind = isNumber(measured) ? "measured" : "estimated";
      if (isNumber(p.holdout_accuracy)) {
        putPoint(ORIGINAL, "holdout", point("original", xOf(p), pct(p.holdout_accuracy), "holdout", xKind));
        putPoint(ITERATIONS, -1, point("original", p.resource, pct(p.holdout_accuracy), "holdout", "estimated", -1));
      }
      if (isNumber(p.validation_accuracy)) {
        putPoint(ORIGINAL, "validation", point("original", xOf(p), pct(p.validation_accuracy), "validation", xKind));
      }
      if (isNumber(measured)) putPoint(MEASURED, -1, point("original", measured, pct(p.holdout_accuracy), "holdout", "measured", -1));
      // Its warnings follow as job.log events of their own.
      log(`Started: original ${fmtX(xOf(p))}, budget ${fmtX(p.budget)}`, "info", e.created);
    },
    "job.measure": (p, e) => {
      const text = p.done
        ? `Look-up table: ${p.table_size} entries (measured ${p.signatures} layers, ${p.networks} networks)`
        : `Measuring ${p.signatures} layers and ${p.networks} whole networks${p.reason ? " (" + p.reason + ")" : ""}…`;
      measureLine.textContent = text;
      measureLine.hidden = false;
      log(text, "info", e.created);
    },
    "job.iteration": (p, e) => {
      const name = `iteration ${p.number}`;
      putPoint(ITERATIONS, p.number, point(name, p.resource, pct(p.holdout_accuracy), "holdout", "estimated", p.number));
      const measured = latencyAxis ? measuredMs(p) : null;
      if (isNumber(measured)) putPoint(MEASURED, p.number, point(name, measured, pct(p.holdout_accuracy), "holdout", "measured", p.number));
      addIterationRows(p);
      log(`Iteration ${p.number}: shrank ${p.chosen_group}, ${fmtX(p.resource)}, ` +
          `holdout ${pct(p.holdout_accuracy).toFixed(2)}%`, "info", e.created);
      downloadsStale.hidden = false;
    },
    "job.finish": (p, e) => {
      const final = Object.assign({}, p, {measured: p.ab_final || p.measured});
      const measured = latencyAxis ? measuredMs(final) : null;
      if (isNumber(p.validation_accuracy)) {
        putPoint(FINAL, "final", point("final", xOf(final), pct(p.validation_accuracy), "validation",
                                       isNumber(measured) ? "measured" : "estimated"));
      }
      // Baselines and fine-tuned points arrive as job.child events of their child jobs.
      // A relative latency budget is decided by this side-by-side ratio (the page's Outcome says the same).
      const sideBySide = isNumber(p.measured_ratio)
        ? `, measured side by side: ${(100 * p.measured_ratio).toFixed(1)}% of the original` : "";
      log(`Finished: ${fmtX(xOf(final))}${sideBySide}, validation ${isNumber(p.validation_accuracy) ? pct(p.validation_accuracy).toFixed(2) + "%" : "—"}` +
          (p.budget_met === false ? " (budget not met)" : ""), p.budget_met === false ? "warning" : "info", e.created);
      downloadsStale.hidden = false;
    },
    "job.log": (p, e) => log(p.message, p.level, e.created),
    "job.child": (p, e) => {
      const index = p.kind === "baseline" ? UNIFORM : FINETUNED;
      (p.points || []).forEach((b) => {
        const x = xOf(b), y = pct(b.validation_accuracy);
        if (!isNumber(x) || !isNumber(y)) return;
        const xKind = isNumber(latencyAxis ? measuredMs(b) : null) ? "measured" : "estimated";
        putPoint(index, `${p.job}:${b.label}`, point(b.label, x, y, "validation", xKind, x));
      });
      log(`Job #${p.job} (${p.kind}) finished: ${(p.points || []).length} point(s) on the chart`, "info", e.created);
    },
  };

  function handleEvent(event) {
    if (event.seq <= lastSeq) return;  // seen already
    lastSeq = event.seq;
    const handler = handlers[event.event_type];
    if (!handler) return;
    try {
      handler(event.payload || {}, event);
    } catch (error) {
      console.error("could not show event", event, error);
    }
  }

  // ------------------------------------------------------------------ the socket

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + window.location.host + page.ws_url);
    socket.onmessage = (message) => {
      const data = JSON.parse(message.data);
      if (data.type === "snapshot") {
        snapshotSeen = true;
        retryMs = 1000;
        connectionLine.textContent = "";
        showStatus(data.job.status, data.job.error, data.job.waiting_for);
        data.events.forEach(handleEvent);
        lastSeq = Math.max(lastSeq, data.last_seq);
      } else if (data.type === "event") {
        handleEvent(data);
      }
      chart.update();
    };
    socket.onclose = () => {
      socket = null;
      if (snapshotSeen && page.active_statuses.indexOf(status) < 0) return;  // nothing more will come
      connectionLine.textContent = `Connection lost; retrying in ${Math.round(retryMs / 1000)} s…`;
      setTimeout(connect, retryMs * (0.8 + 0.4 * Math.random()));
      retryMs = Math.min(retryMs * 2, 30000);
    };
  }

  connect();
})();

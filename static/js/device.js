/* Device page: estimated against measured whole-network latency of the user's jobs on the device.
 *
 * One point per measured iteration: the calibrated estimate and the raw look-up-table sum against
 * the measurement, with the line where estimate equals measurement. Data: json_script "device-data".
 */
(function () {
  "use strict";

  const data = JSON.parse(document.getElementById("device-data").textContent);
  const canvas = document.getElementById("latency-chart");
  if (!canvas || !data.points.length || typeof Chart === "undefined") return;

  const isNumber = (v) => typeof v === "number" && isFinite(v);
  const toPoint = (p, key) => ({x: p.measured, y: p[key],
    name: `${p.model}, job #${p.job} ${p.number < 0 ? "original" : "iteration " + p.number}`});
  const calibrated = data.points.filter((p) => isNumber(p.estimate)).map((p) => toPoint(p, "estimate"));
  const raw = data.points.filter((p) => isNumber(p.raw)).map((p) => toPoint(p, "raw"));
  const values = calibrated.concat(raw).flatMap((p) => [p.x, p.y]);
  const low = Math.min(...values), high = Math.max(...values);

  function series(label, color, points, extra) {
    return Object.assign({label: label, data: points, borderColor: color, backgroundColor: color,
                          pointRadius: 4, pointHoverRadius: 6}, extra || {});
  }
  new Chart(canvas, {
    type: "scatter",
    data: {datasets: [
      series("calibrated estimate", "#0969da", calibrated),
      series("raw table sum", "#9a6700", raw, {pointStyle: "triangle", pointRadius: 5}),
      series("estimate = measurement", "#656d76", [{x: low, y: low}, {x: high, y: high}],
             {showLine: true, pointRadius: 0, pointHoverRadius: 0, borderDash: [6, 4], borderWidth: 1}),
    ]},
    options: {
      animation: false,
      maintainAspectRatio: false,
      scales: {
        x: {title: {display: true, text: "Measured latency (ms)"}},
        y: {title: {display: true, text: "Estimated latency (ms)"}},
      },
      plugins: {
        legend: {labels: {filter: (item, chart) => chart.datasets[item.datasetIndex].data.length > 0}},
        tooltip: {filter: (item) => item.datasetIndex < 2, callbacks: {label: (ctx) => {
          const p = ctx.raw;
          const error = 100 * (p.y - p.x) / p.x;
          return `${p.name}: estimated ${p.y.toFixed(3)} ms, measured ${p.x.toFixed(3)} ms ` +
                 `(${error >= 0 ? "+" : ""}${error.toFixed(1)}%)`;
        }}},
      },
    },
  });
})();

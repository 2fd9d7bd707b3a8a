/* Measurement page: histogram of the whole network's timed runs.
 *
 * Bars of equal width from the fastest run to the 99th percentile, then one bar for the slower
 * runs, as the server binned them (devices/measure_model.py histogram). Data: json_script
 * "measurement-data" {edges, counts, tail, tail_from, n}.
 */
(function () {
  "use strict";

  const data = JSON.parse(document.getElementById("measurement-data").textContent);
  const canvas = document.getElementById("histogram-chart");
  if (!canvas || !data.counts.length || typeof Chart === "undefined") return;

  const ms = (v) => v.toFixed(4);
  const labels = data.counts.map((_, i) => `${ms(data.edges[i])}–${ms(data.edges[i + 1])}`);
  const counts = data.counts.slice();
  const colors = counts.map(() => "#0969da");
  if (data.tail) {
    labels.push(`> ${ms(data.tail_from)}`);
    counts.push(data.tail);
    colors.push("#9a6700");
  }
  new Chart(canvas, {
    type: "bar",
    data: {labels: labels, datasets: [{label: "runs", data: counts, backgroundColor: colors,
                                       barPercentage: 1.0, categoryPercentage: 1.0}]},
    options: {
      animation: false,
      maintainAspectRatio: false,
      scales: {
        x: {title: {display: true, text: "Latency of one run (ms)"},
            ticks: {callback: function (value, index) { return labels[index].split("–")[0]; },
                    maxRotation: 0, autoSkip: true}},
        y: {title: {display: true, text: "Runs"}, beginAtZero: true, ticks: {precision: 0}},
      },
      plugins: {
        legend: {display: false},
        tooltip: {callbacks: {
          title: (items) => `${labels[items[0].dataIndex]} ms`,
          label: (ctx) => `${ctx.raw} of ${data.n} runs (${(100 * ctx.raw / data.n).toFixed(1)}%)`,
        }},
      },
    },
  });
})();

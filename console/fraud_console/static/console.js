// The review console's only script of its own (no inline scripts: the pages' CSP forbids them).
"use strict";

// A form marked "once" is sent once: a second click while the first request is on its way
// is dropped here (and the server refuses a replayed form token anyway).
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!form.classList.contains("once")) return;
  if (form.dataset.sent) {
    event.preventDefault();
    return;
  }
  form.dataset.sent = "1";
});

// The live page's charts: uPlot, fed by /live/series.json (Prometheus range queries).
function liveCharts() {
  const decisions = document.getElementById("chart-decisions");
  const latency = document.getElementById("chart-latency");
  if (!decisions || !latency || !window.uPlot) return;
  const colours = ["#2e7d32", "#f9a825", "#c62828"];
  const options = (el, unit, labels) => ({
    width: Math.max(300, el.clientWidth),
    height: 220,
    scales: { x: { time: true } },
    axes: [{}, { label: unit }],
    series: [{}, ...labels.map((label, i) => ({ label, stroke: colours[i], width: 2, spanGaps: false }))],
  });
  let plots = null;
  async function refresh() {
    let series;
    try {
      const response = await fetch(decisions.dataset.series, { credentials: "same-origin" });
      if (!response.ok) return;
      series = await response.json();
    } catch (error) {
      return;
    }
    const mix = [series.times, series.decisions.approve, series.decisions.review, series.decisions.decline];
    const e2e = [series.times, series.latency_ms.p50, series.latency_ms.p95, series.latency_ms.p99];
    if (plots === null) {
      plots = [
        new uPlot(options(decisions, "per second", ["approve", "review", "decline"]), mix, decisions),
        new uPlot(options(latency, "ms", ["p50", "p95", "p99"]), e2e, latency),
      ];
    } else {
      plots[0].setData(mix);
      plots[1].setData(e2e);
    }
    decisions.dataset.updatedAt = String(series.times[series.times.length - 1]);
  }
  refresh();
  setInterval(refresh, 5000);
}

document.addEventListener("DOMContentLoaded", liveCharts);

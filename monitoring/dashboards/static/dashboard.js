// The PLUM Stream monitoring page. Everything it draws comes from this origin:
// /api/panels (the panel definitions of monitoring/panels.py: the page holds no query of
// its own), /api/query_range and /api/alerts (Prometheus, proxied). After each draw a panel
// element carries data-series="<non-empty series>" (and data-error when its data could not
// be read), so a browser test can tell a drawn page from an empty one.
"use strict";

const COLORS = ["#1a73e8", "#e8710a", "#12b5cb", "#9334e6", "#188038", "#d01884", "#f9ab00", "#5f6368"];
const SLO_COLOR = "#c5221f";
const UP_PANEL = "components_up"; // its series (up{job}) feed the component chips

const state = { doc: null, timer: null };

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;
  return node;
}

// ------------------------------------------------------------------ values and units

function num(v) {
  const x = Number(v);
  return Number.isFinite(x) ? x : null; // NaN and ±Inf are gaps, not points
}

function sig(x, digits = 3) {
  if (x === 0) return "0";
  const a = Math.abs(x);
  if (a >= 1000) return Math.round(x).toLocaleString("en-US");
  return String(Number(x.toPrecision(digits)));
}

function compact(x) {
  const a = Math.abs(x);
  if (a >= 1e9) return sig(x / 1e9) + "G";
  if (a >= 1e6) return sig(x / 1e6) + "M";
  if (a >= 1e4) return sig(x / 1e3) + "k";
  return sig(x);
}

function seconds(x) {
  const a = Math.abs(x);
  if (a === 0) return "0 s";
  if (a < 1) return sig(x * 1000) + " ms";
  if (a < 120) return sig(x) + " s";
  if (a < 7200) return sig(x / 60) + " min";
  if (a < 172800) return sig(x / 3600) + " h";
  return sig(x / 86400) + " d";
}

function formatValue(x, unit) {
  if (x === null || x === undefined) return "no data";
  switch (unit) {
    case "s": return seconds(x);
    case "ms": return seconds(x / 1000);
    case "percentunit": return sig(x * 100) + " %";
    case "reqps": return compact(x) + " req/s";
    case "short": return compact(x);
    default: return sig(x);
  }
}

function yAxis(unit) {
  const axis = { rangemode: "tozero", gridcolor: "#eceff1", zeroline: false, automargin: true };
  switch (unit) {
    case "s": return { ...axis, ticksuffix: " s" };
    case "ms": return { ...axis, ticksuffix: " ms" };
    case "percentunit": return { ...axis, tickformat: ".0%" };
    case "reqps": return { ...axis, ticksuffix: "/s" };
    default: return axis;
  }
}

// "{{group}} · {{topic}}" with the series' labels. A series without those labels (the
// 0 a panel reads while its counter has no labelled series yet) keeps the legend's
// words ("rejected {{reason}}" -> "rejected"), or reads "none yet" when it has none.
function legendName(legend, metric) {
  const label = /\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}/g;
  const tidy = (text) => text.replace(/\s+/g, " ").replace(/^[\s·]+|[\s·]+$/g, "");
  return tidy(legend.replace(label, (_, k) => metric[k] ?? "")) || "none yet";
}

// ------------------------------------------------------------------ fetching

async function getJSON(url) {
  let response;
  try {
    response = await fetch(url, { cache: "no-store" });
  } catch (err) {
    throw new Error(`the dashboard server did not answer (${err.message})`);
  }
  let body = null;
  try { body = await response.json(); } catch (_) { /* a non-JSON error answer */ }
  if (!response.ok) {
    const reason = body && body.detail ? body.detail : `${response.status} ${response.statusText}`;
    throw new Error(reason);
  }
  return body;
}

async function queryRange(expr, start, end, step) {
  const params = new URLSearchParams({ query: expr, start, end, step });
  const body = await getJSON(`/api/query_range?${params}`);
  return body.data.result; // [{metric: {...}, values: [[ts, "v"], ...]}]
}

// ------------------------------------------------------------------ building the page

function buildPage(doc) {
  const rows = document.getElementById("rows");
  rows.replaceChildren();
  for (const row of doc.rows) {
    const section = el("section", { class: "row", id: `row-${row.key}` });
    section.append(el("h2", {}, row.title));
    const grid = el("div", { class: "grid" });
    for (const panel of doc.panels.filter((p) => p.row === row.key)) {
      const card = el("article", { class: "panel", id: `panel-${panel.key}`, title: panel.description });
      const head = el("div", { class: "panel-head" });
      head.append(el("h3", {}, panel.title), el("span", { class: "value muted" }, "…"));
      card.append(
        head,
        el("p", { class: "desc muted" }, panel.description),
        el("div", { class: "panel-error" }),
        el("div", { class: "plot" }),
      );
      grid.append(card);
    }
    section.append(grid);
    rows.append(section);
  }
}

// ------------------------------------------------------------------ drawing a panel

function lastPoint(values) {
  for (let i = values.length - 1; i >= 0; i--) {
    const y = num(values[i][1]);
    if (y !== null) return y;
  }
  return null;
}

async function drawPanel(panel, start, end, step) {
  const card = document.getElementById(`panel-${panel.key}`);
  const results = await Promise.allSettled(panel.queries.map((q) => queryRange(q.expr, start, end, step)));
  const traces = [];
  const errors = [];
  let headline = null;
  results.forEach((res, qi) => {
    if (res.status === "rejected") { errors.push(res.reason.message); return; }
    for (const series of res.value) {
      const ys = series.values.map((v) => num(v[1]));
      if (!ys.some((y) => y !== null)) continue; // an empty series is not drawn or counted
      const latest = lastPoint(series.values);
      if (headline === null) headline = latest; // the first query's first series leads
      traces.push({
        type: "scatter",
        mode: "lines",
        name: `${legendName(panel.queries[qi].legend, series.metric)}  ${formatValue(latest, panel.unit)}`,
        x: series.values.map((v) => new Date(v[0] * 1000)),
        y: ys,
        line: { width: 2, color: COLORS[traces.length % COLORS.length] },
        hovertemplate: "%{y:.4g}<extra>%{fullData.name}</extra>",
        meta: { metric: series.metric },
      });
    }
  });

  const value = card.querySelector(".value");
  value.textContent = formatValue(headline, panel.unit);
  const late = panel.slo !== null && headline !== null && headline > panel.slo;
  value.className = "value " + (headline === null ? "muted" : late ? "bad" : panel.slo !== null ? "good" : "");
  const errorLine = card.querySelector(".panel-error");
  errorLine.textContent = errors.length ? `cannot read Prometheus: ${errors[0]}` : "";
  errorLine.title = errorLine.textContent;

  const layout = {
    margin: { l: 8, r: 8, t: 6, b: 8 },
    height: 200,
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    font: { size: 12, color: "#1d2330" },
    xaxis: {
      type: "date", range: [new Date(start * 1000), new Date(end * 1000)],
      tickformat: "%H:%M", gridcolor: "#eceff1", automargin: true,
    },
    yaxis: yAxis(panel.unit),
    showlegend: true,
    legend: { orientation: "h", x: 0, y: -0.18, yanchor: "top", font: { size: 12 } },
    shapes: [],
    annotations: [],
  };
  if (panel.slo !== null) {
    layout.shapes.push({
      type: "line", xref: "paper", x0: 0, x1: 1, yref: "y", y0: panel.slo, y1: panel.slo,
      line: { color: SLO_COLOR, width: 1.5, dash: "dash" },
    });
    layout.annotations.push({
      xref: "paper", x: 1, xanchor: "right", yref: "y", y: panel.slo, yanchor: "bottom",
      text: panel.slo_label || `SLO ${formatValue(panel.slo, panel.unit)}`,
      showarrow: false, font: { color: SLO_COLOR, size: 12 },
    });
  }
  if (!traces.length) {
    layout.annotations.push({
      xref: "paper", yref: "paper", x: 0.5, y: 0.5, showarrow: false,
      text: errors.length ? "no data: Prometheus unavailable" : "no data yet",
      font: { size: 14, color: "#6b7280" },
    });
  }
  await Plotly.react(card.querySelector(".plot"), traces, layout, { displayModeBar: false, responsive: true });
  card.dataset.series = String(traces.length);
  if (errors.length) card.dataset.error = errors[0]; else delete card.dataset.error;
  return { panel, traces, errors };
}

// ------------------------------------------------------------------ the top bar

function drawComponents(doc, upResult) {
  const box = document.getElementById("components");
  const expected = [];
  for (const p of doc.panels) for (const j of p.jobs) if (!expected.includes(j)) expected.push(j);
  const seen = new Map();
  if (upResult && !upResult.errors.length) {
    for (const t of upResult.traces) {
      const job = t.meta.metric.job;
      if (!job) continue;
      const y = t.y.filter((v) => v !== null);
      const now = y.length ? y[y.length - 1] : null;
      seen.set(job, seen.has(job) ? Math.min(seen.get(job), now) : now); // any instance down: down
    }
  }
  const jobs = [...expected, ...[...seen.keys()].filter((j) => !expected.includes(j)).sort()];
  box.replaceChildren(
    ...jobs.map((job) => {
      const v = seen.get(job);
      const st = upResult && upResult.errors.length ? "unknown" : v === undefined ? "absent" : v >= 1 ? "up" : "down";
      const words = { up: "up", down: "DOWN", absent: "not scraped", unknown: "unknown" }[st];
      return el("span", { class: "chip", "data-job": job, "data-state": st, title: `${job}: ${words}` }, `${job} ${words}`);
    }),
  );
}

async function drawAlerts() {
  const list = document.getElementById("alerts");
  const count = document.getElementById("alerts-count");
  count.textContent = "";
  let alerts;
  try {
    alerts = (await getJSON("/api/alerts")).data.alerts.filter((a) => a.state === "firing");
  } catch (err) {
    list.replaceChildren(el("li", { class: "unavailable" }, `alerts unavailable: ${err.message}`));
    return err.message;
  }
  const rank = { page: 0, ticket: 1 };
  alerts.sort((a, b) =>
    (rank[a.labels.severity] ?? 2) - (rank[b.labels.severity] ?? 2) ||
    a.labels.alertname.localeCompare(b.labels.alertname));
  if (alerts.length) count.textContent = `· ${alerts.length} firing`;
  if (!alerts.length) {
    list.replaceChildren(el("li", { class: "none" }, "✓ no alerts firing"));
    return null;
  }
  list.replaceChildren(
    ...alerts.map((a) => {
      const severity = a.labels.severity || "none";
      const li = el("li", { class: `alert ${severity}`, "data-alert": a.labels.alertname, "data-job": a.labels.job || "" });
      const summary = (a.annotations && a.annotations.summary) || (a.annotations && a.annotations.description) || "";
      li.title = `${a.labels.alertname} (${severity}): ${summary}`;
      li.append(el("span", { class: "name" }, a.labels.alertname), el("span", { class: "severity" }, severity), el("span", { class: "summary" }, summary));
      return li;
    }),
  );
  return null;
}

// ------------------------------------------------------------------ the refresh loop

async function refresh() {
  const doc = state.doc;
  const step = doc.step_s;
  const end = Math.floor(Date.now() / 1000 / step) * step; // aligned: the same points each draw
  const start = end - doc.range_s;
  let drawn = [];
  const [alertsError, results] = await Promise.all([
    drawAlerts(),
    Promise.all(doc.panels.map((p) => drawPanel(p, start, end, step).catch((err) => ({ panel: p, traces: [], errors: [err.message] })))),
  ]);
  drawn = results;
  drawComponents(doc, drawn.find((r) => r.panel.key === UP_PANEL));
  const reasons = drawn.flatMap((r) => r.errors);
  if (alertsError) reasons.unshift(alertsError);
  const banner = document.getElementById("error");
  banner.hidden = !reasons.length;
  banner.textContent = reasons.length ? `Prometheus cannot be read: ${reasons[0]}` : "";
  document.getElementById("updated").textContent =
    `last ${Math.round(doc.range_s / 60)} min · updated ${new Date().toLocaleTimeString()} · every ${doc.refresh_s} s`;
  document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
}

async function loop() {
  try {
    await refresh();
  } catch (err) {
    const banner = document.getElementById("error");
    banner.hidden = false;
    banner.textContent = `the page could not refresh: ${err.message}`;
  }
  state.timer = setTimeout(loop, state.doc.refresh_s * 1000);
}

async function main() {
  try {
    state.doc = await getJSON("/api/panels");
  } catch (err) {
    const banner = document.getElementById("error");
    banner.hidden = false;
    banner.textContent = `the panel definitions could not be read: ${err.message}`;
    return;
  }
  buildPage(state.doc);
  await loop();
}

main();

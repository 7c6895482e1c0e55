// The run page (config, params, environment, summary, checkpoints, system metrics, text events,
// charts) and the compare page (params that differ, curves overlaid).
import { ChartBoard } from "./charts.js";
import { MediaBoard } from "./media.js";
import { api, el, fmtNum, fmtTime, fmtValue, kvGrid, plotlyReady, replaceQuery, rowsTable,
  runColour, showError } from "./util.js";

const REFRESH_MS = 2000;

function chartOpts(query) {
  return { x: query.get("x"), xkey: query.get("xkey"), ranks: query.get("ranks"),
    smooth: query.get("smooth"),
    log: query.get("log") === "1", filter: query.get("keys") };
}

function chartQuery(o) {
  return { x: o.x === "step" ? "" : o.x, xkey: o.x === "metric" ? o.xkey : "",
    ranks: o.ranks === "mean" ? "" : o.ranks,
    smooth: o.smooth || "", log: o.log ? "1" : "", keys: o.filter };
}

function card(title, body) {
  return el("div", { class: "card" }, el("h3", {}, title), body);
}

function header(run) {
  return el("h2", {},
    el("span", { class: "swatch", style: `background:${runColour(run.run_id)}` }),
    `${run.name || run.run_id} `,
    el("span", { class: `status-${run.status}` },
      el("span", { class: run.status === "running" ? "dot-live" : "" }), run.status),
    el("span", { class: "muted mono" }, `  ${run.run_id} · ${run.project || ""} · `
      + `${run.host || ""} · ${fmtTime(run.started)}`));
}

function checkpointsTable(rows) {
  if (!rows || !rows.length) return el("div", { class: "muted" }, "none");
  const latest = rows.reduce((a, b) => ((b.step ?? -1) >= (a.step ?? -1) ? b : a));
  return el("table", {},
    el("thead", {}, el("tr", {}, ["step", "rank", "path", "bytes", "live", ""].map((c) =>
      el("th", {}, c)))),
    el("tbody", {}, rows.map((c) => el("tr", {},
      el("td", { class: "num" }, fmtNum(c.step)), el("td", { class: "num" }, fmtNum(c.rank)),
      el("td", { class: "mono" }, c.path || ""), el("td", { class: "num" }, fmtNum(c.bytes)),
      el("td", {}, c.live === false ? "deleted" : "yes"),
      el("td", {}, [c.is_best ? el("span", { class: "tag" }, "best") : null,
        c === latest ? el("span", { class: "tag" }, "latest") : null])))));
}

function textEvents(rows) {
  if (!rows || !rows.length) return el("div", { class: "muted" }, "none");
  return el("div", {}, rows.map((t) => el("div", {},
    el("div", { class: "muted mono" }, `step ${t.step ?? ""} · rank ${t.rank ?? ""} · ${t.key}`
      + ` · ${fmtTime(t.ts)}`),
    el("pre", { class: "text" }, t.text))));
}

/** Draws one system metric: one line per host/device/rank as the server splits them. */
async function systemChart(chart, runId, key) {
  const [ans] = await Promise.all([
    api("/api/system", { run: runId, key, width: chart.clientWidth || 600 }), plotlyReady()]);
  const traces = (ans.series || []).map((s) => ({
    type: "scatter", mode: s.x.length < 40 ? "lines+markers" : "lines", marker: { size: 4 },
    x: s.x.map((x) => new Date(x * 1000).toISOString()
      .replace("Z", "")), y: s.y, line: { width: 1 },
    name: [s.host, s.device, s.rank].filter((v) => v !== null && v !== undefined).join(" ")
      || key,
  }));
  Plotly.react(chart, traces, {
    margin: { l: 56, r: 12, t: 8, b: 36 }, showlegend: traces.length > 1,
    legend: { orientation: "h", y: -0.25, font: { size: 10 } },
    xaxis: { title: { text: "wall time (UTC)", font: { size: 11 } }, type: "date" },
  }, { displaylogo: false, responsive: true });
}

/** System metric panels, each drawn once it scrolls into view (below the fold at first). */
function systemCharts(node, runId, keys) {
  node.replaceChildren();
  if (!keys || !keys.length) {
    node.append(el("div", { class: "muted" }, "none"));
    return { disconnect() {} };
  }
  const panels = el("div", { class: "panels" });
  node.append(panels);
  const observer = new IntersectionObserver((entries) => {
    for (const e of entries) {
      if (!e.isIntersecting) continue;
      observer.unobserve(e.target);
      systemChart(e.target, runId, e.target.dataset.system).catch(showError);
    }
  }, { rootMargin: "200px" });
  for (const key of keys) {
    const chart = el("div", { class: "chart", dataset: { key: `system:${key}`, system: key } });
    panels.append(el("div", { class: "panel" },
      el("div", { class: "panel-head" }, el("span", { class: "key" }, key)), chart));
    observer.observe(chart);
  }
  return observer;
}

export async function renderRun(root, runId, query) {
  // Plotly (fetched already: index.html) runs when the first panel has asked for its series.
  const asked = api(`/api/run/${encodeURIComponent(runId)}`);
  const head = el("div");
  const checkpoints = el("div");
  const textNode = el("div");
  const system = el("div");
  const summary = el("div");
  const metricRows = el("div");
  const drawLive = (d) => {
    metricRows.replaceChildren(rowsTable(d.metrics, ["key", "steps", "last", "min", "max"]));
    head.replaceChildren(header(d.run));
    checkpoints.replaceChildren(checkpointsTable(d.checkpoints));
    textNode.replaceChildren(textEvents(d.text));
    summary.replaceChildren(kvGrid(d.summary));
  };
  const chartsRoot = el("div");
  const mediaNode = el("div", { class: "media-section" });
  const mediaBoard = new MediaBoard(mediaNode, runId);
  mediaBoard.refresh().catch(showError);
  // Curves first: they are what a look at a run is for; its images and tables, the details. The
  // charts ask for their points while the run's details are on their way.
  root.append(head, el("h2", {}, "Metrics"), chartsRoot, mediaNode);
  const board = new ChartBoard(chartsRoot, [{ run_id: runId }], chartOpts(query), (o) =>
    replaceQuery(`/run/${encodeURIComponent(runId)}`, chartQuery(o)));
  let detail;
  try {
    [detail] = await Promise.all([asked, board.start()]);
  } catch (err) {
    board.stop();
    throw err;
  }
  const run = detail.run;
  Object.assign(board.runs[0], run); // its name in the legends from now on
  board.setStatus(runId, run.status); // a running run is polled
  drawLive(detail);
  root.append(
    el("h2", {}, "Run"),
    el("div", { class: "cards" },
      card("config", kvGrid(detail.config)),
      card("params", kvGrid(detail.params)),
      card("summary", summary),
      card("metrics", metricRows),
      card("checkpoints", checkpoints),
      card("text", textNode),
      card("environment", kvGrid(detail.environment))),
    el("h2", {}, "System"), system);
  const systemObserver = systemCharts(system, runId, detail.system_series);
  document.getElementById("live-badge").hidden = run.status !== "running";

  // While the run runs, its checkpoints, summary, text and status change: refresh them.
  let timer = null;
  let stopped = false;
  const refresh = async () => {
    try {
      const d = await api(`/api/run/${encodeURIComponent(runId)}`);
      if (stopped) return;
      drawLive(d);
      board.setStatus(runId, d.run.status);
      await mediaBoard.refresh();
      document.getElementById("live-badge").hidden = d.run.status !== "running";
      if (d.run.status !== "running") return;
    } catch (err) {
      showError(err);
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  };
  if (run.status === "running") timer = setTimeout(refresh, REFRESH_MS);
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
      board.stop();
      systemObserver.disconnect();
      if (window.Plotly) for (const c of system.querySelectorAll(".chart")) Plotly.purge(c);
      document.getElementById("live-badge").hidden = true;
    },
  };
}

/** Flat config and params of each run, and the keys whose values are not all equal. */
function differing(details) {
  const flat = details.map((d) => ({ ...(d.config || {}), ...(d.params || {}) }));
  const keys = [...new Set(flat.flatMap((f) => Object.keys(f)))].sort();
  return { flat, keys: keys.filter((k) =>
    new Set(flat.map((f) => JSON.stringify(f[k] ?? null))).size > 1) };
}

export async function renderCompare(root, query) {
  const ids = (query.get("runs") || "").split(",").filter(Boolean);
  if (!ids.length) {
    root.append(el("div", { class: "muted" }, "no runs chosen: select runs in the table"));
    return { stop() {} };
  }
  const asked = ids.map((id) => api(`/api/run/${encodeURIComponent(id)}`));
  plotlyReady().catch(() => {}); // run while the runs' answers come; charts wait for it
  const details = await Promise.all(asked);
  const runs = details.map((d) => d.run);
  const { flat, keys } = differing(details);
  const table = keys.length ? el("table", { class: "diff" },
    el("thead", {}, el("tr", {}, el("th", {}, "param"), runs.map((r) => el("th", {},
      el("span", { class: "swatch", style: `background:${runColour(r.run_id)}` }),
      el("a", { href: `#/run/${encodeURIComponent(r.run_id)}` }, r.name || r.run_id))))),
    el("tbody", {}, keys.map((k) => el("tr", {}, el("td", { class: "mono" }, k),
      flat.map((f) => el("td", { class: "differs mono" }, fmtValue(f[k])))))))
    : el("div", { class: "muted" }, "config and params are the same in every run");
  const chartsRoot = el("div");
  root.append(el("h2", {}, `Compare ${runs.length} runs`), el("h3", {}, "params that differ"),
    table, el("h2", {}, "Metrics"), chartsRoot);
  const board = new ChartBoard(chartsRoot, runs, chartOpts(query), (o) =>
    replaceQuery("/compare", { runs: ids.join(","), ...chartQuery(o) }));
  await board.start();

  // The statuses of the compared runs, so that live ones keep being polled and ended ones stop.
  let timer = null;
  const refresh = async () => {
    const answers = await Promise.all(ids.map((id) => api(`/api/run/${encodeURIComponent(id)}`)))
      .catch((err) => showError(err));
    for (const d of answers || []) board.setStatus(d.run.run_id, d.run.status);
    if (board.live.size) timer = setTimeout(refresh, REFRESH_MS);
  };
  if (board.live.size) timer = setTimeout(refresh, REFRESH_MS);
  return { stop() { clearTimeout(timer); board.stop(); } };
}

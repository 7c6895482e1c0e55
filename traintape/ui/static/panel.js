// One metric panel (Plotly): runs overlaid, the min-max band, EMA, NaN/Inf markers, zoom.
// The server buckets every series to at most 2 points per pixel (min and max per bucket), so the
// page never thins points itself; zoom asks for the visible range again at full detail, and a
// live run is polled with `after=cursor`, appending only the new points (Plotly.extendTraces).
import { api, downloadText, el, markOnce, plotlyReady, runColour, showError } from "./util.js";

const NONFINITE = [
  // value, marker symbol, y on the overlay axis (0..1 of the panel's height)
  ["nan", "x", 0.9],
  ["inf", "triangle-up", 0.97],
  ["-inf", "triangle-down", 0.03],
];
// SVG lines, not WebGL: a panel holds at most 2 points per pixel per series (the server's M4),
// which SVG draws at once, while every WebGL panel costs a context (a page may hold 16 in all)
// and, on a machine without a GPU, a software renderer's start-up before its first frame.
const TRACE = "scatter";
const X_TITLES = { step: "step", time: "wall time (UTC)", relative: "seconds since start" };

/** TensorBoard's debiased EMA; `state` carries on across appended points. */
function ema(ys, weight, state) {
  const out = new Array(ys.length);
  for (let i = 0; i < ys.length; i++) {
    const y = ys[i];
    if (y === null || y === undefined || !Number.isFinite(y)) {
      out[i] = null;
      continue;
    }
    state.last = state.last * weight + (1 - weight) * y;
    state.n += 1;
    out[i] = weight === 0 ? y : state.last / (1 - weight ** state.n);
  }
  return out;
}

/** Wall-clock x values as Plotly date strings in UTC (Plotly ignores time zones). */
function toPlotX(xs, kind) {
  if (kind !== "time") return xs;
  return xs.map((x) => {
    const d = typeof x === "number" ? new Date(x * 1000) : new Date(x);
    return Number.isNaN(d.getTime()) ? x : d.toISOString().replace("Z", "");
  });
}

/** A zoomed axis end back into the server's x (wall time: epoch seconds). */
function fromPlotX(x, kind) {
  if (kind !== "time") return x;
  return new Date(`${String(x).replace(" ", "T")}Z`).getTime() / 1000;
}

export function prefixOf(key) {
  const cut = key.indexOf("/");
  return cut > 0 ? key.slice(0, cut + 1) : "";
}

/** One metric's chart: every run's series of `key`, its zoom, its live appends, its downloads. */
export class Panel {
  constructor(board, key, runIds) {
    this.board = board;
    this.key = key;
    this.runIds = runIds;
    this.cursors = new Map(); // run_id -> cursor of the last answer
    this.tracks = []; // {run, rank, raw, smooth, lo, hi, ema}: trace indices per series
    this.markers = new Map(); // `${run}|${value}` -> trace index
    this.range = null; // [x0, x1] in the server's x when zoomed
    this.loaded = false;
    this.busy = false;
    this.seq = 0; // the number of the latest load
    this.chart = el("div", { class: "chart", dataset: { key } });
    this.unmatched = new Map(); // run_id -> its values with no x (no x metric at their step)
    this.note = el("span", { class: "note", hidden: true });
    this.node = el(
      "div",
      { class: "panel" },
      el(
        "div",
        { class: "panel-head" },
        el("span", { class: "key", title: key }, key),
        this.note,
        el("button", { title: "download as PNG", onclick: () => this.png() }, "PNG"),
        el("button", { title: "download as CSV", onclick: () => this.csv() }, "CSV"),
      ),
      this.chart,
    );
  }

  width() {
    return Math.max(200, Math.round(this.chart.clientWidth || 600));
  }

  async fetchRun(run, extra) {
    const o = this.board.opts;
    return api("/api/series", {
      run, key: this.key, x: o.x, xkey: o.x === "metric" ? o.xkey : "", ranks: o.ranks,
      width: this.width(), ...extra,
    });
  }

  /** (Re)draws the panel from a full fetch of every run's series (within the zoom, if any).
   * Only the latest of overlapping loads (a zoom while one is under way) draws. */
  async load() {
    const seq = ++this.seq;
    this.busy = true;
    try {
      const extra = this.range ? { x0: this.range[0], x1: this.range[1] } : {};
      const [answers] = await Promise.all([
        this.board.slot(() => Promise.all(this.runIds.map((r) => this.fetchRun(r, extra)))),
        plotlyReady()]);
      if (this.board.stopped || seq !== this.seq) return;
      this.draw(answers);
      this.loaded = true;
    } catch (err) {
      if (seq === this.seq) showError(err);
    } finally {
      if (seq === this.seq) this.busy = false;
    }
  }

  draw(answers) {
    const o = this.board.opts;
    const traces = [];
    this.tracks = [];
    this.markers = new Map();
    const several = this.runIds.length > 1;
    this.unmatched = new Map();
    for (const ans of answers) {
      const run = ans.run_id;
      this.cursors.set(run, ans.cursor);
      this.unmatched.set(run, ans.unmatched || 0);
      const label = this.board.label(run);
      const series = ans.series || [];
      series.forEach((s, i) => {
        const alpha = o.ranks === "all" && series.length > 1 ? 1 - (0.5 * i) / series.length : 1;
        const colour = runColour(run, alpha);
        const name = s.rank === null || s.rank === undefined ? label : `${label} rank ${s.rank}`;
        const xs = toPlotX(s.x, ans.x_kind);
        const track = { run, rank: s.rank ?? null, ema: { last: 0, n: 0 } };
        if (s.ymin && s.ymax) {
          // min-max across ranks: the lower edge, then the upper one filled down to it
          const edge = { type: TRACE, mode: "lines", x: xs, line: { width: 0, color: colour },
            hoverinfo: "skip", showlegend: false, meta: { role: "band", run } };
          track.lo = traces.push({ ...edge, y: s.ymin }) - 1;
          track.hi = traces.push({ ...edge, y: s.ymax, fill: "tonexty",
            fillcolor: runColour(run, 0.15) }) - 1;
        }
        const smoothing = o.smooth > 0;
        // a few points (a validation metric, a short run) get dots: a lone point has no line
        const mode = s.x.length < 40 ? "lines+markers" : "lines";
        track.raw = traces.push({
          type: TRACE, mode, marker: { size: 4, color: colour }, x: xs, y: s.y, name,
          line: { width: 1, color: colour }, opacity: smoothing ? 0.25 : 1,
          showlegend: !smoothing && (several || o.ranks === "all"), legendgroup: name,
          meta: { role: "raw", run, rank: track.rank },
        }) - 1;
        track.smooth = traces.push({
          type: TRACE, mode, marker: { size: 4, color: colour }, x: xs,
          y: ema(s.y, o.smooth, track.ema), name,
          line: { width: 1.6, color: colour }, visible: smoothing,
          showlegend: smoothing && (several || o.ranks === "all"), legendgroup: name,
          meta: { role: "smooth", run, rank: track.rank },
        }) - 1;
        this.tracks.push(track);
      });
      for (const [value, symbol, y] of NONFINITE) {
        const hits = (ans.nonfinite || []).filter((p) => p.value === value);
        this.markers.set(`${run}|${value}`, traces.push({
          type: "scatter", mode: "markers", yaxis: "y2", name: `${value.toUpperCase()} ${label}`,
          x: toPlotX(hits.map((p) => p.x), ans.x_kind), y: hits.map(() => y),
          text: hits.map((p) => `${value} at rank ${p.rank}`), hoverinfo: "x+text+name",
          marker: { symbol, size: 9, color: runColour(run), line: { width: 1 } },
          showlegend: false, meta: { role: "nonfinite", run, value },
        }) - 1);
      }
    }
    const layout = {
      margin: { l: 56, r: 12, t: 8, b: 36 },
      uirevision: `${o.x}:${o.xkey}`, // keeps a zoom across redraws of the same x axis
      xaxis: { title: { text: o.x === "metric" ? o.xkey : X_TITLES[o.x] || o.x,
        font: { size: 11 } },
        type: o.x === "time" ? "date" : "linear" },
      yaxis: { type: o.log ? "log" : "linear", exponentformat: "e" },
      yaxis2: { overlaying: "y", range: [0, 1], visible: false, fixedrange: true },
      showlegend: several || o.ranks === "all",
      legend: { orientation: "h", y: -0.25, font: { size: 10 } },
      hovermode: "closest",
    };
    const config = { displaylogo: false, responsive: true,
      modeBarButtonsToRemove: ["toImage", "lasso2d", "select2d"] };
    this.showUnmatched();
    const first = !this.chart.classList.contains("js-plotly-plot");
    Plotly.react(this.chart, traces, layout, config);
    markOnce("traintape:first-chart");
    if (first) this.chart.on("plotly_relayout", (ev) => this.onRelayout(ev));
  }

  /** Says how many values have no x: against a metric, those whose step it was not logged at
   * (the two metrics are logged at different steps), which the chart cannot place. */
  showUnmatched() {
    const o = this.board.opts;
    const n = [...this.unmatched.values()].reduce((a, b) => a + b, 0);
    this.note.hidden = !(o.x === "metric" && n > 0);
    this.note.textContent = this.note.hidden ? ""
      : `${n.toLocaleString()} value${n === 1 ? "" : "s"} not drawn: no finite ${o.xkey} at ${
        n === 1 ? "its step" : "their steps"}`;
    this.note.title = "x is another metric: each value is drawn against that metric's value at"
      + " the same run, rank and step, and these steps have none (or NaN/Inf)";
  }

  onRelayout(ev) {
    let range = null;
    if (ev["xaxis.range[0]"] !== undefined) range = [ev["xaxis.range[0]"], ev["xaxis.range[1]"]];
    else if (Array.isArray(ev["xaxis.range"])) range = ev["xaxis.range"];
    else if (!ev["xaxis.autorange"]) return; // a y-only change: the points are already there
    const kind = this.board.opts.x;
    this.range = range && range.map((v) => fromPlotX(v, kind));
    this.load();
  }

  /** Appends the points logged since the last answer of each live run. */
  async poll() {
    if (!this.loaded || this.busy) return;
    const seq = this.seq; // a load since this poll began has these points already
    const live = this.runIds.filter((r) => this.board.live.has(r));
    const answers = await Promise.all(live.map((r) => {
      const cursor = this.cursors.get(r);
      return this.fetchRun(r, cursor === undefined || cursor === null ? {} : { after: cursor });
    }));
    if (this.board.stopped || this.busy || seq !== this.seq) return;
    for (const ans of answers) {
      if (!this.append(ans)) {
        await this.load(); // a rank or a series not drawn yet: draw it all again
        return;
      }
    }
  }

  /** Extends the drawn traces; false when the answer needs a full redraw instead (a new rank,
   * or a NaN/Inf: rare, and its marker carries hover text that extendTraces cannot add). */
  append(ans) {
    if ((ans.nonfinite || []).length) return false;
    const run = ans.run_id;
    const weight = this.board.opts.smooth;
    const update = { x: [], y: [] };
    const indices = [];
    const add = (index, xs, ys) => {
      update.x.push(xs);
      update.y.push(ys);
      indices.push(index);
    };
    for (const s of ans.series || []) {
      if (!s.x.length) continue;
      const track = this.tracks.find((t) => t.run === run && t.rank === (s.rank ?? null));
      if (!track || (s.ymin && track.lo === undefined)) return false;
      const xs = toPlotX(s.x, ans.x_kind);
      if (track.lo !== undefined) {
        add(track.lo, xs, s.ymin);
        add(track.hi, xs, s.ymax);
      }
      add(track.raw, xs, s.y);
      add(track.smooth, xs, ema(s.y, weight, track.ema));
    }
    if (ans.cursor !== undefined && ans.cursor !== null) this.cursors.set(run, ans.cursor);
    if (ans.unmatched) {
      this.unmatched.set(run, (this.unmatched.get(run) || 0) + ans.unmatched);
      this.showUnmatched();
    }
    if (indices.length) Plotly.extendTraces(this.chart, update, indices);
    return true;
  }

  png() {
    if (!this.loaded) return; // nothing drawn yet
    Plotly.downloadImage(this.chart, { format: "png", filename: this.key.replaceAll("/", "_"),
      width: this.width(), height: this.chart.clientHeight || 280 });
  }

  csv() {
    const rows = [["run_id", "rank", "x", "y", "ymin", "ymax"]];
    const data = this.chart.data || [];
    for (const t of this.tracks) {
      const raw = data[t.raw];
      const lo = t.lo === undefined ? null : data[t.lo];
      const hi = t.hi === undefined ? null : data[t.hi];
      for (let i = 0; i < raw.x.length; i++) {
        rows.push([t.run, t.rank ?? "mean", raw.x[i], raw.y[i] ?? "",
          lo ? lo.y[i] ?? "" : "", hi ? hi.y[i] ?? "" : ""]);
      }
    }
    for (const [id, index] of this.markers) {
      const [run, value] = id.split("|");
      for (const x of data[index].x) rows.push([run, "", x, value, "", ""]);
    }
    const text = rows.map((r) => r.map((c) => (/[",\n]/.test(String(c))
      ? `"${String(c).replaceAll('"', '""')}"` : c)).join(",")).join("\n");
    downloadText(`${this.key.replaceAll("/", "_")}.csv`, `${text}\n`);
  }

  destroy() {
    if (window.Plotly) Plotly.purge(this.chart);
  }
}

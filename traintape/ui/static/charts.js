// Metric charts: the options toolbar and one panel per key, grouped by key prefix; polls the
// live runs once a second for the points past each panel's cursor.
import { Panel, prefixOf } from "./panel.js";
import { api, el, showError } from "./util.js";

const POLL_MS = 1000;
// Panels loading at once: the first charts are drawn while the others wait, rather than all of
// them at the end (the server shares a few cores among the queries it is asked at once).
const LOAD_SLOTS = 2;

/** The chart options toolbar and the panels of `runs`; `onChange(opts)` saves them in the URL. */
export class ChartBoard {
  constructor(root, runs, opts, onChange) {
    this.root = root;
    this.runs = runs; // [{run_id, name, status}]
    this.opts = {
      x: opts.x || "step",
      xkey: opts.xkey || "", // the metric on the x axis when x is "metric"
      ranks: opts.ranks || "mean",
      smooth: Number(opts.smooth) || 0,
      log: Boolean(opts.log),
      filter: opts.filter || "",
    };
    this.onChange = onChange;
    this.live = new Set(runs.filter((r) => r.status === "running").map((r) => r.run_id));
    this.panels = new Map(); // key -> Panel
    this.stopped = false;
    this.timer = null;
    this.ticks = 0;
    this.loading = 0; // loads under way, at most LOAD_SLOTS
    this.waiting = []; // loads waiting for a slot: their resolve functions
    this.grid = el("div", { class: "panel-groups" });
    this.observer = new IntersectionObserver((entries) => {
      for (const e of entries) {
        const panel = e.isIntersecting && this.panelOf(e.target);
        if (panel && !panel.loaded && !panel.busy) panel.load();
      }
    }, { rootMargin: "300px" });
    root.append(this.toolbar(), this.grid);
  }

  label(runId) {
    const run = this.runs.find((r) => r.run_id === runId);
    return run && run.name ? run.name : runId;
  }

  panelOf(node) {
    return [...this.panels.values()].find((p) => p.node === node);
  }

  toolbar() {
    const o = this.opts;
    const xSelect = el("select", { name: "x" });
    xSelect.addEventListener("change", () => {
      const [x, ...key] = xSelect.value.split(":");
      this.set({ x, xkey: x === "metric" ? key.join(":") : "" });
    });
    this.xSelect = xSelect;
    this.fillX([]);
    const select = (name, options) => {
      const node = el("select", { name }, Object.entries(options).map(([v, text]) =>
        el("option", { value: v, selected: v === o[name] }, text)));
      node.addEventListener("change", () => this.set({ [name]: node.value }));
      return node;
    };
    const slider = el("input", { type: "range", min: 0, max: 0.99, step: 0.01, value: o.smooth,
      name: "smooth" });
    const shown = el("span", { class: "mono" }, o.smooth.toFixed(2));
    slider.addEventListener("input", () => {
      shown.textContent = Number(slider.value).toFixed(2);
    });
    slider.addEventListener("change", () => this.set({ smooth: Number(slider.value) }));
    const log = el("input", { type: "checkbox", name: "log", checked: o.log });
    log.addEventListener("change", () => this.set({ log: log.checked }));
    const filter = el("input", { type: "search", value: o.filter, placeholder: "filter keys",
      name: "filter" });
    filter.addEventListener("change", () => this.set({ filter: filter.value.trim() }));
    return el("div", { class: "toolbar" },
      el("label", {}, "x", xSelect),
      el("label", {}, "ranks", select("ranks", { mean: "mean, min-max band", all: "each rank" })),
      el("label", {}, "smoothing", slider, shown),
      el("label", {}, log, "log y"),
      el("label", {}, "keys", filter));
  }

  /** The x axis choices: step, wall time, relative time, then each metric key (`metric:KEY`):
   * every value is then drawn against that metric's value at the same run, rank and step. */
  fillX(keys) {
    const o = this.opts;
    const chosen = o.x === "metric" ? `metric:${o.xkey}` : o.x;
    const metricKeys = [...new Set([...keys, ...(o.x === "metric" ? [o.xkey] : [])])].sort();
    const option = (value, text) => el("option", { value, selected: value === chosen }, text);
    this.xSelect.replaceChildren(
      option("step", "step"), option("time", "wall time"), option("relative", "relative time"),
      el("optgroup", { label: "another metric" },
        metricKeys.map((k) => option(`metric:${k}`, k))));
  }

  /** `fn()` once one of LOAD_SLOTS is free (a panel's full load; polls never wait). */
  async slot(fn) {
    if (this.loading >= LOAD_SLOTS) await new Promise((resolve) => this.waiting.push(resolve));
    this.loading += 1;
    try {
      return await fn();
    } finally {
      this.loading -= 1;
      const next = this.waiting.shift();
      if (next) next();
    }
  }

  /** Applies changed options: each shown panel fetches again (the answers are small: at most
   * two points per pixel), so appended live points and the new options always agree. */
  set(changes) {
    Object.assign(this.opts, changes);
    this.onChange(this.opts);
    if ("filter" in changes) {
      this.build();
      return;
    }
    for (const panel of this.panels.values()) {
      if (!panel.loaded) continue;
      if ("x" in changes || "xkey" in changes) panel.range = null;
      panel.load();
    }
  }

  async start() {
    await this.build();
    this.schedule();
  }

  /** Fetches the metric keys of the runs and lays out one panel per key, by prefix. */
  async build() {
    const ids = this.runs.map((r) => r.run_id);
    const answer = await api("/api/metrics", { runs: ids.join(",") });
    if (this.stopped) return;
    const filter = this.opts.filter.toLowerCase();
    const keys = answer.keys.filter((k) => !filter || k.key.toLowerCase().includes(filter));
    this.fillX(answer.keys.map((k) => k.key));
    for (const [key, panel] of this.panels) {
      if (!keys.some((k) => k.key === key)) {
        this.observer.unobserve(panel.node);
        panel.destroy();
        this.panels.delete(key);
      }
    }
    const groups = new Map();
    for (const k of keys) {
      const prefix = prefixOf(k.key);
      if (!groups.has(prefix)) groups.set(prefix, []);
      groups.get(prefix).push(k);
    }
    const sections = [];
    for (const prefix of [...groups.keys()].sort()) {
      const panels = el("div", { class: "panels" });
      for (const k of groups.get(prefix).sort((a, b) => a.key.localeCompare(b.key))) {
        let panel = this.panels.get(k.key);
        if (panel && String(panel.runIds) !== String(k.runs)) {
          panel.runIds = k.runs; // a run logged this key since: draw it in too
          if (panel.loaded) panel.load();
        }
        if (!panel) {
          panel = new Panel(this, k.key, k.runs);
          this.panels.set(k.key, panel);
          this.observer.observe(panel.node);
        }
        panels.append(panel.node);
      }
      sections.push(el("div", { class: "group-title" }, prefix || "metrics"), panels);
    }
    if (!keys.length) sections.push(el("div", { class: "muted" }, "no metrics logged yet"));
    this.grid.replaceChildren(...sections);
  }

  /** Polls live runs once a second, start to start (a slow answer does not stretch the
   * period); every 5th tick looks for metric keys logged since. */
  schedule(delay = POLL_MS) {
    if (this.stopped) return;
    this.timer = setTimeout(async () => {
      const began = performance.now();
      if (this.live.size) {
        try {
          this.ticks += 1;
          if (this.ticks % 5 === 0) await this.build();
          await Promise.all([...this.panels.values()].map((p) => p.poll()));
        } catch (err) {
          showError(err);
        }
      }
      this.schedule(Math.max(50, POLL_MS - (performance.now() - began)));
    }, delay);
  }

  /** A run page's refresh tells the board which runs still run. */
  setStatus(runId, status) {
    const run = this.runs.find((r) => r.run_id === runId);
    if (run) run.status = status;
    if (status === "running") this.live.add(runId);
    else if (this.live.has(runId)) {
      // one last poll picks up the points logged between the last tick and the run's end
      Promise.all([...this.panels.values()].map((p) => p.poll()))
        .catch(showError)
        .finally(() => this.live.delete(runId));
    }
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.observer.disconnect();
    for (const panel of this.panels.values()) panel.destroy();
  }
}

// A run's media (issue 18): each image key with a slider over the steps it was logged at (a
// list's images, key/0, key/1, ..., together under the key), and each table key the same way.
// Images are the run's stored objects, served by /api/object/SHA256?run=ID (only objects the
// run's artifact events record).
import { api, el, fmtValue, showError } from "./util.js";

function objectUrl(runId, sha256) {
  return `api/object/${sha256}?run=${encodeURIComponent(runId)}`;
}

/** The steps of a key, in order, each with its items (one per rank that logged it there). */
function byStep(items) {
  const steps = new Map();
  for (const it of items) {
    const key = it.step ?? -1;
    if (!steps.has(key)) steps.set(key, []);
    steps.get(key).push(it);
  }
  return [...steps.entries()].sort((a, b) => a[0] - b[0]);
}

/** One media key: a slider over its steps and what it logged at the chosen one. */
class MediaPanel {
  constructor(runId, entry) {
    this.runId = runId;
    this.name = entry.name;
    this.kind = entry.kind;
    this.steps = [];
    this.index = -1;
    this.slider = el("input", { type: "range", min: 0, max: 0, step: 1, value: 0,
      name: "media-step", "aria-label": `${entry.name} step` });
    this.label = el("span", { class: "mono media-step" });
    this.body = el("div", { class: "media-body" });
    this.slider.addEventListener("input", () => this.show(Number(this.slider.value)));
    const dataset = { media: entry.name, kind: entry.kind };
    this.node = el("div", { class: "panel media", dataset },
      el("div", { class: "panel-head" }, el("span", { class: "key", title: entry.name },
        entry.name), el("span", { class: "muted" }, entry.kind)),
      el("div", { class: "media-controls" }, this.slider, this.label), this.body);
    this.update(entry);
  }

  /** New items (a live run): the slider grows; it follows the newest step if it was there. */
  update(entry) {
    const atEnd = this.index === this.steps.length - 1;
    this.steps = byStep(entry.items);
    this.slider.max = String(Math.max(0, this.steps.length - 1));
    this.slider.disabled = this.steps.length < 2;
    const index = atEnd ? this.steps.length - 1 : Math.min(this.index, this.steps.length - 1);
    if (index !== this.index) {
      this.slider.value = String(index);
      this.show(index);
    }
  }

  show(index) {
    this.index = index;
    const [step, items] = this.steps[index] || [null, []];
    this.label.textContent = `step ${step === -1 ? "none" : step}  (${index + 1} of `
      + `${this.steps.length})`;
    this.node.dataset.step = String(step);
    if (this.kind === "image") this.showImages(items);
    else this.showTable(items[0], index).catch(showError);
  }

  showImages(items) {
    // A list's images (key/0, key/1, ...) in their order, then by rank.
    const ordered = [...items].sort((a, b) => (a.index ?? -1) - (b.index ?? -1) || a.rank - b.rank);
    const ranks = new Set(items.map((it) => it.rank)).size;
    this.body.replaceChildren(...ordered.map((it) => el("figure", {},
      el("img", { src: objectUrl(this.runId, it.sha256), alt: it.caption || this.name,
        width: it.width, height: it.height,
        dataset: { sha256: it.sha256, step: it.step, index: it.index ?? "" } }),
      el("figcaption", { class: "muted" },
        [it.caption, it.index == null ? null : `#${it.index}`, ranks > 1 ? `rank ${it.rank}` : null]
          .filter(Boolean).join(" · ")))));
  }

  async showTable(item, index) {
    if (!item) return;
    const t = await api("/api/table", { run: this.runId, sha256: item.sha256 });
    if (index !== this.index) return; // the slider moved on meanwhile
    const table = el("table", { class: "media-table" },
      el("thead", {}, el("tr", {}, t.columns.map((c) => el("th", {}, c)))),
      el("tbody", {}, t.rows.map((r) => el("tr", {}, r.map((v) =>
        el("td", { class: typeof v === "number" ? "num" : "" }, fmtValue(v)))))));
    const more = t.total_rows > t.rows.length
      ? el("div", { class: "muted" }, `first ${t.rows.length} of ${t.total_rows} rows`) : null;
    this.body.replaceChildren(el("div", { class: "table-wrap" }, table), more || "");
  }
}

/** The run page's media section: fills `node`, and `refresh()` picks up newly logged media. */
export class MediaBoard {
  constructor(node, runId) {
    this.node = node;
    this.runId = runId;
    this.panels = new Map(); // `${kind}|${name}` -> MediaPanel
    this.grid = el("div", { class: "panels" });
  }

  async refresh() {
    const answer = await api("/api/media", { run: this.runId });
    for (const entry of answer.media) {
      const id = `${entry.kind}|${entry.name}`;
      if (this.panels.has(id)) this.panels.get(id).update(entry);
      else this.panels.set(id, new MediaPanel(this.runId, entry));
    }
    if (!this.panels.size) return; // no section at all for a run without media
    this.grid.replaceChildren(...[...this.panels.values()].map((p) => p.node));
    if (this.grid.parentNode !== this.node) {
      this.node.replaceChildren(el("h2", {}, "Media"), this.grid);
    }
  }
}

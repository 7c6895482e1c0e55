// Shared helpers of the dashboard: the API client, the URL-hash state, colours, small DOM tools.

/** GET a JSON endpoint; a 4xx/5xx answer's {"error"} becomes the thrown message. The path is
 * taken relative to the page, so the dashboard also works behind a proxy's path prefix. */
export async function api(path, query = {}) {
  const url = new URL(path.replace(/^\//, ""), document.baseURI);
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, String(v));
  }
  const early = window.traintapeEarly || {};
  const started = early[url.href]; // asked for by index.html before the modules loaded: once
  delete early[url.href];
  if (started) (window.traintapeEarlyTaken ||= []).push(url.pathname); // what the tests check
  const response = await (started || fetch(url, { credentials: "same-origin" }));
  let body;
  try {
    body = await response.json();
  } catch {
    body = {};
  }
  if (!response.ok) {
    const msg = body.error || `${response.status} ${response.statusText}`;
    throw new Error(`${url.pathname}: ${msg}`);
  }
  return body;
}

/** Shows an error in the page (never the console: a console error means a bug in this page). */
export function showError(err) {
  const box = document.getElementById("error");
  if (!err) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.textContent = String(err.message || err);
  box.hidden = false;
}

/** The view named by the URL hash: `#/runs?...`, `#/run/ID?...`, `#/compare?runs=a,b&...`. */
export function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/runs";
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(query) };
}

/** Writes the view's state into the hash without a reload, so a copied link reopens it. */
export function replaceQuery(path, state) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(state)) {
    if (v !== undefined && v !== null && v !== "" && v !== false) query.set(k, String(v));
  }
  const text = query.toString();
  const hash = `#${path}${text ? `?${text}` : ""}`;
  if (hash !== location.hash) history.replaceState(null, "", hash);
}

// Well-separated hues (Tableau 10 and two more); a run keeps its colour on every page.
const PALETTE = [
  [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
  [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
  [57, 59, 121], [173, 73, 74],
];

/** A run's colour, stable across pages and reloads: a palette entry from a hash of its id
 * (FNV-1a, then murmur3's finalizer so that ids differing in one character spread out). */
export function runColour(runId, alpha = 1) {
  let h = 0x811c9dc5;
  for (let i = 0; i < runId.length; i++) {
    h ^= runId.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  const [r, g, b] = PALETTE[(h >>> 0) % PALETTE.length];
  return `rgba(${r}, ${g}, ${b}, ${alpha})`;
}

/** `el("td", {class: "num"}, "1.5")`: an element with attributes and children. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** A number for a table cell: 4 significant digits, exponent form when tiny or huge. */
export function fmtNum(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "string") return v; // "nan", "inf", "-inf" as the server spells them
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v) && Math.abs(v) < 1e9) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e6) ? v.toExponential(3) : String(+v.toPrecision(4));
}

export function fmtValue(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "number") return fmtNum(v);
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

export function fmtDuration(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return `${s.toFixed(1)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${Math.round(s % 60)}s`;
  return `${Math.floor(s / 3600)}h ${Math.round((s % 3600) / 60)}m`;
}

export function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

/** A key/value grid of an object (config, params, environment, summary). */
export function kvGrid(obj) {
  const entries = Object.entries(obj || {});
  if (!entries.length) return el("div", { class: "muted" }, "none");
  return el(
    "div",
    { class: "kv" },
    entries.flatMap(([k, v]) => [el("div", {}, k), el("div", { class: "mono" }, fmtValue(v))]),
  );
}

/** A table of row objects with the given columns (all keys of the first rows when none). */
export function rowsTable(rows, columns) {
  if (!rows || !rows.length) return el("div", { class: "muted" }, "none");
  const cols = columns || [...new Set(rows.slice(0, 50).flatMap((r) => Object.keys(r)))];
  return el(
    "table",
    {},
    el("thead", {}, el("tr", {}, cols.map((c) => el("th", {}, c)))),
    el(
      "tbody",
      {},
      rows.map((r) =>
        el(
          "tr",
          {},
          cols.map((c) =>
            el("td", { class: typeof r[c] === "number" ? "num" : "" }, fmtValue(r[c])),
          ),
        ),
      ),
    ),
  );
}

/** Saves text as a file download (CSV of a panel). */
export function downloadText(filename, text, type = "text/csv") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = el("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** Marks a moment once per page load (`performance.getEntriesByName(name)`): when the runs table
 * and the first chart were drawn, for benchmarks/ui.py's first-paint figure. */
export function markOnce(name) {
  if (!performance.getEntriesByName(name, "mark").length) performance.mark(name);
}

let plotly = null;

/** Resolves to Plotly once its script has run; the first call adds the script to the page (a
 * page that draws no chart, such as the runs table, never pays for parsing it). */
export function plotlyReady() {
  if (!plotly) {
    plotly = window.Plotly ? Promise.resolve(window.Plotly) : new Promise((resolve, reject) => {
      // on a page of charts index.html has fetched it already (preload): this runs it
      const script = el("script", { id: "plotly", src: "static/plotly.min.js", async: true });
      const failed = () => {
        plotly = null; // a later chart tries again
        script.remove();
        reject(new Error(
          "static/plotly.min.js did not load: is the plotly package installed (traintape[ui])?"));
      };
      script.addEventListener("load", () => resolve(window.Plotly));
      script.addEventListener("error", failed);
      document.head.append(script);
    });
  }
  return plotly;
}

/** Loads Plotly once the page is idle, so that the chart a click opens next finds it ready. */
export function preloadPlotly() {
  const start = () => plotlyReady().catch(() => {}); // a chart that needs it reports the error
  if (window.requestIdleCallback) requestIdleCallback(start, { timeout: 3000 });
  else setTimeout(start, 500);
}

// The runs table: filters (project, tag, status, text, SQL WHERE), sort, group by a config key,
// chosen config and metric columns, and a selection that opens charts or the compare page.
import { api, el, fmtDuration, fmtNum, fmtTime, fmtValue, markOnce, preloadPlotly, replaceQuery,
  runColour, showError } from "./util.js";

const FIXED = [
  ["status", (r) => r.status],
  ["project", (r) => r.project],
  ["name", (r) => r.name],
  ["tags", (r) => (r.tags || []).join(" ")],
  ["started", (r) => r.started],
  ["duration", (r) => r.duration_s],
  ["host", (r) => r.host],
  ["commit", (r) => r.git_commit],
  ["ranks", (r) => r.ranks],
];
const FIRST_ROWS = 60; // drawn before the first paint; the rest follow in chunks of MORE_ROWS
const MORE_ROWS = 250;
const STATUSES = ["", "running", "completed", "failed", "killed", "crashed"];

function list(text) {
  return (text || "").split(",").filter(Boolean);
}

function cellValue(run, col) {
  const fixed = FIXED.find(([name]) => name === col);
  if (fixed) return fixed[1](run);
  if (col.startsWith("config:")) return (run.config || {})[col.slice(7)];
  if (col.startsWith("last:")) return (run.last || {})[col.slice(5)];
  if (col.startsWith("best:")) return (run.best || {})[col.slice(5)];
  return undefined;
}

function compare(a, b) {
  if (a === b) return 0;
  if (a === undefined || a === null) return 1; // missing values last, either direction
  if (b === undefined || b === null) return -1;
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(a).localeCompare(String(b), undefined, { numeric: true });
}

function renderCell(run, col) {
  const v = cellValue(run, col);
  switch (col) {
    case "status":
      return el(
        "td",
        { class: `status-${run.status}` },
        el("span", { class: run.status === "running" ? "dot-live" : "" }),
        run.status,
      );
    case "name":
      return el(
        "td",
        {},
        el("span", { class: "swatch", style: `background:${runColour(run.run_id)}` }),
        el("a", { href: `#/run/${encodeURIComponent(run.run_id)}` }, run.name || run.run_id),
      );
    case "tags":
      return el("td", {}, (run.tags || []).map((t) => el("span", { class: "tag" }, t)));
    case "started":
      return el("td", {}, fmtTime(v));
    case "duration":
      return el("td", { class: "num" }, fmtDuration(v));
    case "commit":
      return el("td", { class: "mono" }, (v || "").slice(0, 10));
    default:
      return el("td", { class: typeof v === "number" ? "num" : "" }, typeof v === "number"
        ? fmtNum(v) : fmtValue(v));
  }
}

/** A dropdown of checkboxes; `onChange` gets the chosen values. */
function picker(title, options, chosen, onChange) {
  const set = new Set(chosen);
  const box = el("div", { class: "choices" });
  for (const opt of options) {
    const input = el("input", { type: "checkbox", checked: set.has(opt) });
    input.addEventListener("change", () => {
      if (input.checked) set.add(opt);
      else set.delete(opt);
      onChange([...set]);
    });
    box.append(el("label", {}, input, opt));
  }
  if (!options.length) box.append(el("span", { class: "muted" }, "none"));
  return el("div", { class: "picker" }, el("details", {}, el("summary", {}, title), box));
}

export async function renderRuns(root, query) {
  const state = {
    project: query.get("project") || "",
    tag: query.get("tag") || "",
    status: query.get("status") || "",
    q: query.get("q") || "",
    where: query.get("where") || "",
    group: query.get("group") || "",
    sort: query.get("sort") || "started",
    desc: query.get("desc") !== "0",
    cols: list(query.get("cols")), // config keys shown as columns
    metrics: list(query.get("metrics")), // metric keys shown as last/best columns
  };
  const selected = new Set(list(query.get("sel")));
  let data = { runs: [], metrics: [], config_keys: [] };
  let projects = new Set();
  let timer = null;
  let stopped = false;
  let controlsSig = null; // redraw the controls only when their options change (keeps focus)
  let drawn = 0; // the latest draw: an earlier one still adding rows stops

  const saveState = () =>
    replaceQuery("/runs", {
      ...state,
      desc: state.desc ? "" : "0",
      cols: state.cols.join(","),
      metrics: state.metrics.join(","),
      sel: [...selected].join(","),
    });

  const controls = el("div", { class: "toolbar" });
  const tableWrap = el("div", { class: "table-wrap" });
  const count = el("span", { class: "muted" });
  const chartsBtn = el("button", { class: "primary", disabled: true }, "Charts");
  const compareBtn = el("button", { disabled: true }, "Compare");
  chartsBtn.addEventListener("click", () => openSelected());
  compareBtn.addEventListener("click", () => openSelected());
  root.append(el("h2", {}, "Runs"), controls, tableWrap);

  function openSelected() {
    const ids = [...selected];
    location.hash = ids.length === 1
      ? `#/run/${encodeURIComponent(ids[0])}`
      : `#/compare?runs=${ids.map(encodeURIComponent).join(",")}`;
  }

  function input(name, attrs) {
    const node = el("input", { type: "search", value: state[name], ...attrs });
    node.addEventListener("change", () => {
      state[name] = node.value.trim();
      load();
    });
    return node;
  }

  function select(name, options, labels = {}) {
    const node = el(
      "select",
      {},
      options.map((o) => el("option", { value: o, selected: o === state[name] }, labels[o] ?? o)),
    );
    node.addEventListener("change", () => {
      state[name] = node.value;
      if (name === "group") draw();
      else load();
    });
    return node;
  }

  function drawControls() {
    const projectOptions = ["", ...[...projects].sort()];
    if (state.project && !projects.has(state.project)) projectOptions.push(state.project);
    controls.replaceChildren(
      el("label", {}, "project", select("project", projectOptions, { "": "all" })),
      el("label", {}, "status", select("status", STATUSES, { "": "any" })),
      el("label", {}, "tag", input("tag", { size: 10 })),
      el("label", {}, "search", input("q", { size: 14, placeholder: "name, id, host" })),
      el("label", {}, "WHERE", input("where", { class: "where", placeholder: "SQL over runs" })),
      el("label", {}, "group by", select("group", ["", ...data.config_keys], { "": "none" })),
      picker("config columns", data.config_keys, state.cols, (v) => {
        state.cols = v;
        draw();
      }),
      picker("metric columns", data.metrics, state.metrics, (v) => {
        state.metrics = v;
        draw();
      }),
      chartsBtn,
      compareBtn,
      count,
    );
  }

  function columns() {
    return [
      ...FIXED.map(([name]) => name),
      ...state.cols.map((c) => `config:${c}`),
      ...state.metrics.flatMap((m) => [`last:${m}`, `best:${m}`]),
    ];
  }

  function header(cols) {
    const all = el("input", { type: "checkbox", title: "select all shown" });
    all.addEventListener("change", () => {
      for (const r of data.runs) all.checked ? selected.add(r.run_id) : selected.delete(r.run_id);
      draw();
    });
    return el("tr", {}, el("th", {}, all), cols.map((c) => {
      const cls = ["sortable", state.sort === c ? (state.desc ? "sorted-desc" : "sorted-asc") : ""];
      return el("th", {
        class: cls.join(" "),
        onclick: () => {
          state.desc = state.sort === c ? !state.desc : false;
          state.sort = c;
          draw();
        },
      }, c.replace(/^config:/, ""));
    }));
  }

  function row(run, cols) {
    const box = el("input", { type: "checkbox", checked: selected.has(run.run_id) });
    box.addEventListener("change", () => {
      box.checked ? selected.add(run.run_id) : selected.delete(run.run_id);
      updateButtons();
      saveState();
    });
    return el("tr", { class: "run", dataset: { runId: run.run_id } }, el("td", {}, box),
      cols.map((c) => renderCell(run, c)));
  }

  function updateButtons() {
    chartsBtn.disabled = selected.size === 0;
    compareBtn.disabled = selected.size < 2;
    count.textContent = `${data.runs.length} runs, ${selected.size} selected`;
  }

  function draw() {
    const cols = columns();
    const sign = state.desc ? -1 : 1;
    const runs = [...data.runs].sort((a, b) =>
      sign * compare(cellValue(a, state.sort), cellValue(b, state.sort)));
    const body = el("tbody");
    const rows = []; // a function per <tr>, made when it is added
    if (state.group) {
      const groups = new Map();
      for (const r of runs) {
        const g = fmtValue((r.config || {})[state.group]) || "(none)";
        if (!groups.has(g)) groups.set(g, []);
        groups.get(g).push(r);
      }
      for (const [g, members] of [...groups].sort((a, b) => compare(a[0], b[0]))) {
        rows.push(() => el("tr", { class: "group" },
          el("td", { colspan: cols.length + 1 }, `${state.group} = ${g} (${members.length})`)));
        for (const r of members) rows.push(() => row(r, cols));
      }
    } else {
      for (const r of runs) rows.push(() => row(r, cols));
    }
    // The first screenful is drawn at once, the rest in later tasks: a thousand runs' rows
    // built in one go would hold the first paint back by a few hundred ms.
    const mine = ++drawn;
    const add = (from) => {
      if (mine !== drawn || stopped) return;
      const upto = from === 0 ? FIRST_ROWS : from + MORE_ROWS;
      for (const make of rows.slice(from, upto)) body.append(make());
      if (upto < rows.length) setTimeout(() => add(upto), 0);
    };
    add(0);
    tableWrap.replaceChildren(el("table", { id: "runs-table" }, el("thead", {}, header(cols)),
      body));
    markOnce("traintape:runs-table");
    updateButtons();
    saveState();
  }

  async function load() {
    clearTimeout(timer);
    try {
      data = await api("/api/runs", {
        project: state.project, tag: state.tag, status: state.status, q: state.q,
        where: state.where, group: state.group,
      });
      showError(null);
    } catch (err) {
      showError(err);
    }
    if (stopped) return;
    for (const r of data.runs) projects.add(r.project);
    document.getElementById("live-badge").hidden = !data.runs.some((r) => r.status === "running");
    const sig = JSON.stringify([[...projects], data.config_keys, data.metrics]);
    if (sig !== controlsSig) {
      controlsSig = sig;
      drawControls();
    }
    draw();
    // Live runs change duration, status and last values: refresh the table while any runs,
    // and while the server is still computing some runs' last/best (`pending`, on a cold start).
    const live = data.runs.some((r) => r.status === "running") || (data.pending || []).length > 0;
    timer = setTimeout(load, live ? 2000 : 10000);
  }

  await load();
  preloadPlotly(); // after the table is drawn: the charts a click opens find Plotly ready
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
      document.getElementById("live-badge").hidden = true;
    },
  };
}

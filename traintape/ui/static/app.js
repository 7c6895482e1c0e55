// The dashboard's entry point: picks the view from the URL hash and tears the last one down.
import { renderCompare, renderRun } from "./pages.js";
import { renderRuns } from "./runs.js";
import { el, parseHash, showError } from "./util.js";

let current = null; // the shown view: {key, stop()} so its timers and polls end with it
let generation = 0; // a view still loading when the hash changes again is stopped on arrival

async function route() {
  const { parts, query } = parseHash();
  const key = parts.join("/");
  // A view rewrites its own query (filters, axis, smoothing) in place: no re-render for that.
  if (current && current.key === key) return;
  if (current) current.stop();
  const mine = ++generation;
  current = { key, stop() {} };
  showError(null);
  // Each view draws into its own element: one left behind by a quick change draws nowhere.
  const root = el("div");
  document.getElementById("view").replaceChildren(root);
  const crumb = document.getElementById("crumb");
  crumb.textContent = "";
  let view = { stop() {} };
  try {
    if (parts[0] === "run" && parts[1]) {
      crumb.textContent = `/ run ${parts[1]}`;
      view = await renderRun(root, parts[1], query);
    } else if (parts[0] === "compare") {
      crumb.textContent = "/ compare";
      view = await renderCompare(root, query);
    } else {
      view = await renderRuns(root, query);
    }
  } catch (err) {
    if (mine === generation) showError(err);
  }
  if (mine === generation) current = { key, stop: view.stop };
  else view.stop();
}

window.addEventListener("hashchange", route);
route();

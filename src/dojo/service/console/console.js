// The dojo service console: plain JavaScript over the same HTTP API as the CLI (no build step).
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("dojo-token") || "";
let timer = null;
let logOffset = 0;
let logJob = null;
let reportShown = null;

async function api(path, options = {}) {
  const headers = { Authorization: "Bearer " + token, ...(options.headers || {}) };
  const resp = await fetch(path, { ...options, headers });
  if (resp.status === 401) { signOut(); throw new Error("signed out"); }
  const body = await resp.json();
  if (!resp.ok) {
    const detail = Array.isArray(body.detail) ? body.detail.join("\n") : body.detail;
    throw new Error(detail);
  }
  return body;
}

function signOut() {
  token = "";
  sessionStorage.removeItem("dojo-token");
  route();
}

function colour(id) {
  let h = 0;
  for (const ch of id) h = (h * 31 + ch.charCodeAt(0)) % 360;
  return `hsl(${h}, 60%, 62%)`;
}

function text(el, value) { el.textContent = value == null ? "" : String(value); }

async function drawMachine() {
  const m = await api("/api/machine");
  text($("system"), `${m.system}: ${m.rows} x ${m.cols} tiles`);
  text($("queued"), `(${m.queued} queued on the machine)`);
  const owner = {};
  for (const a of m.allocations) {
    const [r0, c0, rows, cols] = a.rect;
    for (let r = r0; r < r0 + rows; r++)
      for (let c = c0; c < c0 + cols; c++) owner[`${r},${c}`] = a;
  }
  const map = $("map");
  map.style.gridTemplateColumns = `repeat(${m.cols}, 34px)`;
  map.replaceChildren();
  for (let r = 0; r < m.rows; r++) {
    for (let c = 0; c < m.cols; c++) {
      const tile = document.createElement("div");
      const a = owner[`${r},${c}`];
      tile.className = "tile" + (a ? (a.job ? " busy" : " other") : "");
      tile.title = a ? (a.job ? `job ${a.job} (${a.state})` : "another tenant") : `free [${r},${c}]`;
      if (a && a.job) {
        tile.style.background = colour(a.job);
        tile.dataset.job = a.job;
        text(tile, a.job.slice(0, 4));
        tile.onclick = () => { location.hash = "#job/" + a.job; };
      }
      map.appendChild(tile);
    }
  }
}

async function drawJobs() {
  const jobs = await api("/api/jobs");
  const body = $("jobs").tBodies[0];
  body.replaceChildren();
  for (const j of jobs) {
    const tr = document.createElement("tr");
    tr.dataset.job = j.id;
    tr.className = "job-row state-" + j.state;
    const link = document.createElement("a");
    link.href = "#job/" + j.id;
    text(link, j.id);
    const cells = [link, j.kind, j.spec.model, j.state, j.tiles, j.runs, j.reason];
    for (const value of cells) {
      const td = document.createElement("td");
      if (value instanceof Node) td.appendChild(value); else text(td, value);
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  const u = await api("/api/usage");
  text($("who"), `tenant ${u.tenant} (${u.role})`);
  text($("usage"), `Quota ${u.quota_tile_hours} tile-hours; used ${u.used_tile_hours.toFixed(3)}, ` +
       `committed ${u.committed_tile_hours.toFixed(3)}.`);
}

function drawLoss(points) {
  const svg = $("loss");
  svg.replaceChildren();
  if (points.length < 1) return;
  const W = 420, H = 220, pad = 30;
  const xs = points.map((p) => p.step), ys = points.map((p) => p.loss);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-9);
  const sx = (x) => pad + (x - x0) / (x1 - x0) * (W - 2 * pad);
  const sy = (y) => H - pad - (y - y0) / (y1 - y0) * (H - 2 * pad);
  const ns = "http://www.w3.org/2000/svg";
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.map((p) => `${sx(p.step)},${sy(p.loss)}`).join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#36c");
  line.setAttribute("stroke-width", "2");
  svg.appendChild(line);
  for (const [label, x, y] of [[y1.toPrecision(4), 2, pad], [y0.toPrecision(4), 2, H - pad],
                               [`step ${x1}`, W - 70, H - 8]]) {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", x); t.setAttribute("y", y); t.setAttribute("font-size", "11");
    t.textContent = label;
    svg.appendChild(t);
  }
}

async function drawJob(id) {
  const j = await api("/api/jobs/" + id);
  text($("job-id"), j.id);
  text($("job-state"), j.state);
  $("job-state").dataset.state = j.state;
  text($("job-meta"), `${j.kind} ${j.spec.model} on ${j.tiles} tiles` +
       (j.rect ? ` at [${j.rect}]` : "") + `, run ${j.runs}` + (j.reason ? ` - ${j.reason}` : ""));
  const points = (await api(`/api/jobs/${id}/metrics`)).filter((p) => p.loss !== undefined);
  drawLoss(points);
  const steps = j.spec.steps || 1;
  const done = j.state === "succeeded" ? 1 : (points.length ? points[points.length - 1].step / steps : 0);
  $("job-bar").style.width = `${Math.round(done * 100)}%`;
  text($("job-progress"), `${Math.round(done * 100)} %`);
  $("job-cancel").hidden = !["queued", "running"].includes(j.state);
  if (logJob !== id) { logJob = id; logOffset = 0; $("job-log").textContent = ""; reportShown = null; }
  const part = await api(`/api/jobs/${id}/logs?offset=${logOffset}`);
  $("job-log").textContent += part.text;
  logOffset = part.offset;
  text($("job-result"), j.result ? JSON.stringify(j.result, null, 1).slice(0, 4000) : "");
  if (j.state === "succeeded" && reportShown !== id) {
    reportShown = id;
    const resp = await fetch(`/api/jobs/${id}/artifacts/report.html`,
                             { headers: { Authorization: "Bearer " + token } });
    if (resp.ok) $("job-report").src = URL.createObjectURL(await resp.blob());
  }
}

async function refresh() {
  const hash = location.hash;
  try {
    if (hash.startsWith("#job/")) await drawJob(hash.slice(5));
    else { await drawMachine(); await drawJobs(); }
  } catch (err) {
    if (err.message !== "signed out") text($("submit-error"), err.message);
  }
}

function route() {
  clearInterval(timer);
  const signedIn = Boolean(token);
  $("login").hidden = signedIn;
  $("home").hidden = !signedIn || location.hash.startsWith("#job/");
  $("job").hidden = !signedIn || !location.hash.startsWith("#job/");
  if (!signedIn) return;
  refresh();
  timer = setInterval(refresh, 1000);
}

$("signin").onclick = async () => {
  token = $("token").value.trim();
  try {
    await api("/api/usage");
    sessionStorage.setItem("dojo-token", token);
    text($("login-error"), "");
    route();
  } catch (err) {
    token = "";
    text($("login-error"), "That token was not accepted.");
  }
};

$("submit").onsubmit = async (event) => {
  event.preventDefault();
  const f = new FormData(event.target);
  const spec = { kind: f.get("kind"), model: f.get("model"), tiles: Number(f.get("tiles")),
                 plan: f.get("plan") || "auto" };
  if (f.get("batch")) spec.batch = Number(f.get("batch"));
  if (["train", "occupancy"].includes(spec.kind) && f.get("steps")) spec.steps = Number(f.get("steps"));
  if (spec.kind === "occupancy") { delete spec.model; delete spec.plan; }
  try {
    await api("/api/jobs", { method: "POST", body: JSON.stringify(spec),
                             headers: { "Content-Type": "application/json" } });
    text($("submit-error"), "");
    refresh();
  } catch (err) {
    text($("submit-error"), err.message);
  }
};

$("job-cancel").onclick = async () => {
  await api(`/api/jobs/${location.hash.slice(5)}/cancel`, { method: "POST" });
  refresh();
};

window.addEventListener("hashchange", route);
route();

// trt-mpq serve: the page's own code (no third-party scripts). It lists jobs, submits new
// ones, and draws a job's measured plans live (server-sent events) on a latency-ratio vs
// accuracy-drop plot with the frontier, the budget line and the chosen plan.
// The server's CSP allows no inline style: element styles are set through the CSSOM. Requests
// that change something carry the server's CSRF token (the page's meta tag); with a token
// server, the session cookie (set by /?token=...) authenticates every request.
"use strict";
const CSRF = (document.querySelector('meta[name="trt-mpq-csrf"]') || {}).content || "";
const COLORS = {"fp32": "#d9d9d9", "fp16": "#b7d7a8", "int8": "#3c78d8", "int8-dynamic": "#6fa8dc",
                "int4w": "#8e7cc3", "fp8": "#e69138"};
let current = null;   // {id, source, points: Map(seq -> point), job, plans}

function url(path) { return path; }
async function api(path, opts) {
  opts = Object.assign({credentials: "same-origin"}, opts || {});
  if (opts.method && opts.method !== "GET") {
    opts.headers = Object.assign({"Content-Type": "application/json", "X-TRT-MPQ-CSRF": CSRF},
                                 opts.headers || {});
  }
  const r = await fetch(url(path), opts);
  const body = await r.json().catch(() => ({error: r.statusText}));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}
function el(tag, attrs, text) {
  const e = document.createElementNS(tag === "svg" || attrs && attrs.svg ?
      "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml", tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "svg") continue;
    if (k === "style") Object.assign(e.style, v);   // the CSSOM: allowed by the CSP
    else e.setAttribute(k, v);
  }
  if (text !== undefined) e.textContent = text;
  return e;
}

async function init() {
  const m = await api("/api/models");
  const model = document.getElementById("model");
  for (const name of m.models) model.append(el("option", {value: name}, name));
  if (m.tasks.length) model.append(el("option", {value: ""}, "upload an ONNX file..."));
  for (const b of m.backends) document.getElementById("backend").append(el("option", {value: b}, b));
  model.addEventListener("change", () => {
    document.getElementById("upload-fields").hidden = model.value !== "";
  });
  document.getElementById("submit-form").addEventListener("submit", submit);
  document.getElementById("cancel").addEventListener("click", () => act("cancel"));
  document.getElementById("resume").addEventListener("click", () => act("resume"));
  await refreshJobs();
  setInterval(refreshJobs, 2000);
}

async function submit(ev) {
  ev.preventDefault();
  const err = document.getElementById("form-error");
  err.textContent = "";
  try {
    let options;
    try { options = JSON.parse(document.getElementById("options").value || "{}"); }
    catch (e) { throw new Error("the options are not JSON: " + e.message); }
    const body = {max_drop: document.getElementById("max-drop").value,
                  backend: document.getElementById("backend").value, options};
    const model = document.getElementById("model").value;
    if (model) {
      body.model = model;
    } else {
      const file = document.getElementById("upload-file").files[0];
      if (!file) throw new Error("choose an .onnx file");
      const up = await api("/api/uploads", {method: "POST", body: file,
                                            headers: {"Content-Type": "application/octet-stream"}});
      body.upload = up.upload;
      body.task = document.getElementById("task").value;
    }
    const job = await api("/api/jobs", {method: "POST", body: JSON.stringify(body),
                                        headers: {"Content-Type": "application/json"}});
    await refreshJobs();
    select(job.id);
  } catch (e) {
    err.textContent = e.message;
  }
}

function fmtBest(b) {
  if (!b) return "";
  return "x" + b.ratio.toFixed(3) + (b.final ? "" : " (so far)");
}

async function refreshJobs() {
  let data;
  try { data = await api("/api/jobs"); } catch (e) { return; }
  const tbody = document.getElementById("jobs");
  // rows are kept and updated in place (newest first), so a click never meets a stale row
  for (const j of data.jobs) {
    let tr = tbody.querySelector('tr[data-job-id="' + j.id + '"]');
    if (!tr) {
      tr = el("tr", {"class": "job", "data-job-id": j.id});
      for (let i = 0; i < 5; i++) tr.append(el("td"));
      tr.addEventListener("click", () => select(j.id));
      tbody.prepend(tr);
    }
    const cells = tr.children;
    cells[0].textContent = j.id;
    cells[1].textContent = j.spec.model || j.spec.task || "";
    cells[2].textContent = j.state;
    cells[2].className = "state-" + j.state;
    cells[3].textContent = String(j.evaluations);
    cells[4].textContent = fmtBest(j.best);
    tr.classList.toggle("selected", !!current && current.id === j.id);
  }
}

function select(id) {
  if (current && current.source) current.source.close();
  current = {id, points: new Map(), job: null, plans: null, source: null};
  document.getElementById("job-view").hidden = false;
  document.getElementById("job-id").textContent = id;
  document.getElementById("strip").replaceChildren();
  document.getElementById("strip-legend").replaceChildren();
  draw();
  const source = new EventSource(url("/api/jobs/" + id + "/events"));
  current.source = source;
  const mine = current;
  source.addEventListener("plan", e => {
    const p = JSON.parse(e.data);
    mine.points.set(p.seq, p);
    if (mine === current) draw();
  });
  source.addEventListener("job", e => {
    mine.job = JSON.parse(e.data);
    if (mine === current) showJob();
  });
  source.addEventListener("end", async () => {
    source.close();
    mine.plans = await api("/api/jobs/" + id + "/plans");
    for (const p of mine.plans.plans) mine.points.set(p.seq, p);
    if (mine === current) { showJob(); draw(); strip(); }
    refreshJobs();
  });
}

function showJob() {
  const j = current.job;
  if (!j) return;
  const state = document.getElementById("job-state");
  state.textContent = j.state;
  state.className = "state-" + j.state;
  const best = j.best ? (j.best.final ? "answer " : "fastest measured so far ") + fmtBest(j.best) +
      (j.best.holdout_rel_drop_upper != null ? ", holdout drop <= " +
       (100 * j.best.holdout_rel_drop_upper).toFixed(2) + "% (certified)" : "") : "";
  document.getElementById("job-progress").textContent =
      j.evaluations + " plan(s) measured" + (best ? "; " + best : "") +
      (j.phase ? " - " + j.phase : "");
  document.getElementById("cancel").disabled = !(j.state === "queued" || j.state === "running");
  document.getElementById("resume").disabled = !(j.state === "cancelled" || j.state === "failed");
  document.getElementById("job-message").textContent =
      j.state === "failed" || j.state === "cancelled" ? j.message : "";
  const dl = document.getElementById("downloads");
  dl.replaceChildren();
  for (const f of j.files) {
    dl.append(el("a", {href: url("/api/jobs/" + j.id + "/files/" + f), download: f,
                       "class": "download"}, f));
  }
}

function relative() {
  const md = current.job ? String(current.job.spec.max_drop) : "1%";
  return md.trim().endsWith("%");
}
function yOf(p) { return relative() ? 100 * p.rel_drop : p.drop; }
function budgetY() {
  const md = current.job ? String(current.job.spec.max_drop).trim() : "1%";
  return relative() ? parseFloat(md) : parseFloat(md);
}

function frontier(points) {
  const ok = points.filter(p => p.status === "ok" && p.ratio != null && p.drop != null)
                   .sort((a, b) => a.ratio - b.ratio || a.drop - b.drop);
  const front = []; let best = Infinity;
  for (const p of ok) if (p.drop < best - 1e-12) { front.push(p); best = p.drop; }
  return front;
}

function draw() {
  const svg = document.getElementById("plot");
  svg.replaceChildren();
  const W = svg.clientWidth || 700, H = svg.clientHeight || 380, L = 56, R = 12, T = 12, B = 36;
  const pts = [...current.points.values()].filter(p => p.ratio != null && p.drop != null);
  const by = budgetY();
  const xs = pts.map(p => p.ratio).concat([1]), ys = pts.map(yOf).concat([0, by]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (x1 - x0 < 1e-6) { x0 -= 0.05; x1 += 0.05; }
  if (y1 - y0 < 1e-9) { y1 = y0 + 1; }
  const pad = (x1 - x0) * 0.05; x0 -= pad; x1 += pad;
  const ypad = (y1 - y0) * 0.08; y0 -= ypad; y1 += ypad;
  const X = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const Y = y => H - B - (y - y0) / (y1 - y0) * (H - T - B);
  svg.append(el("line", {svg: 1, x1: L, y1: H - B, x2: W - R, y2: H - B, "class": "axis"}));
  svg.append(el("line", {svg: 1, x1: L, y1: T, x2: L, y2: H - B, "class": "axis"}));
  for (let i = 0; i <= 4; i++) {
    const xv = x0 + (x1 - x0) * i / 4, yv = y0 + (y1 - y0) * i / 4;
    svg.append(el("text", {svg: 1, x: X(xv) - 12, y: H - B + 14}, "x" + xv.toFixed(2)));
    svg.append(el("text", {svg: 1, x: 4, y: Y(yv) + 4}, yv.toFixed(relative() ? 2 : 4) +
                                                     (relative() ? "%" : "")));
  }
  svg.append(el("text", {svg: 1, x: W / 2 - 80, y: H - 4}, "latency ratio (vs unquantized)"));
  svg.append(el("text", {svg: 1, x: L + 4, y: T + 10}, "accuracy drop"));
  svg.append(el("line", {svg: 1, x1: L, x2: W - R, y1: Y(by), y2: Y(by), "class": "budget",
                         id: "budget-line"}));
  const front = frontier(pts);
  const frontSet = new Set(front.map(p => p.seq));
  if (front.length) {
    svg.append(el("polyline", {svg: 1, "class": "frontier", id: "frontier",
                               points: front.map(p => X(p.ratio) + "," + Y(yOf(p))).join(" ")}));
  }
  for (const p of pts) {
    const cls = "point" + (frontSet.has(p.seq) ? " front" : "") + (yOf(p) > by ? " out" : "");
    const c = el("circle", {svg: 1, cx: X(p.ratio), cy: Y(yOf(p)), r: 5, "class": cls,
                            "data-seq": p.seq});
    c.append(el("title", {svg: 1}, p.label + ": x" + p.ratio.toFixed(3) + ", drop " +
                (relative() ? (100 * p.rel_drop).toFixed(3) + "%" : p.drop.toFixed(5)) +
                (p.samples ? " on " + p.samples + " samples" : "")));
    svg.append(c);
  }
  const a = current.plans && current.plans.answer;
  if (a) {
    // ringed where the search measured it (its final ratio, re-measured with the other
    // finalists, is in the title and the progress line)
    const ap = [...current.points.values()].find(p => p.digest === a.plan_digest &&
                                                   p.ratio != null && p.drop != null);
    const ring = el("circle", {svg: 1, cx: X(ap ? ap.ratio : a.ratio),
                               cy: Y(ap ? yOf(ap) : 0), r: 9, "class": "answer", id: "answer"});
    ring.append(el("title", {svg: 1}, "answer: x" + a.ratio.toFixed(3) + " re-measured" +
                (a.holdout_rel_drop_upper != null ? ", holdout drop <= " +
                 (100 * a.holdout_rel_drop_upper).toFixed(2) + "%" : "")));
    svg.append(ring);
  }
}

function boundaryText(b, basis) {
  const pct = x => (100 * x).toFixed(2) + "%";
  const lines = [b.src + " (" + b.from + ") -> " + b.dst + " (" + b.to + ")",
                 "tensor: " + (b.tensors || []).join(", "),
                 "nodes: " + ((b.nodes || []).map(n => n.name + " (" + n.op_type + ")").join(", ") ||
                              "none (the runtime converts inside the kernel)"),
                 "estimated cost: " + (b.estimated_cost != null ?
                     pct(b.estimated_cost) + " of the baseline's latency" :
                     "none (" + (basis.estimate.reason || "no latency model") + ")")];
  if (b.measured_ms != null) {
    lines.push("measured: " + b.measured_ms.toFixed(3) + " ms per run (" +
               b.kernels.filter(k => k[1] != null).map(k => k[0] + " " + k[1].toFixed(3))
                        .join(", ") + ")");
  } else if (b.layers && b.layers.length) {
    lines.push("layers: " + b.layers.map(l => l[0] + " " + l[1]).join("; "));
  } else {
    lines.push("measured: " + (basis.measured.source ? "no kernel of its own" :
                               basis.measured.reason || "not measured"));
  }
  return lines.join("\n");
}

function strip() {
  const a = current.plans && current.plans.answer;
  const s = document.getElementById("strip"), legend = document.getElementById("strip-legend");
  s.replaceChildren(); legend.replaceChildren();
  if (!a) return;
  // a precision boundary is drawn where the stream enters its group (the graph's output:
  // after the last group), its tooltip saying what converts there and what it costs
  const basis = a.boundaries || {estimate: {}, measured: {}, list: []};
  const at = new Map(), index = new Map(a.groups.map(([g], i) => [g, i]));
  for (const b of basis.list) {
    const i = index.has(b.dst) ? index.get(b.dst) : a.groups.length;
    if (!at.has(i)) at.set(i, []);
    at.get(i).push(b);
  }
  const marker = i => {
    const list = at.get(i);
    if (!list) return;
    s.append(el("span", {"class": "boundary", "data-dst": list[0].dst, "data-count": list.length,
                         title: list.map(b => boundaryText(b, basis)).join("\n\n")}));
  };
  const seen = new Set();
  a.groups.forEach(([group, prec], i) => {
    marker(i);
    s.append(el("div", {title: group + ": " + prec, "data-precision": prec,
                        style: {background: COLORS[prec] || "#999"}}));
    seen.add(prec);
  });
  marker(a.groups.length);
  for (const prec of seen) {
    const span = el("span");
    span.append(el("i", {style: {background: COLORS[prec] || "#999"}}), prec);
    legend.append(span);
  }
  if (basis.list.length) {
    const span = el("span");
    span.append(el("i", {"class": "sw-boundary"}),
                basis.list.length + " precision boundar" + (basis.list.length === 1 ? "y" : "ies") +
                " (hover for tensor, nodes, cost)");
    legend.append(span);
  }
}

async function act(what) {
  if (!current) return;
  const message = document.getElementById("job-message");
  try {
    await api("/api/jobs/" + current.id + "/" + what, {method: "POST"});
    if (what === "resume") select(current.id);
    refreshJobs();
  } catch (e) {
    message.textContent = e.message;   // e.g. 409: the job finished meanwhile
  }
}

init();

"""The read-only status page: a static document whose script renders ``/status`` and
``/history`` every few seconds (numbers per route, sparklines of throughput and queue
depth). Values are inserted with ``textContent`` only, never as HTML."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Outpost status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
 h1 { font-size: 1.3em; margin: 0 0 .3em; }
 .badge { display: inline-block; padding: 0 .5em; border-radius: 3px; color: #fff; background: #888; }
 .ok { background: #2a7d2e; } .bad { background: #b3261e; } .warn { background: #b26a00; }
 table { border-collapse: collapse; margin: 1em 0; } th, td { padding: .25em .6em; border-bottom: 1px solid #ddd; }
 td.n { text-align: right; font-variant-numeric: tabular-nums; } th { text-align: left; background: #f4f4f4; }
 .spark { display: inline-block; margin-right: 2em; } .spark svg { border: 1px solid #ddd; background: #fafafa; }
 .problems { color: #b3261e; } small { color: #666; }
</style></head>
<body>
<h1>Outpost <span id="agent-state" class="badge">loading</span> <span id="ready" class="badge">?</span>
 <span id="health" class="badge">?</span></h1>
<div><small>state dir <span id="state-dir"></span> &middot; queue <span id="queue-bytes"></span> &middot;
 open exceptions <span id="open-exceptions"></span> &middot; updated <span id="updated"></span></small></div>
<ul id="problems" class="problems"></ul>
<div>
 <div class="spark"><div>throughput <b id="throughput-now">0</b> events/s</div>
  <svg id="spark-throughput" width="320" height="60" viewBox="0 0 320 60"><polyline fill="none" stroke="#2a7d2e" stroke-width="1.5" points=""/></svg></div>
 <div class="spark"><div>queue depth <b id="depth-now">0</b></div>
  <svg id="spark-depth" width="320" height="60" viewBox="0 0 320 60"><polyline fill="none" stroke="#b26a00" stroke-width="1.5" points=""/></svg></div>
</div>
<table id="routes"><thead><tr><th>route</th><th>entity</th><th>source &rarr; sink</th><th>capture</th>
 <th>captured</th><th>published</th><th>rejected</th><th>dead-lettered</th><th>queued</th><th>oldest (s)</th>
 <th>success rate</th><th>last latency (s)</th><th>exceptions</th><th>errors</th></tr></thead><tbody></tbody></table>
<table id="business"><thead><tr><th>route</th><th>objective</th><th>attained</th><th>error budget left</th>
 <th>confirmed</th><th>last reconciliation</th></tr></thead><tbody></tbody></table>
<script>
"use strict";
const token = new URLSearchParams(location.search).get("token");
const headers = token ? {"Authorization": "Bearer " + token} : {};
const get = (path) => fetch(path, {headers, cache: "no-store"}).then(r => r.json());
const text = (id, value) => { document.getElementById(id).textContent = value; };
const fmt = (v, digits) => v === null || v === undefined ? "-" : (digits === undefined ? String(v) : Number(v).toFixed(digits));

function cell(row, value, cls, id) {
  const td = row.insertCell(); td.textContent = value; if (cls) td.className = cls; if (id) td.id = id; return td;
}
function spark(id, values) {
  const line = document.querySelector("#" + id + " polyline");
  if (!values.length) { line.setAttribute("points", ""); return; }
  const max = Math.max(1, ...values), step = values.length > 1 ? 320 / (values.length - 1) : 0;
  line.setAttribute("points", values.map((v, i) => (i * step).toFixed(1) + "," + (58 - 56 * v / max).toFixed(1)).join(" "));
  line.setAttribute("data-count", String(values.length));
}
function render(status) {
  const agent = status.agent, state = document.getElementById("agent-state"), ready = document.getElementById("ready");
  state.textContent = agent.state; state.className = "badge " + (agent.state === "running" ? "ok" : "warn");
  ready.textContent = agent.ready ? "ready" : "not ready"; ready.className = "badge " + (agent.ready ? "ok" : "bad");
  const health = document.getElementById("health"), degraded = status.health === "degraded" || agent.health === "degraded";
  health.textContent = degraded ? "degraded" : "healthy"; health.className = "badge " + (degraded ? "warn" : "ok");
  text("state-dir", status.state_dir);
  text("queue-bytes", (status.queue_waiting_bytes / 1e6).toFixed(1) + " MB waiting of " + (status.queue_quota_bytes / 1e6).toFixed(0) + " MB");
  text("open-exceptions", status.open_exceptions);
  text("updated", new Date().toLocaleTimeString());
  const problems = document.getElementById("problems"); problems.textContent = "";
  // the status report's problems already hold the routes' and the exceptions'; readiness adds the agent's
  const shown = [...new Set((status.problems || []).concat(agent.problems, agent.stuck))];
  for (const p of shown) { const li = document.createElement("li"); li.textContent = p; problems.appendChild(li); }
  const body = document.querySelector("#routes tbody"); body.textContent = "";
  for (const [name, r] of Object.entries(status.routes)) {
    const o = status.objectives[name] || {}, row = body.insertRow(), id = (f) => "route-" + name + "-" + f;
    row.id = "route-" + name;
    cell(row, name); cell(row, o.entity || "-", null, id("entity")); cell(row, r.source + " \\u2192 " + r.sink);
    const capture = cell(row, r.capture_state || "not run yet", null, id("capture"));
    if (r.progress_text) {     // a snapshot or a big file: the numbers, and a bar when a total is known
      const line = document.createElement("div"); line.id = id("progress"); line.textContent = r.progress_text;
      capture.appendChild(line);
      if (r.progress && r.progress.percent !== undefined && r.progress.percent !== null && !r.progress.done) {
        const bar = document.createElement("progress"); bar.max = 100; bar.value = r.progress.percent;
        bar.id = id("progress-bar"); capture.appendChild(bar);
      }
    }
    for (const f of ["captured_total", "published_total", "rejected_total", "dead_lettered_total", "queue_depth"])
      cell(row, fmt(r[f] || 0), "n", id(f));
    cell(row, fmt(r.oldest_queued_age_s, 1), "n", id("oldest"));
    cell(row, o.sync_success_rate === null || o.sync_success_rate === undefined ? "-" : (100 * o.sync_success_rate).toFixed(1) + " %", "n", id("success_rate"));
    cell(row, fmt(o.last_delivery_latency_s, 2), "n", id("latency"));
    cell(row, fmt(r.open_exceptions), "n", id("open_exceptions"));
    cell(row, [r.source_error, r.sink_error].filter(Boolean).join("; ") || "-", "problems", id("errors"));
  }
  const business = document.querySelector("#business tbody"); business.textContent = "";
  for (const [name, o] of Object.entries(status.objectives)) {
    const b = o.business, rec = o.reconcile, row = business.insertRow(), id = (f) => "business-" + name + "-" + f;
    const pct = (v, d) => v === null || v === undefined ? "-" : (100 * v).toFixed(d) + " %";
    cell(row, name);
    cell(row, b ? b.entity + ": " + pct(b.target, 1) + " within " + b.within_s + " s" : "-", null, id("objective"));
    cell(row, b ? pct(b.attained, 2) : "-", "n", id("attained"));
    cell(row, b ? pct(b.error_budget_left, 1) : "-", "n", id("budget"));
    cell(row, b ? fmt(b.confirmed) : "-", "n", id("confirmed"));
    cell(row, !rec ? "never" : rec.error ? "error: " + rec.error : (rec.tied_out ? "tied out" : "NOT tied out")
         + " (" + rec.window + ", " + rec.differing_keys + " differing, " + rec.unexplained + " unexplained, "
         + new Date(rec.ran_at * 1000).toISOString() + ")", rec && !rec.tied_out ? "problems" : null, id("reconcile"));
  }
}
function renderHistory(history) {
  const points = history.points;
  spark("spark-throughput", points.map(p => p.throughput));
  spark("spark-depth", points.map(p => p.depth));
  if (points.length) { const last = points[points.length - 1]; text("throughput-now", last.throughput.toFixed(1)); text("depth-now", last.depth); }
}
function refresh() {
  get("status").then(render).catch(e => text("agent-state", "unreachable"));
  get("history").then(renderHistory).catch(() => {});
}
refresh(); setInterval(refresh, 5000);
</script>
</body></html>
"""

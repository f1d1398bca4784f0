// Warren's dashboard: seven views over the public API, routed by the URL's hash.
//   #/            overview: /v1/queues every 2 s, and a chart of jobs finished per interval
//   #/jobs?...    the job list with the API's filters (status, type) and paging
//   #/jobs/<id>   one job: fields, payload, result or error, error history, deliveries, and
//                 live progress over SSE; cancel and re-drive buttons, with confirmation
//   #/dead        the first dead letters in the queue (operator only): why each, its errors, its body
//   #/queues/<type> one job type: its counts and flow settings (pause, max running, rate limit),
//                 changed with a form after confirmation (operator only)
//   #/workflows?... the workflow list (status filter, paging)
//   #/workflows/<id> one workflow: each step's status, dependencies and a link to its job,
//                 refreshed while it runs; a cancel button, with confirmation
// The page is built with textContent only, never innerHTML: ids and payloads are data.
"use strict";

const POLL_MS = 2000;
const CHART_POINTS = 60;
const SVG = "http://www.w3.org/2000/svg";
const STATUSES = ["waiting", "scheduled", "queued", "running", "retrying", "succeeded", "failed", "cancelled"];

/** Stops whatever the current view runs (timers, event streams) when the view changes. */
let stopView = () => {};

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "onclick" || name === "onsubmit") node.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replaces a container's content without losing keyboard focus on a link inside it (the
 *  overview and the list refresh every 2 s). */
function replaceKeepingFocus(container, ...nodes) {
  const active = document.activeElement;
  const href = container.contains(active) ? active.getAttribute("href") : null;
  container.replaceChildren(...nodes);
  if (href) {
    const again = [...container.querySelectorAll("a")].find((a) => a.getAttribute("href") === href);
    if (again) again.focus();
  }
}

function say(message) {
  document.getElementById("status").textContent = message;
}

/** A call to the API; a 401 (key revoked, cookie expired) reloads into the sign-in form. */
async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { accept: "application/json", "x-warren-ui": "1", ...(options.headers || {}) },
  });
  if (response.status === 401) {
    location.reload();
    throw new Error("signed out");
  }
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = text; }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : `${response.status} ${response.statusText}`;
    throw new Error(detail);
  }
  return body;
}

function when(stamp) {
  return stamp ? new Date(stamp).toLocaleString() : "";
}

function statusCell(status) {
  return el("td", { class: `status-${status}` }, status);
}

function show(title, ...content) {
  const app = document.getElementById("app");
  app.replaceChildren(el("h1", {}, title), ...content);
  document.title = `${title} · Warren`;
}

// ---- Overview ------------------------------------------------------------------------------

function overview() {
  const finished = [];
  let previous = null;
  const chart = document.createElementNS(SVG, "svg");
  for (const [name, value] of Object.entries({ class: "chart", viewBox: `0 0 ${CHART_POINTS} 100`, preserveAspectRatio: "none", role: "img", "aria-label": "Jobs finished per 2 seconds" })) {
    chart.setAttribute(name, value);
  }
  const chartNote = el("p", { class: "muted" });
  const cards = el("div", { class: "cards" });
  const table = el("div", { class: "scroll" });
  show("Overview", cards, el("h2", {}, "Throughput"), chart, chartNote, el("h2", {}, "Job types"), table);

  async function refresh() {
    let data;
    try { data = await api("/v1/queues"); } catch (error) { say(`Overview: ${error.message}`); return; }
    say("");
    const total = (key) => data.queues.reduce((sum, q) => sum + q[key], 0);
    const done = total("succeeded_last_hour") + total("failed_last_hour") + total("cancelled_last_hour");
    if (previous !== null) finished.push(Math.max(0, done - previous));
    previous = done;
    if (finished.length > CHART_POINTS) finished.shift();
    drawChart(chart, finished);
    const last = finished.length ? finished[finished.length - 1] : 0;
    chartNote.textContent = `${(last / (POLL_MS / 1000)).toFixed(1)} jobs/s finished just now; the line covers the last ${CHART_POINTS * POLL_MS / 1000} s.`;
    cards.replaceChildren(
      card("waiting", total("queued") + total("retrying")),
      card("running", total("running")),
      card("scheduled", total("scheduled")),
      card("succeeded (1 h)", total("succeeded_last_hour")),
      card("failed (1 h)", total("failed_last_hour")),
      data.dead_letters === null ? card("dead letters", "–")
        : el("a", { class: "card-link", href: "#/dead" }, card("dead letters", data.dead_letters)),
    );
    replaceKeepingFocus(table, queueTable(data));
  }
  refresh();
  const timer = setInterval(refresh, POLL_MS);
  stopView = () => clearInterval(timer);
}

function card(label, value) {
  return el("div", { class: "card" }, el("div", { class: "value" }, value), el("div", { class: "label" }, label));
}

function drawChart(svg, points) {
  const top = Math.max(1, ...points);
  const coords = points.map((v, i) => `${CHART_POINTS - 1 - (points.length - 1) + i},${100 - (v / top) * 95}`);
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", coords.join(" "));
  svg.replaceChildren(line);
}

function queueTable(data) {
  const columns = [["queued", "queued"], ["retrying", "retrying"], ["running", "running"], ["scheduled", "scheduled"],
    ["succeeded_last_hour", "succeeded 1 h"], ["failed_last_hour", "failed 1 h"], ["workers", "workers"]];
  if (!data.queues.length) return el("p", { class: "muted" }, "No jobs in the last hour.");
  return el("table", {},
    el("caption", { class: "muted" }, data.broker_answered ? "" : "RabbitMQ did not answer: workers unknown."),
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "type"), columns.map(([, label]) => el("th", { scope: "col", class: "num" }, label)), el("th", { scope: "col" }, "flow"))),
    el("tbody", {}, data.queues.map((q) => el("tr", {},
      el("th", { scope: "row" }, el("a", { href: `#/jobs?type=${encodeURIComponent(q.type)}` }, q.type)),
      columns.map(([key]) => el("td", { class: "num" }, q[key] === null ? "–" : q[key])),
      el("td", {}, el("a", { href: `#/queues/${encodeURIComponent(q.type)}`, "data-settings": q.type }, "settings"))))));
}

// ---- One job type: counts and flow settings ------------------------------------------------

function queueView(type) {
  const path = `/v1/queues/${encodeURIComponent(type)}`;
  const facts = el("dl", { class: "fields" });
  const paused = el("input", { type: "checkbox", id: "paused" });
  const maxRunning = el("input", { type: "number", id: "max-running", min: "1", max: "100000", placeholder: "no limit" });
  const rateJobs = el("input", { type: "number", id: "rate-jobs", min: "1", max: "10000", placeholder: "no limit" });
  const ratePer = el("input", { type: "number", id: "rate-per", min: "0.1", max: "86400", step: "0.1", placeholder: "seconds" });
  const form = el("form", { id: "settings", onsubmit: (event) => { event.preventDefault(); save(); } },
    el("p", {}, el("label", {}, paused, " paused: no new starts (running jobs finish, queued ones wait)")),
    el("p", {}, el("label", { for: "max-running" }, "at most running at once, across all workers: "), maxRunning),
    el("p", {}, el("label", { for: "rate-jobs" }, "at most "), rateJobs, el("label", { for: "rate-per" }, " starts per "), ratePer, " seconds"),
    el("button", { type: "submit" }, "Save settings"));
  show(`Job type ${type}`, facts, el("h2", {}, "Flow settings"), form,
    el("p", { class: "muted" }, "Empty fields remove a limit. The settings hold for every tenant's jobs of this type, so only the operator changes them."));

  function render(q) {
    const rate = q.rate_limit ? `${q.rate_limit.jobs} per ${q.rate_limit.per_seconds} s` : "none";
    facts.replaceChildren(...[["paused", q.paused ? "yes" : "no"], ["max running", q.max_running ?? "none"],
      ["rate limit", rate], ["queued", q.queued], ["running", q.running], ["retrying", q.retrying],
      ["workers", q.workers ?? "–"], ["succeeded (1 h)", q.succeeded_last_hour], ["failed (1 h)", q.failed_last_hour]]
      .flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-field": k.replaceAll(" ", "-") }, v)]));
  }

  function fill(q) {
    paused.checked = q.paused;
    maxRunning.value = q.max_running ?? "";
    rateJobs.value = q.rate_limit ? q.rate_limit.jobs : "";
    ratePer.value = q.rate_limit ? q.rate_limit.per_seconds : "";
  }

  async function save() {
    const change = {
      paused: paused.checked,
      max_running: maxRunning.value === "" ? null : Number(maxRunning.value),
      rate_limit: rateJobs.value === "" ? null : { jobs: Number(rateJobs.value), per_seconds: Number(ratePer.value || 1) },
    };
    const summary = `${change.paused ? "Pause" : "Run"} ${type}, at most ${change.max_running ?? "any number"} at once, `
      + (change.rate_limit ? `${change.rate_limit.jobs} starts per ${change.rate_limit.per_seconds} s` : "no rate limit");
    if (!window.confirm(`${summary}: for every worker, within a second?`)) return;
    try {
      const q = await api(path, { method: "PATCH", headers: { "content-type": "application/json" }, body: JSON.stringify(change) });
      render(q); fill(q);
      say("Saved.");
    } catch (error) { say(`Could not save: ${error.message}`); }
  }

  async function refresh(first) {
    let q;
    try { q = await api(path); } catch (error) { say(`${type}: ${error.message}`); return; }
    render(q);
    if (first) fill(q);
  }
  refresh(true);
  const timer = setInterval(() => refresh(false), POLL_MS);
  stopView = () => clearInterval(timer);
}

// ---- Jobs ----------------------------------------------------------------------------------

function jobs(params) {
  const status = params.get("status") || "";
  const type = params.get("type") || "";
  const cursor = params.get("cursor") || "";
  const statusSelect = el("select", { id: "filter-status", name: "status" },
    el("option", { value: "" }, "any"), STATUSES.map((s) => el("option", { value: s, selected: s === status }, s)));
  const typeInput = el("input", { id: "filter-type", name: "type", value: type, placeholder: "e.g. report.generate" });
  const filters = el("form", { class: "filters", onsubmit: (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    if (statusSelect.value) next.set("status", statusSelect.value);
    if (typeInput.value.trim()) next.set("type", typeInput.value.trim());
    location.hash = `#/jobs?${next}`;
  } },
  el("div", {}, el("label", { for: "filter-status" }, "Status"), statusSelect),
  el("div", {}, el("label", { for: "filter-type" }, "Type"), typeInput),
  el("button", { type: "submit" }, "Filter"));
  const list = el("div", { class: "scroll" }, el("p", {}, "Loading…"));
  const pager = el("div", { class: "pager" });
  show("Jobs", filters, list, pager);

  const query = new URLSearchParams({ limit: "25" });
  if (status) query.set("status", status);
  if (type) query.set("type", type);
  if (cursor) query.set("cursor", cursor);
  async function refresh() {
    let page;
    try { page = await api(`/v1/jobs?${query}`); } catch (error) { say(`Jobs: ${error.message}`); return; }
    say("");
    replaceKeepingFocus(list, page.jobs.length ? jobTable(page.jobs) : el("p", { class: "muted" }, "No jobs match."));
    const links = [];
    if (cursor) {
      const first = new URLSearchParams(params);
      first.delete("cursor");
      links.push(el("a", { href: `#/jobs?${first}` }, "First page"));
    }
    if (page.next_cursor) {
      const next = new URLSearchParams(params);
      next.set("cursor", page.next_cursor);
      links.push(el("a", { href: `#/jobs?${next}` }, "Next page"));
    }
    replaceKeepingFocus(pager, ...links);
  }
  refresh();
  // The first page follows new jobs; later pages hold still.
  const timer = cursor ? null : setInterval(refresh, POLL_MS);
  stopView = () => timer && clearInterval(timer);
}

function jobTable(list) {
  return el("table", {},
    el("thead", {}, el("tr", {}, ["id", "type", "status", "attempt", "tenant", "created"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, list.map((job) => el("tr", { "data-job": job.id },
      el("td", {}, el("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id)),
      el("td", {}, job.type), statusCell(job.status),
      el("td", { class: "num" }, `${job.attempt} / ${job.max_attempts}`),
      el("td", {}, job.tenant), el("td", {}, when(job.created_at))))));
}

// ---- One job -------------------------------------------------------------------------------

function job(id) {
  const path = `/v1/jobs/${encodeURIComponent(id)}`;
  const fields = el("dl", { class: "fields" });
  const progress = el("div");
  const actions = el("div", { class: "actions" });
  const outcome = el("div");
  const payload = el("pre", { id: "payload" }, "…");
  const history = el("div", { class: "scroll" });
  const deliveries = el("div", { class: "scroll" });
  show(`Job ${id}`, progress, actions, fields, outcome,
    el("h2", {}, "Payload"), payload, el("h2", {}, "Error history"), history,
    el("h2", {}, "Webhook deliveries"), deliveries);
  let stream = null;

  function render(current) {
    const rows = [["id", current.id], ["type", current.type], ["status", current.status], ["tenant", current.tenant],
      ["attempt", `${current.attempt} of ${current.max_attempts}`], ["created", when(current.created_at)],
      ["updated", when(current.updated_at)], ["started", when(current.started_at)], ["finished", when(current.finished_at)],
      ["next attempt", when(current.next_attempt_at)], ["run at", when(current.run_at)],
      ["workflow", current.workflow_id ? `${current.workflow_id} (step ${current.step})` : ""],
      ["callback", current.callback ? `${current.callback.state} after ${current.callback.attempts} attempt(s)` : ""]];
    fields.replaceChildren(...rows.filter(([, v]) => v !== "" && v !== undefined && v !== null)
      .flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-field": k, class: k === "status" ? `status-${v}` : null },
        k === "workflow" ? el("a", { href: `#/workflows/${encodeURIComponent(current.workflow_id)}` }, v) : v)]));
    const percent = current.progress ? current.progress.percent : null;
    progress.replaceChildren(...(current.status === "running" || percent !== null ? [
      el("label", { for: "job-progress" }, `Progress${current.progress && current.progress.message ? `: ${current.progress.message}` : ""}`),
      el("progress", { id: "job-progress", max: "100", value: percent === null ? null : String(percent) }, percent === null ? "" : `${percent}%`)] : []));
    const buttons = [];
    const terminal = ["succeeded", "failed", "cancelled"].includes(current.status);
    if (!terminal) buttons.push(el("button", { type: "button", class: "danger", id: "cancel", onclick: () => act("cancel", `Cancel job ${current.id}? A running attempt is told to stop.`) }, "Cancel job"));
    if (current.status === "failed") buttons.push(el("button", { type: "button", id: "redrive", onclick: () => act("retry", `Re-drive job ${current.id} as a new attempt series?`) }, "Re-drive job"));
    actions.replaceChildren(...buttons);
    outcome.replaceChildren(
      ...(current.result !== null && current.result !== undefined ? [el("h2", {}, "Result"), el("pre", { id: "result" }, JSON.stringify(current.result, null, 2))] : []),
      ...(current.error ? [el("h2", {}, "Error"), el("p", { id: "error" }, `${current.error.kind}: ${current.error.message}`)] : []));
    history.replaceChildren(current.errors && current.errors.length ? el("table", {},
      el("thead", {}, el("tr", {}, ["attempt", "when", "kind", "message"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, current.errors.map((e) => el("tr", {}, el("td", { class: "num" }, e.attempt), el("td", {}, when(e.at)), el("td", {}, e.kind), el("td", {}, e.message)))))
      : el("p", { class: "muted" }, "No attempt has failed."));
    if (terminal && stream) { stream.close(); stream = null; }
  }

  async function act(action, question) {
    if (!window.confirm(question)) return;
    try {
      render(await api(`${path}/${action}`, { method: "POST" }));
      say(action === "cancel" ? "Cancelled." : "Queued again.");
      if (action === "retry") follow();
    } catch (error) { say(`Could not ${action === "cancel" ? "cancel" : "re-drive"}: ${error.message}`); }
  }

  function follow() {
    if (stream) stream.close();
    stream = new EventSource(`${path}/events`);
    const update = (event) => render(JSON.parse(event.data));
    STATUSES.forEach((s) => stream.addEventListener(s, update));
    stream.onerror = () => { if (stream && stream.readyState === EventSource.CLOSED) stream = null; };
  }

  async function load() {
    try {
      const current = await api(path);
      render(current);
      if (!["succeeded", "failed", "cancelled"].includes(current.status)) follow();
      const [input, sent] = await Promise.all([api(`${path}/payload`), api(`${path}/deliveries`)]);
      payload.textContent = JSON.stringify(input, null, 2);
      deliveries.replaceChildren(sent.deliveries.length ? el("table", {},
        el("thead", {}, el("tr", {}, ["attempt", "when", "answer", "took", "then"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, sent.deliveries.map((d) => el("tr", {}, el("td", { class: "num" }, d.attempt), el("td", {}, when(d.at)),
          el("td", {}, d.status_code !== null && d.status_code !== undefined ? d.status_code : d.error), el("td", { class: "num" }, `${d.duration_ms} ms`), el("td", {}, d.callback_state)))))
        : el("p", { class: "muted" }, "No webhook for this job, or none sent yet."));
    } catch (error) { say(`Job: ${error.message}`); }
  }
  load();
  stopView = () => { if (stream) stream.close(); };
}

// ---- Dead letters --------------------------------------------------------------------------

function dead() {
  const list = el("div", { class: "scroll" }, el("p", {}, "Loading…"));
  show("Dead letters", el("p", { class: "muted" }, "The first messages in the dead-letter queue; reading them leaves them there (at its end)."), list);
  (async () => {
    let page;
    try { page = await api("/v1/dead-letters?limit=50"); } catch (error) { say(`Dead letters: ${error.message}`); return; }
    list.replaceChildren(
      el("p", { id: "dead-total" }, `${page.total} in the queue; the first ${page.dead_letters.length} below.`),
      page.dead_letters.length ? el("table", {},
        el("thead", {}, el("tr", {}, ["message", "type", "reason", "last error", "body"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, page.dead_letters.map((d) => {
          const last = Array.isArray(d.errors) && d.errors.length ? d.errors[d.errors.length - 1] : null;
          return el("tr", { "data-dead": d.message_id || "" },
            el("td", {}, d.message_id ? el("a", { href: `#/jobs/${encodeURIComponent(d.message_id)}` }, d.message_id) : "–"),
            el("td", {}, d.type || "–"), el("td", { class: "reason" }, d.reason || "–"),
            el("td", {}, last ? `${last.kind}: ${last.message}` : "–"),
            el("td", {}, el("pre", {}, JSON.stringify(d.body, null, 2))));
        })))
        : el("p", { class: "muted" }, "No dead letters."));
  })();
}

// ---- Workflows -----------------------------------------------------------------------------

const WORKFLOW_STATUSES = ["running", "succeeded", "failed", "cancelled"];

function workflows(params) {
  const status = params.get("status") || "";
  const cursor = params.get("cursor") || "";
  const statusSelect = el("select", { id: "filter-workflow-status", name: "status" },
    el("option", { value: "" }, "any"), WORKFLOW_STATUSES.map((s) => el("option", { value: s, selected: s === status }, s)));
  const filters = el("form", { class: "filters", onsubmit: (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    if (statusSelect.value) next.set("status", statusSelect.value);
    location.hash = `#/workflows?${next}`;
  } },
  el("div", {}, el("label", { for: "filter-workflow-status" }, "Status"), statusSelect),
  el("button", { type: "submit" }, "Filter"));
  const list = el("div", { class: "scroll" }, el("p", {}, "Loading…"));
  const pager = el("div", { class: "pager" });
  show("Workflows", filters, list, pager);
  const query = new URLSearchParams({ limit: "25" });
  if (status) query.set("status", status);
  if (cursor) query.set("cursor", cursor);
  async function refresh() {
    let page;
    try { page = await api(`/v1/workflows?${query}`); } catch (error) { say(`Workflows: ${error.message}`); return; }
    say("");
    replaceKeepingFocus(list, page.workflows.length ? el("table", {},
      el("thead", {}, el("tr", {}, ["id", "status", "steps", "done", "created", "finished"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, page.workflows.map((w) => el("tr", { "data-workflow": w.id },
        el("td", {}, el("a", { href: `#/workflows/${encodeURIComponent(w.id)}` }, w.id)),
        statusCell(w.status), el("td", { class: "num" }, w.steps.length),
        el("td", { class: "num" }, w.steps.filter((s) => ["succeeded", "failed", "cancelled"].includes(s.status)).length),
        el("td", {}, when(w.created_at)), el("td", {}, when(w.finished_at))))))
      : el("p", { class: "muted" }, "No workflows match."));
    const links = [];
    if (cursor) {
      const first = new URLSearchParams(params);
      first.delete("cursor");
      links.push(el("a", { href: `#/workflows?${first}` }, "First page"));
    }
    if (page.next_cursor) {
      const next = new URLSearchParams(params);
      next.set("cursor", page.next_cursor);
      links.push(el("a", { href: `#/workflows?${next}` }, "Next page"));
    }
    replaceKeepingFocus(pager, ...links);
  }
  refresh();
  const timer = cursor ? null : setInterval(refresh, POLL_MS);
  stopView = () => timer && clearInterval(timer);
}

function workflow(id) {
  const path = `/v1/workflows/${encodeURIComponent(id)}`;
  const fields = el("dl", { class: "fields" });
  const actions = el("div", { class: "actions" });
  const steps = el("div", { class: "scroll" });
  show(`Workflow ${id}`, actions, fields, el("h2", {}, "Steps"), steps);
  let timer = null;

  function render(current) {
    const rows = [["id", current.id], ["status", current.status], ["created", when(current.created_at)], ["finished", when(current.finished_at)]];
    fields.replaceChildren(...rows.filter(([, v]) => v)
      .flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-field": k, class: k === "status" ? `status-${v}` : null }, v)]));
    actions.replaceChildren(...(current.status === "running" ? [el("button", { type: "button", class: "danger", id: "cancel-workflow",
      onclick: () => cancel(`Cancel workflow ${current.id}? Running steps are told to stop and no other step starts.`) }, "Cancel workflow")] : []));
    replaceKeepingFocus(steps, el("table", {},
      el("thead", {}, el("tr", {}, ["step", "status", "depends on", "job"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, current.steps.map((s) => el("tr", { "data-step": s.name },
        el("th", { scope: "row" }, s.name), statusCell(s.status),
        el("td", {}, s.depends_on.length ? s.depends_on.join(", ") : "–"),
        el("td", {}, el("a", { href: `#/jobs/${encodeURIComponent(s.job_id)}` }, s.job_id)))))));
    if (current.status !== "running" && timer) { clearInterval(timer); timer = null; }
  }

  async function cancel(question) {
    if (!window.confirm(question)) return;
    try { render(await api(`${path}/cancel`, { method: "POST" })); say("Cancelled."); } catch (error) { say(`Could not cancel: ${error.message}`); }
  }

  async function refresh() {
    try { render(await api(path)); } catch (error) { say(`Workflow: ${error.message}`); }
  }
  refresh();
  timer = setInterval(refresh, POLL_MS);
  stopView = () => timer && clearInterval(timer);
}

// ---- Routing -------------------------------------------------------------------------------

function route() {
  stopView();
  stopView = () => {};
  say("");
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const section = path.startsWith("/jobs") ? "jobs" : path.startsWith("/workflows") ? "workflows" : "overview";
  document.querySelectorAll("[data-nav]").forEach((a) => {
    if (a.dataset.nav === section) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  });
  const match = path.match(/^\/jobs\/([^/]+)$/);
  const workflowMatch = path.match(/^\/workflows\/([^/]+)$/);
  const queueMatch = path.match(/^\/queues\/([^/]+)$/);
  if (match) job(decodeURIComponent(match[1]));
  else if (queueMatch) queueView(decodeURIComponent(queueMatch[1]));
  else if (path === "/jobs") jobs(params);
  else if (workflowMatch) workflow(decodeURIComponent(workflowMatch[1]));
  else if (path === "/workflows") workflows(params);
  else if (path === "/dead") dead();
  else overview();
  document.getElementById("app").focus({ preventScroll: true });
}

window.addEventListener("hashchange", route);
route();

// The simplequeue dashboard: vanilla JS, no build step, no dependencies.
//
// Everything that comes from the server (queue names, job data, errors) is put on the
// page with textContent / createElement only, never as HTML. The token lives in
// sessionStorage and travels in the Authorization header only (live events included: they
// are read from a fetch() stream, not EventSource, so the token never goes in a URL).
"use strict";

(function () {
  const TOKEN_KEY = "simplequeue.token";
  const POLL_MS = 3000; // /stats and /queues, for the table and the charts
  const THROTTLE_MS = 500; // at most one refresh of a part per this, on events
  const HISTORY = 120; // chart points kept (6 minutes at POLL_MS)
  const PAGE = 25;
  const SHOWN_JSON = 100000; // characters of a result shown (it may be a megabyte)
  const SHOWN_PROGRESS = 500; // characters of a progress value shown in the fields
  const STATS_WINDOW = 60; // seconds /stats counts completions over
  const DEAD = ["failed", "cancelled", "unprocessable", "critical_failure", "bad_job"];
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2",
    "#ca8a04", "#db2777"];

  const $ = (id) => document.getElementById(id);

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    running: false,
    view: "queues",
    stats: [],
    queues: [],
    history: [], // {t, depth: {queue: n}, rate: {queue: n}}
    jobs: { queue: "", status: "", pages: [null], page: 0, next: null },
    jobId: null,
    dlqQueue: "",
    feed: [],
    rendered: {}, // part -> JSON of what is shown, to skip redraws of the same data
  };

  // -- DOM helpers ------------------------------------------------------------------

  // el("td", {className: "n"}, "text", child, ...): strings become text nodes.
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node[key] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    return node;
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  // Replace the rows of a table body, unless the same data is already shown.
  function fillTable(tableId, part, data, row) {
    const key = JSON.stringify(data);
    if (state.rendered[part] === key) return;
    state.rendered[part] = key;
    const body = $(tableId).tBodies[0];
    body.replaceChildren(...data.map(row));
    const empty = $(tableId.replace("-table", "-empty"));
    if (empty) show(empty, data.length === 0);
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : "—";
  }

  function ago(iso) {
    if (!iso) return "—";
    const seconds = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
    return seconds < 90 ? `${seconds.toFixed(0)} s ago` : `${(seconds / 60).toFixed(0)} min ago`;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    if (seconds < 3600) return `${(seconds / 60).toFixed(1)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  // Queues keep their colour while the set of queues stays the same.
  function colorOf(name) {
    const index = queueNames().indexOf(name);
    return COLORS[(index < 0 ? 0 : index) % COLORS.length];
  }

  function shortId(id) {
    return id.slice(0, 8) + "…" + id.slice(-4);
  }

  // A job's cells in the jobs and DLQ tables: its link, queue, status, attempts, a time,
  // its last error (every value as text).
  function jobCells(job, time) {
    return [
      el("td", { className: "mono" }, el("a", { href: `#job/${encodeURIComponent(job.id)}`,
        title: job.id }, shortId(job.id))),
      el("td", {}, job.queue),
      el("td", {}, el("span", { className: `badge ${job.status}` }, job.status)),
      el("td", { className: "n" }, `${job.attempt}/${job.max_attempts}`),
      el("td", {}, when(time)),
      el("td", { className: "error-cell" }, job.last_error || ""),
    ];
  }

  let messageTimer = null;
  function message(text, kind) {
    const box = $("message");
    box.textContent = text;
    box.className = kind || "info";
    delete box.dataset.unreachable;
    show(box, true);
    clearTimeout(messageTimer);
    if (kind !== "error") messageTimer = setTimeout(() => show(box, false), 6000);
  }

  // -- the API ----------------------------------------------------------------------

  // Relative paths: the app may be mounted under a prefix (/queue/).
  async function api(path, options) {
    const init = { method: "GET", headers: { Authorization: `Bearer ${state.token}` } };
    if (options && options.method) init.method = options.method;
    if (options && options.body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      message(`The server cannot be reached (${err.message}).`, "error");
      $("message").dataset.unreachable = "1";
      throw err;
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (response.ok) return data;
    const reason = data && typeof data.error === "string" ? data.error : response.statusText;
    if (response.status === 401) {
      signOut(`The token was not accepted (401): ${reason}. Enter a valid token.`);
    } else if (response.status === 403) {
      message(`Not allowed (403): ${reason}. This needs an admin token.`, "error");
    } else {
      message(`${init.method} ${path} failed (${response.status}): ${reason}`, "error");
    }
    const error = new Error(reason);
    error.status = response.status;
    throw error;
  }

  async function act(description, path, body) {
    try {
      await api(path, { method: "POST", body: body });
    } catch (err) {
      return false;
    }
    message(description, "ok");
    return true;
  }

  // -- refreshing, throttled ---------------------------------------------------------

  const refreshers = {
    stats: refreshStats,
    jobs: refreshJobs,
    job: refreshJob,
    dlq: refreshDlq,
    schedules: refreshSchedules,
    workers: refreshWorkers,
  };
  const pending = new Set();
  let refreshTimer = null;
  let lastRefresh = 0;

  function refresh(...parts) {
    parts.forEach((p) => pending.add(p));
    if (refreshTimer !== null) return;
    const wait = Math.max(0, lastRefresh + THROTTLE_MS - Date.now());
    refreshTimer = setTimeout(runRefresh, wait);
  }

  let refreshing = false;

  async function runRefresh() {
    refreshTimer = null;
    if (refreshing) { // one round at a time, so answers are drawn in order
      refreshTimer = setTimeout(runRefresh, THROTTLE_MS);
      return;
    }
    refreshing = true;
    lastRefresh = Date.now();
    const parts = [...pending];
    pending.clear();
    try {
      await Promise.all(parts.map((p) => refreshers[p]().catch(() => undefined)));
    } finally {
      refreshing = false;
    }
  }

  function refreshView() {
    const part = {
      queues: "stats", jobs: "jobs", job: "job", dlq: "dlq", schedules: "schedules",
      workers: "workers",
    };
    refresh(part[state.view]);
  }

  // -- queues and charts --------------------------------------------------------------

  async function refreshStats() {
    if (!state.running) return;
    const [stats, queues] = await Promise.all([
      api(`stats?window=${STATS_WINDOW}`),
      api("queues"),
    ]);
    state.stats = stats;
    state.queues = queues;
    record(stats);
    renderQueues();
    renderCharts();
    fillQueueSelects();
  }

  function record(stats) {
    // One point per poll interval; refreshes in between (on events) update the last one.
    const now = Date.now();
    const last = state.history[state.history.length - 1];
    const fresh = !last || now - last.t >= POLL_MS * 0.9;
    const point = fresh ? { t: now } : last;
    point.depth = {};
    point.rate = {};
    for (const s of stats) {
      point.depth[s.queue] = s.due + s.scheduled + s.running;
      point.rate[s.queue] = s.completed_per_minute;
    }
    if (fresh) state.history.push(point);
    if (state.history.length > HISTORY) state.history.shift();
  }

  function queueNames() {
    const names = new Set(state.stats.map((s) => s.queue));
    state.queues.forEach((q) => names.add(q.name));
    return [...names].sort();
  }

  function renderQueues() {
    const byName = new Map(state.queues.map((q) => [q.name, q]));
    const statsOf = new Map(state.stats.map((s) => [s.queue, s]));
    const rows = queueNames().map((name) => {
      const s = statsOf.get(name) || {};
      const q = byName.get(name) || {};
      return { name, s, q, paused: Boolean(q.paused || s.paused) };
    });
    fillTable("queues-table", "queues", rows, ({ name, s, q, paused }) => {
      const num = (v) => el("td", { className: "n" }, v === undefined ? "—" : v);
      const badge = paused
        ? el("span", { className: "badge paused", title: pauseTitle(q) }, "paused")
        : el("span", { className: "badge active" }, "active");
      const toggle = paused
        ? el("button", { type: "button", className: "resume", onclick: () => resume(name) }, "Resume")
        : el("button", { type: "button", className: "pause", onclick: () => pause(name) }, "Pause");
      const link = el("a", { href: "#jobs", className: "queue-name",
        onclick: () => { state.jobs.queue = name; resetJobPages(); } }, name);
      return el("tr", { dataset: { queue: name } },
        el("td", {}, link), el("td", { className: "state" }, badge),
        num(s.due), num(s.scheduled), num(s.running), num(s.retrying), num(s.dead),
        num(s.dlq), el("td", { className: "n" }, duration(s.oldest_due_seconds)),
        el("td", { className: "n completed" }, s.completed === undefined ? "—" : s.completed),
        el("td", { className: "n" }, s.completed_per_minute === undefined
          ? "—" : s.completed_per_minute.toFixed(1)),
        el("td", {}, q.workers === undefined ? "—" : q.workers),
        el("td", { className: "limits" }, limitsText(q)),
        el("td", {}, toggle));
    });
  }

  // A queue's fleet-wide limits, durability (when fast) and park, in words.
  function limitsText(q) {
    const l = q.limits || {};
    const parts = [];
    if (l.max_running != null) parts.push(`≤${l.max_running} running`);
    if (l.max_running_per_key != null) parts.push(`≤${l.max_running_per_key} per key`);
    if (l.rate_limit) parts.push(`${l.rate_limit.limit}/${l.rate_limit.per_seconds}s`);
    if (l.rate_limit_per_key) {
      parts.push(`${l.rate_limit_per_key.limit}/${l.rate_limit_per_key.per_seconds}s per key`);
    }
    if (l.fair) parts.push("fair");
    if (q.durability === "fast") parts.push("fast commits");
    if (q.parked_until) parts.push(`parked until ${when(q.parked_until)}`);
    return parts.length ? parts.join(", ") : "—";
  }

  function pauseTitle(q) {
    const parts = [];
    if (q.paused_at) parts.push(`since ${when(q.paused_at)}`);
    if (q.paused_until) parts.push(`until ${when(q.paused_until)}`);
    if (q.paused_by) parts.push(`by ${q.paused_by}`);
    if (q.pause_reason) parts.push(`reason: ${q.pause_reason}`);
    return parts.join(", ");
  }

  async function pause(name) {
    if (await act(`Queue "${name}" paused.`, `queues/${encodeURIComponent(name)}/pause`,
      { by: "dashboard" })) refresh("stats");
  }

  async function resume(name) {
    if (await act(`Queue "${name}" resumed.`, `queues/${encodeURIComponent(name)}/resume`)) {
      refresh("stats");
    }
  }

  function renderCharts() {
    const names = queueNames().slice(0, COLORS.length);
    drawChart($("chart-depth"), names, "depth");
    drawChart($("chart-throughput"), names, "rate");
    const legend = names.map((name) => {
      const swatch = el("span", { className: "swatch" });
      swatch.style.background = colorOf(name);
      return el("span", { className: "legend-item" }, swatch, name);
    });
    $("chart-legend").replaceChildren(...legend);
  }

  function drawChart(box, names, field) {
    const W = 520, H = 150, L = 40, R = 8, T = 8, B = 20;
    const points = state.history;
    let max = 1;
    for (const p of points) for (const n of names) max = Math.max(max, p[field][n] || 0);
    max = niceMax(max);
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img",
      "aria-label": field === "depth" ? "queue depth over time" : "throughput over time" });
    const x0 = L, x1 = W - R, y0 = H - B, y1 = T;
    for (const frac of [0, 0.5, 1]) {
      const y = y0 - (y0 - y1) * frac;
      chart.append(svg("line", { x1: x0, x2: x1, y1: y, y2: y, class: "grid-line" }));
      const label = svg("text", { x: x0 - 4, y: y + 4, class: "axis", "text-anchor": "end" });
      label.textContent = formatNumber(max * frac);
      chart.append(label);
    }
    if (points.length > 0) {
      const t0 = points[0].t, t1 = Math.max(points[points.length - 1].t, t0 + 1);
      const span = svg("text", { x: x1, y: H - 4, class: "axis", "text-anchor": "end" });
      span.textContent = `last ${Math.max(1, Math.round((t1 - t0) / 1000))} s`;
      chart.append(span);
      for (const name of names) {
        const coords = points.map((p) => {
          const x = x0 + ((p.t - t0) / (t1 - t0)) * (x1 - x0);
          const y = y0 - ((p[field][name] || 0) / max) * (y0 - y1);
          return `${x.toFixed(1)},${y.toFixed(1)}`;
        });
        if (coords.length === 1) coords.push(`${x1},${coords[0].split(",")[1]}`);
        chart.append(svg("polyline", { points: coords.join(" "), fill: "none",
          stroke: colorOf(name), "stroke-width": 2, class: "series" }));
      }
    }
    box.replaceChildren(chart);
  }

  function niceMax(value) {
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
    return value;
  }

  function formatNumber(n) {
    return Number.isInteger(n) ? String(n) : n.toFixed(1);
  }

  function fillQueueSelects() {
    const names = queueNames();
    for (const [id, current] of [["jobs-queue", state.jobs.queue], ["dlq-queue", state.dlqQueue]]) {
      const select = $(id);
      const key = JSON.stringify([names, current]);
      if (select.dataset.shown === key) continue;
      select.dataset.shown = key;
      const all = current && !names.includes(current) ? [...names, current] : names;
      select.replaceChildren(el("option", { value: "" }, "any"),
        ...all.map((n) => el("option", { value: n, selected: n === current }, n)));
    }
  }

  // -- jobs ---------------------------------------------------------------------------

  function resetJobPages() {
    state.jobs.pages = [null];
    state.jobs.page = 0;
  }

  async function refreshJobs() {
    if (!state.running || state.view !== "jobs") return;
    const params = new URLSearchParams({ limit: String(PAGE) });
    if (state.jobs.queue) params.set("queue", state.jobs.queue);
    if (state.jobs.status) params.set("status", state.jobs.status);
    const after = state.jobs.pages[state.jobs.page];
    if (after) params.set("after", after);
    const answer = await api(`jobs?${params}`);
    state.jobs.next = answer.next_after;
    fillTable("jobs-table", "jobs", answer.jobs, (job) =>
      el("tr", { dataset: { id: job.id } }, ...jobCells(job, job.created_at)));
    $("jobs-page").textContent = `page ${state.jobs.page + 1}`;
    $("jobs-prev").disabled = state.jobs.page === 0;
    $("jobs-first").disabled = state.jobs.page === 0;
    $("jobs-next").disabled = !answer.next_after;
  }

  async function refreshJob() {
    if (!state.running || state.view !== "job" || !state.jobId) return;
    const id = state.jobId;
    let job;
    try {
      job = await api(`jobs/${encodeURIComponent(id)}`);
    } catch (err) {
      if (err.status === 404) $("job-fields").replaceChildren(el("dt", {}, "Not found"));
      return;
    }
    if (id !== state.jobId) return;
    renderJob(job);
  }

  function renderJob(job) {
    $("job-id").textContent = job.id;
    const fields = [
      ["Status", el("span", { className: `badge ${job.status}`, id: "job-status" }, job.status)],
      ["Queue", job.queue],
      ["Attempts", `${job.attempt} of ${job.max_attempts}`],
      ["Worker", job.worker_id || "—"],
      ["Priority", job.priority],
      ["Run at", when(job.run_at)],
      ["Created", when(job.created_at)],
      ["Updated", when(job.updated_at)],
      ["Ended", when(job.completed_at)],
      ["Unique key", job.unique_key === null ? "—" : job.unique_key],
      ["Fingerprint", job.fingerprint === null ? "—" : job.fingerprint],
      ["Timeout", job.timeout === null ? "—" : `${job.timeout} s`],
      ["Progress", el("span", { id: "job-progress" }, progressText(job))],
      ["Last error", el("pre", { className: "error", id: "job-last-error" }, job.last_error || "—")],
    ];
    $("job-fields").replaceChildren(...fields.flatMap(([name, value]) =>
      [el("dt", {}, name), el("dd", {}, value)]));
    $("job-data").textContent = JSON.stringify(job.data, null, 2);
    $("job-result").textContent = job.result === null || job.result === undefined
      ? "—" : shorten(JSON.stringify(job.result, null, 2), SHOWN_JSON);
    const errors = job.errors || [];
    $("job-errors").tBodies[0].replaceChildren(...errors.map((e) =>
      el("tr", {}, el("td", { className: "n" }, e.attempt), el("td", {}, when(e.at)),
        el("td", {}, e.status), el("td", { className: "mono" }, e.worker_id || "—"),
        el("td", {}, el("pre", { className: "error" }, e.error)))));
    show($("job-errors-empty"), errors.length === 0);
    $("job-cancel").disabled = !["pending", "running"].includes(job.status);
    $("job-retry").disabled = !(job.status === "pending" || DEAD.includes(job.status));
  }

  // The latest progress: its value as JSON, its message, when it was reported.
  function progressText(job) {
    const parts = [];
    if (job.progress !== null && job.progress !== undefined) {
      parts.push(shorten(JSON.stringify(job.progress), SHOWN_PROGRESS));
    }
    if (job.progress_message) parts.push(job.progress_message);
    if (parts.length === 0) return "—";
    if (job.progress_at) parts.push(`(${when(job.progress_at)})`);
    return parts.join(" ");
  }

  function shorten(text, most) {
    return text.length <= most ? text : `${text.slice(0, most)} … (${text.length} characters)`;
  }

  // -- the dead-letter queue ----------------------------------------------------------

  async function refreshDlq() {
    if (!state.running || state.view !== "dlq") return;
    const params = new URLSearchParams({ limit: "100" });
    if (state.dlqQueue) params.set("queue", state.dlqQueue);
    const answer = await api(`dlq?${params}`);
    fillTable("dlq-table", "dlq", answer.jobs, (job) =>
      el("tr", { dataset: { id: job.id } },
        ...jobCells(job, job.completed_at || job.updated_at),
        el("td", { className: "row-actions" },
          el("button", { type: "button", className: "requeue",
            onclick: () => dlqOne(job, "requeue") }, "Requeue"),
          el("button", { type: "button", className: "purge danger",
            onclick: () => dlqOne(job, "purge") }, "Purge"))));
    const which = state.dlqQueue ? `of queue "${state.dlqQueue}"` : "(every queue)";
    $("dlq-requeue-all").textContent = `Requeue all ${which}`;
    $("dlq-purge-all").textContent = `Purge all ${which}`;
  }

  async function dlqOne(job, action) {
    if (action === "purge" && !confirm(`Purge dead job ${job.id} for good?`)) return;
    const done = action === "purge" ? "purged" : "requeued";
    if (await act(`Job ${job.id} ${done}.`, `dlq/${encodeURIComponent(job.id)}/${action}`)) {
      refresh("dlq", "stats");
    }
  }

  async function dlqBulk(action) {
    const queue = state.dlqQueue;
    const which = queue ? `of queue "${queue}"` : "of EVERY queue";
    if (!confirm(`${action === "purge" ? "Purge" : "Requeue"} all dead jobs ${which}?`)) return;
    try {
      const answer = await api(`dlq/${action}`, { method: "POST", body: queue ? { queue } : {} });
      const n = action === "purge" ? answer.purged : answer.requeued;
      message(`${n} dead job(s) ${which} ${action === "purge" ? "purged" : "requeued"}.`, "ok");
    } catch (err) {
      return;
    }
    refresh("dlq", "stats");
  }

  // -- schedules ----------------------------------------------------------------------

  async function refreshSchedules() {
    if (!state.running || state.view !== "schedules") return;
    const schedules = await api("schedules");
    state.rendered.schedules = null; // "last registered" is relative to now
    fillTable("schedules-table", "schedules", schedules, (s) => {
      const rule = s.cron ? `cron ${s.cron} (${s.timezone})` : `every ${duration(s.every_seconds)}`;
      const badge = s.paused
        ? el("span", { className: "badge paused", title: `since ${when(s.paused_at)}` }, "paused")
        : el("span", { className: "badge active" }, "active");
      const path = `schedules/${encodeURIComponent(s.name)}/${s.paused ? "resume" : "pause"}`;
      const toggle = el("button", {
        type: "button",
        className: s.paused ? "resume" : "pause",
        onclick: async () => {
          if (await act(`Schedule "${s.name}" ${s.paused ? "resumed" : "paused"}.`, path)) {
            refresh("schedules");
          }
        },
      }, s.paused ? "Resume" : "Pause");
      return el("tr", { dataset: { schedule: s.name } },
        el("td", {}, s.name), el("td", {}, s.queue === null ? "—" : s.queue),
        el("td", { className: "rule" }, rule), el("td", {}, s.missed),
        el("td", { className: "state" }, badge), el("td", {}, when(s.last_slot)),
        el("td", {}, s.paused || !s.next_slot ? "—" : when(s.next_slot)),
        el("td", { className: "n" }, s.enqueued), el("td", {}, ago(s.seen_at)),
        el("td", {}, toggle));
    });
  }

  // -- workers ------------------------------------------------------------------------

  async function refreshWorkers() {
    if (!state.running || state.view !== "workers") return;
    const workers = await api("workers");
    // Redraw each time: "last beat" is relative to now.
    state.rendered.workers = null;
    fillTable("workers-table", "workers", workers, (w) =>
      el("tr", { dataset: { id: w.id }, className: w.alive ? "" : "dead-worker" },
        el("td", {}, w.host), el("td", { className: "n" }, w.pid),
        el("td", {}, (w.queues || []).join(", ")), el("td", {}, when(w.started_at)),
        el("td", {}, ago(w.heartbeat_at)),
        el("td", {}, el("span", { className: `badge ${w.alive ? "active" : "failed"}` },
          w.alive ? (w.stopping_at ? "stopping" : "alive") : "gone")),
        el("td", { className: "n" }, w.running),
        el("td", {}, w.leader ? el("span", { className: "badge running" }, "leader") : ""),
        el("td", { className: "mono" }, w.id)));
  }

  // -- live events: fetch() with the header, the SSE stream parsed here ------------------

  let stream = null; // AbortController of the open stream
  let backoff = 1000;

  function setLive(mode, text) {
    const box = $("live");
    box.className = `live ${mode}`;
    box.textContent = text;
    box.dataset.state = mode;
  }

  async function connectEvents() {
    if (!state.running || stream) return;
    const controller = new AbortController();
    stream = controller;
    setLive("connecting", "connecting…");
    try {
      const response = await fetch("events", {
        headers: { Authorization: `Bearer ${state.token}` },
        signal: controller.signal,
        cache: "no-store",
      });
      if (response.status === 401) {
        signOut("The token was not accepted for live events (401).");
        return;
      }
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      setLive("on", "live");
      backoff = 1000;
      if ($("message").dataset.unreachable) show($("message"), false); // back again
      refresh("stats"); // events missed while disconnected are not replayed
      refreshView();
      await readEvents(response.body.getReader());
      throw new Error("the stream ended");
    } catch (err) {
      if (controller.signal.aborted) return;
      stream = null;
      setLive("off", `offline, retrying in ${Math.round(backoff / 1000)} s`);
      setTimeout(connectEvents, backoff);
      backoff = Math.min(backoff * 2, 30000);
    }
  }

  async function readEvents(reader) {
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        dispatch(block);
      }
    }
  }

  function dispatch(block) {
    let kind = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line === "" || line.startsWith(":")) continue; // a comment (ping)
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") kind = value;
      else if (field === "data") data.push(value);
    }
    if (data.length === 0) return;
    let payload;
    try {
      payload = JSON.parse(data.join("\n"));
    } catch (err) {
      return;
    }
    onEvent(kind, payload);
  }

  function onEvent(kind, event) {
    if (kind === "lagged") {
      refresh("stats");
      refreshView();
      return;
    }
    if (kind === "progress") { // frequent: only the job shown follows it, not the feed
      if (state.view === "job" && event.id === state.jobId) refresh("job");
      return;
    }
    state.feed.unshift({ at: new Date(), kind, id: event.id, queue: event.queue });
    state.feed.length = Math.min(state.feed.length, 12);
    renderFeed();
    const parts = ["stats"];
    if (state.view === "job" && event.id === state.jobId) parts.push("job");
    if (state.view === "jobs" && (!state.jobs.queue || event.queue === null
      || event.queue === state.jobs.queue)) parts.push("jobs");
    if (state.view === "dlq" && (DEAD.includes(kind) || kind === "inserted")) parts.push("dlq");
    if (state.view === "workers" && kind !== "inserted") parts.push("workers");
    refresh(...parts);
  }

  function renderFeed() {
    $("event-feed").replaceChildren(...state.feed.map((e) =>
      el("li", { dataset: { id: e.id, kind: e.kind } },
        el("span", { className: "time" }, e.at.toLocaleTimeString()), " ",
        el("span", { className: `badge ${e.kind}` }, e.kind), " ",
        el("span", { className: "queue" }, e.queue === null ? "(long name)" : e.queue), " ",
        el("a", { href: `#job/${encodeURIComponent(e.id)}`, className: "mono" }, e.id))));
  }

  // -- views, start and stop -----------------------------------------------------------

  function route() {
    let hash = "";
    try {
      hash = decodeURIComponent(location.hash.slice(1));
    } catch (err) {
      hash = "";
    }
    let view = hash || "queues";
    if (hash.startsWith("job/")) {
      view = "job";
      if (state.jobId !== hash.slice(4)) {
        state.jobId = hash.slice(4);
        $("job-fields").replaceChildren();
        $("job-data").textContent = "";
        $("job-id").textContent = state.jobId;
      }
    }
    if (!$(`view-${view}`)) view = "queues";
    state.view = view;
    for (const section of document.querySelectorAll(".view")) {
      show(section, state.running && section.id === `view-${view}`);
    }
    for (const link of document.querySelectorAll("#nav a")) {
      link.classList.toggle("current", link.dataset.view === view
        || (view === "job" && link.dataset.view === "jobs"));
    }
    if (state.running) refreshView();
  }

  let pollTimer = null;

  function start() {
    state.running = true;
    show($("login"), false);
    show($("nav"), true);
    show($("sign-out"), true);
    route();
    refresh("stats");
    pollTimer = setInterval(() => {
      refresh("stats");
      if (state.view === "workers") refresh("workers");
      if (state.view === "schedules") refresh("schedules");
    }, POLL_MS);
    connectEvents();
  }

  function signOut(reason) {
    state.running = false;
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    clearInterval(pollTimer);
    if (stream) stream.abort();
    stream = null;
    state.rendered = {};
    setLive("off", "offline");
    show($("nav"), false);
    show($("sign-out"), false);
    for (const section of document.querySelectorAll(".view")) show(section, false);
    show($("login"), true);
    if (reason) message(reason, "error");
    $("token-input").focus();
  }

  $("token-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = $("token-input").value.trim();
    if (!token) return;
    state.token = token;
    try {
      await api("queues"); // is it a valid token? (401 signs out again with a message)
    } catch (err) {
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token-input").value = "";
    show($("message"), false);
    start();
  });

  $("sign-out").addEventListener("click", () => signOut());

  $("jobs-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    state.jobs.queue = $("jobs-queue").value;
    state.jobs.status = $("jobs-status").value;
    resetJobPages();
    refresh("jobs");
  });
  $("jobs-next").addEventListener("click", () => {
    if (!state.jobs.next) return;
    state.jobs.pages[state.jobs.page + 1] = state.jobs.next;
    state.jobs.page += 1;
    refresh("jobs");
  });
  $("jobs-prev").addEventListener("click", () => {
    state.jobs.page = Math.max(0, state.jobs.page - 1);
    refresh("jobs");
  });
  $("jobs-first").addEventListener("click", () => {
    resetJobPages();
    refresh("jobs");
  });

  $("job-cancel").addEventListener("click", async () => {
    const id = state.jobId;
    if (await act(`Job ${id} cancelled.`, `jobs/${encodeURIComponent(id)}/cancel`)) refresh("job");
  });
  $("job-retry").addEventListener("click", async () => {
    const id = state.jobId;
    if (await act(`Job ${id} retried.`, `jobs/${encodeURIComponent(id)}/retry`)) refresh("job");
  });
  $("job-reload").addEventListener("click", () => refresh("job"));

  $("dlq-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    state.dlqQueue = $("dlq-queue").value;
    refresh("dlq");
  });
  $("dlq-requeue-all").addEventListener("click", () => dlqBulk("requeue"));
  $("dlq-purge-all").addEventListener("click", () => dlqBulk("purge"));

  window.addEventListener("hashchange", route);
  // Leaving the page ends the stream (a page kept in the back/forward cache would
  // otherwise hold its connection open); coming back from that cache opens it again.
  window.addEventListener("pagehide", () => {
    if (stream) stream.abort();
    stream = null;
  });
  window.addEventListener("pageshow", (event) => {
    if (event.persisted && state.running) connectEvents();
  });

  if (state.token) start();
  else signOut();
})();

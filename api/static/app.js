// ftq dashboard: sign in with an API key, list jobs, follow one job live. No framework, no build step.
// Everything taken from the API goes into the page through textContent or DOM properties, never innerHTML.

const KEY_STORAGE = "ftq.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const LIST_REFRESH_MS = 3000;
const JOB_REFRESH_MS = 2000;
const EVENT_PAGE = 1000;
const MAX_LOG_ROWS = 2000;

const $ = (id) => document.getElementById(id);

const state = {
  key: localStorage.getItem(KEY_STORAGE),
  me: null,
  view: null, // the active view's {stop()}
};

// ---------------------------------------------------------------- API calls

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function apiUrl(path) {
  // Relative to the page, so the dashboard also works behind a path prefix.
  return new URL(path, document.baseURI);
}

async function errorFrom(response) {
  let code = "http_error";
  let message = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) {
      code = body.error.code || code;
      message = body.error.message;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, code, message);
}

// fetch() with the key; throws ApiError for any non-2xx answer (a 401 also signs out, unless signing in).
async function api(path, { method = "GET", headers = {}, signal, key = state.key, signingIn = false } = {}) {
  let response;
  try {
    response = await fetch(apiUrl(path), {
      method,
      headers: { Authorization: `Bearer ${key}`, ...headers },
      signal,
      cache: "no-store",
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "network_error", "the API cannot be reached");
  }
  if (!response.ok) {
    const error = await errorFrom(response);
    if (response.status === 401 && !signingIn) signOut(error.message);
    throw error;
  }
  return response;
}

async function apiJson(path, options) {
  return (await api(path, options)).json();
}

function isAbort(err) {
  return err && err.name === "AbortError";
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    if (signal) signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });

// ---------------------------------------------------------------- formatting

function el(tag, { text, className, title, attrs } = {}, children = []) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  if (title) node.title = title;
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function badge(status, extra = "") {
  const known = /^[a-z]+$/.test(status) ? ` status-${status}` : "";
  return el("span", { text: status, className: `badge${known}${extra}` });
}

function age(iso) {
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${Math.floor(seconds)} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

function clock(iso) {
  return new Date(iso).toLocaleTimeString([], { hour12: false });
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

const num = (value, fmt) => (value === null || value === undefined ? "–" : fmt(value));
const fixed = (digits) => (v) => Number(v).toFixed(digits);
const sci = (v) => Number(v).toExponential(2);

// Only http(s) links from data become hrefs.
function safeUrl(value) {
  try {
    const url = new URL(value);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

function externalLink(href, text) {
  const url = safeUrl(href);
  if (!url) return el("span", { text });
  return el("a", { text, attrs: { href: url, target: "_blank", rel: "noopener noreferrer" } });
}

function showError(node, err) {
  node.textContent = err ? err.message : "";
  node.hidden = !err;
}

function fraction(progress) {
  const total = progress.total_steps;
  return total ? Math.min(1, progress.step / total) : 0;
}

function progressBar(progress, status) {
  const fill = el("div", { className: "progress-fill" });
  fill.style.width = `${(fraction(progress) * 100).toFixed(1)}%`;
  if (status === "succeeded") fill.classList.add("done");
  const total = progress.total_steps ?? "?";
  return el("div", { className: "progress-cell" }, [
    el("div", { className: "progress" }, [fill]),
    el("span", { className: "progress-label", text: `${progress.step} / ${total}` }),
  ]);
}

// ---------------------------------------------------------------- sign in / out and routing

function showView(name) {
  for (const view of ["signin", "jobs", "job"]) $(`view-${view}`).hidden = view !== name;
  $("nav").hidden = name === "signin";
}

function stopView() {
  if (state.view) state.view.stop();
  state.view = null;
}

function signOut(message) {
  stopView();
  state.key = null;
  state.me = null;
  localStorage.removeItem(KEY_STORAGE);
  $("whoami").textContent = "";
  showError($("signin-error"), message ? new Error(message) : null);
  showView("signin");
  $("api-key").value = "";
  $("api-key").focus();
}

async function signIn(key) {
  if (!key || /[^\x21-\x7e]/.test(key)) {
    throw new ApiError(0, "invalid_key", "an API key is printable ASCII without spaces");
  }
  state.me = await apiJson("me", { key, signingIn: true });
  state.key = key;
  localStorage.setItem(KEY_STORAGE, key);
  $("whoami").textContent = state.me.name;
}

function route() {
  stopView();
  if (!state.key) return signOut();
  const match = /^#\/jobs\/([A-Za-z0-9_-]+)$/.exec(location.hash);
  state.view = match ? jobView(match[1]) : jobsView();
}

// ---------------------------------------------------------------- the job list

function jobsView() {
  showView("jobs");
  const controller = new AbortController();
  const { signal } = controller;
  const select = $("status-filter");
  let generation = 0;

  async function refresh() {
    const mine = ++generation;
    const params = new URLSearchParams({ limit: "100" });
    if (select.value) params.set("status", select.value);
    try {
      const page = await apiJson(`jobs?${params}`, { signal });
      if (mine !== generation || signal.aborted) return; // the filter changed or the page moved on meanwhile
      renderJobs(page);
      showError($("jobs-error"), null);
      $("jobs-updated").textContent = `updated ${new Date().toLocaleTimeString([], { hour12: false })}`;
    } catch (err) {
      if (!isAbort(err) && mine === generation) showError($("jobs-error"), err);
    }
  }

  async function loop() {
    while (!signal.aborted) {
      await refresh();
      await sleep(LIST_REFRESH_MS, signal);
    }
  }

  const onFilter = () => {
    $("jobs-body").replaceChildren();
    refresh();
  };
  select.addEventListener("change", onFilter);
  loop();
  return {
    stop() {
      controller.abort();
      select.removeEventListener("change", onFilter);
    },
  };
}

function renderJobs(page) {
  const rows = page.data.map((job) => {
    const link = el("a", { text: job.id, className: "mono", attrs: { href: `#/jobs/${encodeURIComponent(job.id)}` } });
    const row = el("tr", { className: "job-row" }, [
      el("td", {}, [link]),
      el("td", { className: "status" }, [badge(job.status)]),
      el("td", { className: "owner", text: job.owner }),
      el("td", { className: "model", text: job.spec.base_model, title: job.spec.base_model }),
      el("td", {}, [progressBar(job.progress, job.status)]),
      el("td", { className: "age", text: age(job.created_at), title: when(job.created_at) }),
    ]);
    row.dataset.jobId = job.id;
    row.addEventListener("click", (event) => {
      if (event.target.closest("a")) return;
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    });
    return row;
  });
  $("jobs-body").replaceChildren(...rows);
  $("jobs-empty").hidden = rows.length > 0;
  $("jobs-more").hidden = !page.has_more;
}

// ---------------------------------------------------------------- evaluation (the course's price metrics)

const GRADES = [
  ["hit", "hit", "#2f9e57"],
  ["near", "near miss", "#e08a1e"],
  ["miss", "miss", "#c8322b"],
];
const BASE_COLOR = "#8a94a6";
const BANDS = [
  ["< $50", 0, 50],
  ["$50–100", 50, 100],
  ["$100–250", 100, 250],
  ["$250–500", 250, 500],
  ["≥ $500", 500, Infinity],
];
const money = (v) => `$${Number(v).toFixed(2)}`;
const percent = (v) => `${(Number(v) * 100).toFixed(1)}%`;
const isNumber = (v) => typeof v === "number" && Number.isFinite(v);

function evaluationRow(name, figures) {
  return el("tr", { attrs: { "data-model": name } }, [
    el("td", { className: "model-name", text: name }),
    el("td", { className: "rows", text: num(figures.rows, String) }),
    el("td", { className: "mae", text: num(figures.mae, money) }),
    el("td", { className: "rmsle", text: num(figures.rmsle, fixed(3)) }),
    el("td", { className: "hit-rate", text: num(figures.hit_rate, percent) }),
    el("td", { className: "near-rate", text: num(figures.near_rate, percent) }),
    el("td", { className: "unparsable", text: num(figures.unparsable, String) }),
  ]);
}

// Fine-tune points by grade (filled, coloured), the base model's hollow and grey, and the y = x diagonal.
function newScatter(canvas, predictions, withBaseline, subject = "fine-tune") {
  const Chart = globalThis.Chart;
  const datasets = GRADES.map(([grade, label, color]) => ({
    label: `${subject}: ${label}`,
    model: subject,
    data: predictions.filter((p) => p.grade === grade && isNumber(p.prediction)).map((p) => ({ x: p.truth, y: p.prediction })),
    backgroundColor: color,
    borderColor: color,
    pointRadius: 4,
  }));
  if (withBaseline) {
    datasets.push({
      label: "base model",
      model: "base",
      data: predictions.filter((p) => isNumber(p.baseline_prediction)).map((p) => ({ x: p.truth, y: p.baseline_prediction })),
      backgroundColor: "rgba(0,0,0,0)",
      borderColor: BASE_COLOR,
      borderWidth: 1.5,
      pointRadius: 4,
    });
  }
  const values = datasets.flatMap((d) => d.data.flatMap((p) => [p.x, p.y])).concat(predictions.map((p) => p.truth));
  const low = Math.min(0, ...values);
  const high = Math.max(1, ...values);
  datasets.push({
    label: "y = x",
    model: "diagonal",
    type: "line",
    data: [{ x: low, y: low }, { x: high, y: high }],
    borderColor: "#b0b7c3",
    borderDash: [4, 4],
    borderWidth: 1,
    pointRadius: 0,
    pointHitRadius: 0,
  });
  return new Chart(canvas, {
    type: "scatter",
    data: { datasets },
    options: {
      animation: false,
      maintainAspectRatio: false,
      plugins: {
        legend: { position: "bottom", labels: { boxWidth: 10, boxHeight: 10 } },
        tooltip: { callbacks: { label: (ctx) => `${ctx.dataset.label}: truth ${money(ctx.parsed.x)}, predicted ${money(ctx.parsed.y)}` } },
      },
      scales: {
        x: { type: "linear", title: { display: true, text: "true price ($)" } },
        y: { type: "linear", title: { display: true, text: "predicted price ($)" } },
      },
    },
  });
}

// Mean absolute error of the parsed answers in each band of the true price: fine-tune and base side by side.
function newBandChart(canvas, predictions, withBaseline, subject = "fine-tune") {
  const Chart = globalThis.Chart;
  const inBand = BANDS.map(([, lo, hi]) => predictions.filter((p) => p.truth >= lo && p.truth < hi));
  const mae = (rows, field) => {
    const errors = rows.filter((p) => isNumber(p[field])).map((p) => Math.abs(p[field] - p.truth));
    return errors.length ? errors.reduce((a, b) => a + b, 0) / errors.length : null;
  };
  const datasets = [
    { label: subject, data: inBand.map((rows) => mae(rows, "prediction")), backgroundColor: "#3056d3" },
  ];
  if (withBaseline) {
    datasets.push({ label: "base model", data: inBand.map((rows) => mae(rows, "baseline_prediction")), backgroundColor: BASE_COLOR });
  }
  return new Chart(canvas, {
    type: "bar",
    data: { labels: BANDS.map(([label], i) => `${label} (n=${inBand[i].length})`), datasets },
    options: {
      animation: false,
      maintainAspectRatio: false,
      plugins: {
        legend: { position: "bottom", labels: { boxWidth: 10, boxHeight: 10 } },
        tooltip: { callbacks: { label: (ctx) => `${ctx.dataset.label}: MAE ${num(ctx.raw, money)}` } },
      },
      scales: {
        x: { title: { display: true, text: "true price" } },
        y: { beginAtZero: true, title: { display: true, text: "mean absolute error ($)" } },
      },
    },
  });
}

// ---------------------------------------------------------------- one job

function newChart(canvas) {
  const Chart = globalThis.Chart;
  return new Chart(canvas, {
    type: "line",
    data: {
      datasets: [
        { label: "loss", data: [], yAxisID: "y", borderColor: "#3056d3", backgroundColor: "#3056d3",
          borderWidth: 2, pointRadius: 0, pointHitRadius: 6 },
        { label: "learning rate", data: [], yAxisID: "y1", borderColor: "#e08a1e", backgroundColor: "#e08a1e",
          borderWidth: 1.5, borderDash: [5, 4], pointRadius: 0, pointHitRadius: 6 },
      ],
    },
    options: {
      animation: false,
      maintainAspectRatio: false,
      parsing: false,
      normalized: true,
      interaction: { mode: "nearest", axis: "x", intersect: false },
      plugins: { legend: { position: "bottom", labels: { boxWidth: 24, boxHeight: 2 } } },
      scales: {
        x: { type: "linear", title: { display: true, text: "step" }, ticks: { precision: 0 } },
        y: { type: "linear", position: "left", title: { display: true, text: "loss" } },
        y1: {
          type: "linear",
          position: "right",
          title: { display: true, text: "learning rate" },
          grid: { drawOnChartArea: false },
          ticks: { callback: (value) => Number(value).toExponential(1) },
        },
      },
    },
  });
}

// Parse one Server-Sent Events frame (the lines between blank lines) into {id, event, data}.
function parseFrame(frame) {
  const out = { id: null, event: "message", data: [] };
  for (const line of frame.split("\n")) {
    if (line === "" || line.startsWith(":")) continue; // a comment (keep-alive)
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "id") out.id = value;
    else if (field === "event") out.event = value;
    else if (field === "data") out.data.push(value);
  }
  if (out.id === null && out.data.length === 0 && out.event === "message") return null;
  return { id: out.id, event: out.event, data: out.data.join("\n") };
}

function jobView(jobId) {
  showView("job");
  const controller = new AbortController();
  const { signal } = controller;
  const base = `jobs/${encodeURIComponent(jobId)}`;
  const view = { job: null, lastEventId: null, streamEnded: false, chart: null, drawPending: false, metrics: null,
    evaluationAsked: false, evalCharts: [] };

  // Reset what a previous job left on the page.
  $("job-title").textContent = jobId;
  $("job-status").textContent = "…";
  $("job-status").className = "badge";
  for (const id of ["job-error", "job-failure", "stream-state"]) showError($(id), null);
  $("job-details").replaceChildren();
  $("job-links").replaceChildren();
  $("event-log").replaceChildren();
  $("checkpoints-body").replaceChildren();
  $("checkpoints-empty").hidden = false;
  $("checkpoints-table").hidden = true;
  $("adapter-download").hidden = true;
  $("chart-empty").hidden = false;
  $("cancel-button").disabled = true;
  $("evaluation-card").hidden = true;
  $("evaluation-body").replaceChildren();
  showError($("evaluation-error"), null);
  $("eval-scatter-empty").hidden = true;
  view.chart = newChart($("job-chart"));

  // --- the job itself, polled every couple of seconds until it is terminal
  async function refreshJob() {
    try {
      const job = await apiJson(base, { signal });
      if (signal.aborted) return; // the page moved on while the answer was read
      renderJob(job);
      showError($("job-error"), null);
    } catch (err) {
      if (!isAbort(err)) showError($("job-error"), err);
      if (err.status === 404) view.missing = true;
    }
  }

  function renderJob(job) {
    const justEnded = view.job !== null && !TERMINAL.has(view.job.status) && TERMINAL.has(job.status);
    view.job = job;
    const status = $("job-status");
    status.textContent = job.status;
    status.className = `badge status-${job.status}`;
    $("cancel-button").disabled = TERMINAL.has(job.status) || job.status === "cancelling";

    const p = job.progress;
    const fill = $("job-progress-fill");
    fill.style.width = `${(fraction(p) * 100).toFixed(1)}%`;
    fill.classList.toggle("done", job.status === "succeeded");
    $("job-progressbar").setAttribute("aria-valuenow", String(p.step));
    if (p.total_steps) $("job-progressbar").setAttribute("aria-valuemax", String(p.total_steps));
    $("progress-step").textContent = `${p.step} / ${p.total_steps ?? "?"}`;
    renderMetrics();
    $("progress-tps").textContent = num(p.tokens_per_second, (v) => Math.round(v).toLocaleString());
    $("progress-eta").textContent = TERMINAL.has(job.status) ? "–" : duration(p.eta_seconds);
    $("progress-epoch").textContent = num(p.epoch, fixed(2));

    const details = [
      ["Owner", job.owner],
      ["Kind", job.spec.kind === "evaluation" ? "evaluation" : "fine-tune"],
      ["Base model", job.spec.base_model],
      ...(job.spec.adapter ? [["Adapter", job.spec.adapter]] : []),
      ["Dataset", (job.spec.dataset || job.spec.evaluation.dataset).id],
      ["Created", `${when(job.created_at)} (${age(job.created_at)})`],
      ["Started", when(job.started_at)],
      ["Finished", when(job.finished_at)],
      ["Worker", job.worker || "–"],
      ["Attempt", job.attempt],
    ];
    if (job.queue_position) details.push(["Queue position", job.queue_position]);
    if (job.stats && job.stats.rows !== null) details.push(["Rows", job.stats.rows]);
    for (const [name, value] of Object.entries(job.metadata || {})) details.push([name, value]);
    $("job-details").replaceChildren(...details.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));

    const links = [];
    if (job.wandb_url) links.push(externalLink(job.wandb_url, "W&B run ↗"));
    if (job.result && job.result.hub_commit_url) links.push(externalLink(job.result.hub_commit_url, "Final adapter on the Hub ↗"));
    $("job-links").replaceChildren(...links);

    const failure = job.error ? `${job.error.code}: ${job.error.message}` : "";
    $("job-failure").textContent = failure;
    $("job-failure").hidden = !failure;
    $("adapter-download").hidden = !(job.status === "succeeded" && job.result && job.result.adapter_path);
    if (justEnded) refreshCheckpoints(); // the last checkpoint and its Hub commit
    if (job.status === "succeeded" && !view.evaluationAsked) {
      view.evaluationAsked = true; // once: an evaluation is written before the job succeeds and never changes
      loadEvaluation();
    }
  }

  // --- the evaluation, once the job has succeeded (a 404 means it has none)
  async function loadEvaluation() {
    let scores;
    try {
      scores = await apiJson(`${base}/evaluation`, { signal });
    } catch (err) {
      if (!isAbort(err) && err.status !== 404) showError($("job-error"), err);
      return;
    }
    if (signal.aborted) return;
    const withBaseline = Boolean(scores.baseline);
    // An evaluation job without an adapter scores the base model alone (`model` says which was scored).
    const subject = scores.model || "fine-tune";
    const rows = [evaluationRow(subject[0].toUpperCase() + subject.slice(1), scores)];
    if (withBaseline) rows.push(evaluationRow("Base model", scores.baseline));
    $("evaluation-body").replaceChildren(...rows);
    $("evaluation-card").hidden = false;
    try {
      const text = await (await api(`${base}/evaluation/predictions`, { signal })).text();
      if (signal.aborted) return;
      const predictions = text.split("\n").filter((line) => line.trim()).map((line) => JSON.parse(line))
        .filter((p) => isNumber(p.truth));
      view.evalCharts.push(newScatter($("eval-scatter"), predictions, withBaseline, subject));
      view.evalCharts.push(newBandChart($("eval-bands"), predictions, withBaseline, subject));
      const parsed = predictions.filter((p) => isNumber(p.prediction) || isNumber(p.baseline_prediction)).length;
      $("eval-scatter-empty").textContent = parsed ? "" : `No parsable answer to plot (${predictions.length} rows, all unparsable).`;
      $("eval-scatter-empty").hidden = parsed > 0;
    } catch (err) {
      if (!isAbort(err)) showError($("evaluation-error"), err);
    }
  }

  async function jobLoop() {
    while (!signal.aborted) {
      await refreshJob();
      if (view.missing || (view.job && TERMINAL.has(view.job.status) && view.streamEnded)) return;
      await sleep(JOB_REFRESH_MS, signal);
    }
  }

  // --- checkpoints
  async function refreshCheckpoints() {
    try {
      const list = await apiJson(`${base}/checkpoints`, { signal });
      if (signal.aborted) return;
      const rows = list.data.map((c) => {
        const button = el("button", { text: "Download", className: "small", attrs: { type: "button" } });
        button.addEventListener("click", () => download(`${base}/checkpoints/${c.step}/download`, `${jobId}-step-${c.step}.tar.gz`, button));
        const hub = c.hub_commit_url ? externalLink(c.hub_commit_url, "commit ↗") : el("span", { text: "–", className: "muted" });
        return el("tr", {}, [
          el("td", { text: c.step }),
          el("td", { text: when(c.created_at) }),
          el("td", { text: num(c.metrics.loss, fixed(4)) }),
          el("td", {}, [hub]),
          el("td", {}, [button]),
        ]);
      });
      $("checkpoints-body").replaceChildren(...rows);
      $("checkpoints-empty").hidden = rows.length > 0;
      $("checkpoints-table").hidden = rows.length === 0;
    } catch (err) {
      if (!isAbort(err)) showError($("job-error"), err);
    }
  }

  async function download(path, fallbackName, button) {
    const label = button.textContent;
    button.disabled = true;
    button.textContent = "Downloading…";
    try {
      const response = await api(path, { signal });
      const blob = await response.blob();
      const disposition = response.headers.get("Content-Disposition") || "";
      const name = (/filename="([^"]+)"/.exec(disposition) || [])[1] || fallbackName;
      const url = URL.createObjectURL(blob);
      const a = el("a", { attrs: { href: url, download: name } });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (err) {
      if (!isAbort(err)) showError($("job-error"), err);
    } finally {
      button.disabled = false;
      button.textContent = label;
    }
  }

  // --- events: the stored log first, then the live stream after its last id
  function addEvent(event, live = false) {
    if (view.lastEventId !== null && event.id <= view.lastEventId) return; // seen already (a resumed stream)
    view.lastEventId = event.id;
    logEvent(event);
    if (event.type === "progress") addPoint(event.data);
    if (!live) return;
    if (event.type === "status" || event.type === "wandb") refreshJob();
    if (event.type === "checkpoint" || event.type === "hub") refreshCheckpoints();
  }

  function logEvent(event) {
    const box = $("event-log-box");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 30;
    const row = el("tr", { className: `level-${/^[a-z]+$/.test(event.level) ? event.level : "info"}` }, [
      el("td", { className: "time", text: clock(event.created_at), title: when(event.created_at) }),
      el("td", { className: "type" }, [el("span", { text: event.type, className: `badge event-type type-${event.type}` })]),
      el("td", { className: "message", text: event.message }),
    ]);
    const log = $("event-log");
    log.append(row);
    while (log.childElementCount > MAX_LOG_ROWS) log.firstElementChild.remove();
    if (atBottom) box.scrollTop = box.scrollHeight;
  }

  // Loss and learning rate: the job's progress, or the latest `progress` event when that is newer (the job's
  // progress is written at the end of a step, before the step's metrics are logged).
  function renderMetrics() {
    const p = view.job ? view.job.progress : { step: 0 };
    const newer = view.metrics && view.metrics.step >= p.step ? view.metrics : {};
    $("progress-loss").textContent = num(newer.loss ?? p.loss, fixed(4));
    $("progress-lr").textContent = num(newer.learning_rate ?? p.learning_rate, sci);
  }

  function addPoint(data) {
    const step = data.step;
    if (typeof step !== "number") return;
    const [loss, lr] = view.chart.data.datasets;
    // A resumed attempt logs the steps after its checkpoint again: its points replace the old ones.
    for (const set of [loss, lr]) while (set.data.length && set.data[set.data.length - 1].x >= step) set.data.pop();
    loss.data.push({ x: step, y: typeof data.loss === "number" ? data.loss : null });
    lr.data.push({ x: step, y: typeof data.learning_rate === "number" ? data.learning_rate : null });
    $("chart-empty").hidden = true;
    view.metrics = data;
    renderMetrics();
    if (!view.drawPending) {
      view.drawPending = true;
      requestAnimationFrame(() => {
        view.drawPending = false;
        if (view.chart) view.chart.update("none");
      });
    }
  }

  async function loadStoredEvents() {
    let hasMore = true;
    while (hasMore && !signal.aborted) {
      const params = new URLSearchParams({ limit: String(EVENT_PAGE) });
      if (view.lastEventId !== null) params.set("after", String(view.lastEventId));
      const page = await apiJson(`${base}/events?${params}`, { signal });
      if (signal.aborted) return;
      for (const event of page.data) addEvent(event);
      hasMore = page.has_more && page.data.length > 0;
    }
  }

  // EventSource cannot send an Authorization header: read the stream with fetch and parse the frames here.
  async function followStream() {
    let delay = 1000;
    while (!signal.aborted) {
      try {
        const headers = { Accept: "text/event-stream" };
        if (view.lastEventId !== null) headers["Last-Event-ID"] = String(view.lastEventId);
        const response = await api(`${base}/events/stream`, { headers, signal });
        showError($("stream-state"), null);
        delay = 1000;
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          // Lines may end in \r\n, \n or \r; a trailing \r waits for the next chunk (it may be half of \r\n).
          buffer = (buffer + value).replace(/\r\n|\r(?!$)/g, "\n");
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const frame = parseFrame(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
            if (!frame) continue;
            if (frame.event === "end") {
              view.streamEnded = true;
              reader.cancel().catch(() => {});
              refreshJob();
              refreshCheckpoints();
              return;
            }
            addEvent(JSON.parse(frame.data), true);
          }
        }
      } catch (err) {
        if (isAbort(err) || signal.aborted) return;
        if (err.status === 401 || err.status === 404) return showError($("job-error"), err);
      }
      if (signal.aborted) return;
      $("stream-state").textContent = "Live updates interrupted; reconnecting…";
      $("stream-state").hidden = false;
      await sleep(delay, signal);
      delay = Math.min(delay * 2, 10_000);
    }
  }

  // --- cancel
  async function cancel() {
    const button = $("cancel-button");
    button.disabled = true;
    try {
      const job = await apiJson(`${base}/cancel`, { method: "POST", signal });
      if (signal.aborted) return;
      renderJob(job);
      showError($("job-error"), null);
    } catch (err) {
      if (!isAbort(err)) {
        showError($("job-error"), err);
        refreshJob();
      }
    }
  }

  const onCancel = () => cancel();
  const onAdapter = (event) => download(`${base}/adapter/download`, `${jobId}-adapter.tar.gz`, event.currentTarget);
  const onPredictions = (event) =>
    download(`${base}/evaluation/predictions`, `${jobId}-predictions.jsonl`, event.currentTarget);
  $("cancel-button").addEventListener("click", onCancel);
  $("adapter-download").addEventListener("click", onAdapter);
  $("predictions-download").addEventListener("click", onPredictions);

  (async () => {
    await refreshJob();
    if (view.missing || signal.aborted) return;
    refreshCheckpoints();
    jobLoop();
    try {
      await loadStoredEvents();
    } catch (err) {
      if (!isAbort(err)) showError($("job-error"), err);
    }
    followStream();
  })();

  return {
    stop() {
      controller.abort();
      $("cancel-button").removeEventListener("click", onCancel);
      $("adapter-download").removeEventListener("click", onAdapter);
      $("predictions-download").removeEventListener("click", onPredictions);
      for (const chart of view.evalCharts) chart.destroy();
      view.evalCharts = [];
      if (view.chart) view.chart.destroy();
      view.chart = null;
    },
  };
}

// ---------------------------------------------------------------- start

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = $("signin-button");
  button.disabled = true;
  showError($("signin-error"), null);
  try {
    await signIn($("api-key").value.trim());
    $("api-key").value = "";
    route();
  } catch (err) {
    showError($("signin-error"), err);
  } finally {
    button.disabled = false;
  }
});

$("sign-out").addEventListener("click", (event) => {
  event.preventDefault();
  signOut();
});

window.addEventListener("hashchange", () => {
  if (state.key) route();
});

(async () => {
  if (!state.key) return signOut();
  try {
    state.me = await apiJson("me");
    $("whoami").textContent = state.me.name;
    route();
  } catch (err) {
    if (err.status !== 401) {
      // The API is down or erring: keep the key and show the page; its own calls report the error.
      route();
    }
  }
})();

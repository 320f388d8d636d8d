// The pyqueue dashboard: plain DOM, no build step.  Every text from the
// server goes in with textContent (task ids and tracebacks are user data).
"use strict";

let csrf = null;
let timer = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick" || k === "onsubmit" || k === "onchange") node[k] = v;
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

async function api(path, options) {
  const opts = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
  if (opts.body !== undefined) {
    opts.method = opts.method || "POST";
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(opts.body);
  }
  if (opts.method === "POST" && csrf) opts.headers["X-CSRF-Token"] = csrf;
  const resp = await fetch(path, opts);
  const data = await resp.json().catch(() => ({ error: resp.statusText }));
  if (resp.status === 401 && path !== "/api/login") {
    showLogin();
    throw new Error("not logged in");
  }
  if (!resp.ok) throw new Error(data.error || resp.statusText);
  return data;
}

function when(t) {
  return t ? new Date(t * 1000).toISOString().replace("T", " ").replace("Z", " UTC") : "—";
}

function age(s) {
  if (s === null || s === undefined) return "—";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  return `${(s / 60).toFixed(1)} min`;
}

function table(headers, rows, id) {
  return el("table", { id },
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

function show(...nodes) {
  const view = document.getElementById("view");
  view.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined));
}

function setStatus(text, isError) {
  const line = document.getElementById("status-line");
  line.textContent = text;
  line.className = isError ? "error" : "";
}

// -- login --------------------------------------------------------------------
function showLogin() {
  document.getElementById("login").hidden = false;
  document.getElementById("view").replaceChildren();
  if (timer) clearInterval(timer);
}

async function login(token) {
  const data = await api("/api/login", { body: { token } });
  csrf = data.csrf;
  document.getElementById("login").hidden = true;
  route();
}

// -- overview -----------------------------------------------------------------
function chart(samples) {
  const w = 600, h = 140, box = svg("svg", { class: "chart", width: w, height: h, id: "rate-chart" });
  if (samples.length < 2) return box;
  const rates = { submitted: [], finished: [], failed: [] };
  for (let i = 1; i < samples.length; i++) {
    const dt = Math.max(1e-3, samples[i][0] - samples[i - 1][0]);
    rates.submitted.push((samples[i][1] - samples[i - 1][1]) / dt);
    rates.finished.push((samples[i][2] - samples[i - 1][2]) / dt);
    rates.failed.push((samples[i][3] - samples[i - 1][3]) / dt);
  }
  const top = Math.max(1, ...rates.submitted, ...rates.finished);
  const n = rates.submitted.length;
  for (const [name, values] of Object.entries(rates)) {
    const points = values.map((v, i) =>
      `${(i / Math.max(1, n - 1)) * (w - 10) + 5},${h - 5 - (v / top) * (h - 20)}`).join(" ");
    box.append(svg("polyline", { points, class: name }));
  }
  const label = svg("text", { x: 8, y: 14, "font-size": 11 });
  label.textContent = `peak ${top.toFixed(0)}/s over the last ${Math.round(samples[samples.length - 1][0] - samples[0][0])} s`;
  box.append(label);
  return box;
}

function lastRate(samples, k) {
  if (samples.length < 2) return 0;
  const a = samples[Math.max(0, samples.length - 6)], b = samples[samples.length - 1];
  return (b[k] - a[k]) / Math.max(1e-3, b[0] - a[0]);
}

async function overview() {
  const [st, rates] = await Promise.all([api("/api/overview"), api("/api/rates")]);
  const s = rates.samples;
  const states = ["scheduled", "pending", "leased", "succeeded", "failed", "dead", "cancelled"];
  show(
    el("h1", {}, "Overview"),
    el("p", {},
      `${st.nodes.length} node(s), ${st.in_flight} in flight, ${st.queue_depth} waiting, ${st.dead} dead. `,
      el("span", { class: "submitted" }, `submitted ${lastRate(s, 1).toFixed(1)}/s`), " · ",
      el("span", { class: "finished" }, `finished ${lastRate(s, 2).toFixed(1)}/s`), " · ",
      el("span", { class: "failed" }, `failed ${lastRate(s, 3).toFixed(1)}/s`)),
    chart(s),
    el("h2", {}, "Queues"),
    table(["queue", ...states, "oldest pending", "rate limit", ""],
      st.queues.map((q) => el("tr", { "data-queue": q.name },
        el("td", {}, q.name),
        states.map((k) => el("td", { class: "num" }, q.tasks[k] || 0)),
        el("td", { class: "num" }, age(q.oldest_pending_s)),
        el("td", {}, q.rate_limit === null ? "none" : `${q.rate_limit}/s`),
        el("td", {}, q.paused ? "paused" : ""))), "queues-table"),
    el("h2", {}, "Nodes"),
    table(["node", "address", "state", "slots", "in flight", "last heartbeat"],
      st.nodes.map((n) => el("tr", {},
        el("td", {}, n.id), el("td", {}, n.address), el("td", {}, n.state),
        el("td", { class: "num" }, n.capacity), el("td", { class: "num" }, n.outstanding),
        el("td", {}, `${age(n.silent_s)} ago`))), "nodes-table"),
  );
  setStatus(`updated ${when(st.time)}; up since ${when(st.started_at)}`);
}

// -- one task -----------------------------------------------------------------
async function taskView(id) {
  const t = await api(`/api/tasks/${encodeURIComponent(id)}`);
  const rows = [
    ["state", t.state], ["queue", t.queue], ["priority", t.priority],
    ["attempts", t.attempts], ["failures", t.failures], ["lost", t.lost],
    ["lease holder", t.node || "—"], ["lease token", t.token === null ? "—" : t.token],
    ["submitted", when(t.created)], ["ready", when(t.ready)], ["started", when(t.started)],
    ["ended", when(t.ended)], ["kept until", when(t.expires)],
  ];
  const actions = [];
  if (t.state === "dead") {
    actions.push(el("button", { id: "requeue-one", onclick: () => act("/api/dead/requeue", [t.id]) }, "Requeue"));
  }
  show(
    el("h1", {}, "Task ", el("code", { id: "task-id" }, t.id)),
    table(["", ""], rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", { "data-field": k }, v))), "task-table"),
    el("h2", {}, "Last error ", el("span", { class: "muted" }, t.error ? `(${t.error_type})` : "")),
    t.error ? el("pre", { id: "task-error" }, t.error) : el("p", { class: "muted" }, "none"),
    el("p", { class: "muted" }, "Arguments and results are pickled: the dashboard never shows them."),
    ...actions,
  );
}

// -- dead letters -------------------------------------------------------------
async function act(path, ids) {
  try {
    const data = await api(path, { body: { ids } });
    const done = Object.values(data)[0].filter(Boolean).length;
    setStatus(`${done} of ${ids.length} done`);
  } catch (e) {
    setStatus(e.message, true);
  }
  route();
}

async function deadView(params) {
  const q = new URLSearchParams(params);
  const data = await api(`/api/dead?${q}`);
  const queueInput = el("input", { id: "dead-queue", placeholder: "queue", value: params.get("queue") || "" });
  const typeSelect = el("select", { id: "dead-type" }, el("option", { value: "" }, "any error"),
    Object.keys(data.error_types).sort().map((k) =>
      el("option", { value: k, selected: params.get("error_type") === k }, `${k} (${data.error_types[k]})`)));
  const filter = el("form", {
    onsubmit: (ev) => {
      ev.preventDefault();
      const p = new URLSearchParams();
      if (queueInput.value) p.set("queue", queueInput.value);
      if (typeSelect.value) p.set("error_type", typeSelect.value);
      location.hash = `#/dead?${p}`;
    },
  }, queueInput, " ", typeSelect, " ", el("button", { type: "submit" }, "Filter"));
  const checked = () => [...document.querySelectorAll("input.pick:checked")].map((c) => c.value);
  show(
    el("h1", {}, "Dead letters"),
    filter,
    el("p", {},
      el("button", { id: "requeue-selected", onclick: () => act("/api/dead/requeue", checked()) }, "Requeue selected"), " ",
      el("button", { id: "delete-selected", onclick: () => act("/api/dead/delete", checked()) }, "Delete selected")),
    table(["", "id", "queue", "error", "attempts", "lost", "died", ""],
      data.tasks.map((t) => el("tr", { "data-task": t.id },
        el("td", {}, el("input", { type: "checkbox", class: "pick", value: t.id, "aria-label": `select ${t.id}` })),
        el("td", {}, el("a", { href: `#/task/${encodeURIComponent(t.id)}` }, t.id)),
        el("td", {}, t.queue),
        el("td", {}, `${t.error_type}: ${(t.error || "").trim().split("\n").pop()}`),
        el("td", { class: "num" }, t.attempts), el("td", { class: "num" }, t.lost),
        el("td", {}, when(t.ended)),
        el("td", {}, el("button", { class: "requeue", onclick: () => act("/api/dead/requeue", [t.id]) }, "Requeue")))),
      "dead-table"),
    data.tasks.length ? null : el("p", { class: "muted", id: "no-dead" }, "No dead-lettered task."),
  );
}

// -- schedules and queue settings ---------------------------------------------
async function post(path, body) {
  try {
    await api(path, { body: body || {} });
  } catch (e) {
    setStatus(e.message, true);
  }
  route();
}

async function schedulesView() {
  const [sch, qs] = await Promise.all([api("/api/schedules"), api("/api/queues")]);
  show(
    el("h1", {}, "Schedules"),
    table(["id", "timing", "queue", "next fire", "last fire", ""],
      sch.schedules.map((s) => el("tr", { "data-schedule": s.id },
        el("td", {}, s.id), el("td", {}, s.cron || `every ${s.every} s`), el("td", {}, s.queue),
        el("td", {}, s.paused ? "paused" : when(s.next_fire)), el("td", {}, when(s.last_fire)),
        el("td", {}, el("button", {
          class: "toggle",
          onclick: () => post(`/api/schedules/${encodeURIComponent(s.id)}/${s.paused ? "resume" : "pause"}`),
        }, s.paused ? "Resume" : "Pause")))), "schedules-table"),
    el("h1", {}, "Queues"),
    table(["queue", "rate limit (per second)", "", ""],
      qs.queues.map((q) => {
        const rate = el("input", { class: "rate", value: q.rate_limit === null ? "" : q.rate_limit, placeholder: "none" });
        return el("tr", { "data-queue": q.name },
          el("td", {}, q.name),
          el("td", {}, rate, " ", el("button", {
            class: "set-rate",
            onclick: () => post(`/api/queues/${encodeURIComponent(q.name)}`,
              { rate_limit: rate.value === "" ? null : Number(rate.value) }),
          }, "Set")),
          el("td", {}, q.paused ? "paused" : "running"),
          el("td", {}, el("button", {
            class: "toggle",
            onclick: () => post(`/api/queues/${encodeURIComponent(q.name)}`, { paused: !q.paused }),
          }, q.paused ? "Resume" : "Pause")));
      }), "queue-settings"),
  );
}

// -- routing ------------------------------------------------------------------
async function route() {
  if (timer) clearInterval(timer);
  const hash = location.hash || "#/";
  const [path, query] = hash.slice(1).split("?");
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.getAttribute("href") === `#${path}`);
  try {
    if (!csrf) csrf = (await api("/api/session")).csrf;
    document.getElementById("login").hidden = true;
    if (path.startsWith("/task/")) await taskView(decodeURIComponent(path.slice(6)));
    else if (path === "/dead") await deadView(new URLSearchParams(query || ""));
    else if (path === "/schedules") await schedulesView();
    else {
      await overview();
      timer = setInterval(() => overview().catch((e) => setStatus(e.message, true)), 1000);
    }
  } catch (e) {
    if (e.message !== "not logged in") {
      show(el("p", { class: "error", id: "view-error" }, e.message));
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login-form").onsubmit = (ev) => {
    ev.preventDefault();
    login(document.getElementById("token").value).catch((e) => {
      document.getElementById("login-error").textContent = e.message;
    });
  };
  document.getElementById("find-task").onsubmit = (ev) => {
    ev.preventDefault();
    const id = document.getElementById("find-id").value.trim();
    if (id) location.hash = `#/task/${encodeURIComponent(id)}`;
  };
  window.addEventListener("hashchange", route);
  route();
});

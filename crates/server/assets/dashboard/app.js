// The warmpool dashboard: a client of the server's own REST API, nothing more. Text from the
// API is only ever set as text (never parsed as HTML). The token stays in this tab's session.
"use strict";

const main = document.getElementById("main");
let token = sessionStorage.getItem("warmpool-token");
let timers = [];
let streams = [];

// --- small helpers -----------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children.flat()) if (c) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function toast(message, bad) {
  const box = document.getElementById("toast");
  const item = h("div", { class: bad ? "bad" : "" , text: message });
  box.append(item);
  setTimeout(() => item.remove(), bad ? 9000 : 4000);
}

class ApiError extends Error {}

async function api(method, path, body) {
  const resp = await fetch(path, {
    method,
    headers: Object.assign({ Authorization: "Bearer " + token },
      body === undefined ? {} : { "Content-Type": "application/json" }),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  const data = text ? JSON.parse(text) : null;
  if (resp.status === 401) { signOut(); throw new ApiError("your token was refused: sign in again"); }
  if (!resp.ok) {
    const e = data && data.error ? data.error : { message: resp.statusText };
    const details = (e.details || []).map(d => d.field + ": " + d.message).join("; ");
    throw new ApiError(e.message + (details && !e.message.includes(details) ? " (" + details + ")" : ""));
  }
  return data;
}

// Runs an action from a button, reporting failures instead of losing them.
async function act(what, fn) {
  try { await fn(); } catch (e) { toast(what + " failed: " + e.message, true); }
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "";
  return ms < 1000 ? ms + " ms" : (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
}

function badge(status) {
  return h("span", { class: "badge s-" + status, text: status });
}

// A step's record says `success` or `error`.
function stepBadge(status) {
  return h("span", { class: "badge s-" + (status === "error" ? "failed" : status), text: status === "error" ? "failed" : status });
}

function every(ms, fn) {
  fn();
  timers.push(setInterval(fn, ms));
}

function leave() {
  timers.forEach(clearInterval);
  timers = [];
  streams.forEach(c => c.abort());
  streams = [];
}

function show(title, ...nodes) {
  main.replaceChildren(h("h1", { text: title }), ...nodes);
  document.title = title + " · warmpool";
  main.focus();
}

// --- sign-in -----------------------------------------------------------------------------------

function signOut() {
  token = null;
  sessionStorage.removeItem("warmpool-token");
  location.hash = "#/signin";
}

function signIn() {
  const input = h("input", { type: "password", id: "token", autocomplete: "off", required: true });
  const form = h("form", {
    onsubmit: e => {
      e.preventDefault();
      act("Signing in", async () => {
        token = input.value.trim();
        await api("GET", "/v1/projects?limit=1");
        sessionStorage.setItem("warmpool-token", token);
        location.hash = "#/projects";
      });
    },
  },
    h("label", { for: "token", text: "Admin or project token" }), input,
    h("p", { class: "hint", text: "The admin token is in <data-dir>/admin-token. It is kept in this browser tab only." }),
    h("button", { type: "submit", text: "Sign in" }));
  show("Sign in", h("section", { class: "card" }, form));
}

// --- projects ------------------------------------------------------------------------------------

async function projects() {
  const list = h("tbody");
  const table = h("table", {}, h("caption", { class: "muted", text: "Your projects" }),
    h("thead", {}, h("tr", {}, h("th", { text: "Name" }), h("th", { text: "Id" }), h("th", { text: "Repositories" }))), list);
  const name = h("input", { type: "text", id: "new-name", required: true });
  const repo = h("input", { type: "text", id: "new-repo", placeholder: "acme/app" });
  const url = h("input", { type: "text", id: "new-url", placeholder: "/srv/git/app or https://…" });
  const form = h("form", {
    onsubmit: e => {
      e.preventDefault();
      act("Creating the project", async () => {
        const repos = repo.value.trim() ? [{ repoFullName: repo.value.trim(), url: url.value.trim() }] : [];
        const p = await api("POST", "/v1/projects", { name: name.value, repos });
        location.hash = "#/projects/" + p.id;
      });
    },
  },
    h("div", { class: "row" },
      h("div", {}, h("label", { for: "new-name", text: "Name" }), name),
      h("div", {}, h("label", { for: "new-repo", text: "Repository (owner/name)" }), repo),
      h("div", {}, h("label", { for: "new-url", text: "Clone URL" }), url)),
    h("button", { type: "submit", text: "Create project" }));
  show("Projects", h("section", { class: "card" }, table),
    h("section", { class: "card" }, h("h2", { text: "New project" }), form));
  const data = await api("GET", "/v1/projects?limit=100");
  const items = data.items || data.projects || [];
  list.replaceChildren(...items.map(p => h("tr", {},
    h("td", {}, h("a", { href: "#/projects/" + p.id, text: p.name })),
    h("td", { class: "muted", text: p.id }),
    h("td", { text: (p.repos || []).map(r => r.repoFullName).join(", ") }))));
  if (!items.length) list.append(h("tr", {}, h("td", { colspan: 3, class: "muted", text: "No projects yet." })));
}

// --- one project ---------------------------------------------------------------------------------

function commandsToText(cmds) {
  return (cmds || []).map(c => c.name + "=" + c.command).join("\n");
}

function textToCommands(text) {
  return text.split("\n").map(l => l.trim()).filter(Boolean).map((l, i) => {
    const eq = l.indexOf("=");
    return eq > 0 ? { name: l.slice(0, eq).trim(), command: l.slice(eq + 1) } : { name: "command-" + (i + 1), command: l };
  });
}

async function project(id) {
  const base = "/v1/projects/" + id;
  const p = await api("GET", base);
  const pool = await api("GET", base + "/warm-pool");
  const cfg = pool.config || {};

  // Pool configuration.
  const size = h("input", { type: "number", id: "pool-size", min: 1, max: 20, value: cfg.targetSize || 1 });
  const branch = h("input", { type: "text", id: "pool-branch", value: cfg.branch || "", placeholder: "the repository's default" });
  const enabled = h("input", { type: "checkbox", id: "pool-enabled" });
  enabled.checked = cfg.enabled !== false;
  const cmds = h("textarea", { id: "pool-commands", spellcheck: "false" });
  cmds.value = commandsToText(cfg.setupCommands);
  const configForm = h("form", {
    onsubmit: e => {
      e.preventDefault();
      act("Saving the pool", async () => {
        await api("PATCH", base + "/warm-pool", {
          targetSize: Number(size.value), enabled: enabled.checked,
          branch: branch.value.trim() || null, setupCommands: textToCommands(cmds.value),
        });
        toast("Pool saved");
      });
    },
  },
    h("div", { class: "row" },
      h("div", {}, h("label", { for: "pool-size", text: "Pool size" }), size),
      h("div", {}, h("label", { for: "pool-branch", text: "Branch" }), branch)),
    h("label", { for: "pool-enabled" }, enabled, " Enabled"),
    h("label", { for: "pool-commands", text: "Setup commands (one per line: name=command)" }), cmds,
    h("button", { type: "submit", id: "save-pool", text: "Save pool" }));

  // Autoscale: the pool sizes itself from the claims it sees, within min..max.
  const auto = await api("GET", base + "/warm-pool/autoscale");
  const autoOn = h("input", { type: "checkbox", id: "autoscale-enabled" });
  autoOn.checked = auto.enabled;
  const autoMin = h("input", { type: "number", id: "autoscale-min", min: 0, max: 20, value: auto.min });
  const autoMax = h("input", { type: "number", id: "autoscale-max", min: 1, max: 20, value: auto.max });
  const autoForm = h("form", {
    onsubmit: e => {
      e.preventDefault();
      act("Saving autoscale", async () => {
        await api("PATCH", base + "/warm-pool/autoscale", {
          enabled: autoOn.checked, min: Number(autoMin.value), max: Number(autoMax.value),
        });
        toast("Autoscale saved");
        await loadStatus();
      });
    },
  },
    h("label", { for: "autoscale-enabled" }, autoOn, " Size the pool from its claims (autoscale)"),
    h("div", { class: "row" },
      h("div", {}, h("label", { for: "autoscale-min", text: "Fewest VMs" }), autoMin),
      h("div", {}, h("label", { for: "autoscale-max", text: "Most VMs" }), autoMax)),
    h("button", { type: "submit", id: "save-autoscale", text: "Save autoscale" }));

  // Environment variables.
  const envList = h("ul");
  const envName = h("input", { type: "text", id: "env-name" });
  const envValue = h("input", { type: "password", id: "env-value", autocomplete: "off" });
  const loadEnv = async () => {
    const vars = await api("GET", base + "/environment-variables");
    const items = vars.items || vars.variables || [];
    envList.replaceChildren(...items.map(v => h("li", {}, h("code", { text: v.name }), " ",
      h("button", { type: "button", class: "danger", "aria-label": "Remove " + v.name, text: "Remove",
        onclick: () => act("Removing the variable", async () => { await api("DELETE", base + "/environment-variables/" + encodeURIComponent(v.name)); await loadEnv(); }) }))));
    if (!items.length) envList.append(h("li", { class: "muted", text: "None." }));
  };
  const envForm = h("form", {
    onsubmit: e => {
      e.preventDefault();
      act("Setting the variable", async () => {
        await api("PUT", base + "/environment-variables", { variables: [{ name: envName.value.trim(), value: envValue.value }] });
        envValue.value = "";
        await loadEnv();
      });
    },
  },
    h("div", { class: "row" },
      h("div", {}, h("label", { for: "env-name", text: "Name" }), envName),
      h("div", {}, h("label", { for: "env-value", text: "Value (never shown again)" }), envValue)),
    h("button", { type: "submit", text: "Set variable" }));

  // Status, stats and actions.
  const counts = h("div", { class: "counts", id: "pool-counts" });
  const statsLine = h("p", { class: "hint", id: "pool-stats" });
  const scaleLine = h("p", { class: "hint", id: "pool-target" });
  const chart = h("div", { id: "pool-chart" });
  const actions = h("div", {},
    h("button", { type: "button", id: "test-boot", text: "Test boot",
      onclick: () => act("The test boot", async () => {
        const r = await api("POST", base + "/warm-pool/test", {});
        location.hash = "#/projects/" + id + "/instances/" + r.id;
      }) }),
    h("button", { type: "button", class: "secondary", id: "claim", text: "Claim a VM",
      onclick: () => act("The claim", async () => {
        const r = await api("POST", base + "/warm-pool/claim", { waitSeconds: 0 });
        toast((r.warm ? "Claimed warm VM " : "Booting a VM for the claim: ") + r.instance.id);
        await loadInstances();
      }) }),
    h("button", { type: "button", class: "danger", id: "clear", text: "Clear pool",
      onclick: () => act("Clearing", async () => {
        const r = await api("POST", base + "/warm-pool/clear", {});
        toast("Cleared " + r.cleared + " instance(s)");
      }) }));
  const loadStatus = async () => {
    const w = await api("GET", base + "/warm-pool");
    const s = await api("GET", base + "/warm-pool/stats");
    counts.replaceChildren(...["ready", "provisioning", "claimed", "failed"].map(k =>
      h("div", {}, h("strong", { text: k === "claimed" ? s.claimed : w.status[k] }), h("span", { class: "s-" + k, text: k }))));
    const parts = ["warm claims " + s.warmClaims, "cold claims " + s.coldClaims];
    if (s.provisioningP50Ms !== null && s.provisioningP50Ms !== undefined) parts.push("boot p50 " + fmtMs(s.provisioningP50Ms));
    if (s.degraded) parts.push("DEGRADED at " + (s.degraded.failedStep || "?") + ": " + (s.degraded.error || ""));
    statsLine.textContent = parts.join(" · ");
    const target = s.effectiveTarget === null || s.effectiveTarget === undefined ? "-" : s.effectiveTarget;
    scaleLine.textContent = s.autoscale
      ? "Target " + target + " (autoscale " + s.autoscale.min + "–" + s.autoscale.max + "): " + s.autoscale.why
      : "Target " + target + " (fixed)";
    const hist = await api("GET", base + "/warm-pool/history");
    chart.replaceChildren(poolChart(hist.samples || []));
  };

  // Instances.
  const filter = h("select", { id: "instance-filter" },
    ...["all", "provisioning", "ready", "claimed", "failed"].map(v => h("option", { value: v, text: v })));
  const kind = h("select", { id: "instance-kind" },
    h("option", { value: "all", text: "pool and test" }), h("option", { value: "pool", text: "pool only" }), h("option", { value: "test", text: "test boots only" }));
  const rows = h("tbody");
  const loadInstances = async () => {
    const q = filter.value === "all" ? "" : "&status=" + filter.value;
    const data = await api("GET", base + "/warm-pool/instances?limit=50" + q);
    const items = (data.items || []).filter(i => kind.value === "all" || (kind.value === "test") === i.isTest);
    rows.replaceChildren(...items.map(i => h("tr", {},
      h("td", {}, h("a", { href: "#/projects/" + id + "/instances/" + i.id, text: i.id })),
      h("td", {}, badge(i.status)),
      h("td", { text: i.isTest ? "test" : "pool" }),
      h("td", { class: "muted", text: i.createdAt }),
      h("td", {}, i.status === "claimed" || i.status === "ready" || i.status === "failed"
        ? h("button", { type: "button", class: "danger", "aria-label": "Release " + i.id, text: i.status === "claimed" ? "Release" : "Destroy",
            onclick: () => act("Releasing", async () => { await api("DELETE", base + "/warm-pool/instances/" + i.id); await loadInstances(); }) })
        : null))));
    if (!items.length) rows.append(h("tr", {}, h("td", { colspan: 5, class: "muted", text: "No instances." })));
  };
  filter.addEventListener("change", () => act("Listing", loadInstances));
  kind.addEventListener("change", () => act("Listing", loadInstances));

  show(p.name,
    h("p", { class: "muted", text: p.id + " · " + (p.repos || []).map(r => r.repoFullName + " (" + r.branch + ")").join(", ") }),
    h("div", { class: "grid" },
      h("section", { class: "card", "aria-labelledby": "h-status" }, h("h2", { id: "h-status", text: "Pool status" }), counts, statsLine, scaleLine, actions,
        h("h2", { class: "spaced", text: "Pool size, last hour" }), chart),
      h("section", { class: "card", "aria-labelledby": "h-config" }, h("h2", { id: "h-config", text: "Pool configuration" }), configForm,
        h("h2", { class: "spaced", id: "h-autoscale", text: "Autoscale" }), autoForm)),
    h("section", { class: "card", "aria-labelledby": "h-env" }, h("h2", { id: "h-env", text: "Environment variables" }), envList, envForm),
    h("section", { class: "card", "aria-labelledby": "h-inst" }, h("h2", { id: "h-inst", text: "Instances" }),
      h("div", { class: "row" },
        h("div", {}, h("label", { for: "instance-filter", text: "Status" }), filter),
        h("div", {}, h("label", { for: "instance-kind", text: "Kind" }), kind)),
      h("table", {}, h("thead", {}, h("tr", {}, ...["Instance", "Status", "Kind", "Created", ""].map(t => h("th", { text: t })))), rows)));
  await loadEnv();
  every(2000, () => act("Refreshing", async () => { await loadStatus(); await loadInstances(); }));
}

// Pool size over the last hour: ready, booting and claimed VMs as stacked areas.
function poolChart(samples) {
  const W = 520, H = 140, pad = 28;
  const now = Date.now(), from = now - 3600 * 1000;
  const pts = samples.map(s => ({ t: Date.parse(s.at), ready: s.ready, provisioning: s.provisioning, claimed: s.claimed }))
    .filter(p => p.t >= from);
  const max = Math.max(1, ...pts.map(p => p.ready + p.provisioning + p.claimed));
  const x = t => pad + (W - pad - 8) * (t - from) / (now - from);
  const y = v => H - pad + 4 - (H - pad - 8) * v / max;
  const line = (key, color) => pts.length < 1 ? null : svg("polyline", {
    points: pts.map(p => x(p.t) + "," + y(p[key])).join(" "), fill: "none", stroke: color, "stroke-width": 2 });
  return svg("svg", { viewBox: "0 0 " + W + " " + H, width: "100%", role: "img",
    "aria-label": "Pool size over the last hour: " + (pts.length ? "now " + pts[pts.length - 1].ready + " ready" : "no samples yet") },
    svg("line", { x1: pad, y1: H - pad + 4, x2: W - 8, y2: H - pad + 4, stroke: "#9aa3b5" }),
    svg("text", { x: 2, y: y(max) + 4 }, String(max)), svg("text", { x: 2, y: H - pad + 8 }, "0"),
    svg("text", { x: pad, y: H - 6 }, "-60 min"), svg("text", { x: W - 40, y: H - 6 }, "now"),
    line("ready", "#1c7c3c"), line("provisioning", "#8a5a00"), line("claimed", "#2458d3"),
    svg("text", { x: W - 250, y: 12 }, "— ready  — booting  — claimed"));
}

// --- one instance --------------------------------------------------------------------------------

// Reads a server-sent event stream with the token (EventSource cannot send one).
async function follow(path, onEvent) {
  const ctl = new AbortController();
  streams.push(ctl);
  const resp = await fetch(path, { headers: { Authorization: "Bearer " + token }, signal: ctl.signal });
  if (!resp.ok || !resp.body) return;
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trimStart();
      }
      if (data) onEvent(event, JSON.parse(data));
    }
  }
}

function timeline(steps) {
  const done = steps.filter(s => s.durationMs !== null && s.durationMs !== undefined);
  const total = Math.max(1, done.reduce((a, s) => a + s.durationMs, 0));
  const W = 640, row = 20, left = 190;
  let at = 0;
  const bars = done.map((s, i) => {
    const x = left + (W - left - 70) * at / total, w = Math.max(2, (W - left - 70) * s.durationMs / total);
    at += s.durationMs;
    const label = s.name + (s.metadata && s.metadata.repo ? " " + s.metadata.repo : "");
    return svg("g", {},
      svg("text", { x: 0, y: i * row + 14 }, label),
      svg("rect", { x, y: i * row + 3, width: w, height: row - 6, rx: 3, fill: s.status === "error" ? "#b3261e" : "#2458d3" }),
      svg("text", { x: Math.min(x + w + 4, W - 66), y: i * row + 14 }, fmtMs(s.durationMs)));
  });
  return svg("svg", { viewBox: "0 0 " + W + " " + Math.max(row, done.length * row), width: "100%", role: "img",
    "aria-label": "Step durations: " + done.map(s => s.name + " " + fmtMs(s.durationMs)).join(", ") }, ...bars);
}

function stepView(s) {
  const failed = s.status === "error";
  return h("article", { class: "step" + (failed ? " failed" : ""), "aria-label": s.name + " " + s.status },
    h("h3", {}, h("span", { text: s.name + (s.metadata && s.metadata.repo ? " (" + s.metadata.repo + ")" : "") }), stepBadge(s.status),
      h("span", { class: "muted", text: fmtMs(s.durationMs) })),
    failed && s.error ? h("p", { class: "error", role: "alert", text: s.error }) : null,
    s.output ? h("pre", { text: s.output }) : null);
}

async function instance(pid, id) {
  const base = "/v1/projects/" + pid + "/warm-pool/instances/" + id;
  const head = h("p", { id: "instance-status" });
  // Beyond the boot: who claimed it, and when and why it was ended (a failed boot stays failed).
  const life = h("p", { id: "instance-lifecycle", class: "muted" });
  const loadLife = async () => {
    const l = await api("GET", base + "/lifecycle");
    const parts = [];
    if (l.claimedAt) parts.push("claimed " + l.claimedAt + (l.taskId ? " for task " + l.taskId : ""));
    if (l.expiresAt && !l.endedAt) parts.push("lease until " + l.expiresAt);
    if (l.endedAt) parts.push("ended " + l.endedAt + ": " + (l.endReason || "").replace(/_/g, " "));
    life.textContent = parts.join(" · ");
    renew.hidden = !(l.status === "claimed" && !l.endedAt);
  };
  // A claimed VM's lease, from now: the project's default lease (or the hours given).
  const renewHours = h("input", { type: "number", id: "renew-hours", min: 0.01, step: "any", placeholder: "default" });
  const renew = h("form", { id: "renew", hidden: true, onsubmit: e => {
    e.preventDefault();
    act("Renewing the lease", async () => {
      const body = renewHours.value ? { ttlSeconds: Math.round(Number(renewHours.value) * 3600) } : {};
      const l = await api("POST", base + "/renew", body);
      toast("Lease until " + l.expiresAt);
      await loadLife();
    });
  } },
    h("label", { for: "renew-hours", text: "Renew the lease for (hours)" }), renewHours,
    h("button", { type: "submit", id: "renew-lease", text: "Renew lease" }));
  const stepsBox = h("div", { id: "steps" });
  const chart = h("div", { id: "timeline" });
  const live = h("pre", { id: "live-output", "aria-live": "off" });
  const cmd = h("input", { type: "text", id: "exec-command", placeholder: "cat /home/built.txt" });
  const out = h("pre", { id: "exec-output", hidden: true });
  const render = d => {
    head.replaceChildren(badge(d.status), " ", d.isTest ? "test boot" : "pool VM", " · ",
      d.summary.completedSteps + "/" + d.summary.totalSteps + " steps · " + fmtMs(d.summary.totalDurationMs),
      d.summary.failedStep ? h("strong", { class: "s-failed", text: " · failed at " + d.summary.failedStep + ": " + (d.summary.error || "") }) : "");
    stepsBox.replaceChildren(...d.steps.map(stepView));
    chart.replaceChildren(timeline(d.steps));
    if (d.status !== "provisioning") live.hidden = true;
  };
  show("Instance " + id,
    h("p", {}, h("a", { href: "#/projects/" + pid, text: "← back to the project" })),
    h("section", { class: "card", "aria-labelledby": "h-summary" }, h("h2", { id: "h-summary", text: "Summary" }), head, life, renew,
      h("button", { type: "button", class: "danger", text: "Release / destroy",
        onclick: () => act("Destroying", async () => { await api("DELETE", base); location.hash = "#/projects/" + pid; }) })),
    h("section", { class: "card", "aria-labelledby": "h-timeline" }, h("h2", { id: "h-timeline", text: "Step timeline" }), chart),
    h("section", { class: "card", "aria-labelledby": "h-steps" }, h("h2", { id: "h-steps", text: "Steps" }), live, stepsBox),
    h("section", { class: "card", "aria-labelledby": "h-exec" }, h("h2", { id: "h-exec", text: "Run a command" }),
      h("form", { onsubmit: e => { e.preventDefault(); act("The command", async () => {
        const r = await api("POST", base + "/exec", { command: cmd.value });
        out.hidden = false;
        out.textContent = r.output + "\n[exit " + r.exitCode + (r.timedOut ? ", timed out" : "") + "]";
      }); } },
        h("label", { for: "exec-command", text: "Command" }), cmd, h("button", { type: "submit", text: "Run" })), out));
  const d = await api("GET", base);
  render(d);
  await loadLife();
  if (d.status === "provisioning") {
    // Live: each step's start, output and end as they happen, then the record once done.
    live.textContent = "";
    follow(base + "/events", async (event, data) => {
      if (event === "output" && data.data) live.textContent += data.data;
      if (event === "step" || event === "done") render(await api("GET", base));
      if (event === "done") await loadLife();
    }).catch(() => {});
  }
}

// --- routing -------------------------------------------------------------------------------------

async function route() {
  leave();
  document.getElementById("sign-out").hidden = !token;
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  try {
    if (!token) return signIn();
    if (parts[0] === "projects" && parts[1] && parts[2] === "instances" && parts[3]) return await instance(parts[1], parts[3]);
    if (parts[0] === "projects" && parts[1]) return await project(parts[1]);
    if (parts[0] === "signin") return signIn();
    return await projects();
  } catch (e) {
    show("Something went wrong", h("p", { class: "error", role: "alert", text: e.message }),
      h("p", {}, h("a", { href: "#/projects", text: "Back to the projects" })));
  }
}

document.getElementById("sign-out").addEventListener("click", signOut);
window.addEventListener("hashchange", route);
route();

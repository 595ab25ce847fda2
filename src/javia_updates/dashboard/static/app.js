// javia dashboard (docs/dashboard.md). Plain JavaScript, no dependencies.
//
// Every value from the server is put on the page as text (textContent or a
// text node), never as HTML: device names, versions, tags, error messages and
// failure output come from devices and must not run. The page polls the JSON
// endpoints every POLL_MS (longer after a slow answer) while it is visible;
// state-changing requests carry the session's CSRF token in X-CSRF-Token.
"use strict";

(function () {
  const POLL_MS = 2000;
  const STATUS_ORDER = [
    "pending", "staged", "downloading", "installing", "retrying",
    "completed", "failed", "rolled_back", "superseded", "cancelled",
  ];
  const COMMAND_LABELS = {
    approve: "Approve", pause: "Pause", resume: "Resume", cancel: "Cancel rollout",
  };

  let csrfToken = null;
  let current = null; // the mounted view: {refresh(), url}
  let timer = null;
  let generation = 0;

  // ------------------------------------------------------------ DOM helpers

  // el("td", {class: "x"}, child, ...): children are nodes or strings (text nodes).
  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "onclick") node.addEventListener("click", value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // Replace node's children with children (nodes, strings as text nodes, nested arrays).
  function fill(node, ...children) {
    node.replaceChildren();
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function text(value) {
    return value === null || value === undefined || value === "" ? "—" : String(value);
  }

  function when(iso) {
    if (!iso) return "—";
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return String(iso);
    return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function ago(iso) {
    if (!iso) return "never";
    const seconds = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
    if (!Number.isFinite(seconds)) return String(iso);
    if (seconds < 60) return `${Math.max(seconds, 0)} s ago`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
    return `${Math.round(seconds / 86400)} d ago`;
  }

  function badge(value, kind) {
    return el("span", { class: `badge ${kind || ""} s-${String(value).replace(/[^a-z_]/g, "")}` }, text(value));
  }

  function deviceLink(uuid, name) {
    return el("a", { href: `#/device/${encodeURIComponent(uuid)}`, class: "device-link" }, name || uuid);
  }

  function rolloutLink(version) {
    return el("a", { href: `#/rollout/${encodeURIComponent(version)}`, class: "rollout-link" }, version);
  }

  function table(headers, rows, emptyText) {
    if (rows.length === 0) return el("p", { class: "empty" }, emptyText);
    return el("table", {},
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows));
  }

  // A stacked bar of status counts, with a legend of the numbers.
  function statusBar(counts) {
    const total = Object.values(counts || {}).reduce((sum, n) => sum + n, 0);
    const bar = el("div", { class: "bar", role: "img", "aria-label": "progress by status" });
    const legend = el("div", { class: "legend" });
    const statuses = STATUS_ORDER.concat(Object.keys(counts || {}).filter((s) => !STATUS_ORDER.includes(s)));
    for (const status of statuses) {
      const count = (counts || {})[status] || 0;
      if (!count) continue;
      const part = el("span", { class: `part s-${status.replace(/[^a-z_]/g, "")}`, title: `${status}: ${count}` });
      part.style.width = `${(100 * count) / total}%`;
      bar.append(part);
      legend.append(el("span", { class: "legend-item" }, badge(status), ` ${count}`));
    }
    if (total === 0) legend.append(el("span", { class: "empty" }, "no devices yet"));
    return el("div", { class: "progress" }, bar, legend);
  }

  // Any JSON value as text: objects as a definition list, long or multi-line strings as <pre>.
  function renderValue(value) {
    if (value === null || value === undefined) return el("span", { class: "empty" }, "—");
    if (Array.isArray(value)) {
      if (value.every((item) => item === null || typeof item !== "object")) {
        const joined = value.map((item) => String(item)).join("\n");
        return joined.includes("\n") ? el("pre", {}, joined) : el("span", {}, joined || "—");
      }
      return el("ol", {}, value.map((item) => el("li", {}, renderValue(item))));
    }
    if (typeof value === "object") {
      return el("dl", { class: "kv" }, Object.entries(value).map(([key, inner]) => [
        el("dt", {}, key), el("dd", {}, renderValue(inner)),
      ]));
    }
    const string = String(value);
    return string.includes("\n") || string.length > 120 ? el("pre", {}, string) : el("span", {}, string);
  }

  // The failure details of a device_updates row: error_message, the structured failure, a regression.
  function failureDetails(row) {
    const parts = [];
    if (row.error_message) parts.push(el("p", { class: "error-message" }, row.error_message));
    if (row.failure) {
      parts.push(el("details", { class: "failure", open: true },
        el("summary", {}, "failure details"), renderValue(row.failure)));
    }
    if (row.regressed_at) {
      parts.push(el("p", { class: "regression" },
        `regressed ${when(row.regressed_at)}: ${text(row.regression_reason)}`));
    }
    return parts.length ? parts : "—";
  }

  // ------------------------------------------------------------ requests

  class LoggedOut extends Error {}

  async function request(url, options) {
    const response = await fetch(url, Object.assign({
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    }, options || {}));
    if (response.status === 401) throw new LoggedOut("session ended");
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    if (!response.ok) {
      const detail = body && typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`;
      const error = new Error(detail);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function post(url, body) {
    return request(url, {
      method: "POST",
      headers: { Accept: "application/json", "Content-Type": "application/json", "X-CSRF-Token": csrfToken || "" },
      body: JSON.stringify(body || {}),
    });
  }

  function toLogin() {
    window.location.replace("login");
  }

  function setLive(message, ok) {
    const live = document.getElementById("live");
    live.textContent = message;
    live.classList.toggle("stale", !ok);
  }

  // ------------------------------------------------------------ views

  function fleetView(main) {
    const status = el("select", { id: "filter-status", "aria-label": "device status" },
      el("option", { value: "" }, "every status"),
      ["online", "updating", "offline"].map((s) => el("option", { value: s }, s)));
    const tag = el("input", { id: "filter-tag", placeholder: "tag", maxlength: 64, "aria-label": "tag" });
    const counts = el("section", { class: "cards", id: "counts" });
    const versions = el("section", { class: "panel", id: "versions" });
    const rollouts = el("section", { class: "panel", id: "rollouts" });
    const devices = el("div", { id: "devices" });
    fill(main, 
      el("h1", {}, "Fleet"), counts,
      el("div", { class: "columns" }, rollouts, versions),
      el("section", { class: "panel" },
        el("div", { class: "panel-head" }, el("h2", {}, "Devices"),
          el("div", { class: "filters" }, status, tag)),
        devices));
    status.addEventListener("change", refreshSoon);
    tag.addEventListener("change", refreshSoon);

    function url() {
      const query = new URLSearchParams();
      if (status.value) query.set("status", status.value);
      if (tag.value.trim()) query.set("tag", tag.value.trim());
      const suffix = query.toString();
      return suffix ? `api/overview?${suffix}` : "api/overview";
    }

    function show(data) {
      const c = data.counts;
      fill(counts, 
        ["total", "online", "updating", "offline"].map((name) =>
          el("div", { class: `card c-${name}`, id: `count-${name}` },
            el("span", { class: "number" }, String(c[name] || 0)),
            el("span", { class: "label" }, name === "total" ? "devices" : name))));
      fill(versions, el("h2", {}, "Versions"), table(["version", "devices"],
        data.versions.filter((v) => v.devices > 0).map((v) =>
          el("tr", {}, el("td", {}, rolloutLink(v.version)), el("td", { class: "num" }, String(v.devices))))
          .concat(data.other_versions > 0
            ? [el("tr", {}, el("td", { class: "empty" }, "other or none"), el("td", { class: "num" }, String(data.other_versions)))]
            : []),
        "No device reports a version yet."));
      fill(rollouts, el("h2", {}, "Rollouts"), table(["update", "type", "state", "phase", "progress"],
        data.updates.map((u) => el("tr", {},
          el("td", {}, rolloutLink(u.version)),
          el("td", {}, u.update_type),
          el("td", {}, u.rollout ? badge(u.rollout.state, "state") : "—"),
          el("td", {}, phaseText(u.rollout)),
          el("td", { class: "wide" }, statusBar(u.status_counts)))),
        "Nothing published yet."));
      const rows = data.devices.items.map((d) => el("tr", { class: "device-row" },
        el("td", {}, deviceLink(d.device_uuid, d.device_name)),
        el("td", {}, badge(d.token_revoked_at ? "revoked" : d.status)),
        el("td", {}, text(d.current_version)),
        el("td", {}, (d.tags || []).map((t) => el("span", { class: "tag" }, t))),
        el("td", { title: when(d.last_seen) }, ago(d.last_seen)),
        el("td", { class: "mono" }, d.device_uuid)));
      const shown = data.devices.total > rows.length ? ` (first ${rows.length} of ${data.devices.total})` : "";
      fill(devices, 
        table(["name", "status", "version", "tags", "last seen", "uuid"], rows, "No devices match."),
        shown ? el("p", { class: "empty" }, `Showing${shown}; filter by status or tag.`) : "");
    }

    return { url, show };
  }

  function phaseText(rollout) {
    if (!rollout) return "—";
    const phases = rollout.phases || [];
    if (phases.length <= 1) return "one phase";
    return `${rollout.phase + 1} of ${phases.length} (${phases[rollout.phase]}%)`;
  }

  function rolloutView(main, reference) {
    const title = el("h1", {}, "Rollout ", el("span", { id: "rollout-version" }, reference));
    const summary = el("section", { class: "panel", id: "rollout-summary" });
    const actions = el("div", { class: "actions", id: "actions" });
    const reason = el("input", { id: "reason", placeholder: "reason for the audit log (optional)", maxlength: 500 });
    const message = el("p", { id: "action-message", role: "status" });
    const phases = el("section", { class: "panel", id: "phases" });
    const health = el("section", { class: "panel", id: "health" });
    const devices = el("section", { class: "panel", id: "rollout-devices" });
    fill(main, el("p", {}, el("a", { href: "#/" }, "← Fleet")), title, summary,
      el("section", { class: "panel" }, el("h2", {}, "Actions"), actions, reason, message),
      phases, health, devices);
    let armed = null; // "cancel" after its first click: the second confirms
    let latest = null;

    async function run(command) {
      if (command === "cancel" && armed !== "cancel") {
        armed = "cancel";
        message.textContent = "Cancelling stops every device that has not started. Click again to confirm.";
        if (latest) show(latest);
        return;
      }
      armed = null;
      message.textContent = `${command}…`;
      try {
        const body = reason.value.trim() ? { reason: reason.value.trim() } : {};
        const data = await post(`api/updates/${encodeURIComponent(reference)}/${command}`, body);
        message.textContent = `${command}: done, the rollout is ${data.update.rollout ? data.update.rollout.state : "unchanged"}.`;
        reason.value = "";
        show(data);
      } catch (error) {
        if (error instanceof LoggedOut) return toLogin();
        message.textContent = `${command} refused: ${error.message}`;
      }
    }

    function show(data) {
      latest = data;
      const u = data.update;
      const r = u.rollout;
      fill(summary, 
        el("dl", { class: "kv" },
          el("dt", {}, "state"), el("dd", {}, r ? badge(r.state, "state") : "no rollout"),
          el("dt", {}, "type"), el("dd", {}, u.update_type),
          el("dt", {}, "description"), el("dd", {}, text(u.description)),
          el("dt", {}, "published"), el("dd", {}, when(u.created_at)),
          el("dt", {}, "targets"), el("dd", {}, u.targets ? `${u.targets.length} devices`
            : r && r.target_tags ? `tags: ${r.target_tags.join(", ")}` : "every device"),
          r && r.halt_reason ? [el("dt", {}, "halted because"), el("dd", { class: "error-message" }, r.halt_reason)] : null,
          r && r.awaiting_phase_approval ? [el("dt", {}, "waiting"), el("dd", {}, "the next phase waits for approval")] : null),
        statusBar(u.status_counts));
      fill(actions, (u.actions.length
        ? u.actions.map((command) => el("button", {
          type: "button", "data-command": command,
          class: command === "cancel" ? (armed === "cancel" ? "danger armed" : "danger") : "",
          onclick: () => run(command),
        }, command === "cancel" && armed === "cancel" ? "Confirm cancel" : COMMAND_LABELS[command] || command))
        : [el("span", { class: "empty" }, "No action changes this rollout now.")]));
      fill(phases, el("h2", {}, "Phases"), r ? table(["phase", "share", "open", "devices by status", "regressions"],
        (r.phases || []).map((share, index) => el("tr", { class: index <= r.phase ? "open" : "closed" },
          el("td", {}, String(index + 1)),
          el("td", {}, `${share}%`),
          el("td", {}, index < r.phase ? "open" : index === r.phase ? `open since ${when(r.phase_opened_at)}` : "waiting"),
          el("td", { class: "wide" }, statusBar((r.phase_counts || [])[index] || {})),
          el("td", { class: "num" }, String((r.phase_regressions || [])[index] || 0)))),
        "No phases.") : el("p", { class: "empty" }, "No rollout."));
      const cohorts = r && r.health ? [["exposed", r.health.exposed], ["previous version", r.health.previous]] : [];
      fill(health, el("h2", {}, "Health"), table(
        ["group", "devices", "finished", "failed", "rolled back", "regressions", "silent", "failure rate"],
        cohorts.map(([name, c]) => el("tr", {}, el("td", {}, name),
          ["devices", "finished", "failed", "rolled_back", "regressions", "silent"].map((k) => el("td", { class: "num" }, String(c[k]))),
          el("td", { class: "num" }, `${Number(c.failure_rate).toFixed(1)}%`))),
        "No health data."),
        r ? el("p", { class: "empty" }, `halts above ${r.halt_failure_rate}% failing once ${r.halt_min_devices} devices finished`) : null);
      const rows = data.devices.items.map((row) => el("tr", { class: "device-row" },
        el("td", {}, deviceLink(row.device_uuid, row.device_name)),
        el("td", {}, badge(row.status)),
        el("td", {}, when(row.scheduled_for)),
        el("td", {}, when(row.started_at)),
        el("td", {}, when(row.completed_at)),
        el("td", { class: "failure-cell" }, failureDetails(row))));
      fill(devices, el("h2", {}, `Devices (${data.devices.total})`),
        table(["device", "status", "scheduled", "started", "finished", "failure"], rows, "No device rows yet."));
    }

    return { url: () => `api/updates/${encodeURIComponent(reference)}`, show };
  }

  function deviceView(main, deviceUuid) {
    const title = el("h1", {}, "Device");
    const info = el("section", { class: "panel", id: "device-info" });
    const history = el("section", { class: "panel", id: "device-history" });
    fill(main, el("p", {}, el("a", { href: "#/" }, "← Fleet")), title, info, history);

    function show(data) {
      const d = data.device;
      fill(title, "Device ", el("span", { id: "device-name" }, d.device_name || d.device_uuid));
      fill(info, el("dl", { class: "kv" },
        el("dt", {}, "name"), el("dd", {}, text(d.device_name)),
        el("dt", {}, "uuid"), el("dd", { class: "mono" }, d.device_uuid),
        el("dt", {}, "status"), el("dd", {}, badge(d.status), d.token_revoked_at ? [" ", badge("revoked")] : null),
        el("dt", {}, "version"), el("dd", {}, text(d.current_version)),
        el("dt", {}, "timezone"), el("dd", {}, d.timezone),
        el("dt", {}, "tags"), el("dd", {}, (d.tags || []).length ? d.tags.map((t) => el("span", { class: "tag" }, t)) : "—"),
        el("dt", {}, "last seen"), el("dd", {}, `${when(d.last_seen)} (${ago(d.last_seen)})`),
        el("dt", {}, "registered"), el("dd", {}, when(d.registered_at)),
        d.token_revoked_at ? [el("dt", {}, "token revoked"), el("dd", {}, when(d.token_revoked_at))] : null,
        el("dt", {}, "metadata"), el("dd", {}, Object.keys(d.metadata || {}).length ? renderValue(d.metadata) : "—")));
      fill(history, el("h2", {}, `Update history (${data.history.total})`), table(
        ["update", "status", "scheduled", "started", "finished", "failure"],
        data.history.items.map((row) => el("tr", { class: "history-row" },
          el("td", {}, rolloutLink(row.version)),
          el("td", {}, badge(row.status)),
          el("td", {}, when(row.scheduled_for)),
          el("td", {}, when(row.started_at)),
          el("td", {}, when(row.completed_at)),
          el("td", { class: "failure-cell" }, failureDetails(row)))),
        "No updates for this device yet."));
    }

    return { url: () => `api/devices/${encodeURIComponent(deviceUuid)}`, show };
  }

  // ------------------------------------------------------------ routing and polling

  function notFound(main, message) {
    fill(main, el("h1", {}, "Not found"),
      el("p", { class: "error" }, message), el("p", {}, el("a", { href: "#/" }, "← Fleet")));
  }

  function route() {
    const main = document.getElementById("view");
    const hash = window.location.hash.replace(/^#/, "");
    let parts;
    try {
      parts = hash.split("/").filter(Boolean).map(decodeURIComponent);
    } catch (_) { // a malformed escape such as %E0: no page of the dashboard
      current = null;
      generation++;
      clearTimeout(timer);
      notFound(main, "This address is not a page of the dashboard.");
      return;
    }
    if (parts[0] === "rollout" && parts[1]) current = rolloutView(main, parts[1]);
    else if (parts[0] === "device" && parts[1]) current = deviceView(main, parts[1]);
    else current = fleetView(main);
    refreshSoon();
  }

  function refreshSoon() {
    clearTimeout(timer);
    timer = setTimeout(refresh, 0);
  }

  async function refresh() {
    clearTimeout(timer);
    const view = current;
    if (view === null) return; // a not-found address: nothing to poll
    const mine = ++generation;
    const sent = performance.now();
    let delay = POLL_MS;
    try {
      const data = await request(view.url());
      // A slow answer (a large fleet, a busy server) spaces the polls out: at most
      // a tenth of the time is spent waiting for this page's data.
      delay = Math.max(POLL_MS, 10 * (performance.now() - sent));
      if (mine !== generation || view !== current) return; // a newer view or request answered
      view.show(data);
      setLive(`live · updated ${new Date().toLocaleTimeString()}`, true);
    } catch (error) {
      if (error instanceof LoggedOut) return toLogin();
      if (mine !== generation) return;
      if (error.status === 404) notFound(document.getElementById("view"), error.message);
      setLive(`not updated: ${error.message}`, false);
    }
    if (mine === generation && !document.hidden) timer = setTimeout(refresh, delay);
  }

  async function start() {
    try {
      const session = await request("api/session");
      csrfToken = session.csrf_token;
    } catch (error) {
      if (error instanceof LoggedOut) return toLogin();
      setLive(`cannot reach the server: ${error.message}`, false);
      return;
    }
    document.getElementById("logout").addEventListener("click", async () => {
      try { await post("logout"); } catch (_) { /* the cookie is gone either way on 401 */ }
      window.location.replace("login?logged-out");
    });
    document.addEventListener("visibilitychange", () => { if (!document.hidden) refreshSoon(); });
    window.addEventListener("hashchange", route);
    route();
  }

  document.addEventListener("DOMContentLoaded", start);
})();

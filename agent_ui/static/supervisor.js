// The supervisors' wallboard. Figures arrive over /ws/supervisor (docs/supervisor-protocol.md):
// a metrics.snapshot, then metrics.delta frames (JSON merge patches of it) and agent.state
// events; actions go through the REST API with the console's CSRF header. Names and other
// stored text only ever reach the page as textContent.

const body = document.body;
const csrf = body.dataset.csrf;
const locale = body.dataset.locale || "en";
const $ = (id) => document.getElementById(id);
const strings = JSON.parse($("i18n").textContent);
const t = (key, values = {}) =>
  (strings[key] || key).replace(/\{(\w+)\}/g, (_, name) => String(values[name] ?? ""));
const percent = new Intl.NumberFormat(locale, { style: "percent", maximumFractionDigits: 1 });
const decimal = new Intl.NumberFormat(locale, { maximumFractionDigits: 1 });
const SVG = "http://www.w3.org/2000/svg";
const CLASSES = ["voice", "chat", "email"];
const STATES = ["available", "busy", "away", "offline"];
const PRIORITIES = ["low", "normal", "high", "urgent"];

const state = {
  socket: null,
  lastEventId: null, // the position of the last event handled: the resume point
  retry: 0,
  skew: 0, // server time minus local time
  metrics: null, // the figures: the snapshot with every delta applied
  rows: new Map(), // agent id -> table row
  targets: "", // the reassign menu's options, to rebuild it only when they change
};

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function svg(tag, attributes = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  return node;
}

const pad = (n) => String(n).padStart(2, "0");
function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}
const NONE = "–";
const pct = (value) => (value === undefined || value === null ? NONE : percent.format(value));
const secs = (value) => (value === undefined || value === null ? NONE : duration(value));
const serverNow = () => Date.now() + state.skew;
const since = (iso) => (serverNow() - Date.parse(iso)) / 1000;

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (options.body) headers["Content-Type"] = "application/json";
  if (options.method && options.method !== "GET") headers["X-CSRF-Token"] = csrf;
  const response = await fetch(path, { credentials: "same-origin", ...options, headers });
  if (response.status === 401) location.assign("/agent/login?next=/supervisor");
  const text = await response.text();
  if (!response.ok) {
    let message = text;
    try {
      message = JSON.parse(text).detail || text;
    } catch {}
    throw new Error(String(message).slice(0, 300));
  }
  return text ? JSON.parse(text) : null;
}

// --- the socket -------------------------------------------------------------------------

function connect() {
  const url = new URL("/ws/supervisor", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (state.lastEventId !== null) url.searchParams.set("last_event_id", state.lastEventId);
  const socket = new WebSocket(url);
  state.socket = socket;
  window.ccWallboard.socket = socket;
  setLink("connecting");
  socket.onmessage = (event) => {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    handle(frame);
  };
  socket.onclose = (event) => {
    if (state.socket !== socket) return;
    setLink("closed");
    if (event.code === 4401 || event.code === 4403) {
      location.assign("/agent/login?next=/supervisor");
      return;
    }
    const delay = Math.min(10000, 500 * 2 ** state.retry) * (0.75 + Math.random() / 2);
    state.retry += 1;
    setTimeout(connect, delay);
  };
}

function setLink(linkState) {
  const link = $("link");
  link.dataset.state = linkState;
  link.textContent = t({ open: "live", closed: "reconnecting", connecting: "connecting" }[linkState]);
}

function applyPatch(target, patch) {
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) {
      delete target[key];
    } else if (typeof value === "object" && !Array.isArray(value)) {
      if (typeof target[key] !== "object" || target[key] === null || Array.isArray(target[key])) target[key] = {};
      applyPatch(target[key], value);
    } else {
      target[key] = value;
    }
  }
}

function handle(frame) {
  if (typeof frame.id === "number") {
    if (state.lastEventId !== null && frame.id <= state.lastEventId) return; // seen
    state.lastEventId = frame.id;
  }
  const data = frame.data || {};
  switch (frame.type) {
    case "metrics.snapshot":
      state.retry = 0;
      setLink("open");
      state.lastEventId = Math.max(state.lastEventId ?? 0, data.last_event_id || 0);
      state.metrics = data.metrics;
      state.skew = Date.parse(data.metrics.as_of) - Date.now();
      render();
      break;
    case "metrics.delta":
      if (!state.metrics) return;
      applyPatch(state.metrics, data.changes || {});
      if (data.changes && data.changes.as_of) state.skew = Date.parse(state.metrics.as_of) - Date.now();
      render();
      break;
    case "agent.state": {
      const agent = state.metrics?.agents?.[String(data.agent_id)];
      if (agent) {
        agent.state = data.state;
        agent.since = data.since;
        if (data.reason) agent.reason = data.reason;
        else delete agent.reason;
        renderAgents();
      }
      break;
    }
    case "sla.warning":
    case "sla.breached": {
      const key = frame.type === "sla.breached" ? "sla_breached" : "sla_warning";
      const item = el("li", frame.type === "sla.breached" ? "alert breached" : "alert", t(key, { metric: t(data.metric), id: data.conversation_id }));
      item.dataset.conversationId = data.conversation_id;
      $("sla-alerts").prepend(item);
      while ($("sla-alerts").children.length > 20) $("sla-alerts").lastChild.remove();
      break;
    }
  }
}

// --- rendering ----------------------------------------------------------------------------

function render() {
  const m = state.metrics;
  if (!m) return;
  const settings = m.settings || {};
  $("day").textContent = `${m.day} · ${settings.timezone} · ${t("service_level")}: ${t("service_level_hint", {
    seconds: settings.service_level_seconds,
    target: pct(settings.service_level_target),
  })}`;
  renderTiles();
  renderCharts();
  renderAgents();
  renderWaiting();
  renderRisk();
  renderTargets();
}

function figure(list, key, label, value, extra) {
  const row = el("div", "figure");
  row.dataset.figure = key;
  const dd = el("dd", "", value);
  if (extra) dd.append(" ", extra);
  row.append(el("dt", "", label), dd);
  list.append(row);
  return dd;
}

function tile(id, name, f) {
  const settings = state.metrics.settings || {};
  const card = el("article", "tile");
  card.dataset.queueId = id;
  card.setAttribute("aria-labelledby", `tile-${id}`);
  const title = el("h3", "", name);
  title.id = `tile-${id}`;
  const list = el("dl");
  figure(list, "waiting", t("waiting"), f.waiting ?? 0).classList.add("big");
  const longest = figure(list, "longest-wait", t("longest_wait"), secs(f.oldest_waiting_since ? since(f.oldest_waiting_since) : 0));
  if (f.oldest_waiting_since) longest.dataset.since = f.oldest_waiting_since;
  let flag = null;
  if (f.service_level !== undefined) {
    const below = f.service_level < settings.service_level_target;
    flag = el("span", `flag ${below ? "below" : "ok"}`, `(${t(below ? "below_target" : "on_target")})`);
  }
  const level = figure(list, "service-level", t("service_level"), pct(f.service_level), flag);
  level.title = t("service_level_hint", {
    seconds: settings.service_level_seconds,
    target: pct(settings.service_level_target),
  });
  figure(list, "asa", t("asa"), secs(f.asa_seconds));
  figure(list, "aht", t("aht"), secs(f.aht_seconds));
  figure(list, "abandoned", t("abandoned"), t("abandoned_value", {
    rate: pct(f.abandonment_rate),
    count: f.abandoned ?? 0,
    offered: f.offered ?? 0,
  }));
  figure(list, "occupancy", t("occupancy"), pct(f.occupancy));
  const by = f.agents_by_state || {};
  figure(list, "agents", t("agents"), t("agents_value", {
    available: by.available ?? 0,
    busy: by.busy ?? 0,
    away: by.away ?? 0,
    offline: by.offline ?? 0,
  }));
  figure(list, "sla", t("sla"), pct(f.sla_compliance), t("sla_value", {
    met: f.sla_met ?? 0,
    missed: f.sla_missed ?? 0,
    risk: f.sla_at_risk ?? 0,
  }));
  const plan = f.staffing;
  figure(list, "staffing", t("staffing"), plan ? t("staffing_value", {
    agents: plan.agents,
    rate: decimal.format(plan.arrivals_per_hour),
    aht: duration(plan.aht_seconds),
    level: pct(plan.service_level),
  }) : t("staffing_unknown"));
  card.append(title, el("p", "answered meta", t("answered_value", { answered: f.answered ?? 0, offered: f.offered ?? 0 })), list);
  return card;
}

function renderTiles() {
  const m = state.metrics;
  const queues = Object.values(m.queues || {}).sort((a, b) => a.name.localeCompare(b.name, locale));
  const cards = [tile("all", t("overall"), m.overall || {})];
  for (const queue of queues) cards.push(tile(String(queue.id), queue.name, queue));
  $("tiles").replaceChildren(...cards);
}

function renderCharts() {
  const series = state.metrics.series;
  if (!series) return;
  const settings = state.metrics.settings || {};
  const labels = series.labels || [];
  const n = labels.length || 96;
  const width = 960 / n;
  const arrivals = series.arrivals || [];
  const highest = Math.max(0, ...arrivals.filter((v) => v !== null && v !== undefined));
  const peak = Math.max(1, highest); // the bars' scale
  const chart = $("arrivals-chart");
  const bars = [];
  let total = 0;
  let busiest = null;
  arrivals.forEach((count, i) => {
    if (count === null || count === undefined) return;
    total += count;
    if (busiest === null || count > arrivals[busiest]) busiest = i;
    if (!count) return;
    const height = (count / peak) * 150;
    const bar = svg("rect", { x: i * width + 1, y: 160 - height, width: Math.max(1, width - 2), height, class: "bar" });
    bar.append(svg("title"));
    bar.firstChild.textContent = t("arrivals_bar", { label: labels[i], count });
    bars.push(bar);
  });
  const desc = svg("desc");
  desc.id = "arrivals-desc";
  desc.textContent = t("arrivals_summary", {
    total,
    label: busiest === null ? NONE : labels[busiest],
    count: busiest === null ? 0 : arrivals[busiest],
  });
  chart.replaceChildren(desc, ...bars);
  $("arrivals-peak").textContent = `(${t("peak", { count: highest })})`;
  chart.dataset.total = String(total);
  axis("arrivals-chart", labels);

  const levels = series.service_level || [];
  const target = settings.service_level_target ?? 0.8;
  const level = $("level-chart");
  const marks = [];
  levels.forEach((value, i) => {
    if (value === null || value === undefined) return;
    const height = Math.max(2, value * 150);
    const below = value < target;
    const bar = svg("rect", { x: i * width + 1, y: 160 - height, width: Math.max(1, width - 2), height, class: below ? "bar below" : "bar ok" });
    bar.append(svg("title"));
    bar.firstChild.textContent = t("level_bar", { label: labels[i], level: pct(value) });
    marks.push(bar);
  });
  const line = svg("line", { x1: 0, x2: 960, y1: 160 - target * 150, y2: 160 - target * 150, class: "target" });
  const levelDesc = svg("desc");
  levelDesc.id = "level-desc";
  levelDesc.textContent = t("level_summary", { target: pct(target) });
  level.replaceChildren(levelDesc, ...marks, line);
  $("level-target").textContent = `(${t("target", { target: pct(target) })})`;
  axis("level-chart", labels);
}

function axis(chartId, labels) {
  const chart = $(chartId);
  let row = chart.nextElementSibling;
  if (!row || !row.classList.contains("axis")) {
    row = el("div", "axis");
    row.setAttribute("aria-hidden", "true");
    chart.after(row);
  }
  const ticks = [];
  labels.forEach((label, i) => {
    if (i % 12 !== 0) return; // every three hours
    const tick = el("span", "", label);
    tick.style.left = `${(i / labels.length) * 100}%`;
    ticks.push(tick);
  });
  row.replaceChildren(...ticks);
}

function renderAgents() {
  const m = state.metrics;
  if (!m) return;
  const agents = Object.values(m.agents || {}).sort((a, b) => a.name.localeCompare(b.name, locale));
  const tbody = $("agents").tBodies[0];
  const present = new Set(agents.map((a) => a.id));
  for (const [id, row] of state.rows) {
    if (!present.has(id)) {
      row.remove();
      state.rows.delete(id);
    }
  }
  for (const agent of agents) {
    let row = state.rows.get(agent.id);
    if (!row) row = agentRow(agent);
    row.dataset.state = agent.state;
    row.cells[0].textContent = agent.name;
    row.cells[1].textContent = t(agent.state) + (agent.reason ? ` (${agent.reason})` : "");
    const time = row.cells[2];
    if (agent.since) {
      time.dataset.since = agent.since;
      time.textContent = duration(since(agent.since));
    } else {
      delete time.dataset.since;
      time.textContent = NONE;
    }
    CLASSES.forEach((cls, i) => {
      row.cells[3 + i].textContent = `${agent.load?.[cls] ?? 0}/${agent.capacity?.[cls] ?? 0}`;
    });
    const select = row.querySelector("select");
    select.setAttribute("aria-label", t("set_state_of", { name: agent.name }));
    if (document.activeElement !== select) select.value = agent.state;
    tbody.append(row); // in name order
  }
}

function agentRow(agent) {
  const row = el("tr");
  row.dataset.agentId = agent.id;
  const name = el("th");
  name.scope = "row";
  row.append(name, el("td", "state"), el("td", "time"), el("td"), el("td"), el("td"));
  const cell = el("td");
  const select = el("select");
  for (const value of STATES) {
    const option = el("option", "", t(value));
    option.value = value;
    select.append(option);
  }
  select.addEventListener("change", async () => {
    const current = state.metrics.agents[String(agent.id)];
    const wanted = select.value;
    try {
      await api(`/api/v1/agents/${Number(agent.id)}/presence`, {
        method: "PUT",
        body: JSON.stringify({ state: wanted }),
      });
      result(t("state_changed", { name: current ? current.name : agent.name, state: t(wanted) }));
    } catch (error) {
      result(t("refused", { message: error.message }), true);
      if (current) select.value = current.state;
    }
  });
  cell.append(select);
  row.append(cell);
  state.rows.set(agent.id, row);
  return row;
}

function renderWaiting() {
  const m = state.metrics;
  const list = m.waiting_list || [];
  const tbody = $("waiting-list").tBodies[0];
  const rows = list.map((item) => {
    const row = el("tr");
    row.dataset.conversationId = item.conversation_id;
    const queue = m.queues?.[String(item.queue_id)];
    const waited = el("td", "time", duration(since(item.waiting_since)));
    waited.dataset.since = item.waiting_since;
    const status = el("td", "status", item.status === "offered" ? t("offered") : "");
    const use = el("button", "", t("pick"));
    use.type = "button";
    use.addEventListener("click", () => {
      $("reassign-conversation").value = item.conversation_id;
      $("priority-conversation").value = item.conversation_id;
      $("priority-value").value = item.priority;
      $("reassign-target").focus();
    });
    const action = el("td");
    action.append(use);
    row.append(
      el("td", "", `#${item.conversation_id}`),
      el("td", "", queue ? queue.name : `#${item.queue_id}`),
      el("td", "", item.channel),
      el("td", "", t(item.priority)),
      waited,
      status,
      action,
    );
    return row;
  });
  tbody.replaceChildren(...rows);
  $("no-waiting").hidden = rows.length > 0;
}

function renderRisk() {
  const m = state.metrics;
  const rows = (m.sla_at_risk || []).map((item) => {
    const row = el("tr");
    row.dataset.conversationId = item.conversation_id;
    const queue = m.queues?.[String(item.queue_id)];
    const due = el("td", "time", item.due_at ? duration(-since(item.due_at)) : NONE);
    if (item.due_at) due.dataset.until = item.due_at;
    const use = el("button", "", t("pick"));
    use.type = "button";
    use.addEventListener("click", () => {
      $("reassign-conversation").value = item.conversation_id;
      $("priority-conversation").value = item.conversation_id;
      $("priority-value").value = item.priority;
      $("reassign-target").focus();
    });
    const action = el("td");
    action.append(use);
    row.append(
      el("td", "", `#${item.conversation_id}`),
      el("td", "", queue ? queue.name : NONE),
      el("td", "", t(item.metric)),
      el("td", "", t(item.priority)),
      due,
      action,
    );
    return row;
  });
  $("risk-list").tBodies[0].replaceChildren(...rows);
  $("no-risk").hidden = rows.length > 0;
}

function renderTargets() {
  const m = state.metrics;
  const agents = Object.values(m.agents || {}).sort((a, b) => a.name.localeCompare(b.name, locale));
  const queues = Object.values(m.queues || {}).sort((a, b) => a.name.localeCompare(b.name, locale));
  const options = [
    ...agents.map((a) => [`agent:${a.id}`, t("agent_option", { name: a.name })]),
    ...queues.map((q) => [`queue:${q.id}`, t("queue_option", { name: q.name })]),
  ];
  const key = JSON.stringify(options);
  if (key === state.targets) return;
  state.targets = key;
  const select = $("reassign-target");
  const chosen = select.value;
  select.replaceChildren(
    ...options.map(([value, label]) => {
      const option = el("option", "", label);
      option.value = value;
      return option;
    }),
  );
  if (options.some(([value]) => value === chosen)) select.value = chosen;
}

function result(text, failed = false) {
  const line = $("action-result");
  line.textContent = text;
  line.classList.toggle("error", failed);
}

// Waits and times in state grow between frames: count them here, on the server's clock.
setInterval(() => {
  for (const cell of document.querySelectorAll("[data-since]")) cell.textContent = duration(since(cell.dataset.since));
  for (const cell of document.querySelectorAll("[data-until]")) cell.textContent = duration(-since(cell.dataset.until));
}, 1000);

// --- actions --------------------------------------------------------------------------------

$("reassign").addEventListener("submit", async (e) => {
  e.preventDefault();
  const id = Number($("reassign-conversation").value);
  const [kind, target] = $("reassign-target").value.split(":");
  if (!id || !target) return;
  try {
    if (kind === "agent") {
      await api(`/api/v1/conversations/${id}/assign`, {
        method: "POST",
        body: JSON.stringify({ agent_id: Number(target) }),
      });
    } else {
      await api(`/api/v1/conversations/${id}/transfer`, {
        method: "POST",
        body: JSON.stringify({ queue_id: Number(target) }),
      });
    }
    result(t("reassigned", { id }));
  } catch (error) {
    result(t("refused", { message: error.message }), true);
  }
});

$("priority").addEventListener("submit", async (e) => {
  e.preventDefault();
  const id = Number($("priority-conversation").value);
  const priority = $("priority-value").value;
  if (!id || !PRIORITIES.includes(priority)) return;
  try {
    await api(`/api/v1/conversations/${id}`, { method: "PATCH", body: JSON.stringify({ priority }) });
    result(t("priority_changed", { id, priority: t(priority) }));
  } catch (error) {
    result(t("refused", { message: error.message }), true);
  }
});

window.ccWallboard = { state, socket: null };
connect();

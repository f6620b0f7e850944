// The agent console: one websocket (/ws/agent, protocol in docs/agent-protocol.md) for live
// events and actions, the REST API for reading conversations. Customer content is only ever
// put into the page as text (textContent), never as HTML.

const body = document.body;
const me = Number(body.dataset.agentId);
const csrf = body.dataset.csrf;
const $ = (id) => document.getElementById(id);
// The page's language (babel catalogues, server side) and the agent's time zone.
const strings = JSON.parse(document.getElementById("i18n").textContent);
const t = (key, values = {}) =>
  (strings[key] || key).replace(/\{(\w+)\}/g, (_, name) => String(values[name] ?? ""));
// A zone or language the browser does not know falls back (UTC, English): the console must
// load whatever is stored in the agent's profile.
function formatter(options) {
  for (const [locale, timeZone] of [
    [body.dataset.locale || "en", body.dataset.timezone || "UTC"],
    ["en", body.dataset.timezone || "UTC"],
    ["en", "UTC"],
  ]) {
    try {
      return new Intl.DateTimeFormat(locale, { ...options, timeZone });
    } catch {
      // try the next
    }
  }
  return new Intl.DateTimeFormat("en", { ...options, timeZone: "UTC" });
}
const timeFormat = formatter({ hour: "2-digit", minute: "2-digit" });
const dateFormat = formatter({ year: "numeric", month: "short", day: "numeric" });
// Channel names: the translatable ones come from the catalogue, brands stay as they are.
const BRANDS = {
  sms: "SMS",
  whatsapp: "WhatsApp",
  telegram: "Telegram",
  slack: "Slack",
  messenger: "Messenger",
  instagram: "Instagram",
};
const channelName = (kind) => (kind ? strings[`channel_${kind}`] || BRANDS[kind] || kind : "");
const statusName = (status) => strings[`status_${status}`] || status || "";
const deliveryName = (status) => strings[`delivery_${status}`] || status || "";
// "My conversations" shows the statuses chosen in its filter ("active": all but resolved).
const ACTIVE = ["open", "pending", "snoozed"];

const state = {
  socket: null,
  lastEventId: null, // the position of the last event handled: the resume point
  retry: 0,
  clockSkew: 0, // server time minus local time, from hello
  offers: new Map(), // offer_id -> {data, element}
  conversations: new Map(), // conversation_id -> {element, unread, name, channel}
  open: null, // the conversation shown
  filter: { status: "active", channel: "" }, // of "My conversations"
  listGeneration: 0,
  shown: new Set(), // message ids in the timeline
  pending: new Map(), // client_id -> frame not yet acknowledged (resent after a reconnect)
};

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (options.body) headers["Content-Type"] = "application/json";
  if (options.method && options.method !== "GET") headers["X-CSRF-Token"] = csrf;
  const response = await fetch(path, { credentials: "same-origin", ...options, headers });
  if (response.status === 401) location.assign("/agent/login");
  if (!response.ok) throw new Error(`${response.status} ${await response.text()}`);
  return response.json();
}

// --- websocket ------------------------------------------------------------------------

function connect() {
  const url = new URL("/ws/agent", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (state.lastEventId !== null) url.searchParams.set("last_event_id", state.lastEventId);
  const socket = new WebSocket(url);
  state.socket = socket;
  window.ccConsole.socket = socket;
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
    if (event.code === 4401) {
      location.assign("/agent/login");
      return;
    }
    const delay = Math.min(10000, 500 * 2 ** state.retry) * (0.75 + Math.random() / 2);
    state.retry += 1;
    setTimeout(connect, delay);
  };
}

function send(frame) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify(frame));
    return true;
  }
  return false;
}

function setLink(linkState) {
  const link = $("link");
  link.dataset.state = linkState;
  link.textContent = t({ open: "live", closed: "reconnecting", connecting: "connecting" }[linkState]);
}

function handle(frame) {
  if (typeof frame.id === "number") {
    if (state.lastEventId !== null && frame.id <= state.lastEventId) return; // seen
    state.lastEventId = frame.id;
  }
  const data = frame.data || {};
  switch (frame.type) {
    case "hello":
      state.retry = 0;
      setLink("open");
      state.clockSkew = Date.parse(data.server_time) - Date.now();
      if (state.lastEventId === null) {
        state.lastEventId = data.last_event_id;
        loadConversations();
        loadWaiting();
        loadCanned();
        openFromHash();
      }
      $("presence").value = data.presence ? data.presence.state : "offline";
      for (const offer of data.pending_offers || []) showOffer(offer);
      for (const offerId of [...state.offers.keys()]) {
        if (!(data.pending_offer_ids || []).includes(offerId)) dropOffer(offerId);
      }
      for (const frame of state.pending.values()) send(frame); // the same client ids: no doubles
      break;
    case "ack":
      if (data.for === "presence.set") $("presence").value = data.state;
      if (data.for === "message.send") state.pending.delete(data.client_id);
      break;
    case "error":
      if (data.for === "message.send" || data.for === "offer.accept") notice(data.message || data.code);
      break;
    case "offer":
      showOffer(data);
      break;
    case "offer.accepted":
    case "offer.declined":
    case "offer.expired":
    case "offer.withdrawn":
      dropOffer(data.offer_id);
      break;
    case "presence.updated":
      if (data.agent_id === me) $("presence").value = data.state;
      break;
    case "conversation.assigned":
      dropWaiting(data.id);
      if (data.assignee_id === me) addConversation(data.id, { channel: data.channel, status: data.status });
      else removeConversation(data.id);
      if (data.assignee_id === null && data.status === "open") addWaiting(data);
      break;
    case "conversation.updated":
      if (data.status) conversationStatus(data.id, data.status, data.assignee_id);
      if (data.status && data.id === state.open) showStatus(data.status);
      break;
    case "message.created":
      messageCreated(data);
      break;
    case "message.status":
      updateStatus(data);
      break;
    case "mention.created":
      showMention(data);
      break;
    case "conversation.read":
      // Read in another tab or on another device (or this one): the server's count.
      if (state.conversations.has(data.conversation_id)) {
        setUnread(data.conversation_id, data.conversation_id === state.open ? 0 : data.unread_count);
      }
      break;
    case "sla.warning":
    case "sla.breached":
      showSlaAlert(frame.type, data);
      break;
    case "typing":
      if (data.conversation_id === state.open) showTyping(Boolean(data.typing));
      break;
    case "conversation.created":
      if (data.assignee_id === null && data.status === "open") addWaiting(data);
      break;
    case "ticket.created":
    case "ticket.updated":
      ticketChanged(data);
      break;
    case "survey.requested":
    case "survey.answered":
      // The customer shown was asked, or answered: their satisfaction history follows.
      if (state.customer && data.customer_id === state.customer.id) loadCustomerTickets(state.customer.id, state.open);
      break;
  }
}

// --- offers ---------------------------------------------------------------------------

function showOffer(data) {
  if (state.offers.has(data.offer_id)) return;
  const item = el("li", "offer");
  item.dataset.offerId = data.offer_id;
  const who = el("div", "who");
  who.append(el("span", "channel", channelName(data.channel)), " ", el("span", "name", data.customer?.name || t("customer")));
  const preview = el("div", "preview", data.preview || data.subject || "");
  const waiting = el("div", "meta");
  const actions = el("div", "actions");
  const accept = el("button", "primary", t("accept"));
  const decline = el("button", "", t("decline"));
  const countdown = el("span", "countdown");
  accept.addEventListener("click", () => {
    state.offers.get(data.offer_id).customer = data.customer;
    send({ type: "offer.accept", data: { offer_id: data.offer_id } });
    addConversation(data.conversation_id, {
      name: data.customer?.name,
      channel: data.channel,
      status: "open",
      open: true,
    });
  });
  decline.addEventListener("click", () => send({ type: "offer.decline", data: { offer_id: data.offer_id } }));
  actions.append(accept, decline, countdown);
  item.append(who, preview, waiting, actions);
  $("offers").append(item);
  const entry = { data, element: item, timer: null };
  const tick = () => {
    const now = Date.now() + state.clockSkew;
    const left = Math.max(0, Math.round((Date.parse(data.expires_at) - now) / 1000));
    countdown.textContent = `${left}s`;
    const waited = Math.max(0, Math.round((now - Date.parse(data.enqueued_at || data.created_at)) / 1000));
    waiting.textContent = t("waiting", { n: waited });
    if (left <= 0) dropOffer(data.offer_id);
  };
  tick();
  entry.timer = setInterval(tick, 1000);
  state.offers.set(data.offer_id, entry);
  $("no-offers").hidden = true;
}

function dropOffer(offerId) {
  const entry = state.offers.get(offerId);
  if (!entry) return;
  clearInterval(entry.timer);
  entry.element.remove();
  state.offers.delete(offerId);
  $("no-offers").hidden = state.offers.size > 0;
}

// --- conversations ----------------------------------------------------------------------

const statusShown = (status) =>
  state.filter.status === "active" ? ACTIVE.includes(status) : status === state.filter.status;

async function loadConversations() {
  const generation = ++state.listGeneration;
  const wanted = state.filter.status === "active" ? ACTIVE : [state.filter.status];
  const pages = await Promise.all(
    wanted.map((status) => api(`/api/v1/conversations?assignee=me&status=${status}&limit=100`)),
  );
  if (generation !== state.listGeneration) return; // the filter changed meanwhile
  for (const id of [...state.conversations.keys()]) dropFromList(id);
  const items = pages.flatMap((page) => page.items);
  items.sort((a, b) => Date.parse(a.last_message_at) - Date.parse(b.last_message_at) || a.id - b.id);
  for (const conv of items) {
    addConversation(conv.id, {
      name: conv.customer_label,
      channel: conv.channel,
      status: conv.status,
      unread: conv.unread_count,
    });
  }
}

function addConversation(id, { name = null, channel = "", status = "open", unread = 0, open = false } = {}) {
  let entry = state.conversations.get(id);
  if (!statusShown(status)) {
    if (entry) dropFromList(id);
    if (open) openConversation(id);
    return;
  }
  if (!entry) {
    const item = el("li", "conversation-item");
    item.dataset.conversationId = id;
    item.tabIndex = 0;
    const label = el("span", "name", name || t("conversation", { id }));
    const badge = el("span", "channel", channelName(channel));
    const tag = el("span", "status-tag");
    const count = el("span", "unread", "0");
    count.dataset.count = "0";
    item.append(badge, label, tag, count);
    item.addEventListener("click", () => openConversation(id));
    item.addEventListener("keydown", (e) => e.key === "Enter" && openConversation(id));
    $("conversations").prepend(item);
    entry = { element: item, label, badge, tag, unread: count, count: 0, channel: channel || "" };
    state.conversations.set(id, entry);
    setUnread(id, id === state.open ? 0 : unread);
    if (!name || !channel) {
      api(`/api/v1/conversations/${id}`)
        .then((conv) => {
          entry.label.textContent = customerLabel(conv, id);
          entry.channel = conv.channel || "";
          entry.badge.textContent = channelName(conv.channel);
          if (state.open !== id) setUnread(id, conv.unread_count ?? entry.count);
          filterMine();
        })
        .catch(() => {});
    }
  }
  entry.status = status;
  entry.element.dataset.status = status;
  entry.tag.textContent = status === "open" ? "" : statusName(status);
  filterMine();
  if (open) openConversation(id);
}

// A status change seen live: the entry follows the filter (a pending case stays listed under
// "Pending" and "All but resolved", a resolved one under "Resolved").
function conversationStatus(id, status, assigneeId) {
  if (state.conversations.has(id) || assigneeId === me) addConversation(id, { status });
}

function filterMine() {
  const channel = state.filter.channel;
  for (const entry of state.conversations.values()) {
    entry.element.hidden = Boolean(channel) && entry.channel !== channel;
  }
}

$("mine-status").addEventListener("change", (e) => {
  state.filter.status = e.target.value;
  loadConversations();
});
$("mine-channel").addEventListener("change", (e) => {
  state.filter.channel = e.target.value;
  filterMine();
});

function customerLabel(conv, id) {
  const customer = conv.customer || {};
  return customer.name || customer.identities?.[0]?.address || t("conversation", { id });
}

function dropFromList(id) {
  const entry = state.conversations.get(id);
  if (!entry) return;
  entry.element.remove();
  state.conversations.delete(id);
}

function showStatus(status) {
  state.openStatus = status;
  $("pending").hidden = status !== "open";
  $("snooze").hidden = status !== "open";
  $("resolve").hidden = status === "resolved";
  $("reopen").hidden = status === "open";
  $("transfer-open").hidden = status === "resolved";
  $("conv-status").textContent = statusName(status);
  $("conv-status").dataset.status = status;
}

function removeConversation(id) {
  const entry = state.conversations.get(id);
  if (!entry) return;
  entry.element.remove();
  state.conversations.delete(id);
  if (state.open === id) {
    state.open = null;
    $("conversation").hidden = true;
    $("customer").hidden = true;
    $("pick").hidden = false;
  }
}

function setUnread(id, count) {
  const entry = state.conversations.get(id);
  if (!entry) return;
  entry.count = count;
  entry.unread.textContent = String(count);
  entry.unread.dataset.count = String(count);
}

async function openConversation(id) {
  state.open = id;
  for (const [cid, entry] of state.conversations) entry.element.setAttribute("aria-current", String(cid === id));
  $("pick").hidden = true;
  $("conversation").hidden = false;
  $("conversation").dataset.refused = "false";
  $("timeline").replaceChildren();
  $("conv-meta").textContent = "";
  $("conv-sla").replaceChildren();
  $("tickets").replaceChildren();
  $("ticket-form").hidden = true;
  state.openConv = null;
  state.shown.clear();
  let conv;
  try {
    conv = await api(`/api/v1/conversations/${id}`);
  } catch (error) {
    if (state.open !== id) return;
    // Not this agent's to see (another team's) or gone: say so, and offer nothing to do.
    $("conversation").dataset.refused = "true";
    $("conv-title").textContent = t("cannot_open");
    $("customer").hidden = true;
    return;
  }
  if (state.open !== id) return;
  state.openConv = conv;
  markRead(id);
  $("conv-title").textContent = customerLabel(conv, id);
  const identities = (conv.customer?.identities || []).map((i) => `${channelName(i.kind)} ${i.address}`).join(" · ");
  $("conv-meta").textContent = [channelName(conv.channel), identities].filter(Boolean).join(" · ");
  showStatus(conv.status);
  loadSla(id);
  loadReplyChannels(id);
  showCustomer(conv.customer, id);
  loadTickets(id);
  for (const message of conv.messages) appendMessage(message);
}

// The agent has seen the conversation: the server keeps the marker, so the unread counts
// survive a reload and another device.
function markRead(id) {
  setUnread(id, 0);
  api(`/api/v1/conversations/${id}/read`, { method: "POST" }).catch(() => {});
}

// "/agent#conversation-12" (the link in SLA escalation emails and Slack messages) opens it,
// if this agent may see it.
function openFromHash() {
  const match = /^#conversation-(\d+)$/.exec(location.hash);
  if (match) openConversation(Number(match[1]));
}
window.addEventListener("hashchange", openFromHash);

function appendMessage(m) {
  if (state.shown.has(m.id)) return;
  state.shown.add(m.id);
  const kind = m.private ? "note" : m.direction === "out" ? "out" : "in";
  const item = el("li", `msg ${kind}`);
  item.dataset.messageId = m.id;
  item.append(el("div", "text", m.text || ""));
  for (const a of m.attachments || []) {
    const link = el("a", "attachment", a.filename || "attachment");
    link.href = `/api/v1/attachments/${Number(a.id)}`;
    link.rel = "noopener";
    item.append(link);
  }
  const info = el("div", "info");
  info.append(el("span", "channel", m.private ? t("internal_note") : channelName(m.channel)));
  const time = el("time", "", timeFormat.format(new Date(m.created_at)));
  time.dateTime = m.created_at;
  info.append(time);
  if (m.direction === "out" && !m.private) {
    const status = el("span", "status", deliveryName(m.delivery_status));
    status.dataset.status = m.delivery_status;
    info.append(status);
  }
  item.append(info);
  $("timeline").append(item);
  item.scrollIntoView({ block: "end" });
}

function messageCreated(m) {
  if (m.conversation_id === state.open) {
    appendMessage(m);
    if (m.direction === "in" && !document.hidden) markRead(m.conversation_id);
  } else if (state.conversations.has(m.conversation_id) && m.direction === "in") {
    setUnread(m.conversation_id, state.conversations.get(m.conversation_id).count + 1);
  }
}

function updateStatus(data) {
  const status = document.querySelector(`.msg[data-message-id="${Number(data.message_id)}"] .status`);
  if (status) {
    status.textContent = deliveryName(data.delivery_status);
    status.dataset.status = data.delivery_status;
  }
}

// --- the customer typing, and the queue of unassigned conversations ---------------------------

let typingTimer = null;
function showTyping(on) {
  $("typing").hidden = !on;
  clearTimeout(typingTimer);
  if (on) typingTimer = setTimeout(() => ($("typing").hidden = true), 6000);
}

const waiting = new Map(); // conversation_id -> {element, channel}
async function loadWaiting() {
  const page = await api("/api/v1/conversations?assignee=none&status=open&limit=100");
  for (const conv of page.items.reverse()) addWaiting(conv);
}

function addWaiting(conv) {
  if (waiting.has(conv.id) || state.conversations.has(conv.id)) return;
  const item = el("li", "conversation-item");
  item.dataset.conversationId = conv.id;
  item.dataset.channel = conv.channel || "";
  item.tabIndex = 0;
  const name = el("span", "name", conv.customer_label || t("conversation", { id: conv.id }));
  item.append(el("span", "channel", channelName(conv.channel)), name);
  item.addEventListener("click", () => openConversation(conv.id));
  $("waiting").prepend(item);
  waiting.set(conv.id, { element: item });
  filterWaiting();
  // A live arrival names only its customer's id: show who it is, as the list does.
  if (!conv.customer_label && conv.customer_id) {
    api(`/api/v1/customers/${Number(conv.customer_id)}`)
      .then((c) => {
        const label = c.name || c.phone || c.email || c.identities?.[0]?.address;
        if (label) name.textContent = label;
      })
      .catch(() => {});
  }
}

function dropWaiting(id) {
  const entry = waiting.get(id);
  if (!entry) return;
  entry.element.remove();
  waiting.delete(id);
}

function filterWaiting() {
  const channel = $("queue-filter").value;
  for (const { element } of waiting.values()) element.hidden = Boolean(channel) && element.dataset.channel !== channel;
}
$("queue-filter").addEventListener("change", filterWaiting);

function showMention(data) {
  const item = el("li", "mention");
  item.dataset.conversationId = data.conversation_id;
  item.append(el("div", "who", t("mentioned_by", { name: data.by_agent_name || "" })), el("div", "", data.preview || ""));
  item.addEventListener("click", () => {
    item.remove();
    $("mentions-box").hidden = !$("mentions").children.length;
    openConversation(data.conversation_id);
  });
  $("mentions").prepend(item);
  $("mentions-box").hidden = false;
}

// --- replying on another of the customer's channels ---------------------------------------

async function loadReplyChannels(id) {
  let channels;
  try {
    channels = await api(`/api/v1/conversations/${id}/reply-channels`);
  } catch (error) {
    channels = [];
  }
  if (state.open !== id) return;
  const select = $("reply-via");
  select.replaceChildren();
  for (const c of channels) {
    const option = el("option", "", c.to_address ? `${c.name} (${channelName(c.kind)}: ${c.to_address})` : `${c.name} (${channelName(c.kind)})`);
    option.value = c.inbox_id;
    option.selected = Boolean(c.current);
    select.append(option);
  }
  $("reply-via-box").hidden = channels.length < 2;
}

// --- SLA ---------------------------------------------------------------------------------

function duration(seconds) {
  const minutes = Math.max(1, Math.round(Math.abs(seconds) / 60));
  if (minutes < 60) return t("minutes", { n: minutes });
  const hours = Math.floor(minutes / 60);
  return minutes % 60 ? t("hours_minutes", { h: hours, m: minutes % 60 }) : t("hours", { n: hours });
}

async function loadSla(id) {
  let clocks;
  try {
    clocks = await api(`/api/v1/conversations/${id}/sla`);
  } catch (error) {
    return;
  }
  if (state.open !== id) return;
  const line = $("conv-sla");
  line.replaceChildren();
  for (const c of clocks) {
    if (c.status !== "running" && c.status !== "paused") continue;
    const metric = t(c.metric);
    let text;
    let cls = "due";
    if (c.status === "paused") text = t("sla_paused", { metric });
    else if (c.remaining_seconds < 0 || c.breached) {
      text = t("sla_overdue", { metric, time: duration(c.remaining_seconds) });
      cls = "due overdue";
    } else text = t("sla_due", { metric, time: duration(c.remaining_seconds) });
    const item = el("span", cls, text);
    item.dataset.metric = c.metric;
    line.append(item);
  }
}

setInterval(() => {
  if (state.open !== null) loadSla(state.open);
}, 30000);

function showSlaAlert(type, data) {
  const breached = type === "sla.breached";
  const key = breached ? "sla_breached" : "sla_warning";
  const item = el("li", breached ? "alert breached" : "alert", t(key, { metric: t(data.metric), id: data.conversation_id }));
  item.dataset.conversationId = data.conversation_id;
  item.addEventListener("click", () => {
    item.remove();
    $("alerts-box").hidden = !$("alerts").children.length;
    openConversation(data.conversation_id);
  });
  $("alerts").prepend(item);
  $("alerts-box").hidden = false;
  const entry = state.conversations.get(data.conversation_id);
  if (entry && !entry.element.querySelector(".sla-flag")) {
    const flag = el("span", "sla-flag", "SLA");
    flag.title = t(key, { metric: t(data.metric), id: data.conversation_id });
    entry.element.append(flag);
  }
  if (state.open === data.conversation_id) loadSla(data.conversation_id);
}

function notice(text) {
  const line = el("li", "msg note", text);
  $("timeline").append(line);
}

// --- actions ------------------------------------------------------------------------------

$("presence").addEventListener("change", (e) => {
  send({ type: "presence.set", data: { state: e.target.value } });
});

$("reply").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("reply-text").value.trim();
  if (!text || state.open === null) return;
  const clientId = crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
  const data = { conversation_id: state.open, client_id: clientId, text, private: $("reply-private").checked };
  const via = $("reply-via").value;
  if (via && !data.private && !$("reply-via-box").hidden) data.inbox_id = via;
  const frame = { type: "message.send", data };
  state.pending.set(clientId, frame);
  send(frame);
  $("reply-text").value = "";
});

// --- the customer 360 panel ---------------------------------------------------------------

function showCustomer(customer, conversationId) {
  if (!customer) return;
  state.customer = customer;
  $("customer").hidden = false;
  $("profile-saved").hidden = true;
  $("profile-name").value = customer.name || "";
  $("profile-tier").value = customer.tier || "";
  $("profile-email").textContent = customer.email || "–";
  $("profile-phone").textContent = customer.phone || "–";
  $("profile-locale").textContent = customer.locale || "–";
  showAttributes(customer.attributes || {});
  $("identities").replaceChildren(
    ...(customer.identities || []).map((i) => {
      const item = el("li");
      item.append(el("span", "channel", channelName(i.kind)), " ", i.address);
      // A web chat visitor linked by a pre-chat email: did the site vouch for it?
      const claim = i.extra?.email;
      if (claim) item.append(" ", el("span", "channel", t(i.extra.email_verified ? "email_verified" : "email_unverified", { email: claim })));
      return item;
    }),
  );
  $("history").replaceChildren();
  loadCustomerTickets(customer.id, conversationId);
  api(`/api/v1/conversations?customer_id=${Number(customer.id)}&limit=20`)
    .then((page) => {
      if (state.open !== conversationId) return;
      for (const conv of page.items) {
        const item = el("li");
        const when = conv.last_message_at ? dateFormat.format(new Date(conv.last_message_at)) : "";
        item.append(el("span", "channel", channelName(conv.channel)), ` #${conv.id} · ${statusName(conv.status)} · ${when}`);
        item.dataset.conversationId = conv.id;
        if (conv.id !== conversationId) {
          item.dataset.open = "";
          item.addEventListener("click", () => openConversation(conv.id));
        }
        $("history").append(item);
      }
    })
    .catch(() => {});
}

// Profile fields (the customer's attributes): text and numbers are editable, anything else
// (lists, objects from an integration) is shown and kept as it is.
function showAttributes(attributes) {
  const box = $("attributes");
  box.replaceChildren();
  for (const [key, value] of Object.entries(attributes)) {
    const label = el("label", "", key);
    if (value === null || typeof value === "object") {
      label.append(el("div", "fixed", JSON.stringify(value)));
    } else {
      const input = el("input");
      input.value = String(value ?? "");
      input.dataset.key = key;
      input.dataset.type = typeof value;
      input.maxLength = 500;
      label.append(input);
    }
    box.append(label);
  }
  $("attr-key").value = "";
  $("attr-value").value = "";
}

function editedAttributes(original) {
  const out = { ...original };
  for (const input of $("attributes").querySelectorAll("input[data-key]")) {
    const key = input.dataset.key;
    const text = input.value.trim();
    if (!text) delete out[key];
    else if (input.dataset.type === "number" && Number.isFinite(Number(text))) out[key] = Number(text);
    else if (input.dataset.type === "boolean" && (text === "true" || text === "false")) out[key] = text === "true";
    else out[key] = text;
  }
  const newKey = $("attr-key").value.trim();
  const newValue = $("attr-value").value.trim();
  if (newKey && newValue) out[newKey] = newValue;
  return out;
}

$("profile").addEventListener("submit", async (e) => {
  e.preventDefault();
  const customer = state.customer;
  if (!customer) return;
  const updated = await api(`/api/v1/customers/${Number(customer.id)}`, {
    method: "PATCH",
    body: JSON.stringify({
      name: $("profile-name").value.trim(),
      tier: $("profile-tier").value.trim(),
      attributes: editedAttributes(customer.attributes || {}),
    }),
  });
  showAttributes(updated.attributes || {});
  state.customer = { ...customer, ...updated };
  $("profile-saved").hidden = false;
  const label = customerLabel({ customer: state.customer }, state.open);
  $("conv-title").textContent = label;
  const entry = state.conversations.get(state.open);
  if (entry) entry.label.textContent = label;
});

// Merge the shown customer into another (the same person who wrote from another address):
// their channels and conversations move to the other profile.
$("merge").addEventListener("submit", async (e) => {
  e.preventDefault();
  const source = state.customer;
  const target = Number($("merge-target").value);
  if (!source || !target || target === source.id) return;
  if (!confirm(t("merge_confirm", { source: source.id, target }))) return;
  try {
    await api("/api/v1/customers/merge", {
      method: "POST",
      body: JSON.stringify({ source_id: source.id, target_id: target }),
    });
  } catch (error) {
    $("merge-error").textContent = String(error.message).slice(0, 200);
    $("merge-error").hidden = false;
    return;
  }
  $("merge-error").hidden = true;
  $("merge-target").value = "";
  if (state.open !== null) openConversation(state.open);
});

async function setStatus(status) {
  const id = state.open;
  if (id === null) return;
  let conv;
  try {
    conv = await api(`/api/v1/conversations/${id}`, { method: "PATCH", body: JSON.stringify({ status }) });
  } catch (error) {
    notice(String(error.message).slice(0, 300));
    return;
  }
  if (state.open === id) showStatus(status);
  if (conv.assignee_id === me || state.conversations.has(id)) {
    addConversation(id, { channel: conv.channel, status });
  }
  if (state.open === id) {
    loadSla(id);
    setTimeout(() => state.open === id && loadSla(id), 2000); // the SLA clocks follow within a second
  }
}

$("resolve").addEventListener("click", () => setStatus("resolved"));
$("reopen").addEventListener("click", () => setStatus("open"));
$("pending").addEventListener("click", () => setStatus("pending"));
$("snooze").addEventListener("click", () => setStatus("snoozed"));

$("transfer-open").addEventListener("click", async () => {
  const select = $("transfer-queue");
  if (!select.options.length) {
    for (const queue of await api("/api/v1/queues")) {
      const option = el("option", "", queue.name);
      option.value = queue.id;
      select.append(option);
    }
  }
  $("transfer").hidden = false;
  select.focus();
});
$("transfer-cancel").addEventListener("click", () => ($("transfer").hidden = true));
$("transfer").addEventListener("submit", async (e) => {
  e.preventDefault();
  const id = state.open;
  const note = $("transfer-note").value.trim();
  await api(`/api/v1/conversations/${id}/transfer`, {
    method: "POST",
    body: JSON.stringify({ queue_id: Number($("transfer-queue").value), note: note || null }),
  });
  $("transfer").hidden = true;
  $("transfer-note").value = "";
  removeConversation(id);
});

// Keyboard: Alt+A accepts the oldest offer, Alt+R resolves, Alt+T raises a ticket, "/" goes
// to the reply box.
document.addEventListener("keydown", (e) => {
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement?.tagName);
  if (e.altKey && e.key.toLowerCase() === "a") {
    const [first] = state.offers.values();
    if (first) first.element.querySelector("button.primary").click();
  } else if (e.altKey && e.key.toLowerCase() === "r" && state.open !== null) {
    if (state.openStatus !== "resolved") setStatus("resolved");
  } else if (e.key === "/" && !typing && state.open !== null) {
    e.preventDefault();
    $("reply-text").focus();
  } else if (e.altKey && e.key.toLowerCase() === "t" && state.open !== null) {
    e.preventDefault();
    openTicketForm();
  } else if (e.key === "Escape") {
    $("transfer").hidden = true;
    $("ticket-form").hidden = true;
  }
});

// --- canned responses: the menu, or "/shortcut" then Tab in the reply box -----------------------

const canned = new Map(); // shortcut -> body
async function loadCanned() {
  for (const item of await api("/api/v1/canned-responses")) {
    canned.set(item.shortcut, item.body);
    const option = el("option", "", `/${item.shortcut} · ${item.title}`);
    option.value = item.shortcut;
    $("canned").append(option);
  }
}

function fillPlaceholders(text) {
  const values = {
    "customer.name": state.customer?.name || "",
    "agent.name": body.dataset.agentName || "",
    "conversation.id": state.open ?? "",
  };
  return text.replace(/\{\{\s*([\w.]+)\s*\}\}/g, (whole, key) => (key in values ? String(values[key]) : whole));
}

function insertCanned(shortcut) {
  const text = canned.get(shortcut);
  if (text === undefined) return false;
  const box = $("reply-text");
  box.value = box.value.replace(/(^|\s)\/[\w-]*$/, "$1") + fillPlaceholders(text);
  box.focus();
  return true;
}

$("canned").addEventListener("change", (e) => {
  insertCanned(e.target.value);
  e.target.value = "";
});

let lastTyping = 0;
$("reply-text").addEventListener("input", () => {
  if (state.open === null || $("reply-private").checked || Date.now() - lastTyping < 2000) return;
  lastTyping = Date.now();
  send({ type: "typing", data: { conversation_id: state.open, typing: true } });
});

$("reply-text").addEventListener("keydown", (e) => {
  if (e.key === "Tab") {
    const match = /(?:^|\s)\/([\w-]+)$/.exec($("reply-text").value);
    if (match && insertCanned(match[1])) e.preventDefault();
  }
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("reply").requestSubmit();
});

// The agent's own interface language and time zone (the page reloads in them).
$("prefs").addEventListener("toggle", () => {
  const list = $("zones");
  if (list.children.length || !Intl.supportedValuesOf) return;
  for (const zone of Intl.supportedValuesOf("timeZone")) {
    const option = el("option");
    option.value = zone;
    list.append(option);
  }
});
$("prefs-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    await api("/api/v1/auth/me", {
      method: "PATCH",
      body: JSON.stringify({ locale: $("pref-locale").value, timezone: $("pref-timezone").value.trim() }),
    });
  } catch (error) {
    $("prefs-error").textContent = t(String(error.message).includes("timezone") ? "bad_timezone" : "bad_locale");
    $("prefs-error").hidden = false;
    return;
  }
  location.reload();
});

// --- tickets and satisfaction (docs/architecture.md §16) ------------------------------------

const TICKET_STATUSES = ["new", "open", "pending", "on_hold", "solved", "closed"];
const PRIORITIES = ["low", "normal", "high", "urgent"];
const ticketStatusName = (status) => strings[`ticket_status_${status}`] || status || "";
const ticketTypeName = (type) => strings[`ticket_type_${type}`] || type || "";
// The refusal's own words ("subject: ..."), not the status line and the JSON around them.
function problem(error) {
  const text = String(error.message || error);
  try {
    return JSON.parse(text.slice(text.indexOf(" ") + 1)).detail || text;
  } catch {
    return text;
  }
}
const generations = { tickets: 0, customerTickets: 0, satisfaction: 0 };
// Agents the console can name (it cannot list agents): itself and the tickets' assignees.
const agentNames = new Map([[me, body.dataset.agentName || ""]]);

async function loadTickets(conversationId) {
  const generation = ++generations.tickets;
  let page;
  try {
    page = await api(`/api/v1/tickets?conversation_id=${Number(conversationId)}&limit=100`);
  } catch {
    page = { items: [] };
  }
  if (state.open !== conversationId || generation !== generations.tickets) return;
  const list = $("tickets");
  list.replaceChildren(...page.items.map(ticketRow));
  if (!page.items.length) list.append(el("li", "empty", t("no_tickets")));
}

function ticketRow(ticket) {
  if (ticket.assignee_id !== null) agentNames.set(ticket.assignee_id, ticket.assignee_name || "");
  const item = el("li", "ticket");
  item.dataset.ticketId = ticket.id;
  item.dataset.status = ticket.status;
  const title = el("div", "ticket-title");
  title.append(el("span", "ticket-id", `#${ticket.id}`), " ", el("span", "subject", ticket.subject));
  const fields = el("div", "ticket-fields");
  const closed = ticket.status === "closed";
  const status = el("select", "ticket-status");
  status.setAttribute("aria-label", t("ticket_status_of", { id: ticket.id }));
  for (const value of TICKET_STATUSES) {
    if (value === "new" && ticket.status !== "new") continue; // nothing goes back to new
    const option = el("option", "", ticketStatusName(value));
    option.value = value;
    option.selected = value === ticket.status;
    status.append(option);
  }
  const priority = el("select", "ticket-priority");
  priority.setAttribute("aria-label", t("ticket_priority_of", { id: ticket.id }));
  for (const value of PRIORITIES) {
    const option = el("option", "", t(`priority_${value}`));
    option.value = value;
    option.selected = value === ticket.priority;
    priority.append(option);
  }
  status.disabled = priority.disabled = closed;
  status.addEventListener("change", () => changeTicket(ticket.id, { status: status.value }));
  priority.addEventListener("change", () => changeTicket(ticket.id, { priority: priority.value }));
  fields.append(
    el("span", "channel ticket-type", ticketTypeName(ticket.type)),
    status,
    priority,
    el("span", "assignee", ticket.assignee_id === null ? t("unassigned") : ticket.assignee_name || t("agent_number", { id: ticket.assignee_id })),
  );
  for (const tag of ticket.tags || []) fields.append(el("span", "tag", tag));
  item.append(title, fields);
  return item;
}

async function changeTicket(ticketId, change) {
  try {
    await api(`/api/v1/tickets/${Number(ticketId)}`, { method: "PATCH", body: JSON.stringify(change) });
  } catch (error) {
    notice(problem(error).slice(0, 300));
  }
  refreshTickets();
}

function refreshTickets() {
  if (state.open !== null) loadTickets(state.open);
  if (state.customer) loadCustomerTickets(state.customer.id, state.open);
}

// A ticket event (ticket.created, ticket.updated) for the conversation or customer shown.
function ticketChanged(data) {
  const moved = data.changes?.customer_id;
  if (state.open !== null && data.conversation_id === state.open) loadTickets(state.open);
  const customerId = state.customer?.id;
  if (customerId !== undefined && [data.customer_id, moved?.from].includes(customerId)) {
    loadCustomerTickets(customerId, state.open);
  }
}

async function loadCustomerTickets(customerId, conversationId) {
  const generation = ++generations.customerTickets;
  let page;
  try {
    page = await api(`/api/v1/tickets?customer_id=${Number(customerId)}&limit=100`);
  } catch {
    page = { items: [] };
  }
  if (state.open !== conversationId || generation !== generations.customerTickets) return;
  const list = $("customer-tickets");
  list.replaceChildren();
  for (const ticket of page.items) {
    if (ticket.assignee_id !== null) agentNames.set(ticket.assignee_id, ticket.assignee_name || "");
    const item = el("li", "customer-ticket");
    item.dataset.ticketId = ticket.id;
    item.dataset.status = ticket.status;
    item.append(
      el("span", "channel", ticketTypeName(ticket.type)),
      ` #${ticket.id} `,
      el("span", "subject", ticket.subject),
      " · ",
      el("span", "ticket-state", ticketStatusName(ticket.status)),
    );
    if (ticket.conversation_id !== null && ticket.conversation_id !== conversationId) {
      item.dataset.open = "";
      item.addEventListener("click", () => openConversation(ticket.conversation_id));
    }
    list.append(item);
  }
  if (!page.items.length) list.append(el("li", "empty", t("no_tickets")));
  loadSatisfaction(customerId, conversationId, page.items);
}

// The customer's satisfaction surveys (GET /api/v1/surveys?customer_id=N, newest first).
// Until that API answers (a 404), the panel says there are no ratings.
async function loadSatisfaction(customerId, conversationId, tickets) {
  const generation = ++generations.satisfaction;
  let surveys;
  try {
    surveys = await api(`/api/v1/surveys?customer_id=${Number(customerId)}`);
  } catch {
    surveys = [];
  }
  if (!Array.isArray(surveys)) surveys = surveys?.items || [];
  if (state.open !== conversationId || generation !== generations.satisfaction) return;
  const subjects = new Map(tickets.map((ticket) => [ticket.id, ticket.subject]));
  const list = $("satisfaction");
  list.replaceChildren();
  for (const survey of surveys) {
    const item = el("li", "survey");
    item.dataset.surveyId = survey.id;
    item.dataset.status = survey.status;
    const head = el("div", "survey-head");
    const score = Number(survey.score);
    if (survey.status === "answered" && score >= 1 && score <= 5) {
      item.dataset.score = String(score);
      head.append(el("span", "score", t("score_of", { score })), " ", el("span", "score-label", t(`score_${score}`)));
    } else {
      head.append(el("span", "score-label", t(survey.status === "unsendable" ? "survey_unsendable" : "survey_sent")));
    }
    const when = survey.answered_at || survey.created_at;
    if (when) {
      const time = el("time", "", dateFormat.format(new Date(when)));
      time.dateTime = when;
      head.append(" · ", time);
    }
    const about = [];
    if (survey.ticket_id !== null && survey.ticket_id !== undefined) {
      const subject = subjects.get(survey.ticket_id);
      about.push(t("survey_ticket", { id: survey.ticket_id }) + (subject ? ` ${subject}` : ""));
    }
    if (survey.agent_id !== null && survey.agent_id !== undefined) {
      about.push(survey.agent_id === me ? t("you") : agentNames.get(survey.agent_id) || t("agent_number", { id: survey.agent_id }));
    }
    item.append(head, el("div", "meta", about.join(" · ")));
    if (survey.comment) item.append(el("div", "comment", survey.comment));
    list.append(item);
  }
  if (!list.children.length) list.append(el("li", "empty", t("no_ratings")));
}

// Raising a ticket from the conversation shown: its subject (or the customer's first words),
// its priority; assigned to the agent unless they untick it.
function openTicketForm() {
  const conv = state.openConv;
  if (!conv) return;
  const first = (conv.messages || []).find((m) => m.direction === "in" && m.text);
  const subject = conv.subject || (first ? first.text.replace(/\s+/g, " ").trim().slice(0, 120) : "");
  $("ticket-subject").value = subject;
  $("ticket-type").value = "question";
  $("ticket-priority").value = PRIORITIES.includes(conv.priority) ? conv.priority : "normal";
  $("ticket-mine").checked = true;
  $("ticket-error").hidden = true;
  $("ticket-form").hidden = false;
  $("ticket-subject").focus();
}

$("ticket-new").addEventListener("click", openTicketForm);
$("ticket-cancel").addEventListener("click", () => ($("ticket-form").hidden = true));
$("ticket-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const id = state.open;
  if (id === null) return;
  const data = {
    conversation_id: id,
    subject: $("ticket-subject").value,
    type: $("ticket-type").value,
    priority: $("ticket-priority").value,
  };
  if ($("ticket-mine").checked) data.assignee_id = me;
  try {
    await api("/api/v1/tickets", { method: "POST", body: JSON.stringify(data) });
  } catch (error) {
    $("ticket-error").textContent = problem(error).slice(0, 300);
    $("ticket-error").hidden = false;
    return;
  }
  $("ticket-form").hidden = true;
  refreshTickets();
});

window.ccConsole = { state, socket: null };
connect();

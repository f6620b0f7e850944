/* Contact center chat widget: <script src="https://HOST/widget.js" data-inbox="webchat" async></script>
 * Speaks /ws/chat (see channels/webchat.py). Keeps the visitor token and the last event id in
 * localStorage, so a reload or a dropped connection resumes with nothing lost or repeated:
 * messages are keyed by id and updated in place. When the inbox is closed (hello says so), a
 * message form replaces the live chat and posts to /webchat/offline. When the inbox asks for it
 * (hello.pre_chat), a pre-chat form takes name and email before the first message and sends
 * `identify`; a site that knows its signed-in user passes data-user-name, data-user-email and
 * data-user-hash (HMAC-SHA256 of the email with the inbox's identity secret, computed on the
 * site's server) and the widget identifies on every connect. A satisfaction survey
 * (`survey.request`, after a solved ticket) shows as five buttons and an optional comment, sent
 * as `survey.answer`; the visitor may change the answer. Text is only ever set with
 * textContent. No dependencies, no build step. */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) { return; }
  var inbox = script.getAttribute("data-inbox") || "webchat";
  var title = script.getAttribute("data-title") || "Chat with us";
  var siteUser = script.getAttribute("data-user-email") ? {
    name: script.getAttribute("data-user-name") || "",
    email: script.getAttribute("data-user-email"),
    identity_hash: script.getAttribute("data-user-hash") || undefined
  } : null;
  var base = new URL(script.src, window.location.href);
  var key = "cc-chat:" + base.host + ":" + inbox;
  var state = JSON.parse(localStorage.getItem(key) || "{}");
  var messages = {};   // id -> element
  var pending = {};    // client_id -> element
  var socket = null, retry = 0, typingTimer = null;

  function save() { localStorage.setItem(key, JSON.stringify(state)); }
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }  // never innerHTML: text only
    return node;
  }

  var css = el("style", {}, [
    ".ccw{position:fixed;right:20px;bottom:20px;z-index:2147483000;font:14px/1.4 system-ui,sans-serif}",
    ".ccw-button{background:#2354d6;color:#fff;border:0;border-radius:24px;padding:12px 18px;cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.2)}",
    ".ccw-panel{display:none;flex-direction:column;width:340px;height:460px;max-height:80vh;background:#fff;border-radius:12px;box-shadow:0 8px 30px rgba(0,0,0,.25);overflow:hidden}",
    ".ccw-open .ccw-panel{display:flex}.ccw-open .ccw-button{display:none}",
    ".ccw-head{background:#2354d6;color:#fff;padding:12px 14px;display:flex;justify-content:space-between;align-items:center}",
    ".ccw-head button{background:none;border:0;color:#fff;font-size:18px;cursor:pointer}",
    ".ccw-log{flex:1;overflow-y:auto;padding:12px;background:#f5f6f8}",
    ".ccw-msg{max-width:80%;margin:4px 0;padding:8px 10px;border-radius:10px;white-space:pre-wrap;word-wrap:break-word}",
    ".ccw-in{background:#2354d6;color:#fff;margin-left:auto}.ccw-out{background:#fff;border:1px solid #dde}",
    ".ccw-meta{font-size:11px;opacity:.7;margin-top:2px}.ccw-typing{font-size:12px;color:#667;padding:0 12px;height:16px}",
    ".ccw-form{display:flex;border-top:1px solid #e3e5ea}.ccw-form textarea{flex:1;border:0;padding:10px;resize:none;font:inherit}",
    ".ccw-form button,.ccw-form label{border:0;background:none;padding:0 12px;cursor:pointer;color:#2354d6;font-weight:600}",
    ".ccw-status{font-size:12px;padding:4px 12px;color:#a33}",
    ".ccw-panel [hidden]{display:none!important}",
    ".ccw-offline{display:none;flex:1;flex-direction:column;gap:8px;padding:12px;overflow-y:auto}",
    ".ccw-away .ccw-offline{display:flex}.ccw-away .ccw-log,.ccw-away .ccw-typing,.ccw-away .ccw-form{display:none}",
    ".ccw-offline input,.ccw-offline textarea{font:inherit;padding:8px;border:1px solid #ccd;border-radius:6px}",
    ".ccw-away-done{padding:12px}.ccw:not(.ccw-away) .ccw-away-done{display:none}",
    ".ccw-offline button{background:#2354d6;color:#fff;border:0;border-radius:6px;padding:10px;cursor:pointer}",
    ".ccw-prechat{display:none;flex:1;flex-direction:column;gap:8px;padding:12px;overflow-y:auto}",
    ".ccw-pre .ccw-prechat{display:flex}.ccw-pre .ccw-log,.ccw-pre .ccw-typing,.ccw-pre .ccw-form{display:none}",
    ".ccw-prechat input{font:inherit;padding:8px;border:1px solid #ccd;border-radius:6px}",
    ".ccw-prechat button{background:#2354d6;color:#fff;border:0;border-radius:6px;padding:10px;cursor:pointer}",
    ".ccw-survey{background:#fff;border:1px solid #dde;border-radius:10px;padding:10px;margin:8px 0;display:flex;flex-direction:column;gap:8px}",
    ".ccw-scores{display:flex;gap:4px}.ccw-scores button{flex:1;padding:8px 0;border:1px solid #ccd;border-radius:6px;background:#fff;cursor:pointer;font:inherit}",
    ".ccw-scores button[aria-pressed=true]{background:#2354d6;border-color:#2354d6;color:#fff}",
    ".ccw-scale{display:flex;justify-content:space-between;font-size:11px;color:#667}",
    ".ccw-survey textarea{font:inherit;padding:6px;border:1px solid #ccd;border-radius:6px;resize:vertical}",
    ".ccw-survey-send{background:#2354d6;color:#fff;border:0;border-radius:6px;padding:8px;cursor:pointer}",
    ".ccw-survey-q{margin:0}.ccw-survey-send:disabled{opacity:.5;cursor:default}.ccw-survey-done{color:#1a7f37;margin:0}.ccw-survey-error{color:#a33;margin:0}"
  ].join(""));
  document.head.appendChild(css);

  // data-state: connecting, identifying (a signed-in user, until the server confirms), open
  // (live chat), away (offline form), reconnecting.
  var root = el("div", { "class": "ccw", "data-testid": "cc-widget", "data-state": "connecting" });
  var button = el("button", { "class": "ccw-button", type: "button" }, title);
  var panel = el("div", { "class": "ccw-panel", role: "dialog", "aria-label": title });
  var head = el("div", { "class": "ccw-head" });
  head.appendChild(el("strong", {}, title));
  var close = el("button", { type: "button", "aria-label": "Close" }, "×");
  head.appendChild(close);
  var log = el("div", { "class": "ccw-log", "aria-live": "polite" });
  var typing = el("div", { "class": "ccw-typing" });
  var status = el("div", { "class": "ccw-status" });
  var form = el("form", { "class": "ccw-form" });
  var input = el("textarea", { rows: "2", placeholder: "Type your message…", "aria-label": "Message" });
  var file = el("input", { type: "file", hidden: "hidden" });
  var attach = el("label", { title: "Attach a file" }, "📎");
  attach.appendChild(file);
  var send = el("button", { type: "submit" }, "Send");
  form.appendChild(attach); form.appendChild(input); form.appendChild(send);
  // The offline form, shown instead of the chat while the inbox is closed.
  var away = el("form", { "class": "ccw-offline", "data-testid": "cc-offline" });
  var awayNote = el("p", { "class": "ccw-away-note" });
  var awayName = el("input", { name: "name", autocomplete: "name", placeholder: "Your name", "aria-label": "Name", required: "required", maxlength: "200" });
  var awayEmail = el("input", { name: "email", type: "email", autocomplete: "email", placeholder: "Your email", "aria-label": "Email", required: "required", maxlength: "254" });
  var awayText = el("textarea", { name: "message", rows: "4", placeholder: "How can we help?", "aria-label": "Your message", required: "required", maxlength: "4000" });
  var awaySend = el("button", { type: "submit" }, "Send message");
  var awayDone = el("div", { "class": "ccw-away-done", "data-testid": "cc-offline-done", hidden: "hidden" });
  [awayNote, awayName, awayEmail, awayText, awaySend].forEach(function (n) { away.appendChild(n); });
  var awayId = null;   // one client id per message, so a double submit is one message
  var nextOpen = null;
  [head, log, typing, away, awayDone, status, form].forEach(function (n) { panel.appendChild(n); });
  root.appendChild(button); root.appendChild(panel);
  document.body.appendChild(root);

  function render(m) {
    var node = messages[m.id] || (m.client_id && pending[m.client_id]);
    if (!node) {
      node = el("div", { "class": "ccw-msg " + (m.direction === "in" ? "ccw-in" : "ccw-out") });
      node.appendChild(el("div", { "class": "ccw-text" }));
      node.appendChild(el("div", { "class": "ccw-meta" }));
      log.appendChild(node);
    }
    if (m.id) { messages[m.id] = node; node.setAttribute("data-id", m.id); }
    if (m.text !== undefined) { node.firstChild.textContent = m.text; }
    (m.attachments || []).forEach(function (a) {
      if (!node.querySelector("[data-att='" + a.id + "']")) {
        node.appendChild(el("div", { "class": "ccw-meta", "data-att": a.id }, "📎 " + a.filename));
      }
    });
    node.lastChild.textContent = m.direction === "out" ? "Support" : (m.delivery_status === "sending" ? "…" : "");
    log.scrollTop = log.scrollHeight;
  }

  // Satisfaction surveys (survey.request), one card per survey, updated in place.
  var surveys = {};  // survey id -> {node, score, ...}
  function showSurvey(data) {
    var t = data.text || {}, choices = t.choices || ["1", "2", "3", "4", "5"];
    var card = surveys[data.survey_id];
    if (!card) {
      card = { score: null, buttons: [] };
      card.node = el("div", { "class": "ccw-survey", "data-testid": "cc-survey", "data-survey": String(data.survey_id), lang: data.language || "en" });
      card.node.appendChild(el("p", { "class": "ccw-survey-q" }, t.question || ""));
      var group = el("div", { "class": "ccw-scores", role: "group", "aria-label": t.question || "" });
      choices.forEach(function (label, i) {
        var b = el("button", { type: "button", "aria-pressed": "false", "aria-label": (i + 1) + " " + label, title: label }, String(i + 1));
        b.addEventListener("click", function () { pick(card, i + 1); });
        card.buttons.push(b);
        group.appendChild(b);
      });
      card.node.appendChild(group);
      var scale = el("div", { "class": "ccw-scale" });
      scale.appendChild(el("span", {}, choices[0]));
      scale.appendChild(el("span", {}, choices[choices.length - 1]));
      card.node.appendChild(scale);
      card.comment = el("textarea", { rows: "2", maxlength: "2000", placeholder: t.comment || "", "aria-label": t.comment || "Comment" });
      card.node.appendChild(card.comment);
      card.send = el("button", { type: "button", "class": "ccw-survey-send", disabled: "disabled" }, t.submit || "Send");
      card.send.addEventListener("click", function () {
        if (!card.score || !socket || socket.readyState !== 1) { return; }
        card.error.textContent = "";
        lastSurvey = card;
        socket.send(JSON.stringify({ type: "survey.answer", data: { token: card.token, score: card.score, comment: card.comment.value.trim() } }));
      });
      card.node.appendChild(card.send);
      card.done = el("p", { "class": "ccw-survey-done", "data-testid": "cc-survey-done", hidden: "hidden" }, t.thanks || "Thank you!");
      card.error = el("p", { "class": "ccw-survey-error", role: "alert" });
      card.node.appendChild(card.done);
      card.node.appendChild(card.error);
      surveys[data.survey_id] = card;
      log.appendChild(card.node);
      log.scrollTop = log.scrollHeight;
    }
    card.token = data.token;
    if (data.score) {
      pick(card, data.score);
      if (data.comment && !card.comment.value) { card.comment.value = data.comment; }
      card.done.hidden = false;
    }
  }
  function pick(card, score) {
    card.score = score;
    card.buttons.forEach(function (b, i) { b.setAttribute("aria-pressed", String(i + 1 === score)); });
    card.send.disabled = false;
  }
  function surveyAnswered(data) {
    var card = surveys[data.survey_id];
    if (!card) { return; }
    pick(card, data.score);
    card.done.hidden = false;
  }
  var lastSurvey = null;  // the card an error frame for survey.answer is about

  // The pre-chat form: made only when the inbox asks for it (hello.pre_chat).
  var pre = null;
  function showPreChat(config) {
    if (!pre) {
      pre = el("form", { "class": "ccw-prechat", "data-testid": "cc-prechat" });
      pre.appendChild(el("p", { "class": "ccw-pre-note" }, config.message || "Before we start, tell us who you are."));
      var preName = el("input", { name: "name", autocomplete: "name", placeholder: "Your name", "aria-label": "Your name", maxlength: "200" });
      var preEmail = el("input", { name: "email", type: "email", autocomplete: "email", placeholder: "Your email address", "aria-label": "Your email address", maxlength: "254" });
      if (config.require_email) { preEmail.setAttribute("required", "required"); }
      pre.appendChild(preName); pre.appendChild(preEmail);
      pre.appendChild(el("button", { type: "submit" }, "Start chat"));
      pre.addEventListener("submit", function (event) {
        event.preventDefault();
        if (!socket || socket.readyState !== 1) { return; }
        status.textContent = "";
        socket.send(JSON.stringify({ type: "identify", data: { name: preName.value.trim(), email: preEmail.value.trim() } }));
      });
      panel.insertBefore(pre, status);
    }
    root.classList.add("ccw-pre");
  }
  function identified() {
    state.identified = true;
    save();
    root.classList.remove("ccw-pre");
    if (root.classList.contains("ccw-open")) { input.focus(); }
  }

  function connect() {
    var url = new URL("/ws/chat", base);
    url.protocol = base.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("inbox", inbox);
    if (state.token) { url.searchParams.set("visitor", state.token); }
    if (state.last) { url.searchParams.set("last_event_id", String(state.last)); }
    socket = new WebSocket(url.toString());
    socket.onopen = function () { retry = 0; status.textContent = ""; };
    socket.onmessage = function (event) {
      var frame = JSON.parse(event.data), data = frame.data || {};
      if (frame.type === "hello") {
        state.token = data.visitor_token;
        if (!state.last) { state.last = data.last_event_id; }
        save();
        setOpen(data.open !== false, data);
        if (siteUser) {
          socket.send(JSON.stringify({ type: "identify", data: siteUser }));
        } else if (data.open !== false && data.pre_chat && data.pre_chat.enabled && !data.identified && !state.identified) {
          showPreChat(data.pre_chat);
        }
        // A signed-in user's widget takes messages once the server confirmed who they are.
        root.setAttribute("data-state", data.open === false ? "away" : (siteUser ? "identifying" : "open"));
      } else if (frame.type === "history") {
        (data.messages || []).forEach(render);
      } else if (frame.type === "message.created") {
        render(data);
      } else if (frame.type === "message.status") {
        var node = messages[data.message_id];
        if (node) { node.setAttribute("data-status", data.delivery_status); }
      } else if (frame.type === "message.ack") {
        var mine = pending[data.client_id];
        if (mine) { messages[data.message_id] = mine; mine.setAttribute("data-id", data.message_id); mine.lastChild.textContent = ""; delete pending[data.client_id]; }
      } else if (frame.type === "survey.request") {
        showSurvey(data);
      } else if (frame.type === "survey.answered") {
        surveyAnswered(data);
      } else if (frame.type === "error" && data.for === "survey.answer" && lastSurvey) {
        lastSurvey.error.textContent = data.message || data.code;
      } else if (frame.type === "typing") {
        typing.textContent = data.typing ? "Support is typing…" : "";
      } else if (frame.type === "identified") {
        identified();
        if (root.getAttribute("data-state") === "identifying") { root.setAttribute("data-state", "open"); }
      } else if (frame.type === "error" && data.code === "identity_changed") {
        // The site's signed-in user is not who this visitor was (a shared browser): forget
        // this visitor and everything shown, and start afresh as a new one.
        state = {}; save();
        messages = {}; pending = {};
        log.replaceChildren();
        socket.close();
        return;
      } else if (frame.type === "error") {
        status.textContent = data.message || data.code;
      }
      if (frame.id && frame.id > (state.last || 0)) { state.last = frame.id; save(); }
    };
    socket.onclose = function () {
      root.setAttribute("data-state", "reconnecting");
      status.textContent = "Reconnecting…";
      retry = Math.min(retry + 1, 6);
      setTimeout(connect, 250 * Math.pow(2, retry));
    };
  }

  function whenText(iso) {
    // The visitor's own time zone and language (the browser's).
    return new Date(iso).toLocaleString(undefined, {
      weekday: "long", month: "long", day: "numeric", hour: "numeric", minute: "2-digit"
    });
  }

  function setOpen(isOpen, info) {
    nextOpen = info.next_open || null;
    awayNote.textContent = info.offline_message || "";
    root.classList.toggle("ccw-away", !isOpen);
  }

  function confirmSent(name) {
    away.hidden = true;
    awayDone.hidden = false;
    awayDone.textContent = "";
    awayDone.appendChild(el("p", {}, "Thanks, " + name + "! We got your message and will reply by email."));
    var back = el("p", {});
    if (nextOpen) {
      back.appendChild(document.createTextNode("We're back "));
      back.appendChild(el("time", { datetime: nextOpen }, whenText(nextOpen)));
      back.appendChild(document.createTextNode("."));
    } else {
      back.textContent = "We'll get back to you as soon as we can.";
    }
    awayDone.appendChild(back);
  }

  away.addEventListener("submit", function (event) {
    event.preventDefault();
    if (awaySend.disabled) { return; }
    awayId = awayId || clientId();
    var body = new URLSearchParams();
    body.set("client_id", awayId);
    body.set("name", awayName.value.trim());
    body.set("email", awayEmail.value.trim());
    body.set("message", awayText.value.trim());
    if (state.token) { body.set("visitor", state.token); }
    var url = new URL("/webchat/offline", base);
    url.searchParams.set("inbox", inbox);
    awaySend.disabled = true;
    status.textContent = "";
    fetch(url.toString(), { method: "POST", body: body }).then(function (r) {
      return r.json().then(function (answer) { return { ok: r.ok, answer: answer }; });
    }).then(function (result) {
      if (result.ok) {
        if (result.answer.next_open) { nextOpen = result.answer.next_open; }
        confirmSent(awayName.value.trim());
        awayId = null;
      } else {
        status.textContent = result.answer.detail || "Could not send your message.";
      }
    }).catch(function () {
      status.textContent = "Could not send your message. Please try again.";
    }).then(function () { awaySend.disabled = false; });
  });

  function clientId() { return Date.now().toString(36) + Math.random().toString(36).slice(2, 8); }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = input.value.trim();
    if (!text || !socket || socket.readyState !== 1 || root.getAttribute("data-state") !== "open") { return; }
    var id = clientId();
    pending[id] = null;
    render({ client_id: id, direction: "in", text: text, delivery_status: "sending" });
    pending[id] = log.lastChild;
    socket.send(JSON.stringify({ type: "message.send", data: { client_id: id, text: text } }));
    input.value = "";
  });
  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); form.requestSubmit(); }
    if (socket && socket.readyState === 1 && !typingTimer) {
      socket.send(JSON.stringify({ type: "typing", data: { typing: true } }));
      typingTimer = setTimeout(function () { typingTimer = null; }, 2000);
    }
  });
  file.addEventListener("change", function () {
    if (!file.files.length || !state.token) { return; }
    var body = new FormData();
    body.append("file", file.files[0]);
    body.append("client_id", clientId());
    var url = new URL("/webchat/upload", base);
    url.searchParams.set("inbox", inbox);
    url.searchParams.set("visitor", state.token);
    fetch(url.toString(), { method: "POST", body: body }).then(function (r) {
      if (!r.ok) { status.textContent = "Upload failed (" + r.status + ")"; }
    });
    file.value = "";
  });
  button.addEventListener("click", function () { root.classList.add("ccw-open"); input.focus(); });
  close.addEventListener("click", function () { root.classList.remove("ccw-open"); });
  connect();
})();

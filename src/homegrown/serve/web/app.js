/* The chat page: conversations from /api/conversations, replies streamed from /v1/chat/completions.
 *
 * Plain browser JavaScript, no build step and nothing fetched from outside this server. The reply is read
 * from the response body as Server-Sent Events and re-rendered as it grows; the user's message is saved
 * before the request and the assistant's when the stream ends or is stopped, so a reload shows both.
 */
(function () {
  "use strict";

  var KEY_STORAGE = "homegrown.apiKey";
  var SETTINGS_STORAGE = "homegrown.settings";
  var TITLE_CHARS = 60;
  var ICON_RENAME = '<svg viewBox="0 0 24 24" width="15" height="15" aria-hidden="true" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><path d="M4 20h4L19 9l-4-4L4 16v4z"/><path d="M13.5 6.5l4 4"/></svg>';
  var ICON_DELETE = '<svg viewBox="0 0 24 24" width="15" height="15" aria-hidden="true" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><path d="M4 7h16M10 11v6M14 11v6M6 7l1 13h10l1-13M9 7V4h6v3"/></svg>';

  var $ = function (id) { return document.getElementById(id); };
  var el = {
    app: $("app"), list: $("conversation-list"), empty: $("sidebar-empty"), newChat: $("new-chat"),
    model: $("model-select"), title: $("chat-title"), settingsButton: $("settings-button"),
    settings: $("settings-panel"), system: $("system-prompt"), temperature: $("temperature"),
    temperatureValue: $("temperature-value"), messages: $("messages"), welcome: $("welcome"),
    composer: $("composer"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
    keyDialog: $("api-key-dialog"), keyInput: $("api-key-input"), keyReason: $("api-key-reason"),
    deleteDialog: $("delete-dialog"), deleteTitle: $("delete-title"),
    account: $("account"), accountUser: $("account-user"), switchKey: $("switch-key"),
    sidebarToggle: $("sidebar-toggle"), sidebarClose: $("sidebar-close"), scrim: $("scrim")
  };

  var state = {
    conversations: [],   // summaries for the sidebar, newest first
    current: null,       // the open conversation, with its messages
    controller: null,    // AbortController of the reply being streamed
    keyWaiters: null     // callbacks waiting for the API-key dialog
  };

  function loadSettings() {
    try {
      var saved = JSON.parse(localStorage.getItem(SETTINGS_STORAGE) || "{}");
      return { model: saved.model || null, system_prompt: saved.system_prompt || "",
               temperature: typeof saved.temperature === "number" ? saved.temperature : 0.7 };
    } catch (e) {
      return { model: null, system_prompt: "", temperature: 0.7 };
    }
  }

  function saveSettings(s) { localStorage.setItem(SETTINGS_STORAGE, JSON.stringify(s)); }

  /* ---------- HTTP with the API key ---------- */

  function askForKey(reason) {
    return new Promise(function (resolve) {
      if (state.keyWaiters) { state.keyWaiters.push(resolve); return; }
      state.keyWaiters = [resolve];
      el.keyReason.textContent = reason;
      el.keyInput.value = "";
      el.keyDialog.returnValue = "";
      el.keyDialog.showModal();
      el.keyInput.focus();
    });
  }

  el.keyDialog.addEventListener("close", function () {
    var key = el.keyDialog.returnValue === "save" ? el.keyInput.value.trim() : "";
    if (key) localStorage.setItem(KEY_STORAGE, key);
    var waiters = state.keyWaiters || [];
    state.keyWaiters = null;
    waiters.forEach(function (resolve) { resolve(key || null); });
  });

  /* fetch() that sends the stored key and, on 401, asks for one and tries again. */
  async function apiFetch(path, options) {
    options = options || {};
    for (;;) {
      var headers = Object.assign({}, options.headers || {});
      var key = localStorage.getItem(KEY_STORAGE);
      if (key) headers.Authorization = "Bearer " + key;
      if (options.body !== undefined) headers["Content-Type"] = "application/json";
      var response = await fetch(path, Object.assign({}, options, { headers: headers }));
      if (response.status !== 401) return response;
      var given = await askForKey(key ? "The server refused the saved API key. Enter the right one."
                                      : "This server needs an API key: yours, from homegrown serve keys add.");
      if (!given) throw new Error("An API key is needed to use this server.");
    }
  }

  async function errorText(response) {
    try {
      var body = await response.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (e) { /* not JSON: fall through to the status line */ }
    return "HTTP " + response.status + " " + response.statusText;
  }

  async function api(path, method, body) {
    var response = await apiFetch(path, { method: method || "GET",
                                          body: body === undefined ? undefined : JSON.stringify(body) });
    if (!response.ok) throw new Error(await errorText(response));
    return response.json();
  }

  /* ---------- Sidebar ---------- */

  function renderList() {
    el.list.textContent = "";
    el.empty.hidden = state.conversations.length > 0;
    state.conversations.forEach(function (c) {
      var li = document.createElement("li");
      li.className = "conversation" + (state.current && state.current.id === c.id ? " active" : "");
      li.dataset.id = c.id;
      var open = document.createElement("button");
      open.type = "button";
      open.className = "open";
      open.textContent = c.title;
      open.title = c.title;
      open.addEventListener("click", function () { openConversation(c.id); closeSidebar(); });
      var actions = document.createElement("span");
      actions.className = "actions";
      actions.append(
        iconButton("rename", "Rename", c.title, ICON_RENAME, function () { startRename(li, c); }),
        iconButton("delete", "Delete", c.title, ICON_DELETE, function () { confirmDelete(c); }));
      li.append(open, actions);
      el.list.append(li);
    });
  }

  async function refreshList() {
    var body = await api("/api/conversations");
    state.conversations = body.data;
    renderList();
  }

  // A conversation's icon action: `verb` is its tooltip, and with the title its accessible name.
  function iconButton(className, verb, title, icon, onClick) {
    var button = document.createElement("button");
    button.type = "button";
    button.className = className;
    button.title = verb;
    button.setAttribute("aria-label", verb + " " + title);
    button.innerHTML = icon;
    button.addEventListener("click", onClick);
    return button;
  }

  function startRename(li, c) {
    var input = document.createElement("input");
    input.className = "rename-input";
    input.value = c.title;
    input.maxLength = 200;
    input.setAttribute("aria-label", "New title");
    li.textContent = "";
    li.append(input);
    input.focus();
    input.select();
    var done = false;
    async function finish(save) {
      if (done) return;
      done = true;
      var title = input.value.trim();
      if (save && title && title !== c.title) {
        try {
          var updated = await api("/api/conversations/" + encodeURIComponent(c.id), "PATCH", { title: title });
          if (state.current && state.current.id === c.id) { state.current.title = updated.title; showTitle(); }
        } catch (e) { showBanner(e.message); }
        await refreshList();
      } else {
        renderList();
      }
    }
    input.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter") { ev.preventDefault(); finish(true); }
      if (ev.key === "Escape") { ev.preventDefault(); finish(false); }
    });
    input.addEventListener("blur", function () { finish(true); });
  }

  function confirmDelete(c) {
    el.deleteTitle.textContent = c.title;
    el.deleteDialog.returnValue = "";
    el.deleteDialog.onclose = async function () {
      if (el.deleteDialog.returnValue !== "delete") return;
      try {
        await api("/api/conversations/" + encodeURIComponent(c.id), "DELETE");
      } catch (e) { showBanner(e.message); }
      if (state.current && state.current.id === c.id) newChat();
      await refreshList();
    };
    el.deleteDialog.showModal();
  }

  function openSidebar() { el.app.classList.add("sidebar-open"); el.scrim.hidden = false; }
  function closeSidebar() { el.app.classList.remove("sidebar-open"); el.scrim.hidden = true; }

  /* ---------- Conversation view ---------- */

  function showTitle() {
    el.title.textContent = state.current ? state.current.title : "";
    document.title = state.current ? state.current.title + " · homegrown" : "homegrown chat";
  }

  function showBanner(text) {
    var note = document.createElement("div");
    note.className = "message assistant";
    note.innerHTML = '<div class="content"><div class="error"></div></div>';
    note.querySelector(".error").textContent = text;
    el.messages.append(note);
    scrollDown(true);
  }

  function messageNode(role) {
    var node = document.createElement("div");
    node.className = "message " + role;
    if (role === "assistant") {
      var avatar = document.createElement("span");
      avatar.className = "logo avatar";
      node.append(avatar);
    }
    var content = document.createElement("div");
    content.className = "content";
    node.append(content);
    return node;
  }

  function fillContent(node, role, text) {
    var content = node.querySelector(".content");
    if (role === "assistant") content.innerHTML = window.renderMarkdown(text);
    else content.textContent = text;
  }

  function addMessage(role, text) {
    el.welcome.hidden = true;
    var node = messageNode(role);
    fillContent(node, role, text);
    el.messages.append(node);
    return node;
  }

  function nearBottom() { return el.messages.scrollHeight - el.messages.scrollTop - el.messages.clientHeight < 80; }
  function scrollDown(force) { if (force || nearBottom()) el.messages.scrollTop = el.messages.scrollHeight; }

  function renderConversation() {
    Array.prototype.slice.call(el.messages.querySelectorAll(".message")).forEach(function (n) { n.remove(); });
    var msgs = state.current ? state.current.messages.filter(function (m) { return m.role !== "system"; }) : [];
    el.welcome.hidden = msgs.length > 0;
    msgs.forEach(function (m) { addMessage(m.role, m.content); });
    showTitle();
    renderList();
    scrollDown(true);
  }

  function applySettingsToForm(s) {
    el.system.value = s.system_prompt || "";
    var t = typeof s.temperature === "number" ? s.temperature : 0.7;
    el.temperature.value = String(t);
    el.temperatureValue.textContent = Number(t).toFixed(1);
    if (s.model) selectModel(s.model, Boolean(s.id));
  }

  async function openConversation(id) {
    if (state.controller) return;
    try {
      state.current = await api("/api/conversations/" + encodeURIComponent(id));
    } catch (e) {
      state.current = null;
      history.replaceState(null, "", location.pathname);
      renderConversation();
      showBanner(e.message);
      return;
    }
    history.replaceState(null, "", "#" + id);
    applySettingsToForm(state.current);
    renderConversation();
  }

  function newChat() {
    if (state.controller) return;
    state.current = null;
    history.replaceState(null, "", location.pathname);
    applySettingsToForm(loadSettings());
    renderConversation();
    el.prompt.focus();
  }

  /* ---------- Models and settings ---------- */

  /* Shows `id` in the picker. A conversation's own model is added when the server no longer serves it, so the
   * user sees why a request fails; a stale default for new chats is simply not used. */
  function selectModel(id, addIfMissing) {
    var exists = Array.prototype.some.call(el.model.options, function (o) { return o.value === id; });
    if (!exists) {
      if (!addIfMissing) return;
      var opt = document.createElement("option");
      opt.value = id;
      opt.textContent = id + " (not served now)";
      el.model.append(opt);
    }
    el.model.value = id;
  }

  async function loadModels() {
    var response;
    for (;;) {  // the server answers 503 model_loading while it loads the weights: wait instead of failing
      response = await apiFetch("/v1/models");
      if (response.status !== 503) break;
      var info = await response.clone().json().catch(function () { return null; });
      if (!(info && info.error && info.error.code === "model_loading")) break;
      el.model.innerHTML = "<option>loading the model\u2026</option>";
      await new Promise(function (resolve) { setTimeout(resolve, 2000); });
    }
    if (!response.ok) throw new Error(await errorText(response));
    var body = await response.json();
    el.model.textContent = "";
    body.data.forEach(function (m) {
      var opt = document.createElement("option");
      opt.value = m.id;
      opt.textContent = m.id;
      el.model.append(opt);
    });
    if (state.current && state.current.model) selectModel(state.current.model, true);
    else if (loadSettings().model) selectModel(loadSettings().model, false);
  }

  function currentSettings() {
    return { model: el.model.value || null, system_prompt: el.system.value,
             temperature: Number(el.temperature.value) };
  }

  async function settingsChanged(field) {
    var s = currentSettings();
    saveSettings(s);
    if (!state.current) return;
    var change = {};
    change[field] = s[field];
    try {
      var updated = await api("/api/conversations/" + encodeURIComponent(state.current.id), "PATCH", change);
      state.current.model = updated.model;
      state.current.system_prompt = updated.system_prompt;
      state.current.temperature = updated.temperature;
    } catch (e) { showBanner(e.message); }
  }

  /* ---------- Streaming a reply ---------- */

  /* Yields the data field of each Server-Sent Event in a fetch() body as it arrives. */
  async function* sseData(body) {
    var reader = body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    try {
      for (;;) {
        var chunk = await reader.read();
        if (chunk.done) break;
        buffer += decoder.decode(chunk.value, { stream: true }).replace(/\r\n?/g, "\n");
        var cut;
        while ((cut = buffer.indexOf("\n\n")) !== -1) {
          var event = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          var data = event.split("\n").filter(function (l) { return l.indexOf("data:") === 0; })
            .map(function (l) { return l.slice(5).replace(/^ /, ""); }).join("\n");
          if (data) yield data;
        }
      }
    } finally {
      reader.cancel().catch(function () { /* already closed or aborted */ });
    }
  }

  function setStreaming(on) {
    el.stop.hidden = !on;
    el.send.hidden = on;
    el.newChat.disabled = on;
    updateSendEnabled();
  }

  function updateSendEnabled() { el.send.disabled = !el.prompt.value.trim(); }

  function autoGrow() {
    el.prompt.style.height = "auto";
    el.prompt.style.height = Math.min(el.prompt.scrollHeight, window.innerHeight * 0.4) + "px";
  }

  async function send(text) {
    var settings = currentSettings();
    saveSettings(settings);
    if (!state.current) {
      var title = text.replace(/\s+/g, " ").trim();
      if (title.length > TITLE_CHARS) title = title.slice(0, TITLE_CHARS - 1) + "\u2026";
      state.current = await api("/api/conversations", "POST", {
        title: title, model: settings.model, system_prompt: settings.system_prompt,
        temperature: settings.temperature });
      history.replaceState(null, "", "#" + state.current.id);
      showTitle();
    }
    var conv = state.current;
    addMessage("user", text);
    scrollDown(true);
    conv.messages.push(await api("/api/conversations/" + encodeURIComponent(conv.id) + "/messages", "POST",
                                 { role: "user", content: text }));
    refreshList();

    var chat = [];
    if (settings.system_prompt.trim()) chat.push({ role: "system", content: settings.system_prompt });
    conv.messages.forEach(function (m) { if (m.role !== "system") chat.push({ role: m.role, content: m.content }); });

    var node = addMessage("assistant", "");
    node.classList.add("streaming");
    var reply = "";
    var failure = null;
    var stopped = false;
    var frame = 0;
    function paint() {
      frame = 0;
      fillContent(node, "assistant", reply);
      scrollDown(false);
    }

    state.controller = new AbortController();
    setStreaming(true);
    try {
      var response = await apiFetch("/v1/chat/completions", {
        method: "POST", signal: state.controller.signal,
        body: JSON.stringify({ model: settings.model, messages: chat, stream: true,
                               temperature: settings.temperature })
      });
      if (!response.ok) {
        failure = await errorText(response);
      } else {
        for await (var data of sseData(response.body)) {
          if (data === "[DONE]") break;
          var event = JSON.parse(data);
          if (event.error) { failure = event.error.message || "the server reported an error"; break; }
          var choice = event.choices && event.choices[0];
          var piece = choice && choice.delta && choice.delta.content;
          if (piece) {
            reply += piece;
            if (!frame) frame = requestAnimationFrame(paint);
          }
        }
      }
    } catch (e) {
      if (e.name === "AbortError") stopped = true;
      else failure = e.message;
    } finally {
      state.controller = null;
      setStreaming(false);
    }
    node.classList.remove("streaming");
    if (frame) cancelAnimationFrame(frame);
    paint();
    if (stopped) {
      var mark = document.createElement("div");
      mark.className = "stopped";
      mark.textContent = "Stopped.";
      node.querySelector(".content").append(mark);
    }
    if (failure) {
      var err = document.createElement("div");
      err.className = "error";
      err.textContent = failure;
      node.querySelector(".content").append(err);
    }
    if (reply) {
      conv.messages.push(await api("/api/conversations/" + encodeURIComponent(conv.id) + "/messages", "POST",
                                   { role: "assistant", content: reply }));
    }
    await refreshList();
  }

  /* ---------- Wiring ---------- */

  el.composer.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var text = el.prompt.value.trim();
    if (!text || state.controller) return;
    el.prompt.value = "";
    autoGrow();
    updateSendEnabled();
    send(text).catch(function (e) { showBanner(e.message); });
  });
  el.prompt.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      el.composer.requestSubmit();
    }
  });
  el.prompt.addEventListener("input", function () { autoGrow(); updateSendEnabled(); });
  el.stop.addEventListener("click", function () { if (state.controller) state.controller.abort(); });
  el.newChat.addEventListener("click", function () { newChat(); closeSidebar(); });
  el.settingsButton.addEventListener("click", function () {
    el.settings.hidden = !el.settings.hidden;
    el.settingsButton.setAttribute("aria-expanded", String(!el.settings.hidden));
  });
  el.temperature.addEventListener("input", function () {
    el.temperatureValue.textContent = Number(el.temperature.value).toFixed(1);
  });
  el.temperature.addEventListener("change", function () { settingsChanged("temperature"); });
  el.system.addEventListener("change", function () { settingsChanged("system_prompt"); });
  el.model.addEventListener("change", function () { settingsChanged("model"); });
  el.sidebarToggle.addEventListener("click", openSidebar);
  el.sidebarClose.addEventListener("click", closeSidebar);
  el.scrim.addEventListener("click", closeSidebar);
  el.messages.addEventListener("click", function (ev) {
    var button = ev.target.closest(".codeblock .copy");
    if (!button) return;
    var code = button.closest(".codeblock").querySelector("code").textContent;
    copyText(code).then(function () {
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = "Copy"; }, 1200);
    });
  });

  /* The async clipboard API where the browser allows it, else the older selection-based copy. */
  function copyText(text) {
    function legacy() {
      var area = document.createElement("textarea");
      area.value = text;
      area.style.position = "fixed";
      area.style.opacity = "0";
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text).catch(legacy);
    legacy();
    return Promise.resolve();
  }

  /* Who the key belongs to (each user sees only their own conversations); hidden on a server without users. */
  async function loadAccount() {
    var response = await apiFetch("/api/me");
    if (!response.ok) { el.account.hidden = true; return; }
    var me = await response.json();
    el.accountUser.textContent = me.user + (me.role === "admin" ? " (admin)" : "");
    el.accountUser.title = "Signed in as " + me.user;
    el.account.hidden = false;
  }

  /* Another key is another user: start over from a blank page, so nothing of the last user stays on screen. */
  el.switchKey.addEventListener("click", async function () {
    var given = await askForKey("Enter the API key of the user to switch to.");
    if (given) location.replace(location.pathname);
  });

  async function start() {
    applySettingsToForm(loadSettings());
    updateSendEnabled();
    try {
      await loadModels();
      await loadAccount();
      await refreshList();
      var id = location.hash.slice(1);
      if (id) await openConversation(id);
    } catch (e) {
      showBanner(e.message);
    }
    el.app.dataset.ready = "true";
  }

  start();
})();

// The browser client served at "/": a small reference client of the protocol in
// docs/protocol.md, in plain JavaScript with no framework and no build step.
//
// Rules it keeps throughout:
// - User content only ever reaches the page through textContent, never as markup.
// - The token lives in sessionStorage: it survives a reload but not the tab.
// - One socket for everything: the user stream (/api/chat/ws) carries every
//   conversation, so the list, its unread badges and new conversations are live
//   without polling.
// - Every send carries a client_id, and unacknowledged sends are resent after a
//   reconnect with the same client_id, so a resend is never stored twice.
// - After a dropped socket it reconnects and resumes every conversation from the
//   highest seq it saw there, so the events it missed are replayed once, in order,
//   with no gap and no duplicate.
// - The read marker follows what the user has seen: the open conversation, while the
//   tab is visible.
"use strict";

(() => {
  const PAGE_SIZE = 50;
  const CONVERSATIONS_PAGE = 100;
  const EMOJI = ["👍", "❤️", "😂", "🎉"];
  const TYPING_SEND_EVERY_MS = 2500; // at most one typing event per this interval
  const TYPING_SHOW_MS = 4000; // how long "X is typing…" stays without a new one
  const READ_AFTER_MS = 300; // markers go out at most this often
  const RECONNECT_MAX_MS = 10000;

  const byTestId = (id, root = document) => root.querySelector(`[data-testid="${id}"]`);
  const ui = {
    auth: byTestId("auth"),
    authForm: byTestId("auth-form"),
    username: byTestId("auth-username"),
    password: byTestId("auth-password"),
    register: byTestId("auth-register"),
    authError: byTestId("auth-error"),
    chat: byTestId("chat"),
    whoami: byTestId("whoami"),
    me: byTestId("me"),
    logout: byTestId("logout"),
    connection: byTestId("connection"),
    newForm: byTestId("new-conversation"),
    newName: byTestId("new-name"),
    newParticipants: byTestId("new-participants"),
    newError: byTestId("new-error"),
    refresh: byTestId("conversations-refresh"),
    moreConversations: byTestId("conversations-more"),
    conversations: byTestId("conversation-list"),
    roomEmpty: byTestId("room-empty"),
    roomBody: byTestId("room-body"),
    roomTitle: byTestId("room-title"),
    online: byTestId("online-list"),
    older: byTestId("load-older"),
    messages: byTestId("message-list"),
    typing: byTestId("typing"),
    roomError: byTestId("room-error"),
    composer: byTestId("composer"),
    input: byTestId("composer-input"),
    template: document.getElementById("message-template"),
  };

  const state = {
    token: null,
    userId: null,
    username: null,
    conversations: [],
    conversationsCursor: null, // where the next page of the list starts, if there is one
    current: null, // the open conversation: {id, name}
    generation: 0, // bumped on every switch, so late answers for the old one are dropped
    stream: null, // the user stream's socket
    positions: new Map(), // conversation id -> the highest stream position seen there
    unread: new Map(), // conversation id -> unread messages (the badge)
    markers: new Map(), // conversation id -> the user's read marker
    readTimer: null,
    oldestId: null, // the oldest message shown, to page history back from
    retries: 0,
    reconnectTimer: null,
    lastTypingSent: 0,
    names: new Map(), // user id -> username, learned from every event that names one
    online: new Map(), // user id -> "online" | "away"
    typers: new Map(), // user id -> timer that hides their typing notice
    reactions: new Map(), // message id -> Map(emoji -> Set(user id))
    pending: new Map(), // client_id -> {conversation, content}, sent but not yet acknowledged
  };

  // ---- Session ---------------------------------------------------------------

  const SESSION_KEY = "chat.session";
  const CONVERSATION_KEY = "chat.conversation";

  function saveSession() {
    const { token, userId, username } = state;
    sessionStorage.setItem(SESSION_KEY, JSON.stringify({ token, userId, username }));
  }

  function loadSession() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
      if (saved && saved.token) {
        Object.assign(state, { token: saved.token, userId: saved.userId, username: saved.username });
        return true;
      }
    } catch (_) {
      // A damaged entry is the same as none.
    }
    return false;
  }

  // ---- REST ------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // FastAPI-shaped errors: a string detail, or a list of field errors.
  function detailOf(body, status) {
    const detail = body && body.detail;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail.map((e) => `${(e.loc || []).slice(-1)[0] || "input"}: ${e.msg}`).join("; ");
    }
    return `Request failed (${status})`;
  }

  async function api(path, options) {
    return (await apiResponse(path, options)).data;
  }

  // The body and the response's headers (a paged list names its next page in one).
  async function apiResponse(path, { method = "GET", body } = {}) {
    const headers = {};
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      // Not JSON (a proxy's error page): only the status is meaningful.
    }
    if (!response.ok) {
      // A 401 with a token means the token is no longer valid: log in again.
      if (response.status === 401 && state.token) logout("Your session has ended; please log in again.");
      throw new ApiError(response.status, detailOf(data, response.status));
    }
    return { data, headers: response.headers };
  }

  // ---- Logging in and out ----------------------------------------------------

  async function authenticate(register) {
    ui.authError.textContent = "";
    const username = ui.username.value.trim();
    const password = ui.password.value;
    if (!username || !password) {
      ui.authError.textContent = "Enter a username and a password.";
      return;
    }
    try {
      if (register) await api("/api/auth/register", { method: "POST", body: { username, password } });
      const login = await api("/api/auth/login", { method: "POST", body: { username, password } });
      state.token = login.access_token;
      state.userId = login.user_id;
      state.username = username;
      ui.password.value = "";
      await enterChat();
    } catch (e) {
      state.token = null;
      ui.authError.textContent = e.message;
    }
  }

  async function enterChat() {
    const me = await api("/api/auth/me");
    state.userId = me.id;
    state.username = me.username;
    state.names.set(me.id, me.username);
    saveSession();
    ui.me.textContent = me.username;
    ui.auth.hidden = true;
    ui.whoami.hidden = false;
    ui.chat.hidden = false;
    await loadConversations();
    connect();
    // After a reload, reopen the conversation that was open.
    const last = sessionStorage.getItem(CONVERSATION_KEY);
    let found = state.conversations.find((c) => c.id === last);
    if (!found && last) {
      // Further down the list than its first page: ask for it by id.
      found = await api(`/api/chat/conversations/${encodeURIComponent(last)}`).catch(() => null);
    }
    if (found) await openConversation(found);
    else ui.newName.focus();
  }

  function logout(message = "") {
    closeConversation();
    disconnect();
    sessionStorage.removeItem(SESSION_KEY);
    sessionStorage.removeItem(CONVERSATION_KEY);
    Object.assign(state, { token: null, userId: null, username: null, conversations: [], conversationsCursor: null });
    state.names.clear();
    state.positions.clear();
    state.unread.clear();
    state.markers.clear();
    ui.conversations.replaceChildren();
    ui.chat.hidden = true;
    ui.whoami.hidden = true;
    ui.auth.hidden = false;
    ui.authError.textContent = message;
    setConnection("idle", "");
    ui.username.focus();
  }

  // ---- Conversations ---------------------------------------------------------

  // The list comes a page at a time, most recently active first. Reloading fetches the
  // first page again and keeps the further pages already shown below it.
  async function loadConversations() {
    const { data, headers } = await apiResponse(`/api/chat/conversations?limit=${CONVERSATIONS_PAGE}`);
    noteCounts(data);
    const fresh = new Set(data.map((c) => c.id));
    const further = state.conversationsCursor ? state.conversations.filter((c) => !fresh.has(c.id)) : [];
    state.conversations = data.concat(further);
    if (!further.length) state.conversationsCursor = headers.get("X-Next-Cursor");
    renderConversations();
  }

  async function loadMoreConversations() {
    if (!state.conversationsCursor) return;
    const cursor = encodeURIComponent(state.conversationsCursor);
    const { data, headers } = await apiResponse(`/api/chat/conversations?limit=${CONVERSATIONS_PAGE}&cursor=${cursor}`);
    noteCounts(data);
    const shown = new Set(state.conversations.map((c) => c.id));
    state.conversations = state.conversations.concat(data.filter((c) => !shown.has(c.id)));
    state.conversationsCursor = headers.get("X-Next-Cursor");
    renderConversations();
  }

  // The server's unread counts and markers, as the list gives them.
  function noteCounts(items) {
    for (const c of items) {
      if (Number.isInteger(c.unread_count)) state.unread.set(c.id, c.unread_count);
      if (Number.isInteger(c.last_read_seq)) state.markers.set(c.id, c.last_read_seq);
    }
  }

  function renderConversations() {
    const items = state.conversations.map((c) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.testid = "conversation-item";
      button.dataset.id = c.id;
      button.textContent = c.name || "(no name)";
      if (state.current && state.current.id === c.id) button.setAttribute("aria-current", "true");
      button.addEventListener("click", () => openConversation(c));
      const unread = state.unread.get(c.id) || 0;
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.dataset.testid = "unread-badge";
      badge.dataset.id = c.id;
      badge.hidden = unread === 0;
      badge.textContent = unread >= 100 ? "99+" : String(unread);
      badge.setAttribute("aria-label", `${unread} unread`);
      li.append(button, badge);
      return li;
    });
    ui.conversations.replaceChildren(...items);
    ui.moreConversations.hidden = !state.conversationsCursor;
  }

  // Participants are named by username; the API wants ids, so each name is looked up.
  async function createConversation() {
    ui.newError.textContent = "";
    const name = ui.newName.value.trim();
    if (!name) {
      ui.newError.textContent = "Give the conversation a name.";
      return;
    }
    const usernames = ui.newParticipants.value
      .split(",")
      .map((s) => s.trim())
      .filter((s) => s && s !== state.username);
    try {
      const ids = [];
      for (const username of new Set(usernames)) {
        const found = await api(`/api/users?username=${encodeURIComponent(username)}`);
        if (!found.length) throw new Error(`No user named ${username}`);
        state.names.set(found[0].id, found[0].username);
        ids.push(found[0].id);
      }
      const conversation = await api("/api/chat/conversations", {
        method: "POST",
        body: { name, description: "", is_group: ids.length !== 1, participant_ids: ids },
      });
      ui.newForm.reset();
      await loadConversations();
      await openConversation(conversation);
    } catch (e) {
      ui.newError.textContent = e.message;
    }
  }

  function closeConversation() {
    state.generation += 1;
    clearTimeout(state.readTimer);
    state.current = null;
    state.oldestId = null;
    state.online.clear();
    state.reactions.clear();
    state.pending.clear();
    for (const timer of state.typers.values()) clearTimeout(timer);
    state.typers.clear();
    ui.messages.replaceChildren();
    ui.online.replaceChildren();
    ui.typing.textContent = "";
    ui.roomError.textContent = "";
    ui.roomBody.hidden = true;
    ui.roomEmpty.hidden = false;
  }

  async function openConversation(conversation) {
    closeConversation();
    const generation = state.generation;
    state.current = { id: conversation.id, name: conversation.name };
    sessionStorage.setItem(CONVERSATION_KEY, conversation.id);
    renderConversations();
    ui.roomTitle.textContent = conversation.name || "(no name)";
    ui.roomEmpty.hidden = true;
    ui.roomBody.hidden = false;
    let page;
    try {
      page = await api(`/api/chat/conversations/${encodeURIComponent(conversation.id)}/messages?limit=${PAGE_SIZE}`);
    } catch (e) {
      if (generation === state.generation) ui.roomError.textContent = e.message;
      return;
    }
    if (generation !== state.generation) return; // another conversation was opened meanwhile
    for (const m of page) showMessage(fromHistory(m));
    state.oldestId = page.length ? page[0].id : null;
    ui.older.hidden = page.length < PAGE_SIZE;
    scrollToEnd();
    ui.input.focus();
    const last = page.length ? page[page.length - 1].seq : 0;
    state.positions.set(conversation.id, Math.max(state.positions.get(conversation.id) || 0, last));
    markReadSoon();
    loadOnline(conversation.id, generation).catch(() => {});
  }

  // Who is connected, when the conversation opens; joins and leaves keep it current.
  async function loadOnline(id, generation) {
    const page = await api(`/api/chat/conversations/${encodeURIComponent(id)}/presence?limit=100`);
    if (generation !== state.generation) return;
    for (const u of page.users) {
      state.names.set(u.id, u.username);
      if (!state.online.has(u.id)) state.online.set(u.id, "online");
    }
    renderOnline();
  }

  async function loadOlder() {
    if (!state.current || !state.oldestId) return;
    const generation = state.generation;
    const id = encodeURIComponent(state.current.id);
    const page = await api(`/api/chat/conversations/${id}/messages?limit=${PAGE_SIZE}&before=${encodeURIComponent(state.oldestId)}`);
    if (generation !== state.generation) return;
    const keep = ui.messages.scrollHeight - ui.messages.scrollTop;
    for (const m of page) showMessage(fromHistory(m));
    ui.messages.scrollTop = ui.messages.scrollHeight - keep; // stay where the reader was
    if (page.length) state.oldestId = page[0].id;
    ui.older.hidden = page.length < PAGE_SIZE;
  }

  // A history entry in the shape of a live `message` event; its reactions are noted.
  function fromHistory(m) {
    const byEmoji = new Map((m.reactions || []).map((r) => [r.emoji, new Set(r.user_ids)]));
    if (byEmoji.size) state.reactions.set(m.id, byEmoji);
    return {
      message_id: m.id,
      sender_id: m.sender_id,
      sender_username: m.sender_username,
      content: m.content,
      is_edited: m.is_edited,
      timestamp: m.created_at,
      seq: m.seq,
    };
  }

  // ---- The socket ------------------------------------------------------------

  function setConnection(stateName, text, since) {
    ui.connection.dataset.state = stateName;
    ui.connection.textContent = text;
    if (since !== undefined) ui.connection.dataset.since = String(since);
  }

  function connect() {
    if (!state.token) return;
    clearTimeout(state.reconnectTimer);
    // Same scheme family as the page: wss: under https:, ws: under http:.
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/api/chat/ws?token=${encodeURIComponent(state.token)}`);
    state.stream = ws;
    setConnection("connecting", "Connecting…");
    ws.addEventListener("message", (e) => {
      if (state.stream !== ws) return;
      let event;
      try {
        event = JSON.parse(e.data);
      } catch (_) {
        return;
      }
      onStreamEvent(event, ws);
    });
    ws.addEventListener("close", (e) => {
      if (state.stream !== ws) return; // closed on purpose, or replaced
      state.stream = null;
      onClosed(e);
    });
  }

  function disconnect() {
    clearTimeout(state.reconnectTimer);
    const ws = state.stream;
    state.stream = null; // first, so its close event is ignored
    if (ws) ws.close(1000);
  }

  // The stream's first event: resume every conversation from the highest position
  // seen there (one never seen here: from where it stands now), then resend what was
  // not acknowledged.
  function onReady(event, ws) {
    const positions = {};
    for (const [id, seq] of Object.entries(event.positions || {})) {
      if (!state.positions.has(id)) state.positions.set(id, seq);
      positions[id] = state.positions.get(id);
    }
    ws.send(JSON.stringify({ type: "resume", positions }));
    const since = state.current ? positions[state.current.id] : undefined;
    state.retries = 0;
    setConnection("open", "Connected", since);
    noteCounts(event.conversations || []);
    const listed = new Set(state.conversations.map((c) => c.id));
    const fresh = (event.conversations || []).filter((c) => !listed.has(c.id));
    state.conversations = fresh.concat(state.conversations);
    renderConversations();
    // Whatever was sent but not acknowledged goes again, with the same client_id:
    // the server stores each client_id once and answers a repeat with the original.
    for (const [clientId, p] of state.pending) {
      ws.send(JSON.stringify({ type: "message", conversation_id: p.conversation, content: p.content, client_id: clientId }));
    }
  }

  function onStreamEvent(event, ws) {
    const id = event.conversation_id;
    // System events carry where the stream stood, not an event of it.
    if (id && event.type !== "system" && Number.isInteger(event.seq)) {
      state.positions.set(id, Math.max(state.positions.get(id) || 0, event.seq));
    }
    if (event.sender_id && event.sender_username) state.names.set(event.sender_id, event.sender_username);
    switch (event.type) {
      case "ready":
        onReady(event, ws);
        return;
      case "conversation":
        onInbox(event);
        return;
      case "read":
        onMarker(event);
        return;
      case "error":
        onError(event);
        return;
      default:
        break;
    }
    if (state.current && id === state.current.id) {
      handleEvent(event);
      if (event.type === "message" && event.sender_id !== state.userId) markReadSoon();
    } else if (event.type === "message" && id) {
      if (!event.is_deleted && event.sender_id !== state.userId) {
        state.unread.set(id, (state.unread.get(id) || 0) + 1);
      }
      toTop(id);
      renderConversations();
    }
  }

  // A conversation with news moves to the top of the list, as the server orders it.
  function toTop(id) {
    const at = state.conversations.findIndex((c) => c.id === id);
    if (at > 0) state.conversations.unshift(...state.conversations.splice(at, 1));
  }

  // Added to a conversation (or one created with us): it appears at the top. Removed:
  // it goes, and so does its room if it was open.
  function onInbox(event) {
    const c = event.conversation || {};
    if (event.action === "added" && c.id) {
      if (!state.conversations.some((other) => other.id === c.id)) state.conversations.unshift(c);
      renderConversations();
    } else if (event.action === "removed" && c.id) {
      state.conversations = state.conversations.filter((other) => other.id !== c.id);
      state.unread.delete(c.id);
      state.positions.delete(c.id);
      if (state.current && state.current.id === c.id) {
        closeConversation();
        sessionStorage.removeItem(CONVERSATION_KEY);
        setConnection("open", "You were removed from that conversation.");
      }
      renderConversations();
    }
  }

  // Our marker moved, here or on another device: everything up to it is read.
  function onMarker(event) {
    const id = event.conversation_id;
    state.markers.set(id, Math.max(state.markers.get(id) || 0, event.seq));
    if (event.seq >= (state.positions.get(id) || 0)) state.unread.set(id, 0);
    renderConversations();
  }

  // The open conversation is read up to what it shows, while the tab is visible; at
  // most one marker per READ_AFTER_MS.
  function markReadSoon() {
    if (!state.current) return;
    const id = state.current.id;
    state.unread.set(id, 0);
    renderConversations();
    clearTimeout(state.readTimer);
    state.readTimer = setTimeout(() => {
      const seq = state.positions.get(id) || 0;
      if (document.visibilityState === "hidden" || !state.current || state.current.id !== id) return;
      if (seq > (state.markers.get(id) || 0)) send({ type: "read", seq });
    }, READ_AFTER_MS);
  }

  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") markReadSoon();
  });

  function onClosed(e) {
    state.online.clear();
    renderOnline();
    if (e.code === 1008) {
      // A policy close: retrying with the same token cannot help.
      logout("Your session has ended; please log in again.");
      return;
    }
    if (e.code === 1002 || e.code === 1007) {
      setConnection("offline", `Disconnected: ${e.reason || "protocol error"}`);
      return; // a client bug: reconnecting would only repeat it
    }
    // 1013: this client fell too far behind. Resuming from the same positions would
    // only queue the same backlog again, so after the backoff every conversation
    // starts from where it stands, and the open one is read afresh from its latest
    // page (older messages stay a click away).
    scheduleReconnect(e.code === 1013);
  }

  // Exponential backoff with jitter, so a restarted server is not hit by every
  // client at the same instant.
  function scheduleReconnect(resync = false) {
    const delay = Math.min(RECONNECT_MAX_MS, 500 * 2 ** state.retries) * (0.5 + Math.random() / 2);
    state.retries += 1;
    setConnection("offline", `Offline, reconnecting in ${Math.ceil(delay / 1000)} s…`);
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = setTimeout(() => {
      if (resync) {
        state.positions.clear();
        const current = state.current;
        if (current) openConversation(current);
      }
      connect();
    }, delay);
  }

  // Back online: no need to wait for the backoff.
  window.addEventListener("online", () => {
    if (state.token && !state.stream) connect();
  });

  // Sends an event of the open conversation.
  function send(event) {
    if (!state.stream || state.stream.readyState !== WebSocket.OPEN || !state.current) {
      ui.roomError.textContent = "Not connected; try again in a moment.";
      return false;
    }
    state.stream.send(JSON.stringify({ ...event, conversation_id: state.current.id }));
    return true;
  }

  function handleEvent(event) {
    switch (event.type) {
      case "message":
        if (event.is_deleted) {
          // Replayed in its place but deleted since: it settles a pending send of
          // ours, and there is nothing to show.
          showMessage(event);
          deleteMessage(event.message_id);
          break;
        }
        stopTyping(event.sender_id);
        showMessage(event);
        break;
      case "edit":
        if (!event.is_deleted) editMessage(event.message_id, event.content);
        break;
      case "delete":
        deleteMessage(event.message_id);
        break;
      case "reaction":
        react(event);
        break;
      case "typing":
        if (event.sender_id !== state.userId) startTyping(event.sender_id);
        break;
      case "presence":
        if (event.status === "offline") state.online.delete(event.sender_id);
        else state.online.set(event.sender_id, event.status);
        renderOnline();
        break;
      case "system":
        onSystem(event);
        break;
      case "resync":
        onResync();
        break;
      default:
        break; // receipts: nothing to show
    }
  }

  function onSystem(event) {
    // "User alice joined the conversation": the only place a joiner's name is given.
    const said = /^User (.+) (joined|left) the conversation$/.exec(event.content || "");
    if (said && event.sender_id) state.names.set(event.sender_id, said[1]);
    if (Array.isArray(event.active_users)) {
      const before = state.online;
      state.online = new Map(event.active_users.map((id) => [id, before.get(id) || "online"]));
    }
    if (said && said[2] === "joined") {
      if (event.sender_id !== state.userId && Array.isArray(event.active_users)) {
        // A newcomer knows only ids: saying we are here tells it our name and status.
        // Only in a room within the presence list limit: above it every member
        // answering every join would cost the room O(members^2) per join.
        send({ type: "presence", status: "online" });
      }
    }
    if (said && said[2] === "left") stopTyping(event.sender_id);
    renderOnline();
  }

  // The replay could not reach back far enough: older events are gone from it, so
  // history is read again over REST and merged (reactions before the gap are lost).
  async function onResync() {
    if (!state.current) return;
    const generation = state.generation;
    try {
      const page = await api(`/api/chat/conversations/${encodeURIComponent(state.current.id)}/messages?limit=${PAGE_SIZE}`);
      if (generation !== state.generation) return;
      for (const m of page) showMessage(fromHistory(m));
    } catch (e) {
      ui.roomError.textContent = e.message;
    }
  }

  function onError(event) {
    ui.roomError.textContent = event.detail || "Error";
    // The commit may or may not have happened; the same client_id makes a resend safe.
    if (/resend with the same client_id/.test(event.detail || "")) {
      setTimeout(() => {
        for (const [clientId, p] of state.pending) {
          if (state.stream && state.stream.readyState === WebSocket.OPEN) {
            state.stream.send(JSON.stringify({ type: "message", conversation_id: p.conversation, content: p.content, client_id: clientId }));
          }
        }
      }, 1000);
    }
  }

  // ---- Messages --------------------------------------------------------------

  function messageElement(id) {
    return [...ui.messages.children].find((li) => li.dataset.id === id) || null;
  }

  function pendingElement(clientId) {
    return [...ui.messages.children].find((li) => li.dataset.clientId === clientId && li.dataset.pending === "true") || null;
  }

  function nearEnd() {
    const list = ui.messages;
    return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  }

  function scrollToEnd() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function newMessageElement() {
    const li = ui.template.content.firstElementChild.cloneNode(true);
    byTestId("message-edit", li).addEventListener("click", () => startEdit(li));
    byTestId("message-delete", li).addEventListener("click", () => {
      send({ type: "delete", message_id: li.dataset.id });
    });
    byTestId("edit-cancel", li).addEventListener("click", () => stopEdit(li));
    byTestId("edit-form", li).addEventListener("submit", (e) => {
      e.preventDefault();
      const content = byTestId("edit-input", li).value;
      if (!content.trim()) return;
      if (send({ type: "edit", message_id: li.dataset.id, content })) stopEdit(li);
    });
    return li;
  }

  // Messages are kept in stream order (seq); unacknowledged ones stay at the end.
  function place(li) {
    const seq = Number(li.dataset.seq);
    const next = [...ui.messages.children].find(
      (other) => other !== li && (other.dataset.pending === "true" || Number(other.dataset.seq) > seq),
    );
    ui.messages.insertBefore(li, next || null);
  }

  // Shows a message event (live, replayed or from history); the same message twice
  // (by id, or an acknowledgement by client_id) updates the one element.
  function showMessage(m) {
    const stick = nearEnd();
    let li = messageElement(m.message_id);
    if (!li && m.client_id && m.sender_id === state.userId) {
      li = pendingElement(m.client_id);
      state.pending.delete(m.client_id);
    }
    const isNew = !li;
    if (isNew) li = newMessageElement();
    const mine = m.sender_id === state.userId;
    li.dataset.id = m.message_id;
    li.dataset.seq = String(m.seq);
    li.dataset.pending = "false";
    if (m.client_id) li.dataset.clientId = m.client_id;
    li.classList.toggle("mine", mine);
    byTestId("message-author", li).textContent = m.sender_username || state.names.get(m.sender_id) || "someone";
    const time = byTestId("message-time", li);
    time.dateTime = m.timestamp;
    time.textContent = new Date(m.timestamp).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    byTestId("message-content", li).textContent = m.content;
    byTestId("message-edited", li).hidden = !m.is_edited;
    byTestId("message-pending", li).hidden = true;
    li.querySelector(".own-actions").hidden = !mine;
    renderReactions(li);
    place(li);
    if (stick || (isNew && mine)) scrollToEnd();
  }

  function showPending(clientId, content) {
    const li = newMessageElement();
    li.dataset.pending = "true";
    li.dataset.clientId = clientId;
    li.classList.add("mine");
    byTestId("message-author", li).textContent = state.username;
    byTestId("message-content", li).textContent = content;
    byTestId("message-pending", li).hidden = false;
    ui.messages.append(li);
    scrollToEnd();
  }

  function editMessage(id, content) {
    const li = messageElement(id);
    if (!li) return;
    byTestId("message-content", li).textContent = content;
    byTestId("message-edited", li).hidden = false;
  }

  function deleteMessage(id) {
    state.reactions.delete(id);
    const li = messageElement(id);
    if (li) li.remove();
  }

  function startEdit(li) {
    const input = byTestId("edit-input", li);
    input.value = byTestId("message-content", li).textContent;
    byTestId("edit-form", li).hidden = false;
    byTestId("message-content", li).hidden = true;
    input.focus();
  }

  function stopEdit(li) {
    byTestId("edit-form", li).hidden = true;
    byTestId("message-content", li).hidden = false;
  }

  // A unique id per send. crypto.getRandomValues works on plain http too, unlike
  // crypto.randomUUID, which needs a secure context.
  function newClientId() {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function sendMessage() {
    const content = ui.input.value;
    if (!content.trim() || !state.current) return;
    const clientId = newClientId();
    const conversation = state.current.id;
    state.pending.set(clientId, { conversation, content });
    showPending(clientId, content);
    ui.input.value = "";
    ui.roomError.textContent = "";
    // Offline, it waits in `pending` and goes out when the socket is back.
    if (state.stream && state.stream.readyState === WebSocket.OPEN) {
      state.stream.send(JSON.stringify({ type: "message", conversation_id: conversation, content, client_id: clientId }));
    }
  }

  // ---- Reactions -------------------------------------------------------------

  function react(event) {
    let byEmoji = state.reactions.get(event.message_id);
    if (!byEmoji) state.reactions.set(event.message_id, (byEmoji = new Map()));
    let users = byEmoji.get(event.emoji);
    if (!users) byEmoji.set(event.emoji, (users = new Set()));
    if (event.action === "removed") users.delete(event.sender_id);
    else users.add(event.sender_id);
    const li = messageElement(event.message_id);
    if (li) renderReactions(li);
  }

  // The reactions given so far (with counts), and a picker to add one of EMOJI. A
  // click on either toggles the caller's reaction; the page changes only when the
  // server's broadcast comes back.
  function renderReactions(li) {
    const byEmoji = state.reactions.get(li.dataset.id) || new Map();
    const toggle = (emoji) => send({ type: "reaction", message_id: li.dataset.id, emoji });
    const given = [...byEmoji].filter(([, users]) => users.size > 0);
    byTestId("reactions", li).replaceChildren(
      ...given.map(([emoji, users]) => {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "reaction";
        button.dataset.testid = "reaction";
        button.dataset.emoji = emoji;
        button.dataset.count = String(users.size);
        button.setAttribute("aria-pressed", String(users.has(state.userId)));
        const who = [...users].map((id) => state.names.get(id) || "someone").join(", ");
        button.title = `${emoji} by ${who}`;
        button.setAttribute("aria-label", `${emoji} ${users.size}, by ${who}`);
        button.textContent = `${emoji} ${users.size}`;
        button.addEventListener("click", () => toggle(emoji));
        return button;
      }),
    );
    byTestId("reaction-picker", li).replaceChildren(
      ...EMOJI.map((emoji) => {
        const button = document.createElement("button");
        button.type = "button";
        button.dataset.testid = "reaction-add";
        button.dataset.emoji = emoji;
        button.title = `React with ${emoji}`;
        button.setAttribute("aria-label", `React with ${emoji}`);
        button.textContent = emoji;
        button.addEventListener("click", () => toggle(emoji));
        return button;
      }),
    );
  }

  // ---- Typing and presence ---------------------------------------------------

  function startTyping(userId) {
    clearTimeout(state.typers.get(userId));
    state.typers.set(userId, setTimeout(() => stopTyping(userId), TYPING_SHOW_MS));
    renderTyping();
  }

  function stopTyping(userId) {
    if (!state.typers.has(userId)) return;
    clearTimeout(state.typers.get(userId));
    state.typers.delete(userId);
    renderTyping();
  }

  function renderTyping() {
    const names = [...state.typers.keys()].map((id) => state.names.get(id) || "Someone");
    let text = "";
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = `${names.length} people are typing…`;
    ui.typing.textContent = text;
  }

  function renderOnline() {
    const entries = [...state.online].map(([id, status]) => ({
      id,
      status,
      name: state.names.get(id) || `user ${id.slice(0, 8)}`,
    }));
    entries.sort((a, b) => a.name.localeCompare(b.name));
    ui.online.replaceChildren(
      ...entries.map(({ id, status, name }) => {
        const li = document.createElement("li");
        li.dataset.testid = "online-user";
        li.dataset.userId = id;
        li.dataset.status = status;
        li.textContent = status === "online" ? name : `${name} (${status})`;
        return li;
      }),
    );
  }

  // ---- Wiring ----------------------------------------------------------------

  ui.authForm.addEventListener("submit", (e) => {
    e.preventDefault();
    authenticate(false);
  });
  ui.register.addEventListener("click", () => authenticate(true));
  ui.logout.addEventListener("click", () => logout());
  ui.newForm.addEventListener("submit", (e) => {
    e.preventDefault();
    createConversation();
  });
  ui.refresh.addEventListener("click", () => loadConversations().catch((e) => (ui.newError.textContent = e.message)));
  ui.moreConversations.addEventListener("click", () =>
    loadMoreConversations().catch((e) => (ui.newError.textContent = e.message)),
  );
  ui.older.addEventListener("click", () => loadOlder().catch((e) => (ui.roomError.textContent = e.message)));
  ui.composer.addEventListener("submit", (e) => {
    e.preventDefault();
    sendMessage();
  });
  ui.input.addEventListener("input", () => {
    // Typing is never stored; one event every few seconds keeps others' notice alive.
    const now = Date.now();
    if (ui.input.value && now - state.lastTypingSent > TYPING_SEND_EVERY_MS && state.stream && state.stream.readyState === WebSocket.OPEN && state.current) {
      state.lastTypingSent = now;
      send({ type: "typing" });
    }
  });

  if (loadSession()) {
    enterChat().catch(() => logout());
  } else {
    ui.username.focus();
  }
})();

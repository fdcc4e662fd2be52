// The user stream: the one WebSocket (/api/chat/ws) that carries every conversation of
// the user. This module opens it, resumes it after a drop, keeps it authenticated, and
// hands each event to the part of the page it concerns.
//
// - After a dropped socket it reconnects (exponential backoff with jitter) and resumes
//   every conversation from the highest seq it saw there, so the events it missed are
//   replayed once, in order, with no gap and no duplicate.
// - Every send carries a client_id, and unacknowledged sends are resent after a
//   reconnect with the same client_id, so a resend is never stored twice.
// - When session.js renews the access token, the open socket gets it in-band
//   (`{"type":"auth"}`) and stays open past the old token's `exp`; a socket that was
//   still starting gets it right after its `resume`, which must be its first event.

import { state, ui } from "./shared.js?v={{version}}";
import { accessToken, fresh, onTokenRenewed, refresh, sessionEnded, signedIn } from "./session.js?v={{version}}";
import {
  bumpUnread,
  markReadSoon,
  mergeReady,
  onInbox,
  onMarker,
  openConversation,
} from "./conversations.js?v={{version}}";
import { handleEvent, renderOnline } from "./messages.js?v={{version}}";
import { onRole } from "./manage.js?v={{version}}";

const RECONNECT_MAX_MS = 10000;

let retries = 0;
let reconnectTimer = null;
let connecting = false; // waiting for a token renewal before opening
const started = new WeakSet(); // sockets whose first event (`resume`) has gone out

export function setConnection(stateName, text, since) {
  ui.connection.dataset.state = stateName;
  ui.connection.textContent = text;
  if (since !== undefined) ui.connection.dataset.since = String(since);
}

export async function connect() {
  if (connecting || state.stream || !signedIn()) return;
  clearTimeout(reconnectTimer);
  connecting = true;
  try {
    await fresh(); // a socket opened with a token about to expire would not last
  } finally {
    connecting = false;
  }
  const token = accessToken();
  if (!token || state.stream) return;
  // Same scheme family as the page: wss: under https:, ws: under http:.
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/api/chat/ws?token=${encodeURIComponent(token)}`);
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
    onStreamEvent(event, ws, token);
  });
  ws.addEventListener("close", (e) => {
    if (state.stream !== ws) return; // closed on purpose, or replaced
    state.stream = null;
    onClosed(e);
  });
}

export function disconnect() {
  clearTimeout(reconnectTimer);
  const ws = state.stream;
  state.stream = null; // first, so its close event is ignored
  if (ws) ws.close(1000);
}

const isOpen = (ws) => ws && ws.readyState === WebSocket.OPEN;
// Open and resumed: anything sent before the `resume` would start the stream live.
export const canSend = () => isOpen(state.stream) && started.has(state.stream);

// Sends an event of the open conversation.
export function send(event) {
  if (!canSend() || !state.current) {
    ui.roomError.textContent = "Not connected; try again in a moment.";
    return false;
  }
  state.stream.send(JSON.stringify({ ...event, conversation_id: state.current.id }));
  return true;
}

// Sends a message (new, or again with the same client_id); offline it waits in
// `state.pending` and goes out when the socket is back.
export function sendMessage(conversation, content, clientId) {
  const ws = state.stream;
  if (isOpen(ws) && started.has(ws)) {
    ws.send(JSON.stringify({ type: "message", conversation_id: conversation, content, client_id: clientId }));
  }
}


onTokenRenewed((token) => {
  const ws = state.stream;
  if (isOpen(ws) && started.has(ws)) ws.send(JSON.stringify({ type: "auth", token }));
});

// The stream's first event: resume every conversation from the highest position
// seen there (one never seen here: from where it stands now), then resend what was
// not acknowledged.
function onReady(event, ws, token) {
  const positions = {};
  for (const [id, seq] of Object.entries(event.positions || {})) {
    if (!state.positions.has(id)) state.positions.set(id, seq);
    positions[id] = state.positions.get(id);
  }
  ws.send(JSON.stringify({ type: "resume", positions }));
  started.add(ws);
  // Renewed while the socket was opening: it was opened with the old token.
  if (accessToken() && accessToken() !== token) ws.send(JSON.stringify({ type: "auth", token: accessToken() }));
  const since = state.current ? positions[state.current.id] : undefined;
  retries = 0;
  setConnection("open", "Connected", since);
  mergeReady(event.conversations || []);
  // Whatever was sent but not acknowledged goes again, with the same client_id:
  // the server stores each client_id once and answers a repeat with the original.
  for (const [clientId, p] of state.pending) sendMessage(p.conversation, p.content, clientId);
}

function onStreamEvent(event, ws, token) {
  const id = event.conversation_id;
  // System events carry where the stream stood, not an event of it.
  if (id && event.type !== "system" && Number.isInteger(event.seq)) {
    state.positions.set(id, Math.max(state.positions.get(id) || 0, event.seq));
  }
  if (event.sender_id && event.sender_username) state.names.set(event.sender_id, event.sender_username);
  switch (event.type) {
    case "ready":
      onReady(event, ws, token);
      return;
    case "conversation":
      onInbox(event);
      return;
    case "role":
      onRole(event);
      return;
    case "read":
      onMarker(event);
      return;
    case "error":
      onError(event);
      return;
    case "auth":
      return; // the renewed token was taken: the socket lives on
    default:
      break;
  }
  if (state.current && id === state.current.id) {
    handleEvent(event);
    if (event.type === "message" && event.sender_id !== state.userId) markReadSoon();
  } else if (event.type === "message" && id) {
    bumpUnread(id, !event.is_deleted && event.sender_id !== state.userId);
  }
}

function onError(event) {
  ui.roomError.textContent = event.detail || "Error";
  // The commit may or may not have happened; the same client_id makes a resend safe.
  if (/resend with the same client_id/.test(event.detail || "")) {
    setTimeout(() => {
      for (const [clientId, p] of state.pending) sendMessage(p.conversation, p.content, clientId);
    }, 1000);
  }
}

function onClosed(e) {
  state.online.clear();
  renderOnline();
  if (e.code === 1008) {
    if (e.reason === "Session ended") {
      // Logged out here or elsewhere, or "log out everywhere" from another device.
      sessionEnded();
    } else if (e.reason === "Too many connections" || e.reason === "Too many events") {
      scheduleReconnect(); // the backoff is the remedy
    } else {
      // "Token expired" (a renewal timer that fired late: the tab or laptop slept) or
      // "Invalid token": a renewed token lets it back in; a refused renewal ends the
      // session and shows the login screen.
      refresh().then(
        () => scheduleReconnect(),
        () => signedIn() && scheduleReconnect(),
      );
    }
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
  const delay = Math.min(RECONNECT_MAX_MS, 500 * 2 ** retries) * (0.5 + Math.random() / 2);
  retries += 1;
  setConnection("offline", `Offline, reconnecting in ${Math.ceil(delay / 1000)} s…`);
  clearTimeout(reconnectTimer);
  reconnectTimer = setTimeout(() => {
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
  if (signedIn() && !state.stream) connect();
});

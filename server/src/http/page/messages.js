// The open conversation's messages: history (the latest page, older pages on demand),
// live events (messages, edits, deletes, reactions, typing, presence), the composer,
// and who is online. The conversation itself (which one is open, its name, its
// members) belongs to conversations.js and manage.js.
//
// - Messages are kept in stream order (seq); a send shows at once as pending and is
//   settled by the server's own `message` event for it (matched by client_id).
// - Nothing is changed on a click alone: reactions, edits and deletes show when the
//   server's broadcast of them comes back.

import { byTestId, state, ui } from "./shared.js?v={{version}}";
import { api } from "./session.js?v={{version}}";
import { canSend, send, sendMessage } from "./stream.js?v={{version}}";

const PAGE_SIZE = 50;
const EMOJI = ["👍", "❤️", "😂", "🎉"];
const TYPING_SEND_EVERY_MS = 2500; // at most one typing event per this interval
const TYPING_SHOW_MS = 4000; // how long "X is typing…" stays without a new one

const template = document.getElementById("message-template");
let lastTypingSent = 0;

// Empties the room when another conversation opens (or none).
export function resetRoom() {
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
}

// ---- History -------------------------------------------------------------------

const messagesPath = (id) => `/api/chat/conversations/${encodeURIComponent(id)}/messages?limit=${PAGE_SIZE}`;

// The latest page of the conversation just opened; false when it could not be read
// (or another conversation was opened meanwhile).
export async function loadLatest(id, generation) {
  let page;
  try {
    page = await api(messagesPath(id));
  } catch (e) {
    if (generation === state.generation) ui.roomError.textContent = e.message;
    return false;
  }
  if (generation !== state.generation) return false;
  for (const m of page) showMessage(fromHistory(m));
  state.oldestId = page.length ? page[0].id : null;
  ui.older.hidden = page.length < PAGE_SIZE;
  scrollToEnd();
  const last = page.length ? page[page.length - 1].seq : 0;
  state.positions.set(id, Math.max(state.positions.get(id) || 0, last));
  return true;
}

async function loadOlder() {
  if (!state.current || !state.oldestId) return;
  const generation = state.generation;
  const page = await api(`${messagesPath(state.current.id)}&before=${encodeURIComponent(state.oldestId)}`);
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

// Who is connected, when the conversation opens; joins and leaves keep it current.
export async function loadOnline(id, generation) {
  const page = await api(`/api/chat/conversations/${encodeURIComponent(id)}/presence?limit=100`);
  if (generation !== state.generation) return;
  for (const u of page.users) {
    state.names.set(u.id, u.username);
    if (!state.online.has(u.id)) state.online.set(u.id, "online");
  }
  renderOnline();
}

// ---- Live events ---------------------------------------------------------------

// An event of the open conversation.
export function handleEvent(event) {
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
    const page = await api(messagesPath(state.current.id));
    if (generation !== state.generation) return;
    for (const m of page) showMessage(fromHistory(m));
  } catch (e) {
    ui.roomError.textContent = e.message;
  }
}

// ---- Messages ------------------------------------------------------------------

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
  const li = template.content.firstElementChild.cloneNode(true);
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
  // Only the sender edits; admins and owners may delete anyone's message too, which
  // the stylesheet shows by the room's data-moderator (it changes with `role` events).
  byTestId("message-edit", li).hidden = !mine;
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

function compose() {
  const content = ui.input.value;
  if (!content.trim() || !state.current || ui.input.disabled) return;
  const clientId = newClientId();
  const conversation = state.current.id;
  state.pending.set(clientId, { conversation, content });
  showPending(clientId, content);
  ui.input.value = "";
  ui.roomError.textContent = "";
  sendMessage(conversation, content, clientId);
}

// ---- Reactions -----------------------------------------------------------------

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

// ---- Typing and presence -------------------------------------------------------

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

export function renderOnline() {
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

// ---- Wiring --------------------------------------------------------------------

ui.older.addEventListener("click", () => loadOlder().catch((e) => (ui.roomError.textContent = e.message)));
ui.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  compose();
});
ui.input.addEventListener("input", () => {
  // Typing is never stored; one event every few seconds keeps others' notice alive.
  const now = Date.now();
  if (ui.input.value && now - lastTypingSent > TYPING_SEND_EVERY_MS && canSend() && state.current) {
    lastTypingSent = now;
    send({ type: "typing" });
  }
});

// The conversation list and the way into a conversation: the list (paged, with
// unread badges and read markers), the inbox events that change it live (added,
// removed, deleted, updated), opening and closing a conversation, and starting one: a
// group from the "New group" form, or a direct message from the username search.

import { CONVERSATION_KEY, byTestId, showError, state, titleOf, ui } from "./shared.js?v={{version}}";
import { api, apiResponse } from "./session.js?v={{version}}";
import { userSearch } from "./search.js?v={{version}}";
import { send } from "./stream.js?v={{version}}";
import { loadLatest, loadOnline, resetRoom } from "./messages.js?v={{version}}";
import { renderRoom, resetPanel, roomOpened } from "./manage.js?v={{version}}";

const CONVERSATIONS_PAGE = 100;
const READ_AFTER_MS = 300; // markers go out at most this often
const PLACEHOLDER = "Pick a conversation, or start one.";

const els = {
  refresh: byTestId("conversations-refresh"),
  dmStart: byTestId("dm-start"),
  dmPanel: byTestId("dm-panel"),
  dmSearch: byTestId("dm-search"),
  dmResults: byTestId("dm-results"),
  dmError: byTestId("dm-error"),
  groupStart: byTestId("group-start"),
  newForm: byTestId("new-conversation"),
  newName: byTestId("new-name"),
  newParticipants: byTestId("new-participants"),
  newPicked: byTestId("new-picked"),
  newSuggestions: byTestId("new-suggestions"),
};

let readTimer = null;
const askedPeers = new Set(); // direct conversations whose other person was asked for
const picked = new Map(); // the new group's participants picked so far: id -> username

// ---- The list ----------------------------------------------------------------

// The list comes a page at a time, most recently active first. Reloading fetches the
// first page again and keeps the further pages already shown below it.
export async function loadConversations() {
  const { data, headers } = await apiResponse(`/api/chat/conversations?limit=${CONVERSATIONS_PAGE}`);
  noteCounts(data);
  const fresh = new Set(data.map((c) => c.id));
  const further = state.conversationsCursor ? state.conversations.filter((c) => !fresh.has(c.id)) : [];
  state.conversations = data.concat(further);
  if (!further.length) state.conversationsCursor = headers.get("X-Next-Cursor");
  adoptCurrent();
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
  adoptCurrent();
  renderConversations();
}

// The open conversation's entry is the list's own, so that what changes one (a
// rename, a role) changes the other; a fresher list item replaces the old object.
function adoptCurrent() {
  if (!state.current) return;
  const listed = state.conversations.find((c) => c.id === state.current.id);
  if (listed && listed !== state.current) {
    state.current = Object.assign(listed, { role: listed.role || state.current.role });
    renderRoom();
  }
}

// The server's unread counts and markers, as the list gives them.
function noteCounts(items) {
  for (const c of items) {
    if (Number.isInteger(c.unread_count)) state.unread.set(c.id, c.unread_count);
    if (Number.isInteger(c.last_read_seq)) state.markers.set(c.id, c.last_read_seq);
  }
}

// The `ready` event's first page: counts, and any conversation not listed yet.
export function mergeReady(items) {
  noteCounts(items);
  for (const c of items) {
    const listed = state.conversations.find((other) => other.id === c.id);
    if (listed) Object.assign(listed, c); // fresher names, roles and archived states
  }
  const listed = new Set(state.conversations.map((c) => c.id));
  state.conversations = items.filter((c) => !listed.has(c.id)).concat(state.conversations);
  adoptCurrent();
  renderConversations();
  renderRoom();
}

export function renderConversations() {
  learnPeers(state.conversations);
  const items = state.conversations.map((c) => {
    const li = document.createElement("li");
    if (c.archived_at) li.classList.add("archived");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.testid = "conversation-item";
    button.dataset.id = c.id;
    button.dataset.direct = String(Boolean(c.is_direct));
    button.dataset.archived = String(Boolean(c.archived_at));
    button.textContent = titleOf(c);
    if (c.archived_at) button.title = "Archived (read-only)";
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

// A direct conversation has no name of its own: it is shown by the other person's,
// asked for once per conversation (its two members are the first page).
function learnPeers(conversations) {
  for (const c of conversations) {
    if (!c.is_direct || c.name || askedPeers.has(c.id)) continue;
    askedPeers.add(c.id);
    api(`/api/chat/conversations/${encodeURIComponent(c.id)}/participants?limit=2`)
      .then((members) => {
        const other = members.find((m) => m.user_id !== state.userId);
        if (!other) return;
        state.peers.set(c.id, other.username);
        state.names.set(other.user_id, other.username);
        renderConversations();
        if (state.current && state.current.id === c.id) renderRoom();
      })
      .catch(() => askedPeers.delete(c.id));
  }
}

// Adds a conversation to the list (at the top) or updates the entry it has; `extra`
// holds what the conversation object itself does not say (the caller's role).
export function upsert(conversation, extra = {}) {
  let entry = state.conversations.find((c) => c.id === conversation.id);
  if (entry) Object.assign(entry, conversation, extra);
  else state.conversations.unshift((entry = { ...conversation, ...extra }));
  if (state.current && state.current.id === entry.id && state.current !== entry) {
    Object.assign(state.current, conversation, extra);
  }
  return entry;
}

// Gone from the user's conversations (removed, left or deleted): from the list, and
// from the room if it was open there, saying why.
export function drop(id, why) {
  state.conversations = state.conversations.filter((c) => c.id !== id);
  state.unread.delete(id);
  state.positions.delete(id);
  if (state.current && state.current.id === id) {
    closeConversation();
    sessionStorage.removeItem(CONVERSATION_KEY);
    ui.roomEmpty.textContent = why;
  }
  renderConversations();
}

// The inbox: conversations that appear, go, or change, for every device at once.
export function onInbox(event) {
  const c = event.conversation || {};
  if (!c.id) return;
  switch (event.action) {
    case "added": {
      // Added by someone else: a member (one's own new conversation learns "owner"
      // from the create's answer, whichever arrives first).
      const listed = state.conversations.some((other) => other.id === c.id);
      upsert(c, listed ? {} : { role: "member" });
      renderConversations();
      break;
    }
    case "updated": {
      // Renamed, described, archived or unarchived: the list and the room follow.
      const known = state.conversations.some((other) => other.id === c.id);
      if (known || (state.current && state.current.id === c.id)) upsert(c);
      renderConversations();
      if (state.current && state.current.id === c.id) renderRoom();
      break;
    }
    case "removed":
      drop(c.id, "You are no longer a member of that conversation.");
      break;
    case "deleted":
      drop(c.id, "That conversation was deleted.");
      break;
    default:
      break;
  }
}

// A message of a conversation that is not open: its badge grows, it moves up.
export function bumpUnread(id, counts) {
  if (counts) state.unread.set(id, (state.unread.get(id) || 0) + 1);
  const at = state.conversations.findIndex((c) => c.id === id);
  if (at > 0) state.conversations.unshift(...state.conversations.splice(at, 1));
  renderConversations();
}

// ---- Read markers ------------------------------------------------------------

// Our marker moved, here or on another device: everything up to it is read.
export function onMarker(event) {
  const id = event.conversation_id;
  state.markers.set(id, Math.max(state.markers.get(id) || 0, event.seq));
  if (event.seq >= (state.positions.get(id) || 0)) state.unread.set(id, 0);
  renderConversations();
}

// The open conversation is read up to what it shows, while the tab is visible; at
// most one marker per READ_AFTER_MS.
export function markReadSoon() {
  if (!state.current) return;
  const id = state.current.id;
  state.unread.set(id, 0);
  renderConversations();
  clearTimeout(readTimer);
  readTimer = setTimeout(() => {
    const seq = state.positions.get(id) || 0;
    if (document.visibilityState === "hidden" || !state.current || state.current.id !== id) return;
    if (seq > (state.markers.get(id) || 0)) send({ type: "read", seq });
  }, READ_AFTER_MS);
}

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") markReadSoon();
});

// ---- Opening and closing -----------------------------------------------------

export function closeConversation() {
  state.generation += 1;
  clearTimeout(readTimer);
  state.current = null;
  resetRoom();
  resetPanel();
  ui.roomBody.hidden = true;
  ui.roomEmpty.hidden = false;
  ui.roomEmpty.textContent = PLACEHOLDER;
}

export async function openConversation(conversation) {
  closeConversation();
  const generation = state.generation;
  state.current = state.conversations.find((c) => c.id === conversation.id) || { ...conversation };
  sessionStorage.setItem(CONVERSATION_KEY, conversation.id);
  renderConversations();
  learnPeers([state.current]);
  renderRoom();
  roomOpened();
  ui.roomEmpty.hidden = true;
  ui.roomBody.hidden = false;
  if (!(await loadLatest(conversation.id, generation))) return;
  if (!ui.input.disabled) ui.input.focus();
  markReadSoon();
  loadOnline(conversation.id, generation).catch(() => {});
}

// ---- Starting a conversation -------------------------------------------------

function toggle(button, panel, open = panel.hidden) {
  panel.hidden = !open;
  button.setAttribute("aria-expanded", String(open));
}

// Everyone picked from the search, and any usernames typed (comma separated), each
// looked up by its exact name: the API wants ids.
async function participantIds() {
  const ids = [...picked.keys()];
  const typed = els.newParticipants.value
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s && s !== state.username && ![...picked.values()].includes(s));
  for (const username of new Set(typed)) {
    const found = await api(`/api/users?username=${encodeURIComponent(username)}`);
    if (!found.length) throw new Error(`No user named ${username}`);
    state.names.set(found[0].id, found[0].username);
    ids.push(found[0].id);
  }
  return ids;
}

// Always a group (with roles), even of two: a pair's one direct conversation is made
// by "New direct message".
async function createGroup() {
  ui.newError.textContent = "";
  const name = els.newName.value.trim();
  if (!name) {
    ui.newError.textContent = "Give the conversation a name.";
    return;
  }
  try {
    const ids = await participantIds();
    const conversation = await api("/api/chat/conversations", {
      method: "POST",
      body: { name, description: "", is_group: true, participant_ids: ids },
    });
    els.newForm.reset();
    picked.clear();
    renderPicked();
    toggle(els.groupStart, els.newForm, false);
    // The creator is its owner; the `added` event may have listed it already.
    const entry = upsert(conversation, { role: "owner" });
    renderConversations();
    await openConversation(entry);
  } catch (e) {
    showError(ui.newError, e);
  }
}

function renderPicked() {
  els.newPicked.replaceChildren(
    ...[...picked].map(([id, username]) => {
      const li = document.createElement("li");
      li.dataset.testid = "picked";
      li.dataset.userId = id;
      li.textContent = username;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "link";
      remove.dataset.testid = "picked-remove";
      remove.setAttribute("aria-label", `Remove ${username}`);
      remove.textContent = "×";
      remove.addEventListener("click", () => {
        picked.delete(id);
        renderPicked();
      });
      li.append(remove);
      return li;
    }),
  );
}

// The pair's direct conversation: created, or the existing one reopened (a 200, with
// whoever had left it back in).
async function startDirect(user) {
  els.dmError.textContent = "";
  try {
    const conversation = await api("/api/chat/conversations", {
      method: "POST",
      body: { is_group: false, participant_ids: [user.id] },
    });
    state.peers.set(conversation.id, user.username);
    els.dmSearch.value = "";
    toggle(els.dmStart, els.dmPanel, false);
    const entry = upsert(conversation);
    renderConversations();
    await openConversation(entry);
  } catch (e) {
    showError(els.dmError, e);
  }
}

// ---- Wiring ------------------------------------------------------------------

els.dmStart.addEventListener("click", () => {
  toggle(els.dmStart, els.dmPanel);
  if (!els.dmPanel.hidden) els.dmSearch.focus();
});
els.groupStart.addEventListener("click", () => {
  toggle(els.groupStart, els.newForm);
  if (!els.newForm.hidden) els.newName.focus();
});

userSearch({
  input: els.dmSearch,
  results: els.dmResults,
  onPick: startDirect,
  onError: (e) => showError(els.dmError, e),
});

// The group's participant field searches the name being typed (after the last comma).
const lastTerm = (value) => value.split(",").pop().trim();
const groupSearch = userSearch({
  input: els.newParticipants,
  results: els.newSuggestions,
  term: lastTerm,
  exclude: () => new Set(picked.keys()),
  onPick: (user) => {
    picked.set(user.id, user.username);
    const terms = els.newParticipants.value.split(",");
    terms.pop();
    els.newParticipants.value = terms.map((t) => t.trim()).filter(Boolean).join(", ");
    renderPicked();
    els.newParticipants.focus();
  },
  onError: (e) => showError(ui.newError, e),
});

els.newForm.addEventListener("submit", (e) => {
  e.preventDefault();
  createGroup();
});
els.newForm.addEventListener("reset", () => groupSearch.clear());
els.refresh.addEventListener("click", () => loadConversations().catch((e) => showError(ui.newError, e)));
ui.moreConversations.addEventListener("click", () =>
  loadMoreConversations().catch((e) => showError(ui.newError, e)),
);

export function resetConversations() {
  state.conversations = [];
  state.conversationsCursor = null;
  askedPeers.clear();
  picked.clear();
  renderPicked();
  ui.conversations.replaceChildren();
  for (const [button, panel] of [
    [els.dmStart, els.dmPanel],
    [els.groupStart, els.newForm],
  ]) {
    toggle(button, panel, false);
  }
}

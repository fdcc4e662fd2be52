// The open conversation's header and its "Details" panel: name, description and
// archived state (the header, the notice, the composer), and what the caller's role
// allows: rename and describe, archive and unarchive, delete, leave, and the members
// list, where the owner changes roles (or hands ownership over) and owners and admins
// remove members. See "Roles, direct and archived conversations" in docs/protocol.md.
//
// The page shows only what the role allows (shared.js `rights`); the server decides
// again on every request, and its refusal (a 403 with a reason) is shown as it is.
// Changes made elsewhere arrive on the stream: `conversation` `updated` (through
// conversations.js) and `role` (onRole, below).

import { byTestId, findConversation, isArchived, rights, showError, state, titleOf, ui } from "./shared.js?v={{version}}";
import { api, apiResponse } from "./session.js?v={{version}}";
import { userSearch } from "./search.js?v={{version}}";
import { drop, renderConversations, upsert } from "./conversations.js?v={{version}}";

const MEMBERS_PAGE = 100;

const els = {
  toggle: byTestId("manage-toggle"),
  panel: byTestId("manage-panel"),
  myRole: byTestId("my-role"),
  renameForm: byTestId("rename-form"),
  renameName: byTestId("rename-name"),
  renameDescription: byTestId("rename-description"),
  archive: byTestId("archive-toggle"),
  leave: byTestId("leave"),
  deleteButton: byTestId("conversation-delete"),
  error: byTestId("manage-error"),
  members: byTestId("members-list"),
  membersMore: byTestId("members-more"),
  membersRefresh: byTestId("members-refresh"),
  addMember: byTestId("add-member"),
  addSearch: byTestId("add-member-search"),
  addResults: byTestId("add-member-results"),
};

// The members shown: of which conversation, the rows so far, where the next page starts.
const members = { id: null, list: [], cursor: null };

const path = (id, rest = "") => `/api/chat/conversations/${encodeURIComponent(id)}${rest}`;

// ---- The header ----------------------------------------------------------------

// Draws the open conversation's header, notice, composer and panel from its entry.
// Called whenever the entry may have changed (opened, updated, a role event).
export function renderRoom() {
  const c = state.current;
  if (!c) return;
  const r = rights(c);
  const archived = isArchived(c);
  ui.roomTitle.textContent = titleOf(c);
  ui.roomDescription.textContent = c.description || "";
  ui.roomDescription.hidden = !c.description;
  // Archived is read-only: the server refuses messages, edits, deletes and reactions,
  // so the page does not offer them.
  ui.archivedNotice.hidden = !archived;
  ui.input.disabled = archived;
  ui.sendButton.disabled = archived;
  ui.input.placeholder = archived ? "Archived: read-only" : "Write a message";
  ui.roomBody.dataset.archived = String(archived);
  ui.roomBody.dataset.role = r.direct ? "direct" : r.role;
  ui.roomBody.dataset.moderator = String(!r.direct && (r.role === "owner" || r.role === "admin"));

  els.myRole.textContent = r.direct ? "none (a direct conversation has no roles)" : r.role;
  els.renameForm.hidden = !r.edit;
  // Not while the user is typing there: their edit is not overwritten by an event.
  if (!els.renameForm.contains(document.activeElement)) fillRename(c);
  els.archive.hidden = !r.edit;
  els.archive.textContent = archived ? "Unarchive" : "Archive";
  els.deleteButton.hidden = !r.delete;
  els.addMember.hidden = !r.add;
  renderMembers();
}

function fillRename(c) {
  els.renameName.value = c.name || "";
  els.renameDescription.value = c.description || "";
}

function openPanel(open) {
  els.panel.hidden = !open;
  els.toggle.setAttribute("aria-expanded", String(open));
  els.error.textContent = "";
  if (open && state.current) {
    fillRename(state.current);
    loadMembers(false).catch((e) => showError(els.error, e));
  }
}

// Another conversation opens (or none): the members shown were the old one's. The
// panel itself stays open or closed as the user left it.
export function resetPanel() {
  Object.assign(members, { id: null, list: [], cursor: null });
  els.members.replaceChildren();
  els.membersMore.hidden = true;
  els.error.textContent = "";
  els.addSearch.value = "";
}

export function roomOpened() {
  if (!els.panel.hidden) openPanel(true);
}

// ---- Changing the conversation ------------------------------------------------

// PATCH with what changed; the answer is the conversation as it now is (everyone
// else hears it as `conversation` `updated`).
async function patch(body) {
  const c = state.current;
  if (!c) return;
  els.error.textContent = "";
  try {
    const updated = await api(path(c.id), { method: "PATCH", body });
    upsert(updated);
    renderConversations();
    renderRoom();
  } catch (e) {
    showError(els.error, e);
  }
}

function saveRename() {
  const c = state.current;
  if (!c) return;
  const name = els.renameName.value.trim() || null;
  const description = els.renameDescription.value.trim() || null;
  const body = {};
  if (name !== (c.name || null)) body.name = name;
  if (description !== (c.description || null)) body.description = description;
  if (Object.keys(body).length) patch(body);
}

async function deleteConversation() {
  const c = state.current;
  if (!c || !confirm(`Delete "${titleOf(c)}" and all its messages for everyone? This cannot be undone.`)) return;
  try {
    await api(path(c.id), { method: "DELETE" });
    drop(c.id, "That conversation was deleted.");
  } catch (e) {
    showError(els.error, e);
  }
}

async function leave() {
  const c = state.current;
  if (!c) return;
  const handOver = c.role === "owner" && !c.is_direct ? " The longest-standing admin (else member) becomes its owner." : "";
  if (!confirm(`Leave "${titleOf(c)}"?${handOver}`)) return;
  try {
    await api(path(c.id, `/participants/${encodeURIComponent(state.userId)}`), { method: "DELETE" });
    drop(c.id, "You left that conversation.");
  } catch (e) {
    showError(els.error, e);
  }
}

// ---- Members and roles --------------------------------------------------------

async function loadMembers(more) {
  const c = state.current;
  if (!c) return;
  const generation = state.generation;
  let query = `?limit=${MEMBERS_PAGE}`;
  if (more && members.cursor) query += `&cursor=${encodeURIComponent(members.cursor)}`;
  const { data, headers } = await apiResponse(path(c.id, `/participants${query}`));
  if (generation !== state.generation) return; // another conversation opened meanwhile
  if (!more || members.id !== c.id) members.list = [];
  members.id = c.id;
  const shown = new Set(members.list.map((m) => m.user_id));
  members.list.push(...data.filter((m) => !shown.has(m.user_id)));
  members.cursor = headers.get("X-Next-Cursor");
  for (const m of data) {
    state.names.set(m.user_id, m.username);
    // The list says the caller's role too: fresher than an entry opened by id.
    if (m.user_id === state.userId && !c.is_direct) c.role = m.role;
  }
  renderRoom();
}

function button(testid, text, onClick, className = "link") {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.dataset.testid = testid;
  b.textContent = text;
  b.addEventListener("click", onClick);
  return b;
}

function renderMembers() {
  const c = state.current;
  if (!c || members.id !== c.id) return;
  const r = rights(c);
  const rows = members.list.map((m) => {
    const li = document.createElement("li");
    li.dataset.testid = "member";
    li.dataset.userId = m.user_id;
    li.dataset.username = m.username;
    li.dataset.role = m.role;
    const name = document.createElement("span");
    name.className = "member-name";
    name.dataset.testid = "member-name";
    name.textContent = m.user_id === state.userId ? `${m.username} (you)` : m.username;
    li.append(name);
    if (!r.direct) {
      const role = document.createElement("span");
      role.className = `role role-${m.role}`;
      role.dataset.testid = "member-role";
      role.textContent = m.role;
      li.append(role);
    }
    const actions = document.createElement("span");
    actions.className = "member-actions";
    if (m.user_id !== state.userId) {
      if (r.changeRoles && m.role === "member") {
        actions.append(button("member-make-admin", "Make admin", () => setRole(m, "admin")));
      }
      if (r.changeRoles && m.role === "admin") {
        actions.append(button("member-make-member", "Make member", () => setRole(m, "member")));
      }
      if (r.changeRoles) actions.append(button("member-make-owner", "Make owner", () => setRole(m, "owner")));
      if (r.remove(m.role)) {
        actions.append(button("member-remove", "Remove", () => removeMember(m), "link danger"));
      }
    }
    li.append(actions);
    return li;
  });
  els.members.replaceChildren(...rows);
  els.membersMore.hidden = !members.cursor;
}

// The owner changes a role; "owner" hands the conversation over (the caller becomes
// an admin), so it asks first.
async function setRole(m, role) {
  const c = state.current;
  if (!c) return;
  if (role === "owner" && !confirm(`Make ${m.username} the owner? You will become an admin.`)) return;
  els.error.textContent = "";
  try {
    const answer = await api(path(c.id, `/participants/${encodeURIComponent(m.user_id)}`), {
      method: "PATCH",
      body: { role },
    });
    applyRole(c.id, answer.user_id, answer.role);
    if (role === "owner") applyRole(c.id, state.userId, "admin");
  } catch (e) {
    showError(els.error, e);
  }
}

async function removeMember(m) {
  const c = state.current;
  if (!c || !confirm(`Remove ${m.username} from "${titleOf(c)}"?`)) return;
  els.error.textContent = "";
  try {
    await api(path(c.id, `/participants/${encodeURIComponent(m.user_id)}`), { method: "DELETE" });
    members.list = members.list.filter((other) => other.user_id !== m.user_id);
    renderMembers();
  } catch (e) {
    showError(els.error, e);
  }
}

async function addMember(user) {
  const c = state.current;
  if (!c) return;
  els.error.textContent = "";
  els.addSearch.value = "";
  try {
    await api(path(c.id, "/participants"), { method: "POST", body: { user_id: user.id } });
    if (members.id === c.id && !members.list.some((m) => m.user_id === user.id)) {
      members.list.push({ user_id: user.id, username: user.username, role: "member" });
    }
    renderMembers();
  } catch (e) {
    showError(els.error, e);
  }
}

// Someone's role changed (here, by a `role` event, or an owner leaving).
function applyRole(conversationId, userId, role) {
  if (userId === state.userId) {
    // The list's entry and the open one may be two objects (opened by id).
    for (const c of [findConversation(conversationId), state.conversations.find((x) => x.id === conversationId)]) {
      if (c) c.role = role;
    }
  }
  const row = members.id === conversationId && members.list.find((m) => m.user_id === userId);
  if (row) row.role = role;
  if (role === "owner") {
    // One owner: whoever else was owner is no longer (their own event follows).
    for (const m of members.id === conversationId ? members.list : []) {
      if (m.user_id !== userId && m.role === "owner") m.role = "admin";
    }
  }
  if (state.current && state.current.id === conversationId) renderRoom();
}

export function onRole(event) {
  applyRole(event.conversation_id, event.user_id, event.role);
}

// ---- Wiring --------------------------------------------------------------------

els.toggle.addEventListener("click", () => openPanel(els.panel.hidden));
els.renameForm.addEventListener("submit", (e) => {
  e.preventDefault();
  saveRename();
});
els.archive.addEventListener("click", () => patch({ archived: !isArchived(state.current) }));
els.deleteButton.addEventListener("click", deleteConversation);
els.leave.addEventListener("click", leave);
els.membersRefresh.addEventListener("click", () => loadMembers(false).catch((e) => showError(els.error, e)));
els.membersMore.addEventListener("click", () => loadMembers(true).catch((e) => showError(els.error, e)));
userSearch({
  input: els.addSearch,
  results: els.addResults,
  exclude: () => new Set(members.id === (state.current && state.current.id) ? members.list.map((m) => m.user_id) : []),
  onPick: addMember,
  onError: (e) => showError(els.error, e),
});

// The browser client served at "/": a small reference client of the protocol in
// docs/protocol.md, in plain JavaScript modules with no framework and no build step.
// This entry module owns the screens (login, chat) and the top bar; the rest is in:
//
//   shared.js         elements, state and helpers every module reads
//   session.js        tokens, their renewal, REST calls, logging in and out
//   stream.js         the user-stream WebSocket: connect, resume, dispatch events
//   conversations.js  the list, the inbox events, opening one, starting one
//   messages.js       the open conversation's messages, reactions, typing, presence
//   manage.js         the open conversation's header and "Details" panel (roles)
//   search.js         the username prefix search used by the pickers
//
// index.html loads this file; the server (mod.rs) serves each module with the page's
// version in its imports, so a new binary never runs with a cached older module.

import { CONVERSATION_KEY, byTestId, showError, state, ui } from "./shared.js?v={{version}}";
import {
  api,
  logIn,
  logOut,
  logOutEverywhereElse,
  onSessionEnded,
  restore,
  saveUser,
} from "./session.js?v={{version}}";
import { connect, disconnect, setConnection } from "./stream.js?v={{version}}";
import {
  closeConversation,
  loadConversations,
  openConversation,
  resetConversations,
} from "./conversations.js?v={{version}}";

const els = {
  authForm: byTestId("auth-form"),
  username: byTestId("auth-username"),
  password: byTestId("auth-password"),
  register: byTestId("auth-register"),
  authError: byTestId("auth-error"),
  me: byTestId("me"),
  logout: byTestId("logout"),
  logoutAll: byTestId("logout-all"),
  sessionStatus: byTestId("session-status"),
  dmStart: byTestId("dm-start"),
};

async function authenticate(register) {
  els.authError.textContent = "";
  const username = els.username.value.trim();
  const password = els.password.value;
  if (!username || !password) {
    els.authError.textContent = "Enter a username and a password.";
    return;
  }
  try {
    await logIn(username, password, register);
  } catch (e) {
    showError(els.authError, e);
    return;
  }
  els.password.value = "";
  await enterChat().catch(() => logOut());
}

async function enterChat() {
  const me = await api("/api/auth/me");
  state.userId = me.id;
  state.username = me.username;
  state.names.set(me.id, me.username);
  saveUser();
  els.me.textContent = me.username;
  els.sessionStatus.textContent = "";
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
  else els.dmStart.focus();
}

// Back to the login screen, with nothing of the old session left in the page: the
// session ended (logged out here or elsewhere, or a refresh was refused).
function showLogin(message = "") {
  closeConversation();
  disconnect();
  sessionStorage.removeItem(CONVERSATION_KEY);
  Object.assign(state, { userId: null, username: null });
  resetConversations();
  for (const map of [state.names, state.positions, state.unread, state.markers, state.peers]) map.clear();
  ui.chat.hidden = true;
  ui.whoami.hidden = true;
  ui.auth.hidden = false;
  els.sessionStatus.textContent = "";
  els.authError.textContent = message;
  setConnection("idle", "");
  els.username.focus();
}

onSessionEnded(showLogin);

// ---- Wiring --------------------------------------------------------------------

els.authForm.addEventListener("submit", (e) => {
  e.preventDefault();
  authenticate(false);
});
els.register.addEventListener("click", () => authenticate(true));
els.logout.addEventListener("click", () => {
  // The socket first: its `Session ended` close is not news to this page.
  disconnect();
  logOut();
});
els.logoutAll.addEventListener("click", async () => {
  els.logoutAll.disabled = true;
  els.sessionStatus.textContent = "";
  try {
    const ended = await logOutEverywhereElse();
    els.sessionStatus.dataset.ended = String(ended);
    els.sessionStatus.textContent =
      ended === 1 ? "Logged out 1 other session." : `Logged out ${ended} other sessions.`;
  } catch (e) {
    showError(els.sessionStatus, e);
  } finally {
    els.logoutAll.disabled = false;
  }
});

if (restore()) {
  enterChat().catch(() => logOut());
} else {
  els.username.focus();
}

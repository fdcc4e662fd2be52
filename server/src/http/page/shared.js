// What every part of the page shares: the elements it finds by data-testid, the state
// of the open chat (the conversation list, the open conversation, what the socket has
// seen), and the few helpers that read them. No behaviour lives here, so any module
// may import it without pulling the others in.
//
// Rules the whole client keeps (docs/protocol.md is the contract it follows):
// - User content only ever reaches the page through textContent, never as markup.
// - The tokens live in sessionStorage: they survive a reload but not the tab.
// - One socket for everything: the user stream (/api/chat/ws) carries every
//   conversation, so the list, its badges, renames, roles and new conversations are
//   live without polling.

export const byTestId = (id, root = document) => root.querySelector(`[data-testid="${id}"]`);

// The elements more than one module touches. Each module finds its own others.
export const ui = {
  auth: byTestId("auth"),
  chat: byTestId("chat"),
  whoami: byTestId("whoami"),
  connection: byTestId("connection"),
  conversations: byTestId("conversation-list"),
  moreConversations: byTestId("conversations-more"),
  roomEmpty: byTestId("room-empty"),
  roomBody: byTestId("room-body"),
  roomTitle: byTestId("room-title"),
  roomDescription: byTestId("room-description"),
  archivedNotice: byTestId("archived-notice"),
  online: byTestId("online-list"),
  older: byTestId("load-older"),
  messages: byTestId("message-list"),
  typing: byTestId("typing"),
  roomError: byTestId("room-error"),
  composer: byTestId("composer"),
  input: byTestId("composer-input"),
  sendButton: byTestId("composer-send"),
  newError: byTestId("new-error"),
};

export const state = {
  userId: null,
  username: null,
  // Conversation items as the list and `ready` give them (with `role`), kept current
  // by the stream's `conversation` and `role` events; most recently active first.
  conversations: [],
  conversationsCursor: null, // where the next page of the list starts, if there is one
  current: null, // the open conversation: an entry like those of `conversations`
  generation: 0, // bumped on every switch, so late answers for the old one are dropped
  stream: null, // the user stream's socket
  positions: new Map(), // conversation id -> the highest stream position seen there
  unread: new Map(), // conversation id -> unread messages (the badge)
  markers: new Map(), // conversation id -> the user's read marker
  peers: new Map(), // direct conversation id -> the other person's username
  names: new Map(), // user id -> username, learned from every event that names one
  online: new Map(), // user id -> "online" | "away"
  typers: new Map(), // user id -> timer that hides their typing notice
  reactions: new Map(), // message id -> Map(emoji -> Set(user id))
  pending: new Map(), // client_id -> {conversation, content}, sent but not yet acknowledged
  oldestId: null, // the oldest message shown, to page history back from
};

export const CONVERSATION_KEY = "chat.conversation";

export function findConversation(id) {
  if (state.current && state.current.id === id) return state.current;
  return state.conversations.find((c) => c.id === id) || null;
}

// A direct conversation usually has no name of its own: it is shown by the other
// person's name, once known (see conversations.js, which learns it).
export function titleOf(c) {
  if (c.name) return c.name;
  if (c.is_direct) {
    const peer = state.peers.get(c.id);
    return peer ? `@${peer}` : "Direct message";
  }
  return "(no name)";
}

export const isArchived = (c) => Boolean(c && c.archived_at);

// What the caller may do in a conversation: the role table of docs/protocol.md. The
// server checks all of it again; the page only hides what would be refused. In a
// direct conversation there are no roles: either person may rename, archive or delete
// it, nobody is added or removed, and each may leave.
export function rights(c) {
  const role = (c && c.role) || "member";
  const direct = Boolean(c && c.is_direct);
  return {
    role,
    direct,
    edit: direct || role === "owner" || role === "admin", // rename, describe, archive
    delete: direct || role === "owner",
    changeRoles: !direct && role === "owner",
    add: !direct && !isArchived(c),
    // Whom the caller may remove (leaving is always allowed, and done apart).
    remove: (target) => !direct && (role === "owner" || (role === "admin" && target === "member")),
  };
}

// FastAPI-shaped answers carry a string detail; the page shows it as it is.
export function showError(element, e) {
  element.textContent = (e && e.message) || String(e);
}

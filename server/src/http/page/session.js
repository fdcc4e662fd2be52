// The session: the access and refresh tokens a login gives, where they are kept, when
// they are renewed, and every REST call (which carries the access token and is the
// first to learn that the session has ended). See "Sessions and accounts" in
// docs/protocol.md.
//
// - The access token is short-lived (`expires_in`, 15 minutes by default). At 80% of
//   its life the page trades the refresh token for a new pair; the socket is handed
//   the new access token in-band (stream.js listens through onTokenRenewed), so it
//   stays open past the old token's `exp`.
// - A refresh token works once: the new one replaces it at once, in memory and in
//   sessionStorage, so a reload carries on with the pair that is still valid.
// - A refresh refused with 401 means the session is over (logged out here or
//   elsewhere, or the refresh token was reused): the page returns to the login screen,
//   through the callbacks given to onSessionEnded.

import { state } from "./shared.js?v={{version}}";

const SESSION_KEY = "chat.session";
const REFRESH_AT = 0.8; // of the access token's life
const RETRY_MS = 5000; // after a refresh that failed for a reason other than a 401
const ENDED = "Your session has ended; please log in again.";

const tokens = {
  access: null,
  refresh: null,
  refreshAt: Infinity, // when to renew (ms since the epoch)
};
let refreshTimer = null;
let refreshing = null; // the refresh in flight: everyone who needs one waits for it
const endedListeners = [];
const renewedListeners = [];

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Called with a message for the login screen when the session ends.
export const onSessionEnded = (fn) => endedListeners.push(fn);
// Called with the new access token after every refresh.
export const onTokenRenewed = (fn) => renewedListeners.push(fn);
export const accessToken = () => tokens.access;
export const signedIn = () => Boolean(tokens.access);

// ---- Keeping the tokens ----------------------------------------------------

function save() {
  sessionStorage.setItem(
    SESSION_KEY,
    JSON.stringify({
      token: tokens.access,
      refreshToken: tokens.refresh,
      refreshAt: tokens.refreshAt,
      userId: state.userId,
      username: state.username,
    }),
  );
}

export function saveUser() {
  if (tokens.access) save();
}

// A login's or a refresh's answer: both carry a new pair.
function keep(answer) {
  tokens.access = answer.access_token;
  tokens.refresh = answer.refresh_token || null;
  const lifetime = (Number(answer.expires_in) || 15 * 60) * 1000;
  tokens.refreshAt = Date.now() + lifetime * REFRESH_AT;
  save();
  schedule(tokens.refreshAt - Date.now());
}

// The session of this tab kept across a reload, if there is one.
export function restore() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
    if (!saved || !saved.token) return false;
    tokens.access = saved.token;
    tokens.refresh = saved.refreshToken || null;
    // Kept by an older page without a refresh token: used until it is refused.
    tokens.refreshAt = Number.isFinite(saved.refreshAt) ? saved.refreshAt : Infinity;
    state.userId = saved.userId || null;
    state.username = saved.username || null;
    if (tokens.refresh) schedule(tokens.refreshAt - Date.now());
    return true;
  } catch (_) {
    return false; // a damaged entry is the same as none
  }
}

function schedule(delay) {
  clearTimeout(refreshTimer);
  if (!tokens.refresh) return;
  refreshTimer = setTimeout(() => refresh().catch(() => {}), Math.max(0, delay));
}

// Forgets everything and tells the page; once per session.
function end(message) {
  if (!tokens.access && !tokens.refresh) return;
  clearTimeout(refreshTimer);
  tokens.access = null;
  tokens.refresh = null;
  tokens.refreshAt = Infinity;
  sessionStorage.removeItem(SESSION_KEY);
  for (const fn of endedListeners) fn(message);
}

// ---- Renewing ----------------------------------------------------------------

// Trades the refresh token for a new pair. Concurrent callers share one request:
// presenting the same refresh token twice would end the session.
export function refresh() {
  if (!refreshing) refreshing = renew().finally(() => (refreshing = null));
  return refreshing;
}

async function renew() {
  const presented = tokens.refresh;
  if (!presented) {
    end(ENDED);
    throw new ApiError(401, ENDED);
  }
  let answer;
  try {
    answer = await call("/api/auth/refresh", { method: "POST", body: { refresh_token: presented } });
  } catch (e) {
    schedule(RETRY_MS); // offline: the access token may still have a while to live
    throw e;
  }
  if (tokens.refresh !== presented) return; // logged out (or in again) meanwhile
  const { response, data } = answer;
  if (response.ok) {
    keep(data);
    for (const fn of renewedListeners) fn(tokens.access);
    return;
  }
  const error = new ApiError(response.status, detailOf(data, response.status));
  if (response.status === 401) end(ENDED);
  else schedule(RETRY_MS); // 429, 503: the server says try again
  throw error;
}

// Renews first when the access token is due (a timer in a sleeping laptop or a
// background tab may have fired late, or not yet).
export async function fresh() {
  if (tokens.refresh && Date.now() >= tokens.refreshAt) {
    await refresh().catch(() => {});
  }
}

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") fresh();
});

// ---- REST --------------------------------------------------------------------

// FastAPI-shaped errors: a string detail, or a list of field errors.
function detailOf(body, status) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((e) => `${(e.loc || []).slice(-1)[0] || "input"}: ${e.msg}`).join("; ");
  }
  return `Request failed (${status})`;
}

async function call(path, { method = "GET", body, token } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
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
  return { response, data };
}

export async function api(path, options) {
  return (await apiResponse(path, options)).data;
}

// The body and the response's headers (a paged list names its next page in one).
// A 401 to a signed-in call may only mean the access token expired unnoticed: one
// refresh and one retry; if the refresh is refused too, the session has ended.
export async function apiResponse(path, { method = "GET", body, retry = true } = {}) {
  await fresh();
  const sent = tokens.access;
  const { response, data } = await call(path, { method, body, token: sent });
  if (response.status === 401 && sent) {
    if (retry && tokens.refresh) {
      if (tokens.access === sent) await refresh();
      return apiResponse(path, { method, body, retry: false });
    }
    end(ENDED);
  }
  if (!response.ok) throw new ApiError(response.status, detailOf(data, response.status));
  return { data, headers: response.headers };
}

// ---- Logging in and out ------------------------------------------------------

export async function logIn(username, password, register) {
  if (register) await api("/api/auth/register", { method: "POST", body: { username, password } });
  const answer = await api("/api/auth/login", { method: "POST", body: { username, password } });
  state.userId = answer.user_id;
  state.username = username;
  keep(answer);
}

// Ends this session on the server (its tokens stop working everywhere at once),
// then here. Offline, it ends here only: the refresh token is forgotten, and the
// session ends by itself once nobody refreshes it.
export async function logOut() {
  // Straight through `call`: a refusal here must not end the session "elsewhere".
  if (tokens.access) {
    await call("/api/auth/logout", { method: "POST", token: tokens.access }).catch(() => {});
  }
  end("");
}

// Ends every other session of this user (other tabs, browsers, devices); this one
// stays. Answers how many ended.
export async function logOutEverywhereElse() {
  const answer = await api("/api/auth/logout-all", { method: "POST" });
  return (answer && answer.ended_sessions) || 0;
}

// The session ended elsewhere (the socket was closed with `Session ended`).
export function sessionEnded() {
  end(ENDED);
}

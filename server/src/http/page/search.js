// The username search: an input that asks GET /api/users?q=<prefix> as the user
// types (debounced: the server allows each user 60 searches a minute) and lists the
// matches as buttons. One widget, three uses: starting a direct message, picking a new
// group's participants, and adding a member to the open conversation.

import { api } from "./session.js?v={{version}}";
import { state } from "./shared.js?v={{version}}";

const DEBOUNCE_MS = 250;
const LIMIT = 8;
const USERNAME_PREFIX = /^[A-Za-z0-9_.-]{1,32}$/; // anything else matches no one

// input, results: the elements. onPick(user) when a match is chosen. term(value): the
// part of the input to search for (default: all of it). exclude(): ids not to offer.
// onError(error): a failed search (a 429 says to slow down).
export function userSearch({ input, results, onPick, term = (v) => v.trim(), exclude = () => new Set(), onError = () => {} }) {
  let timer = null;
  let asked = 0; // answers to an older query than the latest are dropped
  let listedFor = null; // the prefix the matches shown are for

  function clear() {
    clearTimeout(timer);
    asked += 1;
    listedFor = null;
    results.replaceChildren();
    input.setAttribute("aria-expanded", "false");
  }

  function pick(user) {
    clear();
    onPick(user);
  }

  async function lookup(prefix) {
    const ticket = ++asked;
    let users;
    try {
      users = await api(`/api/users?q=${encodeURIComponent(prefix)}&limit=${LIMIT}`);
    } catch (e) {
      if (ticket === asked) onError(e);
      return;
    }
    if (ticket !== asked) return;
    for (const u of users) state.names.set(u.id, u.username);
    const skip = exclude();
    const shown = users.filter((u) => u.id !== state.userId && !skip.has(u.id));
    const items = shown.map((u) => {
      const li = document.createElement("li");
      li.setAttribute("role", "option");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "link";
      button.dataset.testid = "user-result";
      button.dataset.userId = u.id;
      button.dataset.username = u.username;
      button.textContent = u.username;
      button.addEventListener("click", () => pick(u));
      li.append(button);
      return li;
    });
    if (!items.length) {
      const li = document.createElement("li");
      li.className = "none";
      li.textContent = `No one else's name starts with "${prefix}".`;
      items.push(li);
    }
    listedFor = prefix;
    results.replaceChildren(...items);
    input.setAttribute("aria-expanded", String(shown.length > 0));
  }

  input.addEventListener("input", () => {
    clearTimeout(timer);
    const prefix = term(input.value);
    if (!USERNAME_PREFIX.test(prefix)) {
      clear();
      return;
    }
    timer = setTimeout(() => lookup(prefix), DEBOUNCE_MS);
  });

  // Enter picks the first match (type a name, press Enter; with no match listed it
  // does what it would do anyway, e.g. submit the form), Down moves into the matches,
  // Escape closes them; Enter in the list clicks.
  input.addEventListener("keydown", (e) => {
    const first = results.querySelector("button");
    // Not a match for what was typed before the last keystrokes' search answered.
    if (e.key === "Enter" && first && listedFor === term(input.value)) {
      e.preventDefault();
      first.click();
    } else if (e.key === "ArrowDown") {
      if (first) {
        e.preventDefault();
        first.focus();
      }
    } else if (e.key === "Escape") {
      clear();
    }
  });
  results.addEventListener("keydown", (e) => {
    const buttons = [...results.querySelectorAll("button")];
    const at = buttons.indexOf(document.activeElement);
    if (at < 0) return;
    if (e.key === "ArrowDown" && at + 1 < buttons.length) buttons[at + 1].focus();
    else if (e.key === "ArrowUp") (at > 0 ? buttons[at - 1] : input).focus();
    else if (e.key === "Escape") input.focus();
    else return;
    e.preventDefault();
  });

  return { clear };
}

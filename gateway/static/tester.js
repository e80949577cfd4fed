// The tester page's one script: calls the gateway's EDM endpoints (and in BFF mode its /bff/ endpoints) with fetch
// and shows their answers.
// Tokens live in `session` below only, never in localStorage, sessionStorage or cookies; the page's
// Content-Security-Policy enforces Trusted Types, so text is only ever set with textContent.

const session = { username: "", accessToken: "", refreshToken: "", expiresAt: 0, timer: 0 };

const byId = (id) => document.getElementById(id);

function show(element, text) {
  element.textContent = text;
  element.hidden = text === "";
}

// Token values are shortened on screen: the page is for seeing what the gateway answers, and a full token in a
// screenshot or a pasted bug report would be a credential.
function shortened(body) {
  if (body === null || typeof body !== "object") return body;
  const copy = Array.isArray(body) ? [] : {};
  for (const [key, value] of Object.entries(body)) {
    copy[key] = /token$/i.test(key) && typeof value === "string" && value.length > 20
      ? `${value.slice(0, 16)}… (${value.length} characters)`
      : shortened(value);
  }
  return copy;
}

// One call to the gateway. Its errors are JSON strings such as "code=400, message=wrong password", shown as sent.
// BFF calls (`bff`) carry `X-CSRF: 1` and the gateway's HttpOnly session cookie; the others no cookie at all.
async function call(method, path, { json, accessToken, bff = false } = {}) {
  const headers = {};
  if (json !== undefined) headers["Content-Type"] = "application/json";
  if (accessToken) headers.Authorization = `Bearer ${accessToken}`;
  if (bff) headers["X-CSRF"] = "1";
  show(byId("request-line"), `${method} ${path} …`);
  let response;
  let text;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: json === undefined ? undefined : JSON.stringify(json),
      credentials: bff ? "same-origin" : "omit",
      cache: "no-store",
    });
    text = await response.text();
  } catch (failure) {
    show(byId("request-line"), `${method} ${path}: no answer`);
    return { ok: false, error: `the gateway could not be reached (${failure.message})`, body: undefined };
  }
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  show(byId("request-line"), `${method} ${path}: HTTP ${response.status}`);
  if (response.ok && body !== null && typeof body === "object") return { ok: true, error: "", body };
  const error = typeof body === "string" ? body : `HTTP ${response.status} ${response.statusText}`.trim();
  return { ok: false, error, body: body === undefined ? text : body };
}

function report(result, notice) {
  show(byId("error"), result.ok ? "" : result.error);
  show(byId("notice"), result.ok ? notice : "");
  const body = result.body === undefined ? "" : JSON.stringify(shortened(result.body), null, 2);
  show(byId("answer-body"), body);
}

function showExpiry() {
  const left = Math.max(0, Math.ceil((session.expiresAt - performance.now()) / 1000));
  const minutes = Math.floor(left / 60);
  const seconds = String(left % 60).padStart(2, "0");
  byId("session-expires-in").textContent = left > 0 ? `${minutes}:${seconds}` : "expired";
  if (left === 0) clearInterval(session.timer);
}

function keepTokens(body) {
  sessionsPanel.api = true;
  showSessionsPanel();
  session.accessToken = body.accessToken;
  session.refreshToken = body.refreshToken;
  session.expiresAt = performance.now() + body.expiresIn * 1000;
  clearInterval(session.timer);
  session.timer = setInterval(showExpiry, 1000);
  showExpiry();
  byId("session-user-id").textContent = body.message;
  byId("session-username").textContent = session.username;
  byId("session").hidden = false;
}

// One request at a time: every button waits for the answer (a double-submitted login would only queue).
async function busy(work) {
  const buttons = document.querySelectorAll("button");
  for (const button of buttons) button.disabled = true;
  try {
    await work();
  } finally {
    for (const button of buttons) button.disabled = false;
  }
}

async function logIn() {
  const username = byId("username").value;
  const result = await call("POST", "/api/login", { json: { username, password: byId("password").value } });
  report(result, "Logged in.");
  if (!result.ok) return;
  byId("password").value = "";
  session.username = username;
  keepTokens(result.body);
  byId("session-state").textContent = "logged in";
}

async function refresh() {
  const result = await call("POST", "/api/refresh", { json: { refreshToken: session.refreshToken } });
  report(result, "Refreshed: new access and refresh tokens.");
  if (result.ok) keepTokens(result.body);
}

async function whoAmI() {
  const result = await call("GET", "/api/me", { accessToken: session.accessToken });
  report(result, result.ok ? `You are ${result.body.user.username}.` : "");
  if (!result.ok) return;
  session.username = result.body.user.username;
  byId("session-username").textContent = session.username;
  byId("session-user-id").textContent = result.body.message;
}

async function logOut() {
  const result = await call("POST", "/api/logout", { json: { refreshToken: session.refreshToken } });
  report(result, "Logged out.");
  if (result.ok) {
    // The old tokens stay, so that a tester can see the refresh token refused from now on.
    byId("session-state").textContent = "logged out: the session ended at Keycloak; the old tokens are kept";
    sessionsPanel.api = false;
    showSessionsPanel();
  }
}

// BFF mode: the session lives on the gateway; this page only ever sees /bff/user's answer.
const bff = { logoutUrl: "", endsAt: 0, timer: 0 };

function showBffExpiry() {
  const left = Math.max(0, Math.ceil((bff.endsAt - performance.now()) / 1000));
  byId("bff-expires-in").textContent = left > 0 ? `${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}` : "ended";
  if (left === 0) clearInterval(bff.timer);
}

function showBffSession(body) {
  const loggedIn = body !== null;
  sessionsPanel.bff = loggedIn;
  showSessionsPanel();
  byId("bff-anonymous").hidden = loggedIn;
  byId("bff-session").hidden = !loggedIn;
  clearInterval(bff.timer);
  if (!loggedIn) return;
  byId("bff-username").textContent = body.user.username;
  byId("bff-user-id").textContent = body.message;
  bff.logoutUrl = body.session.logoutUrl;
  bff.endsAt = performance.now() + body.session.expiresIn * 1000;
  bff.timer = setInterval(showBffExpiry, 1000);
  showBffExpiry();
}

async function bffUser(notice) {
  const result = await call("GET", "/bff/user", { bff: true });
  if (result.ok) {
    report(result, notice);
    showBffSession(result.body);
  } else {
    if (notice) report(result, "");
    showBffSession(null);
  }
}

async function bffLogOut() {
  const result = await call("POST", bff.logoutUrl, { bff: true });
  report(result, "Logged out: the gateway's session and Keycloak's ended.");
  if (result.ok) showBffSession(null);
}

function bffLogIn() {
  // A navigation, not a fetch: Keycloak's login page, then back to this page with the session cookie.
  window.location.assign(`/bff/login?returnUrl=${encodeURIComponent(window.location.pathname)}`);
}

// The Sessions panel: the user's Keycloak sessions, through the login this page holds (the tokens in its memory
// first, else the BFF session), each with an End button.
const sessionsPanel = { api: false, bff: false };

function sessionsRoute() {
  if (sessionsPanel.api) return { path: "/api/sessions", mode: "api" };
  if (sessionsPanel.bff) return { path: "/bff/sessions", mode: "bff" };
  return null;
}

// The credentials of a route, read when a call is made: the page's access token may have been refreshed since.
const credentials = (route) => (route.mode === "api" ? { accessToken: session.accessToken } : { bff: true });

function showSessionsPanel() {
  const route = sessionsRoute();
  const changed = byId("sessions-source").dataset.path !== (route ? route.path : "");
  byId("sessions").hidden = route === null;
  if (!changed) return;
  byId("sessions-source").dataset.path = route ? route.path : "";
  byId("sessions-source").textContent = route ? `Listed through GET ${route.path}.` : "";
  byId("sessions-items").replaceChildren();
}

const twoDigits = (number) => String(number).padStart(2, "0");

// Keycloak's epoch seconds as this browser's local time, e.g. 2026-12-03 14:05:09.
function localTime(seconds) {
  const at = new Date(seconds * 1000);
  const day = `${at.getFullYear()}-${twoDigits(at.getMonth() + 1)}-${twoDigits(at.getDate())}`;
  return `${day} ${twoDigits(at.getHours())}:${twoDigits(at.getMinutes())}:${twoDigits(at.getSeconds())}`;
}

function addFact(list, term, value) {
  const name = document.createElement("dt");
  name.textContent = term;
  const text = document.createElement("dd");
  text.textContent = value;
  list.append(name, text);
}

function sessionItem(listed, index, route) {
  const item = document.createElement("li");
  item.className = "session-item";
  item.dataset.current = String(listed.current);
  const where = document.createElement("p");
  where.className = "session-where";
  where.id = `session-where-${index}`;
  where.textContent = `From ${listed.ipAddress ?? "an unknown address"}`;
  if (listed.current) {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = "this session";
    where.append(" ", badge);
  }
  const facts = document.createElement("dl");
  facts.className = "facts";
  addFact(facts, "Started", localTime(listed.started));
  addFact(facts, "Last access", localTime(listed.lastAccess));
  addFact(facts, "Used by", listed.clients.join(", ") || "no client");
  const end = document.createElement("button");
  end.type = "button";
  end.textContent = "End";
  end.setAttribute("aria-describedby", where.id);
  end.addEventListener("click", () => busy(() => endSession(listed, item, route)));
  item.append(where, facts, end);
  return item;
}

async function listSessions() {
  const route = sessionsRoute();
  if (route === null) return;
  const result = await call("GET", route.path, credentials(route));
  const count = result.ok ? result.body.sessions.length : 0;
  report(result, `${count} ${count === 1 ? "session" : "sessions"} at Keycloak.`);
  if (!result.ok) return;
  byId("sessions-items").replaceChildren(...result.body.sessions.map((listed, i) => sessionItem(listed, i, route)));
}

async function endSession(listed, item, route) {
  const result = await call("DELETE", `${route.path}/${encodeURIComponent(listed.id)}`, credentials(route));
  const own = listed.current;
  report(result, own ? "This session ended: its tokens are refused from now on." : "Session ended.");
  if (!result.ok) return;
  item.remove();
  if (!own) return;
  if (route.mode === "bff") {
    showBffSession(null); // the browser's own session: a logout of it
  } else {
    byId("session-state").textContent = "session ended in the Sessions panel; the old tokens are kept";
    sessionsPanel.api = false;
    showSessionsPanel();
  }
}

byId("sessions-list").addEventListener("click", () => busy(listSessions));

if (document.body.dataset.bff === "on") {
  byId("bff-login").hidden = false;
  byId("bff-login-button").addEventListener("click", bffLogIn);
  byId("bff-user").addEventListener("click", () => busy(() => bffUser("You are logged in through the gateway's session.")));
  byId("bff-logout").addEventListener("click", () => busy(bffLogOut));
  busy(() => bffUser("Logged in with Keycloak: the tokens stay on the gateway."));
}

byId("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  busy(logIn);
});
byId("refresh").addEventListener("click", () => busy(refresh));
byId("who-am-i").addEventListener("click", () => busy(whoAmI));
byId("logout").addEventListener("click", () => busy(logOut));

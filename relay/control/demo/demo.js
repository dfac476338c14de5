// Built from clients/js by `npm run bundle` (esbuild); do not edit.
import {
  JoinRefusedError,
  connect
} from "./relay-shared-MXT2KI3D.js";
import {
  fromBase64Url,
  toBase64Url
} from "./relay-shared-4GUO7CUI.js";

// demo/demo.ts
var SESSION_KEY = "gs2relay-demo";
var LOG_KEEP = 200;
var RTT_KEEP = 60;
var LEAVE_REASONS = {
  0: "gone while we were away",
  1: "left",
  2: "timed out",
  3: "kicked",
  4: "disconnected"
};
var $ = (id) => document.getElementById(id);
var client = null;
var room = "";
var rtts = [];
var pendingLog = [];
var logFrame = 0;
function show(bytes) {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  }
}
async function api(path, body) {
  const init2 = { headers: { "X-Relay-Demo": "1", "Content-Type": "application/json" } };
  if (body !== void 0) {
    init2.method = "POST";
    init2.body = JSON.stringify(body);
  }
  const r = await fetch(`/demo/api/${path}`, init2);
  const data = await r.json();
  if (!r.ok) {
    let why = data.message ?? r.statusText;
    try {
      why = JSON.parse(why).map((e) => e.message).join("; ");
    } catch {
    }
    throw new Error(why);
  }
  return data;
}
function setStatus(state, label) {
  const s = $("status");
  s.dataset["state"] = state;
  s.textContent = label;
  document.body.dataset["state"] = state;
}
function log(kind, who, body, note = "") {
  const li = document.createElement("li");
  li.className = `log-${kind}`;
  const time = document.createElement("time");
  time.textContent = (/* @__PURE__ */ new Date()).toLocaleTimeString([], { hour12: false });
  const from = document.createElement("span");
  from.className = "who";
  from.textContent = who;
  const msg = document.createElement("span");
  msg.className = "body";
  msg.textContent = body;
  li.append(time, from, msg);
  if (note) {
    const n = document.createElement("span");
    n.className = "note";
    n.textContent = note;
    li.append(n);
  }
  pendingLog.push(li);
  if (logFrame === 0) logFrame = requestAnimationFrame(flushLog);
}
function flushLog() {
  logFrame = 0;
  const ul = $("log");
  const stick = ul.scrollTop + ul.clientHeight >= ul.scrollHeight - 8;
  ul.append(...pendingLog.splice(0));
  while (ul.children.length > LOG_KEEP) ul.firstElementChild.remove();
  if (stick) ul.scrollTop = ul.scrollHeight;
  $("empty-log").hidden = ul.children.length > 0;
}
function name(id) {
  if (client !== null && id === client.connectionId) return `${client.userId} (you)`;
  const m = client?.members.get(id);
  return m ? `${m.userId} #${id}` : `#${id}`;
}
function renderMembers() {
  const ul = $("members");
  const select = $("target");
  const chosen = select.value;
  ul.replaceChildren();
  select.replaceChildren(new Option("everyone", ""));
  if (client === null) return;
  const me = { connectionId: client.connectionId, userId: client.userId, profile: client.profile };
  for (const m of [me, ...[...client.members.values()].sort((a, b) => a.connectionId - b.connectionId)]) {
    const li = document.createElement("li");
    li.dataset["cid"] = String(m.connectionId);
    li.dataset["user"] = m.userId;
    const avatar = document.createElement("span");
    avatar.className = "avatar";
    avatar.textContent = m.userId.slice(0, 1).toUpperCase();
    avatar.style.background = `hsl(${hue(m.userId)} 55% 45%)`;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = m === me ? `${m.userId} (you)` : m.userId;
    const cid = document.createElement("span");
    cid.className = "cid";
    cid.textContent = `#${m.connectionId}`;
    const profile = document.createElement("span");
    profile.className = "profile";
    profile.textContent = m.profile.length ? show(m.profile) : "no profile";
    li.append(avatar, who, cid, profile);
    ul.append(li);
    if (m !== me) select.append(new Option(`${m.userId} #${m.connectionId}`, String(m.connectionId)));
  }
  select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "";
  $("member-count").textContent = String(client.members.size + 1);
}
function hue(s) {
  let h = 0;
  for (const c of s) h = (h * 31 + c.charCodeAt(0)) % 360;
  return h;
}
function renderRtt() {
  const rtt = client?.rtt;
  $("rtt").textContent = rtt === void 0 ? "–" : `${rtt.toFixed(1)} ms`;
  if (rtt !== void 0) {
    rtts.push(rtt);
    if (rtts.length > RTT_KEEP) rtts.shift();
  }
  const max = Math.max(1, ...rtts);
  const step = 120 / (RTT_KEEP - 1);
  const points = rtts.map((v, i) => `${120 - (rtts.length - 1 - i) * step},${24 - v / max * 22}`).join(" ");
  $("rtt-line").setAttribute("points", points);
  const last = rtts.length > 0 ? 24 - rtts[rtts.length - 1] / max * 22 : -10;
  $("rtt-dot").setAttribute("cy", String(last));
}
function save() {
  if (client === null) return;
  const saved2 = {
    room,
    user: client.userId,
    profile: show(client.profile),
    resumeToken: toBase64Url(client.resumeToken)
  };
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(saved2));
}
function saved() {
  try {
    return JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? "null");
  } catch {
    return null;
  }
}
async function refreshRooms() {
  const ul = $("rooms");
  try {
    const { rooms } = await api("rooms");
    ul.replaceChildren();
    for (const r of rooms) {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "room-pick";
      b.dataset["room"] = r.name;
      b.textContent = r.name;
      b.title = r.ready ? "ready" : "starting";
      b.onclick = () => {
        $("room").value = r.name;
        $("user").focus();
      };
      li.append(b);
      ul.append(li);
    }
    $("no-rooms").hidden = rooms.length > 0;
  } catch (e) {
    $("no-rooms").hidden = false;
    $("no-rooms").textContent = `cannot list rooms: ${e.message}`;
  }
}
async function join(roomName, user, profile, resumeToken) {
  setStatus("connecting", "connecting…");
  $("join").disabled = true;
  $("join-error").textContent = "";
  try {
    await api("rooms", { name: roomName });
    const ticket = await api(`rooms/${encodeURIComponent(roomName)}/ticket`, { userId: user });
    const c = await connect(ticket.url, ticket.encryptionKey, user, {
      profile,
      accessToken: ticket.accessToken,
      resumeToken
    });
    client = c;
    room = roomName;
    watch(c);
  } catch (e) {
    sessionStorage.removeItem(SESSION_KEY);
    setStatus("idle", "not connected");
    const why = e instanceof JoinRefusedError ? `refused: ${e.text}` : e.message;
    $("join-error").textContent = why;
    return;
  } finally {
    $("join").disabled = false;
  }
  save();
  $("room-name").textContent = room;
  $("me").textContent = `${user} #${client.connectionId}`;
  $("me").dataset["cid"] = String(client.connectionId);
  $("new-profile").value = profile;
  setStatus("joined", "joined");
  const how = resumeToken === null ? "joined" : client.resumed ? "resumed the same seat" : "joined (the old seat had expired)";
  log("system", "room", `${how} as #${client.connectionId}; ${client.members.size} other member(s)`);
  renderMembers();
  $("message").focus();
}
function watch(c) {
  c.on("joined", (m) => {
    log("system", m.userId, `joined as #${m.connectionId}`);
    renderMembers();
  });
  c.on("left", (e) => {
    log("system", `${e.userId} #${e.connectionId}`, LEAVE_REASONS[e.reason] ?? `left (${e.reason})`);
    renderMembers();
  });
  c.on("profile", (m) => {
    log("system", `${m.userId} #${m.connectionId}`, `profile: ${show(m.profile)}`);
    renderMembers();
  });
  c.on("message", (m) => log("in", name(m.sender), show(m.data)));
  c.on("error", (e) => log("error", "relay", `error ${e.code}: ${e.text}`));
  c.on("closing", (e) => log("error", "relay", `closing (${e.reason}): ${e.text}`));
  c.on("reconnecting", (e) => {
    setStatus("reconnecting", `reconnecting (${e.attempt})…`);
    if (e.attempt === 1) log("system", "room", `connection lost (${e.cause}); resuming`);
  });
  c.on("resumed", (e) => {
    setStatus("joined", "joined");
    save();
    const how = e.resumed ? `resumed seat #${e.connectionId}` : `seat expired: joined again as #${e.connectionId}`;
    log("system", "room", how);
    $("me").textContent = `${c.userId} #${e.connectionId}`;
    $("me").dataset["cid"] = String(e.connectionId);
    renderMembers();
  });
  c.on("closed", (e) => {
    if (client !== c) return;
    client = null;
    sessionStorage.removeItem(SESSION_KEY);
    setStatus("idle", "not connected");
    rtts.length = 0;
    renderRtt();
    log("system", "room", `left the room: ${e.reason}`);
    renderMembers();
    void refreshRooms();
  });
}
function send() {
  const input = $("message");
  const body = input.value;
  if (client === null || body === "") return;
  const target = $("target").value;
  const targets = target === "" ? void 0 : [Number(target)];
  try {
    if (!client.send(body, targets)) return;
  } catch (e) {
    log("error", "you", e.message);
    return;
  }
  log("out", "you", body, targets === void 0 ? "to everyone" : `to ${name(targets[0])} only`);
  input.value = "";
}
function init() {
  $("join-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const r = $("room").value.trim();
    const u = $("user").value.trim();
    if (r && u) void join(r, u, $("profile").value, null);
  });
  $("send-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    send();
  });
  $("profile-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (client === null) return;
    const p = $("new-profile").value;
    try {
      client.updateProfile(p);
    } catch (e) {
      log("error", "you", e.message);
      return;
    }
    save();
    log("system", "you", `profile: ${p}`);
    renderMembers();
  });
  $("leave").addEventListener("click", () => {
    sessionStorage.removeItem(SESSION_KEY);
    void client?.close();
  });
  $("refresh").addEventListener("click", () => void refreshRooms());
  window.addEventListener("pagehide", save);
  setInterval(renderRtt, 1e3);
  void refreshRooms();
  const s = saved();
  if (s !== null) {
    $("room").value = s.room;
    $("user").value = s.user;
    $("profile").value = s.profile;
    void join(s.room, s.user, s.profile, fromBase64Url(s.resumeToken));
  }
}
init();

// The participant's side of the study: start page, selection task, polygon task, end page.
// Plain JS, no build step. Every answer is sent when the participant presses Submit and is
// validated again on the server; the server decides which trial comes next. Every text shown
// comes from the study config (/api/study "texts"), so a study can run in another language.
"use strict";

const BASE = document.querySelector('meta[name="study-base"]').content;
const app = document.getElementById("app");
const errorBox = document.getElementById("error");
const noticeBox = document.getElementById("notice");
const progressBox = document.getElementById("progress");
const TOKEN_KEY = "ldvce-study-token:" + BASE;
let INFO = null;  // /api/study: title, consent, panel parameters, texts
const REDIRECT_MS = 4000;  // time to note the completion code before the redirect

function T(name, vars) {
  let s = (INFO && INFO.texts && INFO.texts[name]) || name;
  for (const [k, v] of Object.entries(vars || {})) s = s.split("{" + k + "}").join(String(v));
  return s;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v === true) e.setAttribute(k, "");
    else if (v !== false && v !== null && v !== undefined) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function showError(msg) {
  errorBox.textContent = msg;
  errorBox.hidden = !msg;
}

function showNotice(msg) {
  noticeBox.textContent = msg;
  noticeBox.hidden = !msg;
}

// The boxes float over the page's bottom edge (the task keeps its one-screen layout); a tap
// or click dismisses them, so they never hide a button for long.
for (const box of [noticeBox, errorBox]) box.addEventListener("click", () => { box.hidden = true; });

async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(BASE + path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) {
    const err = new Error((data && data.error) || ("request failed: " + r.status));
    err.status = r.status;
    err.data = data;
    throw err;
  }
  return data;
}

// A page restored from the back/forward cache keeps its old state (a greyed-out Start button):
// load it afresh instead, so that Back never leads to a dead end.
window.addEventListener("pageshow", (ev) => { if (ev.persisted) location.reload(); });

// ------------------------------------------------------------------------------ start page
function panelQuery() {
  // Only the configured recruitment-panel parameters of this page's link are passed on.
  const q = new URLSearchParams(location.search);
  const out = new URLSearchParams();
  for (const name of INFO.panel_params) if (q.get(name)) out.set(name, q.get(name));
  return out.toString();
}

async function savedState() {
  const saved = localStorage.getItem(TOKEN_KEY);
  if (!saved) return null;
  try {
    return { token: saved, state: await api("GET", "/api/p/" + saved) };
  } catch (e) {
    if (e.status === 404) localStorage.removeItem(TOKEN_KEY);  // a link of another study/database
    return null;
  }
}

async function startPage() {
  app.replaceChildren();
  const mine = await savedState();
  const query = panelQuery();
  if (mine && mine.state.done && !query) {  // finished in this browser: no second participant
    app.append(el("p", { id: "already", class: "thanks" }, T("already_done")));
    endInfo(mine.state);
    return;
  }
  app.append(el("p", {}, T("intro", { n: INFO.trials })));
  const resumable = mine && !mine.state.done;
  if (resumable) {
    app.append(el("p", { id: "resume" }, T("already_started"), " ",
      el("a", { id: "continue", class: "button primary", href: BASE + "/p/" + mine.token }, T("continue"))));
  }
  let agree = null;
  if (INFO.consent) {
    agree = el("input", { type: "checkbox", id: "consent" });
    app.append(el("div", { class: "consent" }, el("p", {}, INFO.consent), el("label", {}, agree, " ", T("consent_label"))));
  }
  const start = el("button", { id: "start", class: resumable ? "" : "primary", type: "button" },
    resumable ? T("start_new") : T("start"));
  start.addEventListener("click", async () => {
    showError("");
    if (agree && !agree.checked) { showError(T("consent_first")); return; }
    start.disabled = true;
    try {
      const r = await api("POST", "/api/participants" + (query ? "?" + query : ""), { consent: agree ? agree.checked : false });
      localStorage.setItem(TOKEN_KEY, r.token);
      location.assign(r.link);
    } catch (e) { showError(e.message); start.disabled = false; }
  });
  app.append(el("p", {}, start));
}

// ------------------------------------------------------------------------------ participant
let TOKEN = null;

async function participantPage(token) {
  TOKEN = token;
  localStorage.setItem(TOKEN_KEY, token);
  render(await api("GET", "/api/p/" + token));
}

function endInfo(state) {
  // The completion code and/or the link back to the recruitment panel (a screened-out one differs).
  const c = state.completion;
  if (c && c.code) app.append(el("p", { class: "completion" }, T("completion_code"), " ", el("strong", { id: "completion-code" }, c.code)));
  if (c && c.url) app.append(el("p", {}, el("a", { id: "completion-link", class: "button primary", href: c.url }, T("completion_link"))));
  if (c && c.url && c.redirect) {  // the panel's own completion page, after the code was shown
    app.append(el("p", { id: "redirecting", class: "muted" }, T("redirecting")));
    setTimeout(() => location.assign(c.url), REDIRECT_MS);
  }
}

function render(state) {
  showError("");
  showNotice("");
  progressBox.textContent = state.done ? "" : T("task_of", { k: state.answered + 1, n: state.total });
  app.replaceChildren();
  if (state.done) {
    const text = { screened_out: T("screened_out"), withdrawn: T("withdrawn") }[state.status] || state.thank_you;
    app.append(el("p", { id: "thanks", class: "thanks", "data-status": state.status }, text));
    endInfo(state);
    app.append(el("p", { class: "muted small" }, T("participant_id"), " ", el("span", { id: "pid" }, state.participant)));
    return;
  }
  if (state.questionnaire) { questionnaireForm(state.questionnaire); return; }
  const t = state.trial;
  const head = el("div", { class: "head" }, el("h2", { class: "question" }, t.question), el("p", { class: "instructions" }, t.instructions));
  if (t.kind === "selection") selectionTask(t, head);
  else annotationTask(t, head);
  const link = location.origin + BASE + "/p/" + TOKEN;
  app.append(el("p", { class: "muted small mylink" }, T("personal_link"), " ", el("a", { href: link, id: "mylink" }, link), el("br"),
    T("participant_id"), " ", el("span", { id: "pid" }, state.participant)));
}

function describeKept(kept) {
  if (!kept) return "";
  if (kept.polygons) return T("kept_shapes", { n: kept.polygons.length });
  if (kept.choice === -1) return T("kept_none");
  return T("kept_frame", { k: kept.position !== undefined ? kept.position : kept.choice });
}

async function submit(body, button, onSaved) {
  button.disabled = true;
  showError("");
  try {
    const state = await api("POST", "/api/p/" + TOKEN + "/answer", body);
    if (onSaved) onSaved();
    render(state);
    window.scrollTo(0, 0);
  } catch (e) {
    if (e.status === 409 && e.data && e.data.state) {
      // Answered meanwhile in another window, or out of turn: the server's answer stands; say which.
      if (onSaved) onSaved();
      render(e.data.state);
      showNotice(e.data.kept ? T("kept_elsewhere", { answer: describeKept(e.data.kept) }) : e.data.error);
      return;
    }
    showError(e.message);
    button.disabled = false;
  }
}

// ------------------------------------------------------------------------------ selection
function fitFrames(grid, n, maxSize) {
  // The largest frame size (<= the configured one) at which every frame, "None" and Submit fit
  // the window without scrolling: on a phone several frames per row instead of one column.
  const PAD = 14, LABEL = 24, GAP = 8, BELOW = 110;
  const width = grid.clientWidth || (window.innerWidth - 32);
  const height = window.innerHeight - grid.getBoundingClientRect().top - BELOW;
  let size = 48;
  for (let s = maxSize; s >= 48; s -= 2) {
    const cols = Math.max(1, Math.floor((width + GAP) / (s + PAD + GAP)));
    if (Math.ceil(n / cols) * (s + PAD + LABEL + GAP) <= height) { size = s; break; }
  }
  grid.style.setProperty("--frame", size + "px");
}

function selectionTask(t, head) {
  let choice = null;
  const grid = el("div", { class: "frames", id: "frames", role: "group" });
  const submitBtn = el("button", { id: "submit", class: "primary", type: "button", disabled: true }, T("submit"));
  const buttons = [];
  const choose = (value, btn) => {
    choice = value;
    for (const b of buttons) b.setAttribute("aria-pressed", String(b === btn));
    submitBtn.disabled = false;
  };
  t.frames.forEach((f, pos) => {
    const alt = T("frame_alt", { k: pos + 1, n: t.frames.length });
    const b = el("button", { class: "frame", type: "button", "data-value": String(f.value), "aria-pressed": "false" },
      el("img", { src: f.url, alt: alt, width: t.frame_size, height: t.frame_size, draggable: "false" }),
      el("span", { "aria-hidden": "true" }, String(pos + 1)));
    b.addEventListener("click", () => choose(f.value, b));
    buttons.push(b);
    grid.append(b);
  });
  const none = el("button", { class: "none", id: "none", type: "button", "data-value": String(t.none_value), "aria-pressed": "false" },
    T("none_of_them"));
  none.addEventListener("click", () => choose(t.none_value, none));
  buttons.push(none);
  submitBtn.addEventListener("click", () => submit({ trial: t.key, choice: choice }, submitBtn));
  app.append(el("div", { class: "task task-selection", "data-trial": t.key }, head, grid, el("p", { class: "actions" }, none, " ", submitBtn)));
  const fit = () => fitFrames(grid, t.frames.length, t.frame_size);
  fit();
  window.onresize = fit;
}

// ------------------------------------------------------------------------------ annotation
const CLOSE_CSS = { mouse: 10, pen: 14, touch: 22, keyboard: 10 };  // CSS px: a finger is less precise

function loadDraft(key) {
  // Shapes drawn before a reload and not yet submitted: {polygons, current}, or null.
  try {
    const d = JSON.parse(sessionStorage.getItem(key) || "null");
    if (d && Array.isArray(d.polygons) && Array.isArray(d.current)) return d;
  } catch (e) { /* unreadable: start afresh */ }
  sessionStorage.removeItem(key);
  return null;
}

function drawPath(ctx, pts, close) {
  ctx.beginPath();
  pts.forEach(([x, y], k) => (k ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
  if (close) ctx.closePath();
}

function drawScene(ctx, D, s) {
  // s: {polygons, current, tip, cursor} in display px.
  ctx.clearRect(0, 0, D, D);
  ctx.lineWidth = 2;
  s.polygons.forEach((p, i) => {
    drawPath(ctx, p, true);
    ctx.fillStyle = "rgba(255, 60, 60, 0.30)";
    ctx.strokeStyle = "rgb(220, 30, 30)";
    ctx.fill();
    ctx.stroke();
    ctx.fillStyle = "white";
    ctx.font = "bold 16px sans-serif";
    ctx.fillText(String(i + 1), p[0][0] + 4, p[0][1] - 4);
  });
  if (s.current.length) {
    drawPath(ctx, s.tip ? s.current.concat([s.tip]) : s.current, false);
    ctx.strokeStyle = "rgb(30, 120, 255)";
    ctx.stroke();
    s.current.forEach(([x, y], k) => {
      ctx.beginPath();
      ctx.arc(x, y, k === 0 && s.current.length >= 3 ? 7 : 4, 0, 2 * Math.PI);
      ctx.fillStyle = k === 0 ? "rgb(255, 200, 0)" : "rgb(30, 120, 255)";
      ctx.fill();
    });
  }
  if (s.cursor) {  // the keyboard cursor: a cross
    const [x, y] = s.cursor;
    ctx.strokeStyle = "rgb(255, 255, 255)";
    drawPath(ctx, [[x - 8, y], [x + 8, y]], false);
    ctx.stroke();
    drawPath(ctx, [[x, y - 8], [x, y + 8]], false);
    ctx.stroke();
  }
}

function statusText(polygons, current) {
  if (current.length > 0) return current.length < 3 ? T("status_more", { n: 3 - current.length }) : T("status_close");
  return polygons.length === 0 ? T("status_start") : T("status_shapes", { n: polygons.length });
}

function cursorMove(ev, cursor, D) {
  // Keyboard alternative: arrows move the cursor (Shift: 1 px, else 8 px); null for other keys.
  const step = ev.shiftKey ? 1 : 8;
  const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
  if (!moves[ev.key]) return null;
  const c = cursor || [D / 2, D / 2];
  const clamp = (v) => Math.min(D, Math.max(0, v));
  return [clamp(c[0] + moves[ev.key][0]), clamp(c[1] + moves[ev.key][1])];
}

function annotationElements(t) {
  const D = t.display_size;
  const img = el("img", { src: t.image_url, alt: T("annotation_alt"), draggable: "false", width: D, height: D });
  const canvas = el("canvas", { id: "canvas", width: D, height: D, tabindex: "0", role: "application",
    "aria-label": T("canvas_label") });
  const stage = el("div", { class: "stage", id: "stage" }, img, canvas);
  stage.style.setProperty("--display", D + "px");
  return {
    canvas, stage,
    status: el("p", { class: "status", id: "status", "aria-live": "polite" }),
    list: el("ul", { class: "shapes", id: "shapes" }),
    closeBtn: el("button", { id: "close", type: "button" }, T("close_shape")),
    undoBtn: el("button", { id: "undo", type: "button" }, T("undo")),
    submitBtn: el("button", { id: "submit", class: "primary", type: "button", disabled: true }, T("submit")),
  };
}

function annotationTask(t, head) {
  const D = t.display_size;
  const DRAFT_KEY = "ldvce-study-draft:" + TOKEN + ":" + t.key;
  const draft = loadDraft(DRAFT_KEY);
  const s = { polygons: draft ? draft.polygons : [], current: draft ? draft.current : [], tip: null, cursor: null };
  const { canvas, stage, status, list, closeBtn, undoBtn, submitBtn } = annotationElements(t);
  const ctx = canvas.getContext("2d");

  // Pointer position in display pixels, whatever size the image is drawn at (phones).
  function toDisplay(ev) {
    const r = canvas.getBoundingClientRect();
    const clamp = (v) => Math.min(D, Math.max(0, Math.round(v * 100) / 100));
    return [clamp((ev.clientX - r.left) * D / r.width), clamp((ev.clientY - r.top) * D / r.height)];
  }
  // The closing tolerance is in screen pixels, so it is as easy to hit on a small phone image.
  const closeRadius = (type) => Math.max(10, (CLOSE_CSS[type] || CLOSE_CSS.mouse) * D / (canvas.getBoundingClientRect().width || D));
  const unsaved = (ev) => {  // a reload or closing the tab warns while shapes are not submitted
    if (!s.polygons.length && !s.current.length) return undefined;
    ev.preventDefault();
    ev.returnValue = T("leave_warning");
    return T("leave_warning");
  };
  window.addEventListener("beforeunload", unsaved);
  const done = () => { window.removeEventListener("beforeunload", unsaved); sessionStorage.removeItem(DRAFT_KEY); };

  function update() {
    drawScene(ctx, D, s);
    list.replaceChildren(...s.polygons.map((p, i) => el("li", {}, T("shape", { i: i + 1, n: p.length }), " ",
      el("button", { type: "button", class: "delete", "data-index": String(i),
        onclick: () => { s.polygons.splice(i, 1); update(); } }, T("delete")))));
    closeBtn.disabled = s.current.length < 3;
    undoBtn.disabled = s.current.length === 0 && s.polygons.length === 0;
    submitBtn.disabled = s.polygons.length === 0 || s.current.length > 0;
    status.textContent = statusText(s.polygons, s.current);
    if (s.polygons.length || s.current.length) sessionStorage.setItem(DRAFT_KEY, JSON.stringify({ polygons: s.polygons, current: s.current }));
    else sessionStorage.removeItem(DRAFT_KEY);
  }
  function closeShape() {
    if (s.current.length < 3) return;
    s.polygons.push(s.current);
    s.current = [];
    update();
  }
  function addCorner(p, type) {
    const first = s.current[0];
    if (s.current.length >= 3 && Math.hypot(p[0] - first[0], p[1] - first[1]) <= closeRadius(type)) { closeShape(); return; }
    if (s.current.length >= t.max_points) { showError(T("max_points", { n: t.max_points })); return; }
    if (s.current.length === 0 && s.polygons.length >= t.max_polygons) { showError(T("max_polygons", { n: t.max_polygons })); return; }
    showError("");
    s.current.push(p);
    update();
  }

  canvas.addEventListener("pointerdown", (ev) => {
    if (ev.button !== undefined && ev.button !== 0) return;
    ev.preventDefault();
    canvas.focus({ preventScroll: true });
    s.cursor = null;
    addCorner(toDisplay(ev), ev.pointerType);
  });
  canvas.addEventListener("pointermove", (ev) => { s.tip = toDisplay(ev); if (s.current.length) drawScene(ctx, D, s); });
  canvas.addEventListener("pointerleave", () => { s.tip = null; drawScene(ctx, D, s); });
  canvas.addEventListener("keydown", (ev) => {
    const moved = cursorMove(ev, s.cursor, D);
    if (moved) { ev.preventDefault(); s.cursor = moved; s.tip = null; drawScene(ctx, D, s); }
    else if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); addCorner(s.cursor || [D / 2, D / 2], "keyboard"); }
  });
  closeBtn.addEventListener("click", closeShape);
  undoBtn.addEventListener("click", () => {
    if (s.current.length) s.current.pop();
    else if (s.polygons.length) s.current = s.polygons.pop();  // reopen the last shape
    update();
  });
  submitBtn.addEventListener("click", () => submit({ trial: t.key, polygons: s.polygons }, submitBtn, done));

  const side = el("div", { class: "side" }, head, status, el("p", { class: "tools" }, closeBtn, " ", undoBtn), list, submitBtn);
  app.append(el("div", { class: "task task-annotation", "data-trial": t.key }, stage, side));
  update();
  if (draft && (draft.polygons.length || draft.current.length)) showNotice(T("restored"));
}

// ------------------------------------------------------------------------------ questionnaire
function questionField(q) {
  // Labels and options are the config's texts, set as text (never HTML).
  const id = "q-" + q.name;
  let input;
  if (q.type === "choice") {
    input = el("select", { id: id, name: q.name, required: q.required },
      el("option", { value: "" }, T("choose")), ...q.options.map((o) => el("option", { value: o }, o)));
  } else if (q.type === "number") {
    input = el("input", { id: id, name: q.name, type: "number", min: q.min, max: q.max, required: q.required, step: "any" });
  } else {
    input = el("textarea", { id: id, name: q.name, maxlength: String(q.max_length), rows: "3", required: q.required });
  }
  const label = el("label", { for: id }, q.label, q.required ? "" : " " + T("optional"));
  return { row: el("p", { class: "question-row" }, label, el("br"), input), input: input };
}

function questionnaireForm(questions) {
  const fields = questions.map((q) => [q, questionField(q)]);
  const send = el("button", { id: "send", class: "primary", type: "submit" }, T("questionnaire_send"));
  const form = el("form", { id: "questionnaire", novalidate: true }, el("p", {}, T("questionnaire_intro")),
    ...fields.map(([, f]) => f.row), send);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const answers = {};
    for (const [q, f] of fields) {
      const v = f.input.value.trim();
      if (v !== "") answers[q.name] = q.type === "number" ? Number(v) : v;
    }
    send.disabled = true;
    showError("");
    try { render(await api("POST", "/api/p/" + TOKEN + "/questionnaire", { answers: answers })); }
    catch (e) { showError(e.message); send.disabled = false; }
  });
  app.append(form);
}

// ------------------------------------------------------------------------------ routing
(async function main() {
  const path = location.pathname.slice(BASE.length);
  const m = path.match(/^\/p\/([A-Za-z0-9_-]+)\/?$/);
  try {
    INFO = await api("GET", "/api/study");
    document.title = INFO.title;
    if (m) await participantPage(m[1]);
    else await startPage();
  } catch (e) {
    app.replaceChildren();
    showError(e.message);
  }
})();

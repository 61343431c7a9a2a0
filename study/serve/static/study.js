// The participant's side of the study: start page, selection task, polygon task.
// Plain JS, no build step. Every answer is sent when the participant presses Submit and is
// validated again on the server; the server decides which trial comes next.
"use strict";

const BASE = document.querySelector('meta[name="study-base"]').content;
const app = document.getElementById("app");
const errorBox = document.getElementById("error");
const progressBox = document.getElementById("progress");
const TOKEN_KEY = "ldvce-study-token:" + BASE;

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
    throw err;
  }
  return data;
}

// ------------------------------------------------------------------------------ start page
async function startPage() {
  const info = await api("GET", "/api/study");
  document.title = info.title;
  app.replaceChildren();
  const saved = localStorage.getItem(TOKEN_KEY);
  app.append(el("p", {}, "In this study you will see " + info.trials +
    " short tasks about images. Your answers are saved after each task, so you can take a break" +
    " and continue later from your personal link."));
  let agree = null;
  if (info.consent) {
    agree = el("input", { type: "checkbox", id: "consent" });
    app.append(el("div", { class: "consent" }, el("p", {}, info.consent),
      el("label", {}, agree, " I have read this and agree to take part.")));
  }
  const start = el("button", { id: "start", class: "primary", type: "button" }, "Start the study");
  start.addEventListener("click", async () => {
    showError("");
    if (agree && !agree.checked) { showError("Please tick the consent box first."); return; }
    start.disabled = true;
    try {
      const r = await api("POST", "/api/participants", { consent: agree ? agree.checked : false });
      localStorage.setItem(TOKEN_KEY, r.token);
      location.assign(r.link);
    } catch (e) { showError(e.message); start.disabled = false; }
  });
  app.append(start);
  if (saved) {
    app.append(el("p", {}, "You already started: ",
      el("a", { id: "continue", href: BASE + "/p/" + saved }, "continue where you left off"), "."));
  }
}

// ------------------------------------------------------------------------------ participant
let TOKEN = null;

async function participantPage(token) {
  TOKEN = token;
  localStorage.setItem(TOKEN_KEY, token);
  render(await api("GET", "/api/p/" + token));
}

function render(state) {
  showError("");
  progressBox.textContent = state.done ? "" : ("Task " + (state.answered + 1) + " of " + state.total);
  app.replaceChildren();
  if (state.done) {
    app.append(el("p", { id: "thanks", class: "thanks" }, state.thank_you),
      el("p", { class: "muted small" }, "Participant id: ", el("span", { id: "pid" }, state.participant)));
    return;
  }
  const link = location.origin + BASE + "/p/" + TOKEN;
  app.append(el("p", { class: "muted small" }, "Your personal link (bookmark it to continue later): ",
    el("a", { href: link, id: "mylink" }, link), el("br"),
    "Participant id (quote it to have your answers withdrawn): ", el("span", { id: "pid" }, state.participant)));
  const t = state.trial;
  app.append(el("h2", { class: "question" }, t.question));
  app.append(el("p", { class: "instructions" }, t.instructions));
  if (t.kind === "selection") selectionTask(t);
  else annotationTask(t);
}

async function submit(body, button) {
  button.disabled = true;
  showError("");
  try {
    render(await api("POST", "/api/p/" + TOKEN + "/answer", body));
    window.scrollTo(0, 0);
  } catch (e) {
    if (e.status === 409) {  // answered already (another tab): show what comes next
      render(await api("GET", "/api/p/" + TOKEN));
      return;
    }
    showError(e.message);
    button.disabled = false;
  }
}

// ------------------------------------------------------------------------------ selection
function selectionTask(t) {
  let choice = null;
  const grid = el("div", { class: "frames", id: "frames" });
  const submitBtn = el("button", { id: "submit", class: "primary", type: "button", disabled: true }, "Submit");
  const buttons = [];
  const choose = (value, btn) => {
    choice = value;
    for (const b of buttons) b.setAttribute("aria-pressed", String(b === btn));
    submitBtn.disabled = false;
  };
  t.frames.forEach((f, pos) => {
    const b = el("button", { class: "frame", type: "button", "data-value": String(f.value), "aria-pressed": "false" },
      el("img", { src: f.url, alt: "image " + (pos + 1), width: t.frame_size, height: t.frame_size, draggable: "false" }),
      el("span", {}, String(pos + 1)));
    b.addEventListener("click", () => choose(f.value, b));
    buttons.push(b);
    grid.append(b);
  });
  const none = el("button", { class: "none", id: "none", type: "button", "data-value": String(t.none_value), "aria-pressed": "false" },
    "None of them");
  none.addEventListener("click", () => choose(t.none_value, none));
  buttons.push(none);
  submitBtn.addEventListener("click", () => submit({ trial: t.key, choice: choice }, submitBtn));
  app.append(grid, el("p", {}, none), submitBtn);
}

// ------------------------------------------------------------------------------ annotation
function annotationTask(t) {
  const D = t.display_size;
  const CLOSE_RADIUS = 10;  // display px: a click this near the first corner closes the shape
  const polygons = [];      // closed shapes: arrays of [x, y] in display px
  let current = [];         // the open shape
  let hover = null;

  const img = el("img", { src: t.image_url, alt: "image to annotate", draggable: "false", width: D, height: D });
  const canvas = el("canvas", { id: "canvas", width: D, height: D });
  const stage = el("div", { class: "stage", id: "stage" }, img, canvas);
  stage.style.width = D + "px";
  const ctx = canvas.getContext("2d");
  const status = el("p", { class: "status", id: "status" });
  const list = el("ol", { class: "shapes", id: "shapes" });
  const closeBtn = el("button", { id: "close", type: "button" }, "Close shape");
  const undoBtn = el("button", { id: "undo", type: "button" }, "Undo");
  const submitBtn = el("button", { id: "submit", class: "primary", type: "button", disabled: true }, "Submit");

  // Pointer position in display pixels, whatever size the image is drawn at (phones).
  function toDisplay(ev) {
    const r = canvas.getBoundingClientRect();
    const x = (ev.clientX - r.left) * D / r.width;
    const y = (ev.clientY - r.top) * D / r.height;
    const clamp = (v) => Math.min(D, Math.max(0, Math.round(v * 100) / 100));
    return [clamp(x), clamp(y)];
  }
  const near = (a, b) => Math.hypot(a[0] - b[0], a[1] - b[1]) <= CLOSE_RADIUS;

  function closeShape() {
    if (current.length < 3) return;
    polygons.push(current);
    current = [];
    update();
  }

  function update() {
    ctx.clearRect(0, 0, D, D);
    ctx.lineWidth = 2;
    polygons.forEach((p, i) => {
      ctx.beginPath();
      p.forEach(([x, y], k) => (k ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      ctx.closePath();
      ctx.fillStyle = "rgba(255, 60, 60, 0.30)";
      ctx.strokeStyle = "rgb(220, 30, 30)";
      ctx.fill();
      ctx.stroke();
      ctx.fillStyle = "white";
      ctx.font = "bold 16px sans-serif";
      ctx.fillText(String(i + 1), p[0][0] + 4, p[0][1] - 4);
    });
    if (current.length) {
      ctx.beginPath();
      current.forEach(([x, y], k) => (k ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      if (hover) ctx.lineTo(hover[0], hover[1]);
      ctx.strokeStyle = "rgb(30, 120, 255)";
      ctx.stroke();
      current.forEach(([x, y], k) => {
        ctx.beginPath();
        ctx.arc(x, y, k === 0 && current.length >= 3 ? 7 : 4, 0, 2 * Math.PI);
        ctx.fillStyle = k === 0 ? "rgb(255, 200, 0)" : "rgb(30, 120, 255)";
        ctx.fill();
      });
    }
    list.replaceChildren(...polygons.map((p, i) => el("li", {},
      "Shape " + (i + 1) + " (" + p.length + " corners) ",
      el("button", { type: "button", class: "delete", "data-index": String(i),
        onclick: () => { polygons.splice(i, 1); update(); } }, "Delete"))));
    closeBtn.disabled = current.length < 3;
    undoBtn.disabled = current.length === 0 && polygons.length === 0;
    submitBtn.disabled = polygons.length === 0 || current.length > 0;
    if (current.length > 0) {
      status.textContent = current.length < 3
        ? "Add at least " + (3 - current.length) + " more corner(s)."
        : "Close the shape (click its first corner or 'Close shape') before submitting.";
    } else if (polygons.length === 0) {
      status.textContent = "Click on the image to start a shape.";
    } else {
      status.textContent = polygons.length + " shape(s). Draw another one, or Submit.";
    }
  }

  canvas.addEventListener("pointerdown", (ev) => {
    if (ev.button !== undefined && ev.button !== 0) return;
    ev.preventDefault();
    const p = toDisplay(ev);
    if (current.length >= 3 && near(p, current[0])) { closeShape(); return; }
    if (current.length >= t.max_points) { showError("A shape can have at most " + t.max_points + " corners; close it."); return; }
    if (current.length === 0 && polygons.length >= t.max_polygons) {
      showError("At most " + t.max_polygons + " shapes per image."); return;
    }
    showError("");
    current.push(p);
    update();
  });
  canvas.addEventListener("pointermove", (ev) => { hover = toDisplay(ev); if (current.length) update(); });
  canvas.addEventListener("pointerleave", () => { hover = null; update(); });
  closeBtn.addEventListener("click", closeShape);
  undoBtn.addEventListener("click", () => {
    if (current.length) current.pop();
    else if (polygons.length) current = polygons.pop();  // reopen the last shape
    update();
  });
  submitBtn.addEventListener("click", () => submit({ trial: t.key, polygons: polygons }, submitBtn));

  app.append(stage, status, el("p", { class: "tools" }, closeBtn, " ", undoBtn), list, submitBtn);
  update();
}

// ------------------------------------------------------------------------------ routing
(async function main() {
  const path = location.pathname.slice(BASE.length);
  const m = path.match(/^\/p\/([A-Za-z0-9_-]+)\/?$/);
  try {
    if (m) await participantPage(m[1]);
    else await startPage();
  } catch (e) {
    app.replaceChildren();
    showError(e.message);
  }
})();

// Admin page: progress tables and the export download. The token stays in this tab only
// (sessionStorage) and is sent as an Authorization header, never in a URL.
"use strict";

const BASE = document.querySelector('meta[name="study-base"]').content;
const KEY = "ldvce-study-admin:" + BASE;
const errorBox = document.getElementById("error");

function showError(msg) { errorBox.textContent = msg; errorBox.hidden = !msg; }

async function get(path, init) {
  const opts = init || {};
  opts.headers = Object.assign({ Authorization: "Bearer " + sessionStorage.getItem(KEY) }, opts.headers || {});
  const r = await fetch(BASE + path, opts);
  if (!r.ok) {
    let msg = "request failed: " + r.status;
    try { msg = (await r.json()).error || msg; } catch (e) { /* keep the status */ }
    throw new Error(msg);
  }
  return r;
}

function row(cells) {
  // textContent only: ids, panel values and reasons are shown as text, never parsed as HTML.
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.append(c); else td.textContent = c;
    tr.append(td);
  }
  return tr;
}

function withdrawButton(q) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "withdraw";
  b.dataset.participant = q.id;
  b.textContent = "Withdraw";
  b.disabled = q.status === "withdrawn";
  b.addEventListener("click", async () => {
    if (!confirm("Delete every answer of participant " + q.id + "? This cannot be undone.")) return;
    try {
      const reason = document.getElementById("reason").value.trim() || "withdrawn on request";
      await get("/admin/withdraw", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ participant: q.id, reason: reason }) });
      refresh();
    } catch (e) { showError(e.message); }
  });
  return b;
}

async function refresh() {
  showError("");
  try {
    const p = await (await get("/admin/progress")).json();
    document.getElementById("panel").hidden = false;
    document.getElementById("summary").textContent =
      p.participants + " participant(s), " + p.finished + " finished";
    const start = location.origin + BASE + "/";
    const a = document.getElementById("startlink");
    a.href = start; a.textContent = start;
    document.querySelector("#images tbody").replaceChildren(...Object.entries(p.images).map(
      ([img, n]) => row([img, n.selection, n.annotation, n.catch])));
    document.querySelector("#people tbody").replaceChildren(...p.per_participant.map((q) => row([
      q.id, q.status, q.condition || "–", Object.entries(q.panel || {}).map(([k, v]) => k + "=" + v).join(" ") || "–",
      q.created_at, q.updated_at, q.answered + " / " + q.trials, q.submitted_at || "no",
      q.catch_total ? q.catch_passed + " / " + q.catch_total : "–", withdrawButton(q)])));
    document.querySelector("#withdrawals tbody").replaceChildren(...p.withdrawals.map((w) => row([
      w.participant_id, w.withdrawn_at, String(w.answers_removed), w.reason])));
  } catch (e) { showError(e.message); }
}

document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY, document.getElementById("token").value);
  refresh();
});
document.getElementById("refresh").addEventListener("click", refresh);
document.getElementById("download").addEventListener("click", async () => {
  try {
    const blob = await (await get("/admin/export.csv")).blob();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "studyentries.csv";
    document.body.append(a); a.click(); a.remove();
  } catch (e) { showError(e.message); }
});
if (sessionStorage.getItem(KEY)) refresh();

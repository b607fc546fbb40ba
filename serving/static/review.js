// The review page: open items one after another, the heatmap over the image, every method's
// evidence, the known-image match, and the decision (buttons or keys g / c / s, n next,
// h heatmap, r refresh). Plain script, no build step: everything comes from this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem("synthdetect-key") || "", queue: [], current: null,
                queueOn: true, objectUrl: null, load: 0, ready: false, failed: null,
                deciding: false };
const DECISION_BUTTONS = ["decide-generated", "decide-camera", "decide-skip"];
// Keys typed into these are text, not shortcuts; a checkbox or the file input is not typed in.
const TEXT_INPUTS = new Set(["text", "password", "search", "email", "number", "url", "tel"]);

function say(text, kind) {
  const box = $("message");
  box.textContent = text;
  box.className = kind || "";
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.key) headers["Authorization"] = "Bearer " + state.key;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  const type = response.headers.get("Content-Type") || "";
  const body = type.startsWith("application/json") ? await response.json()
    : await response.blob();
  if (!response.ok) {
    const reason = body && body.error ? body.error : response.statusText;
    const error = new Error(reason);
    error.status = response.status;
    throw error;
  }
  return body;
}

// --- the queue ----------------------------------------------------------------------------

async function loadQueue() {
  try {
    const page = await api("/v1/reviews?status=open&limit=200");
    state.queueOn = true;
    state.queue = page.items;
    if (state.queueError) say("", "");  // the key or the server is fine now
    state.queueError = false;
    const shown = page.counts.open > page.items.length
      ? ` (the first ${page.items.length} in review order shown)` : "";
    $("counts").textContent =
      `${page.counts.open} open, ${page.counts.decided} decided${shown}`;
    renderQueue();
    return true;
  } catch (error) {
    if (error.status === 404) {
      state.queueOn = false;
      $("counts").textContent = "review queue off (--review-db): scoring only";
      $("upload-queue").checked = false;
      $("upload-queue").disabled = true;
    } else if (error.status === 401 || error.status === 403) {
      say(error.message + ": enter a reviewer key above", "error");
      state.queueError = true;
    } else {
      say("could not load the queue: " + error.message, "error");
      state.queueError = true;
    }
    renderQueue();
    return false;
  }
}

function renderQueue() {
  const list = $("queue");
  list.replaceChildren();
  for (const item of state.queue) {
    const li = document.createElement("li");
    li.dataset.id = item.id;
    if (state.current && state.current.id === item.id) li.className = "current";
    const p = item.probability === null ? "" : ` ${Number(item.probability).toFixed(3)}`;
    li.textContent = `#${item.id} ${item.label || ""}${p}`;
    const small = document.createElement("small");
    small.textContent = `${item.reason}${item.skips ? ", skipped " + item.skips + "x" : ""}` +
      ` · ${item.filename || item.image_sha256.slice(0, 12)}`;
    li.appendChild(small);
    li.addEventListener("click", () => showItem(item.id));
    list.appendChild(li);
  }
  if (!state.queue.length) {
    const li = document.createElement("li");
    li.textContent = state.queueOn ? "nothing open" : "queue off";
    list.appendChild(li);
  }
}

async function next() {
  if (!(await loadQueue())) return;
  const later = state.queue.find((item) => !state.current || item.id !== state.current.id);
  if (later) await showItem(later.id);
  else if (state.queueOn) say("no more open items", "ok");
}

// --- one item -----------------------------------------------------------------------------

function setImage(blob) {
  if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
  state.objectUrl = URL.createObjectURL(blob);
  const img = $("image");
  return new Promise((resolve) => {
    img.onload = () => resolve();
    img.onerror = () => resolve();
    img.src = state.objectUrl;
  });
}

function newLoad() {
  // A slow image (a large TIFF converted, a heatmap, an upload being scored) must not land on
  // what the page shows next: each load (an item opened, an upload) has a number, and a
  // response for an earlier one is dropped. Until the new image is shown, the old one is gone
  // and no decision is taken.
  const load = ++state.load;
  state.ready = false;
  state.failed = null;
  $("image").removeAttribute("src");
  clearHeatmap();
  return () => load !== state.load;
}

async function showItem(id) {
  // true once the item is shown in full; false when a later load took over or it failed
  const stale = newLoad();
  try {
    const item = await api(`/v1/reviews/${id}`);
    if (stale()) return false;
    say("", "");  // what was said about the previous item is not about this one
    state.current = item;
    $("item").hidden = false;
    $("item-title").textContent = `Review #${item.id} (${item.reason}, ${item.status})`;
    renderVerdict(item.verdict);
    renderKnown(item.known_matches);
    renderReports(item.reports);
    renderDecision(item);
    renderQueue();
    clearHeatmap();
    if (item.image_kept) {
      const blob = await api(`/v1/reviews/${id}/image`);
      if (stale()) return false;
      await setImage(blob);
      if (stale()) return false;
      state.ready = true;
      // No heatmap (422: too small for the model; or the server busy) is said, not a failure:
      // the image is on the page, and the decision is about the image.
      const heat = await api(`/v1/reviews/${id}/heatmap`).catch((error) => (
        { error: error.message }));
      if (stale()) return false;
      drawHeatmap(heat, item.verdict.image.width, item.verdict.image.height);
    } else {
      state.ready = true;
      say("the image is no longer kept (expired or over the folder's cap); verdict only", "");
    }
    return true;
  } catch (error) {
    if (stale()) return false;
    state.failed = id;  // decisions wait for a retry, saying so (not "still loading" for ever)
    say(`could not open review #${id}: ${error.message}`, "error");
    return false;
  }
}

function renderVerdict(verdict) {
  const label = $("verdict-label");
  label.textContent = verdict.label;
  label.className = "label-" + verdict.label;
  $("verdict-probability").textContent =
    verdict.probability === null ? "" : `P(generated) ${verdict.probability.toFixed(3)}` +
      ` (threshold ${Number(verdict.threshold).toFixed(3)})`;
  $("verdict-decided").textContent = `decided by ${verdict.decided_by}`;
  $("verdict-summary").textContent = verdict.summary;
  const degraded = $("degraded");
  degraded.hidden = !verdict.degraded;
  degraded.textContent = verdict.degraded
    ? "Degraded: " + (verdict.degraded_reasons || []).join("; ") : "";
  const list = $("evidence");
  list.replaceChildren();
  for (const e of verdict.evidence) {
    const li = document.createElement("li");
    li.textContent = `${e.method}: ${e.message} (${e.strength}, supports ${e.supports})`;
    list.appendChild(li);
  }
  const said = new Set(verdict.evidence.map((e) => e.method));
  for (const [name, m] of Object.entries(verdict.methods)) {
    if (!m.abstained || said.has(name)) continue;
    const li = document.createElement("li");
    li.className = "abstain";
    const why = m.details && m.details.failure ? `failed (${m.details.failure})` : "no signal";
    li.textContent = `${name}: ${why}, abstained`;
    list.appendChild(li);
  }
}

function renderKnown(matches) {
  const list = $("known");
  list.replaceChildren();
  if (!matches || !matches.length) {
    const li = document.createElement("li");
    li.textContent = "no confirmed image matches";
    list.appendChild(li);
    return;
  }
  for (const m of matches) {
    const li = document.createElement("li");
    const how = m.exact ? "the same image" : `distance ${m.distance}`;
    li.textContent = `confirmed as ${m.label} on ${m.confirmed_at.slice(0, 10)} by ` +
      `${m.confirmed_by}, ${how}${m.note ? " (" + m.note + ")" : ""}`;
    list.appendChild(li);
  }
}

function renderReports(reports) {
  $("reports-box").hidden = !reports || !reports.length;
  const list = $("reports");
  list.replaceChildren();
  for (const r of reports || []) {
    const li = document.createElement("li");
    li.textContent = `${r.reporter} on ${r.at.slice(0, 10)}: ${r.reason}`;
    list.appendChild(li);
  }
}

function renderDecision(item) {
  const decided = item.status === "decided";
  const box = $("decided");
  box.hidden = !decided;
  box.textContent = decided
    ? `Decided ${item.decision} by ${item.decided_by} on ${item.decided_at}` +
      (item.note ? ` (${item.note})` : "") : "";
  for (const id of DECISION_BUTTONS) $(id).disabled = decided || state.deciding;
  $("note").value = "";
}

// --- heatmap ------------------------------------------------------------------------------

function tileColour(p, threshold) {
  // Blue (camera) through transparent at the threshold to red (generated).
  const t = p >= threshold ? (p - threshold) / Math.max(1e-6, 1 - threshold)
    : -(threshold - p) / Math.max(1e-6, threshold);
  const alpha = 0.15 + 0.45 * Math.abs(t);
  return t >= 0 ? `rgba(220,30,30,${alpha})` : `rgba(30,90,220,${alpha})`;
}

function clearHeatmap() {
  const canvas = $("heatmap");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  canvas.dataset.tiles = "0";
}

function drawHeatmap(heat, width, height) {
  const canvas = $("heatmap");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, width, height);
  if (heat.error) {
    say("no heatmap: " + heat.error, "");
    return;
  }
  for (const tile of heat.tiles) {
    const [x, y, w, h] = tile.box;
    ctx.fillStyle = tileColour(tile.probability, heat.threshold);
    ctx.fillRect(x, y, w, h);
  }
  canvas.dataset.tiles = String(heat.tiles.length);
  canvas.classList.toggle("off", !$("heatmap-toggle").checked);
}

function toggleHeatmap() {
  $("heatmap").classList.toggle("off", !$("heatmap-toggle").checked);
}

// --- decisions ----------------------------------------------------------------------------

async function decide(decision) {
  const item = state.current;
  // One decision at a time: a double click or a second key press while the first is on its
  // way would decide twice (a 409) or skip twice, jumping over the next item.
  if (!item || item.status !== "open" || state.deciding) return;
  if (state.failed !== null) {
    say("the image failed to load: click the item in the queue to try again, or n for the " +
        "next", "error");
    return;
  }
  if (!state.ready) {  // the decision is about the picture: not before it is on the page
    say("the image is still loading", "error");
    return;
  }
  const reviewer = $("reviewer").value.trim();
  if (!reviewer) {
    say("enter your name as reviewer first", "error");
    $("reviewer").focus();
    return;
  }
  state.deciding = true;
  for (const id of DECISION_BUTTONS) $(id).disabled = true;
  try {
    await submitDecision(item, decision, reviewer);
  } finally {
    state.deciding = false;
    const open = state.current && state.current.status === "open";
    for (const id of DECISION_BUTTONS) $(id).disabled = !open;
  }
}

async function submitDecision(item, decision, reviewer) {
  const here = () => state.current && state.current.id === item.id;  // not moved on meanwhile
  try {
    const done = await api(`/v1/reviews/${item.id}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ decision, reviewer, note: $("note").value }),
    });
    if (decision === "skip") {
      if (!here()) {
        say(`skipped review #${item.id}`, "ok");
        await loadQueue();
        return;
      }
      state.current = done;
      await next();
      // the next item's own message (no heatmap, no image kept) matters more than this one
      if (!$("message").textContent) say(`skipped review #${item.id}`, "ok");
      return;
    }
    say(`review #${item.id} decided ${done.decision}; written to the known-image memory ` +
        `(record ${done.memory_id})`, "ok");
    if (here()) {
      state.current = done;
      renderDecision(done);
      $("item-title").textContent = `Review #${done.id} (${done.reason}, ${done.status})`;
    }
    await loadQueue();
  } catch (error) {
    const message = `decision not saved: ${error.message}`;
    say(message, "error");
    if (error.status === 409 && here()) {
      // decided by another reviewer meanwhile: show it as it is now, and the queue without it
      await showItem(item.id);
      await loadQueue();
      if (here()) say(message, "error");
    }
  }
}

// --- upload -------------------------------------------------------------------------------

async function upload(event) {
  event.preventDefault();
  const file = $("upload-input").files[0];
  if (!file) {
    say("choose an image file first", "error");
    return;
  }
  const queue = state.queueOn && $("upload-queue").checked;
  // the page is about to show this upload: an item still loading must not land on it
  const stale = newLoad();
  state.current = null;
  $("item").hidden = true;
  renderQueue();
  say(`scoring ${file.name}...`, "");
  try {
    // multipart, so that the server keeps the file's name (the queue shows it)
    const form = new FormData();
    form.append("image", file, file.name);
    const answer = await api(`/v1/score?heatmap=true${queue ? "&review=true" : ""}`, {
      method: "POST",
      body: form,
    });
    if (stale()) return;
    const result = answer.results[0];
    if (result.error) throw new Error(result.error);  // not an image: the 422 of a raw body
    if (result.review_id) {
      await loadQueue();
      if (stale() || !(await showItem(result.review_id))) return;
    } else {
      $("item").hidden = false;
      $("item-title").textContent = `Scored ${file.name} (not queued)`;
      renderVerdict(result.verdict);
      const known = result.verdict.methods.known_image;
      renderKnown(known && known.details.match ? [known.details.match] : []);
      renderReports([]);
      renderDecision({ status: "decided", decision: "-", decided_by: "-", decided_at: "-" });
      $("decided").hidden = true;
      await setImage(file);
      if (stale()) return;
      drawHeatmap(result.heatmap, result.verdict.image.width, result.verdict.image.height);
    }
    say(`${file.name}: ${result.verdict.label}` +
        (result.review_id ? ` (review #${result.review_id})` : ""), "ok");
  } catch (error) {
    if (!stale()) say(`could not score ${file.name}: ${error.message}`, "error");
  }
}

// --- wiring -------------------------------------------------------------------------------

function typing(target) {
  if (target instanceof HTMLInputElement) return TEXT_INPUTS.has(target.type);
  return target instanceof HTMLTextAreaElement || Boolean(target && target.isContentEditable);
}

document.addEventListener("DOMContentLoaded", () => {
  $("reviewer").value = localStorage.getItem("synthdetect-reviewer") || "";
  $("reviewer").addEventListener("change", () =>
    localStorage.setItem("synthdetect-reviewer", $("reviewer").value.trim()));
  $("api-key").value = state.key;
  $("api-key").addEventListener("change", () => {
    state.key = $("api-key").value.trim();
    sessionStorage.setItem("synthdetect-key", state.key);
    next();
  });
  for (const id of DECISION_BUTTONS) {
    $(id).addEventListener("click", () => decide($(id).dataset.decision));
  }
  $("next").addEventListener("click", next);
  $("refresh").addEventListener("click", loadQueue);
  $("heatmap-toggle").addEventListener("change", toggleHeatmap);
  $("upload-form").addEventListener("submit", upload);
  document.addEventListener("keydown", (event) => {
    if (typing(event.target) || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.repeat) return;  // a key held down repeats: one decision per press
    const keys = { g: () => decide("generated"), c: () => decide("camera"),
                   s: () => decide("skip"), n: next, r: loadQueue,
                   h: () => { $("heatmap-toggle").click(); } };
    const action = keys[event.key];
    if (action) {
      event.preventDefault();
      action();
    }
  });
  next();
});

// IONM case console: renders the state the server sends; every action goes back over the socket as a command.
// No framework, no build step. State arrives as frames (whole current state of one part) and appends
// (trend points, timeline events); drawing happens on animation frames, never in the message handler.
"use strict";

const S = {
  ws: null, req: 0, pending: {}, user: "", role: "", perms: new Set(),
  frames: {},            // key -> newest frame
  trend: {},             // stream -> [{t, amp[], lat[]}]
  timeline: new Map(),   // id -> event
  paused: false, dirty: new Set(), selected: null,
  latency: [],           // ms from sweep arrival (server) to rendered (here), per stream frame
  pendingLat: {},        // stream key -> arr0 waiting for the next draw
  renders: 0,
};
window.ionm = S;  // for tests and for curious readers in the devtools

const COLORS = ["#58a6ff", "#f778ba", "#7ee787", "#ffa657", "#d2a8ff", "#79c0ff", "#ff7b72", "#e3b341"];
const STATE_COLOR = { normal: "#3fb950", warning: "#f5b70a", alert: "#ff4d4f" };
const $ = (id) => document.getElementById(id);
const fmtT = (t) => { t = Math.max(0, t || 0); const m = Math.floor(t / 60), s = Math.floor(t % 60);
  return String(m).padStart(2, "0") + ":" + String(s).padStart(2, "0"); };
const can = (p) => S.perms.has(p);

// ------------------------------------------------------------------ connection
function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(proto + "//" + location.host + "/ws");
  S.ws = ws;
  ws.binaryType = "arraybuffer";
  ws.onmessage = (ev) => { if (ev.data instanceof ArrayBuffer) onAudio(ev.data); else onMessage(JSON.parse(ev.data)); };
  ws.onopen = () => { if (A.on) sendAudioChannels(); };  // a reconnected viewer hears what it heard
  ws.onclose = () => {
    $("linkpill").className = "pill bad"; $("linkpill").textContent = "console disconnected";
    setTimeout(() => fetch("/api/stats").then((r) => { if (r.status === 401) location.href = "/login"; else connect(); })
      .catch(() => setTimeout(connect, 2000)), 1000);
  };
}

function send(msg) {
  return new Promise((resolve, reject) => {
    const req = ++S.req;
    S.pending[req] = { resolve, reject };
    S.ws.send(JSON.stringify(Object.assign({ req }, msg)));
  });
}

function command(msg, okText) {
  return send(msg).then((r) => { if (okText) toast(okText, true); return r; })
    .catch((e) => { toast(e.message || String(e)); throw e; });
}

function onMessage(m) {
  if (m.type === "reply") {
    const p = S.pending[m.req]; delete S.pending[m.req];
    if (p) { if (m.ok) p.resolve(m.result); else p.reject(new Error(m.error)); }
    return;
  }
  if (m.type === "snapshot") {
    S.user = m.user; S.role = m.role; S.perms = new Set(m.permissions);
    S.frames = {}; S.trend = {}; S.timeline = new Map();
    $("who").textContent = m.user + " (" + m.role + ")";
    document.body.dataset.role = m.role;
    $("noteform").classList.toggle("hidden", !can("note"));
  }
  for (const [k, f] of Object.entries(m.frames || {})) applyFrame(k, f);
  for (const a of m.appends || []) applyAppend(a);
  for (const [k, t] of Object.entries(m.arr0 || {})) S.pendingLat[k] = Math.min(S.pendingLat[k] || Infinity, t);
  schedule();
}

const STREAM_KEYS = /^(stream|stack|base):/;  // a stream's frames: its state, its waveform stack, its baseline
const STACK_KEEP = 5;  // stack traces kept per stream (ionm.console.display.STACK_SHOWN): the newest + 4 drawn

function applyFrame(key, f) {
  if (key === "emgview") { emgView(f); return; }
  if (key === "eegview") { eegView(f); return; }
  if (key === "eeg") { S.frames.eeg = f; S.dirty.add("eeginfo"); S.dirty.add("eegdsa"); return; }
  if (key === "emg") { const had = S.frames.emg; S.frames.emg = f; S.dirty.add("emginfo"); S.dirty.add("emgtrace");
    if (!had && A.on) sendAudioChannels(); return; }
  S.frames[key] = f;
  if (STREAM_KEYS.test(key)) { ensurePanel(f.key); S.dirty.add(f.key); }
  else S.dirty.add(key);
}

function addTrend(key, p) {
  const arr = S.trend[key] || (S.trend[key] = []);
  if (!arr.length || p.t > arr[arr.length - 1].t) arr.push(p);
  S.dirty.add(key);
}

function applyAppend(a) {
  if (a.k === "trend") addTrend(a.s, a);
  else if (a.k === "trends") {  // a snapshot's trend of one stream, as columns (a null column: no value)
    const col = (cols, i) => cols.map((c) => (c ? c[i] : null));
    a.t.forEach((t, i) => addTrend(a.s, { t, amp: col(a.amp, i), lat: col(a.lat, i) }));
  } else if (a.k === "stack") {  // a new trace of a stream's waveform stack
    const f = S.frames["stack:" + a.s] || (S.frames["stack:" + a.s] = { key: a.s, traces: [] });
    const last = f.traces[f.traces.length - 1];
    if (!last || a.t_s > last.t_s) f.traces.push(a);  // (one already in the snapshot comes once)
    if (f.traces.length > STACK_KEEP) f.traces.splice(0, f.traces.length - STACK_KEEP);
    ensurePanel(a.s); S.dirty.add(a.s);
  } else if (a.k === "emg") emgColumns(a);
  else if (a.k === "emgev") emgEvent(a);
  else if (a.k === "eegep") eegEpoch(a);
  else if (a.k === "eegraw") eegRaw(a);
  else if (a.k === "event") {
    S.timeline.set(a.id, a); S.dirty.add("timeline");
  }
}

// A trace as sent ({q: step in µV, v: integers, null for a gap}) in µV.
function uv(t) { return t ? t.v.map((x) => (x === null ? null : x * t.q)) : null; }

// ------------------------------------------------------------------ drawing
let scheduled = false;
function schedule() { if (!scheduled) { scheduled = true; requestAnimationFrame(draw); } }

// Pausing freezes the waveforms only: alerts, technical alarms, link, stimulation and the timeline still update.
const ALWAYS = new Set(["alerts", "technical", "link", "stim", "timeline", "screws", "tof", "probe", "emginfo", "eeginfo"]);

function draw() {
  scheduled = false;
  let dirty = S.dirty; S.dirty = new Set();
  if (S.paused) {
    for (const k of dirty) if (!ALWAYS.has(k)) S.dirty.add(k);  // drawn on resume
    dirty = new Set([...dirty].filter((k) => ALWAYS.has(k)));
  }
  const c = S.frames.case;
  if (c) $("caseinfo").textContent = "Case " + c.uid + (c.patient_id ? " · patient " + c.patient_id : "") +
    (c.procedure ? " · " + c.procedure : "") + (c.closed ? " · CLOSED" : "");
  let t = 0;
  for (const [k, f] of Object.entries(S.frames)) if (k.startsWith("stream:") || ["emg", "eeg", "baep"].includes(k)) t = Math.max(t, f.t_s);
  $("clock").textContent = fmtT(t);
  for (const key of dirty) {
    if (key === "alerts") drawBanner();
    else if (key === "technical") { drawTech(); drawLink(); }
    else if (key === "link") drawLink();
    else if (key === "stim") drawStim();
    else if (key === "timeline") { drawTimeline(); if (S.frames.eeg) { S.dirty.add("eegdsa"); schedule(); } }
    else if (key === "screws") drawScrews();
    else if (key === "tof") drawTof();
    else if (key === "probe") drawProbe();
    else if (key === "emginfo") drawEmgInfo();
    else if (key === "emgtrace") drawEmgTrace();
    else if (key === "eeginfo") drawEegInfo();
    else if (key === "eegdsa") { drawDsa(); drawEegTrends(); }
    else if (key === "eegraw") drawEegRaw();
    else if (key === "baep") drawBaep();
    else if (S.frames["stream:" + key]) drawStream(key);
  }
  const now = Date.now();
  for (const [k, t0] of Object.entries(S.pendingLat)) if (k.startsWith("stream:")) S.latency.push(now - t0 * 1000);
  if (S.latency.length > 5000) S.latency.splice(0, S.latency.length - 5000);
  S.pendingLat = {};
  S.renders++;
}

function ensurePanel(key) {
  const id = "panel-" + key;
  if (document.getElementById(id)) return;
  const el = document.createElement("div");
  el.className = "stream"; el.id = id; el.dataset.key = key;
  el.innerHTML = '<div class="title"><b></b><span class="meta"></span>' +
    '<button class="small basebtn" title="Set this stream\'s baseline">Baseline</button></div>' +
    '<div class="plots"><canvas class="wave"></canvas><canvas class="trend"></canvas></div>';
  el.querySelector("b").textContent = key.replace("/", " · ");
  el.addEventListener("click", () => select(key));
  el.querySelector(".basebtn").addEventListener("click", (e) => { e.stopPropagation();
    command({ cmd: "baseline", stream: key }, "Setting baseline of " + key); });
  const streams = $("streams");
  const order = (k) => k.startsWith("emg") ? -1 : (k.startsWith("ssep-upper") ? 0 : k.startsWith("ssep-lower") ? 1 : 2) + (k.includes("R ") ? 0.5 : 0);
  const after = [...streams.children].find((c) => order(c.dataset.key) > order(key));
  streams.insertBefore(el, after || null);
  if (!S.selected) select(key);
}

function select(key) {
  S.selected = key;
  for (const el of document.querySelectorAll(".stream, .neuro")) el.classList.toggle("selected", el.dataset.key === key);
}

function sizeCanvas(cv) {
  const r = cv.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
  const w = Math.max(50, Math.round(r.width * dpr)), h = Math.max(50, Math.round(r.height * dpr));
  if (cv.width !== w || cv.height !== h) { cv.width = w; cv.height = h; }
  const ctx = cv.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return [ctx, r.width, r.height];
}

function drawStream(key) {
  const f = S.frames["stream:" + key];
  const panel = document.getElementById("panel-" + key);
  if (!f || !panel) return;
  const shown = f.channels.map((c, i) => [c, i]).filter(([c]) => c.show);
  const worst = shown.some(([c]) => c.state === "alert") ? "alert" : shown.some(([c]) => c.state === "warning") ? "warning" : "";
  panel.classList.toggle("alert", worst === "alert"); panel.classList.toggle("warning", worst === "warning");
  let base = f.baseline ? "baseline " + fmtT(f.baseline.t_s) + " (" + f.baseline.user + ")" :
    f.baseline_pending ? "baseline being set…" : "no baseline";
  if (f.collecting) base += " · still collecting for " + Object.keys(f.collecting.channels).join(", ") +
    (f.collecting.due_in_s == null ? "" : " (~" + Math.round(f.collecting.due_in_s) + " s)");
  panel.querySelector(".meta").textContent = f.seq + (f.modality === "mep" ? " trains" : " sweeps") + " · " +
    f.rejected + " rejected · " + base;
  panel.querySelector(".basebtn").disabled = !can("baseline");
  drawWaves(panel.querySelector("canvas.wave"), f, shown, S.frames["stack:" + key], S.frames["base:" + key]);
  drawTrend(panel.querySelector("canvas.trend"), f, shown, S.trend[key] || []);
}

const HEADER_H = 28;  // px: a wave row's two header lines (channel name at +12, values at +25)

function drawWaves(cv, f, shown, stack, baseFrame) {
  const [ctx, W, H] = sizeCanvas(cv);
  ctx.fillStyle = "#0e1722"; ctx.fillRect(0, 0, W, H);
  if (!shown.length) return;
  const left = 8, right = 8, top = 4, bottom = 18;
  const bases = baseFrame ? baseFrame.waves : [];
  const n = shown[0][0].wave.v.length, x0 = f.x0_ms, dt = f.dt_ms, span = n * dt;
  const X = (ms) => left + (ms - x0) / span * (W - left - right);
  // time grid every 10 ms
  ctx.strokeStyle = "#1d2b3b"; ctx.fillStyle = "#6e849b"; ctx.font = "10px sans-serif"; ctx.lineWidth = 1;
  for (let ms = Math.ceil(x0 / 10) * 10; ms <= x0 + span; ms += 10) {
    ctx.beginPath(); ctx.moveTo(X(ms), top); ctx.lineTo(X(ms), H - bottom); ctx.stroke();
    ctx.fillText(ms + (ms === 0 ? " ms" : ""), X(ms) - 4, H - 5);
  }
  const rowH = (H - top - bottom) / shown.length;
  const traces = stack && stack.traces ? stack.traces : [];
  shown.forEach(([c, i], r) => {
    const y0 = top + r * rowH, mid = y0 + rowH * 0.62;
    const wave = uv(c.wave), base = uv(bases[i]);
    let peak = 0;
    for (const arr of [wave, base || []]) for (const v of arr) if (v !== null && Math.abs(v) > peak) peak = Math.abs(v);
    const scale = peak > 0 ? (rowH * 0.42) / peak : 1;
    // Negative up, the neurophysiology convention (docs/CONSOLE.md): a value v is drawn v * scale BELOW the
    // row's zero line, so a negative deflection (N20) rises and a positive one (P37) falls.
    const Y = (v) => mid + v * scale;
    const line = (arr, color, width, dy, dash, step) => {
      ctx.strokeStyle = color; ctx.lineWidth = width; ctx.setLineDash(dash || []); ctx.beginPath();
      let pen = false;
      arr.forEach((v, k) => { if (v === null) { pen = false; return; }
        const x = X(x0 + k * (step || dt)), y = Y(v) + dy;
        if (pen) ctx.lineTo(x, y); else { ctx.moveTo(x, y); pen = true; } });
      ctx.stroke(); ctx.setLineDash([]);
    };
    // the stack: the previous averages as a waterfall above the newest, older ones higher and fainter
    ctx.save(); ctx.beginPath(); ctx.rect(0, y0 + HEADER_H, W, rowH - HEADER_H); ctx.clip();
    traces.slice(-5, -1).forEach((tr, k, all) => {
      const w = uv(tr.waves[i]); if (!w) return;
      const age = all.length - k;
      line(w, "rgba(150,170,195," + (0.18 + 0.3 / age) + ")", 1, -age * rowH * 0.07, null, tr.dt_ms);
    });
    ctx.restore();
    if (base) line(base, "#3fb950", 1.5, 0, [5, 3], baseFrame.dt_ms);
    line(wave, COLORS[i % COLORS.length], 2, 0);
    // Peak marks: a triangle pointing at the peak with its name above it, or below it, whichever stays inside
    // the row under its two header lines (channel name and values, y0 .. y0 + HEADER_H). A row too short for
    // either (six MEP channels in one panel) gets a tick through the trace instead of a name: a label there
    // would be written over this row's or the next row's channel name.
    for (const p of c.peaks || []) {
      if (p.lat === null) continue;
      const x = X(p.lat), y = Y(p.amp || 0), lo = y0 + HEADER_H, hi = y0 + rowH;
      ctx.fillStyle = ctx.strokeStyle = p.manual ? "#ffa657" : "#e6edf3";
      ctx.font = "10px sans-serif";
      if (y - 23 >= lo && y - 4 <= hi) {
        ctx.beginPath(); ctx.moveTo(x, y - 4); ctx.lineTo(x - 4, y - 11); ctx.lineTo(x + 4, y - 11); ctx.fill();
        ctx.fillText(p.name, x - 8, y - 13);
      } else if (y + 4 >= lo && y + 23 <= hi) {
        ctx.beginPath(); ctx.moveTo(x, y + 4); ctx.lineTo(x - 4, y + 11); ctx.lineTo(x + 4, y + 11); ctx.fill();
        ctx.fillText(p.name, x - 8, y + 21);
      } else {
        ctx.lineWidth = 1; ctx.beginPath(); ctx.moveTo(x, Math.max(lo, y - 8)); ctx.lineTo(x, Math.min(hi, y + 8));
        ctx.stroke();
      }
    }
    ctx.fillStyle = STATE_COLOR[c.state] || "#e6edf3"; ctx.font = "bold 11px sans-serif";
    ctx.fillText("● " + c.name, left + 2, y0 + 12);
    ctx.font = "11px sans-serif"; ctx.fillStyle = "#c9d6e3";
    let txt = "";
    if (c.amp !== null) txt += c.amp.toFixed(c.amp < 10 ? 2 : 0) + " µV";
    if (c.lat !== null) txt += "  " + c.lat.toFixed(1) + " ms";
    if (c.amp_ratio !== null) txt += "  (" + Math.round(c.amp_ratio * 100) + " %";
    if (c.lat_ratio !== null && c.amp_ratio !== null) txt += ", " + Math.round(c.lat_ratio * 100) + " %";
    if (c.amp_ratio !== null) txt += ")";
    txt += "   n=" + Math.round(c.n) + "   ±" + (peak >= 100 ? Math.round(peak) : peak > 0 ? peak.toPrecision(2) : "0") + " µV";
    ctx.fillText(txt, left + 2, y0 + 25);
  });
}

function drawTrend(cv, f, shown, pts) {
  const [ctx, W, H] = sizeCanvas(cv);
  ctx.fillStyle = "#0e1722"; ctx.fillRect(0, 0, W, H);
  const left = 34, right = 8, gap = 16, top = 14, bottom = 16;
  const ph = (H - top - bottom - gap) / 2;
  const tracked = shown.filter(([c]) => c.ref && c.ref.tracked);
  ctx.font = "11px sans-serif"; ctx.fillStyle = "#8aa0b8";
  if (!f.baseline) { ctx.fillText(f.baseline_pending ? "baseline being set…" : "no baseline: press B", left, H / 2); return; }
  const tNow = f.t_s, tMin = Math.max(0, f.baseline.t_s - 10, tNow - 600), tSpan = Math.max(30, tNow - tMin);
  const X = (t) => left + (t - tMin) / tSpan * (W - left - right);
  const plots = [
    { name: "amplitude % of baseline", key: "amp", lo: 0, hi: 150, alert: f.criteria.amp_alert, warn: f.criteria.amp_warning },
    { name: "latency % of baseline", key: "lat", lo: 85, hi: 125, alert: f.criteria.lat_alert, warn: f.criteria.lat_warning },
  ];
  plots.forEach((p, k) => {
    const y0 = top + k * (ph + gap);
    const Y = (v) => y0 + ph - (Math.min(Math.max(v, p.lo), p.hi) - p.lo) / (p.hi - p.lo) * ph;
    ctx.strokeStyle = "#26364a"; ctx.strokeRect(left, y0, W - left - right, ph);
    ctx.fillStyle = "#8aa0b8"; ctx.fillText(p.name, left + 4, y0 - 3);
    for (const v of [p.lo, 100, p.hi]) ctx.fillText(String(v), 4, Y(v) + 4);
    ctx.strokeStyle = "#3a4d63"; ctx.beginPath(); ctx.moveTo(left, Y(100)); ctx.lineTo(W - right, Y(100)); ctx.stroke();
    for (const [lvl, color, dash] of [[p.alert, "#ff4d4f", []], [p.warn, "#f5b70a", [4, 3]]]) {
      if (lvl === null || lvl === undefined) continue;
      ctx.strokeStyle = color; ctx.setLineDash(dash); ctx.beginPath();
      ctx.moveTo(left, Y(lvl * 100)); ctx.lineTo(W - right, Y(lvl * 100)); ctx.stroke(); ctx.setLineDash([]);
    }
    for (const [c, i] of tracked) {
      ctx.strokeStyle = COLORS[i % COLORS.length]; ctx.lineWidth = 1.5; ctx.beginPath();
      let pen = false;
      for (const pt of pts) {
        if (pt.t < tMin) continue;
        const v = pt[p.key] ? pt[p.key][i] : null;
        if (v === null || v === undefined) { pen = false; continue; }
        if (pen) ctx.lineTo(X(pt.t), Y(v * 100)); else { ctx.moveTo(X(pt.t), Y(v * 100)); pen = true; }
      }
      ctx.stroke(); ctx.lineWidth = 1;
    }
  });
  ctx.fillStyle = "#6e849b"; ctx.fillText(fmtT(tMin), left, H - 3); ctx.fillText(fmtT(tNow), W - right - 30, H - 3);
  if (!tracked.length) { ctx.fillStyle = "#f5b70a"; ctx.fillText("no reproducible channel tracked", left + 4, top + ph / 2); }
}

const BANNER_ROWS = 5;  // more would push the waveforms out of view: the rest are counted in one line

// One row per channel (stream + channel) with unacknowledged alerts, the newest first. The server sends the alerts
// grouped so (ionm.console.alerts): each group counts all of its channel's alerts, however many, with its newest
// alert's values and the uid that acknowledges the channel; only the newest few alerts come one by one.
function alertGroups() {
  return ((S.frames.alerts || {}).groups || []).filter((g) => g.unacked > 0)
    .sort((x, y) => y.last_t_s - x.last_t_s);
}

function drawBanner() {
  const groups = alertGroups(), el = $("banner");
  el.classList.toggle("hidden", groups.length === 0);
  el.innerHTML = "";
  for (const g of groups.slice(0, BANNER_ROWS)) {
    const row = document.createElement("div"); row.className = "item"; row.dataset.uid = g.ack_uid;
    const span = document.createElement("span");
    span.textContent = "⚠ ALERT " + fmtT(g.last_t_s) + "  " + g.latest.label + (g.unacked > 1 ? "  ×" + g.unacked : "");
    row.appendChild(span);
    if (can("ack")) {
      const b = document.createElement("button"); b.textContent = "Acknowledge (A)"; b.className = "small ackbtn";
      b.addEventListener("click", () => openAck(g)); row.appendChild(b);
    }
    el.appendChild(row);
  }
  if (groups.length > BANNER_ROWS) {
    const more = document.createElement("div"); more.className = "item more";
    const n = groups.slice(BANNER_ROWS).reduce((s, g) => s + g.unacked, 0);
    more.textContent = "+" + (groups.length - BANNER_ROWS) + " more channels in alert (" + n + " alerts): see the timeline";
    el.appendChild(more);
  }
}

function drawTech() {
  const list = (S.frames.technical || {}).alarms || [], el = $("techbanner");
  el.classList.toggle("hidden", list.length === 0);
  el.innerHTML = "";
  for (const a of list.slice(0, BANNER_ROWS)) {
    const row = document.createElement("div"); row.className = "item"; row.dataset.key = a.key;
    row.textContent = "⚠ TECHNICAL " + fmtT(a.since_t) + "  " + a.text;
    el.appendChild(row);
  }
  if (list.length > BANNER_ROWS) {
    const more = document.createElement("div"); more.className = "item more";
    more.textContent = "+" + (list.length - BANNER_ROWS) + " more technical alarms";
    el.appendChild(more);
  }
}

function drawLink() {
  const l = S.frames.link; if (!l) return;
  const lost = l.samples_lost || 0, off = l.leadoff || [];
  const pill = $("linkpill");
  const tech = ((S.frames.technical || {}).alarms || []).length;
  pill.className = "pill " + (l.state !== "streaming" || tech ? "bad" : (lost || off.length) ? "warn" : "ok");
  pill.textContent = tech ? "TECHNICAL ALARM" : l.state === "streaming" ? (off.length ? "lead off: " + off.length :
    "link ok") : "link " + l.state;
  const rows = [["source", l.source || "?"], ["state", l.state], ["lost samples", lost]];
  if (l.sweeps !== undefined) rows.push(["sweeps", l.sweeps]);
  rows.push(["lead-off", off.length ? off.join(", ") : "none"]);
  // the board's TcMEP hold-off (SSEP pulses not delivered around a train) and sweeps the host rejected
  if (l.pulses_held !== undefined) rows.push(["SSEP held for TcMEP", l.pulses_held]);
  for (const [why, n] of Object.entries(l.sweeps_rejected || {})) rows.push(["rejected: " + why, n]);
  const kohm = (v) => v === null ? "open" : (v / 1000).toFixed(1) + " kΩ";  // null: no current path
  for (const [k, v] of Object.entries(l.stim_impedance_ohm || {})) rows.push(["stim " + k, kohm(v)]);
  // the board's electrode check before the case: channels whose lead impedance is high or open
  const highLeads = Object.entries(l.lead_impedance_ohm || {}).filter(([, v]) => v === null || v > l.lead_impedance_good_ohm);
  if (l.lead_impedance_ohm) rows.push(["electrodes > " + kohm(l.lead_impedance_good_ohm),
    highLeads.length ? highLeads.map(([k, v]) => k.split(" (")[0] + " " + kohm(v)).join(", ") : "none"]);
  for (const [k, v] of Object.entries(l.extra || {})) rows.push([k, v]);
  const el = $("link"); el.className = "kv"; el.innerHTML = "";
  for (const [k, v] of rows) {
    const a = document.createElement("span"); a.textContent = k;
    const b = document.createElement("span"); b.textContent = String(v);
    if ((k === "lead-off" && off.length) || (k === "lost samples" && lost) || k.startsWith("rejected")
        || (k.startsWith("electrodes >") && highLeads.length) || (k.startsWith("stim ") && b.textContent === "open")) b.className = "bad";
    el.append(a, b);
  }
}

function drawStim() {
  const s = S.frames.stim; if (!s) return;
  const el = $("stim"), lim = s.limits, p = s.program, edit = can("stim");
  el.innerHTML = "";
  if (s.board_stopped) {  // the program below is what was asked; the board is not doing it
    const w = document.createElement("div"); w.className = "boardstopped";
    w.textContent = "Board NOT stimulating: " + s.board_stopped;
    if (edit) {  // when the host did not re-arm by itself: start the program below again, as it stands
      const r = document.createElement("button"); r.textContent = "Resume"; r.className = "small"; r.id = "resumebtn";
      r.addEventListener("click", () => stim({ action: "resume" })); w.append(" ", r);
    }
    el.appendChild(w);
  }
  const t = document.createElement("table"); t.className = "stim";
  t.innerHTML = "<tr><th>SSEP</th><th>on</th><th>mA</th><th>µs</th><th>Hz</th></tr>";
  for (const [o, v] of Object.entries(p.ssep)) {
    const tr = document.createElement("tr");
    const cell = (node) => { const td = document.createElement("td"); td.appendChild(node); tr.appendChild(td); };
    cell(document.createTextNode(v.site));
    const on = document.createElement("input"); on.type = "checkbox"; on.checked = v.enabled; on.disabled = !edit;
    on.addEventListener("change", () => stim({ action: "ssep", output: +o, enabled: on.checked }));
    cell(on);
    for (const [k, step, min, max] of [["current_ma", lim.current_step_ma, 0, lim.current_ma_max],
      ["width_us", lim.width_step_us, lim.width_us_min, lim.width_us_max], ["rate_hz", 0.1, 0.1, lim.rate_hz_max_per_output]]) {
      const inp = document.createElement("input"); inp.type = "number"; inp.step = step; inp.min = min; inp.max = max;
      inp.value = v[k]; inp.disabled = !edit; inp.dataset.output = o; inp.dataset.field = k;
      inp.addEventListener("change", () => stim({ action: "ssep", output: +o, [k]: +inp.value }));
      cell(inp);
    }
    t.appendChild(tr);
  }
  el.appendChild(t);
  const tc = p.tcmep, d = document.createElement("div"); d.style.marginTop = ".5em";
  d.innerHTML = "<b>TcMEP</b> ";
  for (const [k, label, step, min, max] of [["train_pulses", "pulses", 1, 1, lim.train_pulses_max],
    ["ipi_ms", "IPI ms", 0.5, lim.train_ipi_ms_min, lim.train_ipi_ms_max], ["repeat_s", "repeat s", 1, 0, 600]]) {
    const inp = document.createElement("input"); inp.type = "number"; inp.step = step; inp.min = min; inp.max = max;
    inp.value = tc[k]; inp.disabled = !edit; inp.style.width = "3.6em"; inp.title = label;
    inp.addEventListener("change", () => stim({ action: "tcmep", [k]: +inp.value }));
    d.append(label + " ", inp, " ");
  }
  const b = document.createElement("button"); b.textContent = "Train (T)"; b.className = "danger small"; b.id = "tcmepbtn";
  b.disabled = !edit; b.addEventListener("click", openTcmep); d.appendChild(b);
  const stop = document.createElement("button"); stop.textContent = "Stop all"; stop.className = "small";
  stop.disabled = !edit; stop.addEventListener("click", () => stim({ action: "stop_all" })); d.append(" ", stop);
  el.appendChild(d);
}

// Pedicle-screw tests: the panel draws the screws frame as it is (the server reads each threshold against the
// regional rules); the form only sends screw_test / screw_stop.
const LEVELS = [..."1234567"].map((k) => "C" + k).concat([...Array(12).keys()].map((k) => "T" + (k + 1)),
  [..."12345"].map((k) => "L" + k), [..."12345"].map((k) => "S" + k));

function drawScrews() {
  const f = S.frames.screws; if (!f) return;
  $("screwpanel").classList.toggle("hidden", !f.available && !f.count);
  const edit = can("screw_test") && f.available;
  $("screwform").classList.toggle("hidden", !edit);
  $("screwgo").disabled = !!f.running; $("screwstop").disabled = !f.running;
  const st = $("screwstatus");
  st.textContent = f.running ? "Testing " + f.running.level + " " + (f.running.side === "L" ? "left" : "right") +
    (f.running.dynamic ? " (dynamic, " + f.running.hunts + " hunts so far)" : "") + " — other stimulation paused on a board" : "";
  const t = $("screwtable"); t.innerHTML = "";
  const head = document.createElement("tr");
  for (const h of ["time", "screw", "mA", "muscle", "reading"]) { const th = document.createElement("th"); th.textContent = h; head.appendChild(th); }
  t.appendChild(head);
  for (const r of [...f.results].reverse()) {
    const tr = document.createElement("tr"); tr.className = "band " + r.colour; tr.dataset.uid = r.uid;
    const low = r.lowest;
    for (const v of [fmtT(r.t_s), r.screw + (r.dynamic ? " (dyn)" : ""),
      low ? low.threshold_ma.toFixed(1) : "> " + r.hi_ma, low ? low.channel.split(" ")[0] : "none",
      r.label + (r.rule ? " · " + r.rule : "")]) {
      const td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
    }
    t.appendChild(tr);
  }
}

// Train-of-four: the panel and the warning row draw the tof frame as it is (the server measures the count and
// T4/T1 and says when MEP and EMG are unreliable); the form only sends tof / tof_every.
function fillSelect(sel, items) {
  const keep = sel.value, want = items.map(([v, t]) => v + ":" + t).join("|");
  if (sel.dataset.items === want) return;
  sel.dataset.items = want; sel.innerHTML = "";
  for (const [v, t] of items) { const o = document.createElement("option"); o.value = v; o.textContent = t; sel.appendChild(o); }
  if (keep !== "" && items.some(([v]) => String(v) === keep)) sel.value = keep;
}

function drawTof() {
  const f = S.frames.tof; if (!f) return;
  const w = $("tofwarn");
  w.classList.toggle("hidden", !f.warning);
  w.textContent = f.warning ? "⚠ WARNING " + f.warning : "";
  $("tofpanel").classList.toggle("hidden", !f.available && !f.count);
  const edit = can("tof") && f.available;
  $("tofform").classList.toggle("hidden", !edit);
  if (f.available) {
    fillSelect($("tofoutput"), Object.entries(f.outputs || {}).map(([o, s]) => [o, o + " " + s]));
    fillSelect($("tofchannel"), (f.channels || []).map(([c, n]) => [c, n]));
  }
  $("tofgo").disabled = !!f.running;
  const last = f.results.length ? f.results[f.results.length - 1] : null;
  $("tofstatus").textContent = f.running ? "TOF under way: " + f.running.site + " → " + f.running.channel_name :
    (last ? "last " + fmtT(last.t_s) + ": " + (last.error ? "failed: " + last.error : last.count + "/4" +
      (last.ratio !== null ? ", T4/T1 " + last.ratio.toFixed(2) : "")) : "no TOF yet") +
    (f.every ? " · every " + f.every.s + " s" : "");
  drawTofTrend($("toftrend"), f.results);
}

// count (bars, 0-4) and T4/T1 (line, 0-1) over case time, from the frame's results only
function drawTofTrend(cv, results) {
  const ctx = cv.getContext("2d"), W = cv.width, H = cv.height, left = 22, right = 6, top = 6, bottom = 14;
  ctx.clearRect(0, 0, W, H); ctx.font = "10px sans-serif";
  const ok = results.filter((r) => r.count !== null);
  if (!ok.length) return;
  const t0 = ok[0].t_s, t1 = Math.max(ok[ok.length - 1].t_s, t0 + 60), ph = H - top - bottom;
  const X = (t) => left + (t - t0) / (t1 - t0) * (W - left - right), Y = (v) => top + ph * (1 - v);
  ctx.strokeStyle = "#3a4d63"; ctx.beginPath(); ctx.moveTo(left, Y(0.5)); ctx.lineTo(W - right, Y(0.5)); ctx.stroke();
  ctx.fillStyle = "#6e849b"; ctx.fillText("4", 4, Y(1) + 8); ctx.fillText("2", 4, Y(0.5) + 4); ctx.fillText("0", 4, Y(0));
  for (const r of ok) {  // the count: below 2 amber
    ctx.fillStyle = r.count < 2 ? "#f5b70a" : "#3fb950";
    const h = Math.max(r.count / 4 * ph, 2);
    ctx.fillRect(X(r.t_s) - 2, top + ph - h, 4, h);
  }
  ctx.strokeStyle = "#58a6ff"; ctx.lineWidth = 1.5; ctx.beginPath();
  let pen = false;
  for (const r of ok) {
    if (r.ratio === null) { pen = false; continue; }
    if (pen) ctx.lineTo(X(r.t_s), Y(Math.min(r.ratio, 1))); else { ctx.moveTo(X(r.t_s), Y(Math.min(r.ratio, 1))); pen = true; }
  }
  ctx.stroke(); ctx.lineWidth = 1;
  ctx.fillStyle = "#6e849b"; ctx.fillText(fmtT(t0), left, H - 3); ctx.fillText(fmtT(t1), W - right - 30, H - 3);
  ctx.fillText("bars: count · line: T4/T1", left + 40, H - 3);
}

// The manual probe: the panel draws the probe frame as it is (the newest pulse's response per muscle channel while
// a session runs, and the sessions' records); the form only sends probe / probe_stop.
function tableRows(t, head, rows) {
  t.innerHTML = "";
  if (!rows.length) return;
  const h = document.createElement("tr");
  for (const x of head) { const th = document.createElement("th"); th.textContent = x; h.appendChild(th); }
  t.appendChild(h);
  for (const [cls, cells] of rows) {
    const tr = document.createElement("tr"); tr.className = cls;
    for (const v of cells) { const td = document.createElement("td"); td.textContent = v; tr.appendChild(td); }
    t.appendChild(tr);
  }
}

function drawProbe() {
  const f = S.frames.probe; if (!f) return;
  $("probepanel").classList.toggle("hidden", !f.available && !f.count);
  const edit = can("probe") && f.available;
  $("probeform").classList.toggle("hidden", !edit);
  const r = f.running;
  $("probego").disabled = !!r; $("probestop").disabled = !r;
  $("probestatus").textContent = r ? "Probing" + (r.label ? " " + r.label : "") + " at " + r.ma + " mA, " + r.rate_hz +
    "/s: " + r.pulses + " pulses (other stimulation paused on a board)" : "";
  tableRows($("probelive"), ["muscle", "µV", "ms"], r && r.last ? r.last.map((c) =>
    [c.present ? "present" : "", [c.channel, c.p2p_uv === null ? "-" : c.p2p_uv.toFixed(0),
      c.lat_ms === null ? "-" : c.lat_ms.toFixed(1)]]) : []);
  tableRows($("proberecords"), ["time", "target", "mA", "response"], [...f.records].reverse().map((x) =>
    [x.response ? "present" : "", [fmtT(x.t_s), x.label || "-", x.ma.toFixed(1), x.error ? "failed" :
      x.response ? "present: " + Object.keys(x.present).map((n) => n.split(" ")[0]).join(", ") : "none"]]));
}

function stim(cmd, confirmed) {
  return command({ cmd: "stim", command: cmd, confirmed: !!confirmed }).catch(() => drawStim());
}

function drawTimeline() {
  const el = $("timeline"); el.innerHTML = "";
  const items = [...S.timeline.values()].sort((a, b) => b.id - a.id).slice(0, 300);
  for (const e of items) {
    const li = document.createElement("li");
    const t = document.createElement("span"); t.className = "t"; t.textContent = fmtT(e.t_s);
    const k = document.createElement("span"); k.className = "k " + e.kind; k.textContent = e.kind;
    const x = document.createElement("span"); x.textContent = " " + e.text + " ";
    const u = document.createElement("span"); u.className = "u"; u.textContent = e.user === "system" ? "" : "— " + e.user;
    li.append(t, k, x, u); el.appendChild(li);
  }
}

// ------------------------------------------------------------------ free-run EMG: traces, events, sound
// The server sends display columns (min/max µV per 10 ms per channel), events and a small state frame; the page
// keeps the last EMG_KEEP_S of columns and draws the newest at the right edge. Sound arrives as binary messages
// (ionm.console.freerun.audio_message) for the channels this viewer hears. Each block is played at a fixed delay
// after its samples were acquired: its acquisition time (the console's clock) plus the shortest transit seen over the
// last AUDIO_TRANSIT_WINDOW blocks (which absorbs any offset between the two machines' clocks) plus AUDIO_LEAD_S
// (the jitter buffer). Consecutive blocks join seamlessly while that time is within AUDIO_SLIP_S of where the
// previous one ended; a block whose time has passed when it arrives is not played (late sound is worse than a
// gap, and a backlog never builds up). AudioBufferSourceNode -> the channel's GainNode (mute, volume) -> master.
const EMG_KEEP_S = 12;
const EMG_ROW_H = 64;  // px per channel (the controls' rows are as high)
const EMG_DIVS_V = 4;  // vertical divisions per channel row
const EMG_KIND_COLOR = { a_train: "rgba(255,77,79,.35)", neurotonic: "rgba(255,166,87,.32)", burst: "rgba(227,179,65,.30)",
  spike: "rgba(227,179,65,.9)", cautery: "rgba(138,160,184,.22)", ongoing: "rgba(255,77,79,.18)" };
const AUDIO_LEAD_S = 0.06;  // the jitter buffer, s
// a block follows the previous one without a gap while that keeps it within AUDIO_SLIP_S of its own time (the audio
// clock advances in steps of the device's buffer, ~10 ms, so its own time jitters by that much)
const AUDIO_SLIP_S = 0.02;
const AUDIO_TRANSIT_WINDOW = 50;  // blocks (1 s) over which the shortest transit is taken
const AUDIO_FULL_SCALE_UV = 500;  // µV that play at full scale at volume 100 %
const EMG = { t0: null, dt: 0.01, lo: [], hi: [], events: [], muted: [], volume: [] };
const A = { ctx: null, on: false, gains: [], master: null, analyser: null, next: null,
            received: 0, samples: 0, scheduled: 0, late: 0, resyncs: 0, transits: [], channels: new Set(), lastChannels: [], latency: [] };
S.emg = EMG; S.audio = A;

function emgColumns(a) {  // append display columns; a gap is kept as nulls, a repeat is skipped
  const n = a.lo.length ? a.lo[0].length : 0;
  if (!n) return;
  if (EMG.t0 === null || EMG.lo.length !== a.lo.length) {
    EMG.t0 = a.t0; EMG.dt = a.dt; EMG.lo = a.lo.map((r) => r.slice()); EMG.hi = a.hi.map((r) => r.slice());
  } else {
    const have = EMG.lo[0].length, at = Math.round((a.t0 - EMG.t0) / EMG.dt);
    if (at > have) for (let c = 0; c < EMG.lo.length; c++) for (let k = have; k < at; k++) { EMG.lo[c].push(null); EMG.hi[c].push(null); }
    const skip = Math.max(0, have - at);
    for (let c = 0; c < EMG.lo.length; c++) { EMG.lo[c].push(...a.lo[c].slice(skip)); EMG.hi[c].push(...a.hi[c].slice(skip)); }
  }
  const extra = EMG.lo[0].length - Math.round(EMG_KEEP_S / EMG.dt);
  if (extra > 0) { for (let c = 0; c < EMG.lo.length; c++) { EMG.lo[c].splice(0, extra); EMG.hi[c].splice(0, extra); } EMG.t0 += extra * EMG.dt; }
  S.dirty.add("emgtrace");
}

function emgEvent(e) {
  EMG.events.push(e);
  const tEnd = EMG.t0 === null ? -Infinity : EMG.t0;
  while (EMG.events.length && EMG.events[0].end_s < tEnd) EMG.events.shift();
  S.dirty.add("emgtrace");
}

function emgView(v) {  // a snapshot's last seconds
  EMG.t0 = null; EMG.lo = []; EMG.hi = []; EMG.events = [];
  if (v.t0 !== null) emgColumns({ t0: v.t0, dt: v.dt, lo: v.lo, hi: v.hi });
  for (const e of v.events || []) emgEvent(e);
}

function ensureEmgRows(f) {
  const box = $("emgchans");
  if (box.children.length === f.channels.length) return;
  box.innerHTML = "";
  f.channels.forEach((c, i) => {
    if (EMG.muted[i] === undefined) { EMG.muted[i] = false; EMG.volume[i] = 70; }
    const row = document.createElement("div"); row.className = "row"; row.dataset.ch = i;
    row.innerHTML = '<div class="name"></div><div class="ctl"><label title="mute this channel"><input type="checkbox" class="mute"> mute</label>' +
      '<input type="range" class="vol" min="0" max="100" title="volume"></div><div class="atrain"></div>';
    row.querySelector(".name").textContent = c.name;
    row.querySelector(".name").style.color = COLORS[i % COLORS.length];
    const mute = row.querySelector(".mute"), vol = row.querySelector(".vol");
    mute.checked = EMG.muted[i]; vol.value = EMG.volume[i];
    mute.addEventListener("change", () => { EMG.muted[i] = mute.checked; applyGains(); sendAudioChannels(); });
    vol.addEventListener("input", () => { EMG.volume[i] = +vol.value; applyGains(); });
    box.appendChild(row);
  });
}

function drawEmgInfo() {
  const f = S.frames.emg; if (!f) return;
  $("emgpanel").classList.remove("hidden");
  ensureEmgRows(f);
  $("emgwarnform").classList.toggle("hidden", !can("emg_warning"));
  if (document.activeElement !== $("emgwarn")) $("emgwarn").value = f.warn_s;
  const n = (k) => f.channels.reduce((s, c) => s + (c.counts[k] || 0), 0);
  $("emgmeta").textContent = f.channels.length + " channels · " + n("a_train") + " A-trains · " + n("neurotonic") +
    " neurotonic · " + n("burst") + " bursts · " + n("spike") + " spikes · " + n("cautery") + " cautery";
  f.channels.forEach((c, i) => {
    const el = $("emgchans").children[i].querySelector(".atrain");
    if (!c.facial) { el.textContent = c.counts.a_train ? "A-train " + c.a_train_s.toFixed(1) + " s" : ""; el.className = "atrain"; return; }
    el.textContent = "A-train " + c.a_train_s.toFixed(1) + " s / " + f.warn_s + " s" + (c.warned ? "  WARNING" : "");
    el.className = "atrain" + (c.a_train_s >= f.warn_s ? " over" : c.a_train_s >= 0.8 * f.warn_s ? " near" : "");
  });
}

function drawEmgTrace() {
  const f = S.frames.emg, cv = $("emgcanvas"); if (!f) return;
  const nch = f.channels.length;
  cv.style.height = nch * EMG_ROW_H + "px";
  const [ctx, W, H] = sizeCanvas(cv);
  ctx.fillStyle = "#0e1722"; ctx.fillRect(0, 0, W, H);
  const sdiv = +$("emgtime").value, span = 10 * sdiv, uvdiv = +$("emgscale").value;
  const cols = EMG.lo.length ? EMG.lo[0].length : 0;
  const tEnd = EMG.t0 === null ? 0 : EMG.t0 + cols * EMG.dt, tStart = tEnd - span;
  const x = (t) => ((t - tStart) / span) * W;
  ctx.strokeStyle = "#1c2836"; ctx.lineWidth = 1;
  for (let d = 0; d <= 10; d++) { const xx = Math.round((d / 10) * W) + 0.5; ctx.beginPath(); ctx.moveTo(xx, 0); ctx.lineTo(xx, H); ctx.stroke(); }
  const ongoing = (f.ongoing || []).map((o) => Object.assign({ kind: "ongoing" }, o));
  for (let c = 0; c < nch; c++) {
    const top = c * EMG_ROW_H, mid = top + EMG_ROW_H / 2, pxPerUv = EMG_ROW_H / EMG_DIVS_V / uvdiv;
    ctx.strokeStyle = "#26364a";
    for (let d = 0; d <= EMG_DIVS_V; d++) { const yy = Math.round(top + (d * EMG_ROW_H) / EMG_DIVS_V) + 0.5; ctx.beginPath(); ctx.moveTo(0, yy); ctx.lineTo(W, yy); ctx.stroke(); }
    for (const e of EMG.events.concat(ongoing)) {  // event marks behind the trace
      if (e.ch !== c || e.end_s < tStart) continue;
      ctx.fillStyle = EMG_KIND_COLOR[e.kind] || "rgba(255,255,255,.2)";
      if (e.kind === "spike") ctx.fillRect(x(e.t_s) - 1, top + 1, 3, 6);
      else ctx.fillRect(x(e.t_s), top + 1, Math.max(2, x(e.end_s) - x(e.t_s)), EMG_ROW_H - 2);
      if (e.kind === "a_train" || e.kind === "neurotonic") {
        ctx.fillStyle = "#e6edf3"; ctx.font = "10px system-ui";
        ctx.fillText(e.kind === "a_train" ? "A-train" : "neurotonic", x(e.t_s) + 2, top + 11);
      }
    }
    ctx.strokeStyle = COLORS[c % COLORS.length]; ctx.beginPath();
    const lo = EMG.lo[c] || [], hi = EMG.hi[c] || [];
    const first = Math.max(0, Math.floor((tStart - EMG.t0) / EMG.dt));
    const clamp = (y) => Math.max(top + 1, Math.min(top + EMG_ROW_H - 1, y));
    for (let k = first; k < cols; k++) {
      if (lo[k] === null) continue;
      const xx = x(EMG.t0 + k * EMG.dt);  // negative up, as every trace of the console
      ctx.moveTo(xx, clamp(mid + lo[k] * pxPerUv)); ctx.lineTo(xx, clamp(mid + hi[k] * pxPerUv) + 0.5);
    }
    ctx.stroke();
  }
  ctx.fillStyle = "#8aa0b8"; ctx.font = "10px system-ui";
  ctx.fillText(uvdiv + " µV/div · " + sdiv + " s/div", W - 120, H - 4);
  S.emgDraws = (S.emgDraws || 0) + 1;
}

// ---- sound
function audioBuild(n) {
  const ctx = A.ctx;
  if (!A.master) { A.master = ctx.createGain(); A.analyser = ctx.createAnalyser(); A.analyser.fftSize = 2048;
    A.master.connect(ctx.destination); A.master.connect(A.analyser); }
  while (A.gains.length < n) { const g = ctx.createGain(); g.connect(A.master); A.gains.push(g); }
  applyGains();
}

function applyGains() {
  A.gains.forEach((g, i) => { g.gain.value = EMG.muted[i] ? 0 : (EMG.volume[i] ?? 70) / 100; });
}

function sendAudioChannels() {
  const f = S.frames.emg; if (!f || !S.ws || S.ws.readyState !== 1) return;
  const chans = A.on ? f.channels.map((_, i) => i).filter((i) => !EMG.muted[i]) : [];
  send({ cmd: "audio", channels: chans }).then((r) => { A.channels = new Set(r.channels); }).catch((e) => toast(e.message));
}

function toggleSound() {
  const f = S.frames.emg; if (!f) return;
  if (!A.ctx) A.ctx = new AudioContext({ latencyHint: "interactive" });
  A.on = !A.on;
  if (A.on) { A.ctx.resume(); audioBuild(f.channels.length); A.next = null; }
  $("emgsound").textContent = "Sound: " + (A.on ? "on" : "off");
  $("emgsound").classList.toggle("primary", A.on);
  sendAudioChannels();
}

function onAudio(buf) {
  const dv = new DataView(buf);
  const nch = dv.getUint8(1), rate = dv.getUint16(2, true), n = dv.getUint32(4, true);
  const wall0 = dv.getFloat64(16, true);
  const ids = new Uint8Array(buf, 32, nch), pcm = new Int16Array(buf, 32 + nch + (nch % 2), nch * n);
  A.received++; A.samples += nch * n; A.lastChannels = [...ids];
  if (!A.on || !A.ctx) return;
  const ctx = A.ctx, now = ctx.currentTime;
  const acquired = wall0 * 1000 + ((n - 1) / rate) * 1000, arrived = Date.now();  // ms, each on its own clock
  A.transits.push(arrived - acquired);
  if (A.transits.length > AUDIO_TRANSIT_WINDOW) A.transits.shift();
  // the block starts to play AUDIO_LEAD_S after the fastest block of the window arrived whole (this browser's clock)
  const due = acquired + Math.min(...A.transits) + AUDIO_LEAD_S * 1000;
  const ideal = now + (due - arrived) / 1000;  // on the audio clock
  let when = ideal;
  if (A.next !== null && Math.abs(ideal - A.next) < AUDIO_SLIP_S) when = A.next;
  else if (A.next !== null) A.resyncs++;
  if (when < now + 0.003) { A.late++; A.next = null; return; }
  const f = S.frames.emg, scale = ((f && f.audio.uv_per_lsb) || 0.1) / AUDIO_FULL_SCALE_UV;
  audioBuild(Math.max(...ids) + 1);
  for (let j = 0; j < nch; j++) {
    const b = ctx.createBuffer(1, n, rate), d = b.getChannelData(0);
    for (let i = 0; i < n; i++) d[i] = pcm[j * n + i] * scale;
    const src = ctx.createBufferSource(); src.buffer = b; src.connect(A.gains[ids[j]]); src.start(when);
  }
  A.next = when + n / rate;
  A.scheduled++;
  // heard = now + until its turn on the audio clock + the context's processing and the device's output latency
  const heard = Date.now() + (when - now + (ctx.baseLatency || 0) + (ctx.outputLatency || 0)) * 1000;
  A.latency.push(heard - wall0 * 1000);
  if (A.latency.length > 5000) A.latency.splice(0, A.latency.length - 5000);
}

A.level = () => {  // the largest |sample| now at the master output (tests: the graph carries sound)
  if (!A.analyser) return 0;
  const x = new Float32Array(A.analyser.fftSize); A.analyser.getFloatTimeDomainData(x);
  return x.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
};

// ------------------------------------------------------------------ actions
// ------------------------------------------------------------------ EEG (DSA, index trends, raw) and BAEP
// The server sends per 2-s epoch a DSA column per hemisphere (bytes: dB re 1 µV²/Hz over frame.dsa.db, base64) with
// the epoch's trend point, raw EEG band-passed and thinned to 125 Hz, and the BAEP averages with their marks. The page
// keeps the last EEG_KEEP_S of DSA and trends and EEG_RAW_KEEP_S of raw, and draws; it computes nothing of its own.
const EEG_KEEP_S = 3600, EEG_RAW_KEEP_S = 16;
const EEG_SIDE_COLOR = { L: "#58a6ff", R: "#ffa657" };
const EEG = { dsa: [], trend: [], raw: { t0: null, dt: 0.008, q: 0.5, v: [] } };
S.eeg = EEG;
// DSA_PALETTE: palette.js

function b64bytes(s) { const t = atob(s), a = new Uint8Array(t.length); for (let i = 0; i < t.length; i++) a[i] = t.charCodeAt(i); return a; }

function eegEpoch(a) {
  const last = EEG.dsa[EEG.dsa.length - 1];
  if (last && a.t <= last.t) return;  // one already in the snapshot comes once
  EEG.dsa.push({ t: a.t, dt: 2, L: b64bytes(a.dL), R: b64bytes(a.dR) });
  delete a.dL; delete a.dR;  // the trend point keeps its indices only
  EEG.trend.push(a);
  while (EEG.dsa.length && EEG.dsa[0].t < a.t - EEG_KEEP_S) EEG.dsa.shift();
  while (EEG.trend.length && EEG.trend[0].t < a.t - EEG_KEEP_S) EEG.trend.shift();
  S.dirty.add("eegdsa");
}

function eegRaw(a) {  // append raw columns; a gap is kept as nulls, a repeat is skipped
  const R = EEG.raw, n = a.v.length ? a.v[0].length : 0;
  if (!n) return;
  if (R.t0 === null || R.v.length !== a.v.length) { R.t0 = a.t0; R.dt = a.dt; R.q = a.q; R.v = a.v.map((r) => r.slice()); }
  else {
    const have = R.v[0].length, at = Math.round((a.t0 - R.t0) / R.dt);
    if (at > have) for (const r of R.v) for (let k = have; k < at; k++) r.push(null);
    const skip = Math.max(0, have - at);
    R.v.forEach((r, c) => r.push(...a.v[c].slice(skip)));
  }
  const extra = R.v[0].length - Math.round(EEG_RAW_KEEP_S / R.dt);
  if (extra > 0) { for (const r of R.v) r.splice(0, extra); R.t0 += extra * R.dt; }
  S.dirty.add("eegraw");
}

function eegView(v) {  // a snapshot: the DSA and trends of the last half hour (thinned) and the last seconds of raw
  EEG.dsa = v.dsa.map((c) => ({ t: c.t, dt: v.dsa_dt, L: b64bytes(c.L), R: b64bytes(c.R) }));
  EEG.trend = v.trend.slice();
  EEG.raw = { t0: null, dt: v.raw.dt, q: v.raw.q, v: [] };
  if (v.raw.t0 !== null) eegRaw(v.raw);
  S.dirty.add("eegdsa"); S.dirty.add("eegraw");
}

function drawEegInfo() {
  const f = S.frames.eeg; if (!f) return;
  $("eegpanel").classList.remove("hidden");
  const st = (s) => s + " " + (f.state[s] === "normal" ? "normal" : f.state[s] === "ischaemia" ? "ISCHAEMIA" : "global slowing");
  const b = f.baseline;
  $("eegmeta").textContent = f.channels.length + " channels · " + st("L") + " · " + st("R") + " · " +
    (b ? "baseline " + fmtT(b.t_s) + " (" + fmtT(b.from_s) + "–" + fmtT(b.to_s) + ")" : "no baseline: press B") +
    (f.clamp ? " · CLAMPED at " + fmtT(f.clamp.clamp_s) + (f.clamp.shunt_s !== null ? ", shunt open at " + fmtT(f.clamp.shunt_s) : "") : "") +
    eegArtefactText(f.artefact);
  const bad = f.state.L === "ischaemia" || f.state.R === "ischaemia";
  $("eegpanel").classList.toggle("alert", bad);
  $("eegpanel").classList.toggle("warning", !bad && f.mode[0] === "global");
  $("eegbase").disabled = !can("baseline");
  for (const b of document.querySelectorAll("#eegpanel button.mark")) b.disabled = !can("mark");
}

// Artefact rejection as the engine reports it: epochs rejected so far, and a judgement held by artefact.
function eegArtefactText(a) {
  if (!a) return "";
  const n = Object.values(a.rejected).reduce((x, y) => x + y, 0);
  let t = n ? " · artefact: " + n + " channel-epochs rejected" : "";
  if (a.held_since !== null) t += " · NOT JUDGED since " + fmtT(a.held_since) + " (artefact, " + a.held_sides.join("+") + ")";
  return t;
}

// Alerts, notes and EEG lines of the timeline as ticks on the DSA's time axis (a note "clamp on" is seen where the
// spectrum changes), each kind in its timeline colour.
const TICK_COLOR = { alert: "#ff4d4f", note: "#79c0ff", eeg: "#d2a8ff", ack: "#3fb950", surgical: "#e3b341" };
function eventTicks(ctx, tStart, span, left, w, y0, y1) {
  ctx.font = "9px system-ui";
  for (const e of S.timeline.values()) {
    const c = TICK_COLOR[e.kind];
    if (!c || e.t_s < tStart || e.t_s > tStart + span) continue;
    if ((e.kind === "alert" || e.kind === "ack") && !e.text.startsWith("EEG")) continue;  // the EEG's, not every modality's
    const x = Math.round(left + (e.t_s - tStart) / span * w) + 0.5;
    ctx.strokeStyle = c; ctx.globalAlpha = 0.8; ctx.beginPath(); ctx.moveTo(x, y0); ctx.lineTo(x, y1); ctx.stroke(); ctx.globalAlpha = 1;
    ctx.fillStyle = c; ctx.fillText(e.kind === "note" || e.kind === "surgical" ? e.text.slice(0, 18) : e.kind, x + 2, y0 + 9);
  }
}

function drawDsa() {
  const f = S.frames.eeg, cv = $("dsacanvas"); if (!f) return;
  const [ctx, W, H] = sizeCanvas(cv);
  ctx.fillStyle = "#0e1722"; ctx.fillRect(0, 0, W, H);
  const span = +$("eegspan").value, tEnd = f.t_s, tStart = tEnd - span, left = 40, right = 8, gap = 14, top = 12;
  const rowH = (H - top - 2 * gap) / 2, w = Math.max(1, Math.round(W - left - right)), nb = f.dsa.n;
  const off = document.createElement("canvas"); off.width = w; off.height = nb;
  const octx = off.getContext("2d");
  ["L", "R"].forEach((side, r) => {
    const img = octx.createImageData(w, nb);
    let j = 0;
    for (let x = 0; x < w; x++) {
      const t = tStart + (x + 0.5) / w * span;
      while (j < EEG.dsa.length && EEG.dsa[j].t < t) j++;  // the column whose epoch covers t (ends at or after it)
      const c = EEG.dsa[j];
      if (!c || c.t - c.dt > t + 1e-6) continue;
      const lv = c[side];
      for (let b = 0; b < nb; b++) {
        const p = ((nb - 1 - b) * w + x) * 4, k = lv[b] * 3;  // low frequencies at the bottom
        img.data[p] = DSA_PALETTE[k]; img.data[p + 1] = DSA_PALETTE[k + 1]; img.data[p + 2] = DSA_PALETTE[k + 2]; img.data[p + 3] = 255;
      }
    }
    octx.putImageData(img, 0, 0);
    const y0 = top + r * (rowH + gap);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, left, y0, w, rowH);
    ctx.strokeStyle = "#26364a"; ctx.strokeRect(left, y0, w, rowH);
    ctx.fillStyle = "#8aa0b8"; ctx.font = "10px system-ui";
    ctx.fillText((side === "L" ? "Left" : "Right") + " hemisphere (" + (f.sides[side] || []).join(", ") + ")", left + 4, y0 - 2);
    for (const hz of [1, 4, 8, 13, 30]) {  // band edges: delta, theta, alpha, beta
      const y = y0 + rowH - (hz - f.dsa.f0 + f.dsa.df / 2) / (f.dsa.n * f.dsa.df) * rowH;
      ctx.fillText(String(hz), 4, y + 3);
      ctx.strokeStyle = "rgba(255,255,255,.25)"; ctx.beginPath(); ctx.moveTo(left - 4, y); ctx.lineTo(left, y); ctx.stroke();
    }
  });
  const b = f.baseline;
  if (b && b.t_s >= tStart) { const x = left + (b.t_s - tStart) / span * w; ctx.strokeStyle = "#3fb950"; ctx.setLineDash([4, 3]);
    ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, H - gap); ctx.stroke(); ctx.setLineDash([]); }
  eventTicks(ctx, tStart, span, left, w, top, H - gap);
  for (let i = 0; i < 64; i++) {  // the colour scale, low to high power
    const k = Math.round(i / 63 * 255) * 3; ctx.fillStyle = "rgb(" + DSA_PALETTE[k] + "," + DSA_PALETTE[k + 1] + "," + DSA_PALETTE[k + 2] + ")";
    ctx.fillRect(W / 2 + 40 + i, H - 9, 1, 7);
  }
  ctx.fillStyle = "#6e849b"; ctx.fillText("Hz", 4, top + 2);
  ctx.fillText(fmtT(tStart), left, H - 2); ctx.fillText(fmtT(tEnd), W - right - 30, H - 2);
  ctx.fillText(f.dsa.db[0] + "…" + f.dsa.db[1] + " dB", W / 2 - 30, H - 2);
  S.dsaDraws = (S.dsaDraws || 0) + 1;
}

const EEG_TRENDS = [  // [label, key, index in the side's array, fixed range or null (auto), alert line key]
  ["relative alpha", "ra", 0, null, "ra_alert"], ["alpha/delta", "adr", 1, null, "adr_alert"],
  ["SEF95 Hz", "sef", 2, [0, 30], null], ["BSR", "bsr", 3, [0, 1], null], ["asymmetry (L−R)/(L+R)", "asym", -1, [-0.5, 0.5], null]];

function drawEegTrends() {
  const f = S.frames.eeg, cv = $("eegtrend"); if (!f) return;
  const [ctx, W, H] = sizeCanvas(cv);
  ctx.fillStyle = "#0e1722"; ctx.fillRect(0, 0, W, H);
  const span = +$("eegspan").value, tEnd = f.t_s, tStart = tEnd - span, left = 40, right = 8, top = 4, bottom = 12;
  const ph = (H - top - bottom) / EEG_TRENDS.length, X = (t) => left + (t - tStart) / span * (W - left - right);
  const pts = EEG.trend.filter((p) => p.t >= tStart), b = f.baseline;
  ctx.font = "10px system-ui";
  EEG_TRENDS.forEach(([label, key, idx, fixed, alertKey], k) => {
    const y0 = top + k * ph + 10, h = ph - 12;
    const val = (p, s) => (idx < 0 ? p.asym : p[s] ? p[s][idx] : null);
    let lo = 0, hi = 1;
    if (fixed) [lo, hi] = fixed;
    else {
      let m = 0; for (const p of pts) for (const s of ["L", "R"]) { const v = val(p, s); if (v !== null && v > m) m = v; }
      if (b) for (const s of ["L", "R"]) m = Math.max(m, b.lines[s][key] || 0);
      hi = m > 0 ? m * 1.15 : 1;
    }
    const Y = (v) => y0 + h - (Math.min(Math.max(v, lo), hi) - lo) / (hi - lo) * h;
    ctx.strokeStyle = "#26364a"; ctx.strokeRect(left, y0, W - left - right, h);
    ctx.fillStyle = "#8aa0b8"; ctx.fillText(label, left + 4, y0 - 1);
    ctx.fillText(hi.toFixed(hi < 2 ? 2 : 0), 2, y0 + 8); ctx.fillText(lo.toFixed(lo === 0 ? 0 : 1), 2, y0 + h);
    for (const s of (idx < 0 ? ["A"] : ["L", "R"])) {
      const color = idx < 0 ? "#d2a8ff" : EEG_SIDE_COLOR[s];
      if (b) {  // the baseline dashed green, the alert level red (the criterion with its confidence margin)
        const bv = idx < 0 ? b.asym : b.lines[s][key];
        if (bv !== null && bv !== undefined) { ctx.strokeStyle = "#3fb950"; ctx.setLineDash([4, 3]); ctx.beginPath();
          ctx.moveTo(left, Y(bv)); ctx.lineTo(W - right, Y(bv)); ctx.stroke(); ctx.setLineDash([]); }
        const av = alertKey && idx >= 0 ? b.lines[s][alertKey] : null;
        if (av !== null && av !== undefined) { ctx.strokeStyle = color; ctx.globalAlpha = 0.8; ctx.setLineDash([1, 2]);
          ctx.beginPath(); ctx.moveTo(left, Y(av)); ctx.lineTo(W - right, Y(av)); ctx.stroke(); ctx.setLineDash([]);
          ctx.globalAlpha = 1; ctx.strokeStyle = "#ff4d4f"; ctx.beginPath(); ctx.moveTo(W - right - 14, Y(av)); ctx.lineTo(W - right, Y(av)); ctx.stroke(); }
      }
      ctx.strokeStyle = color; ctx.lineWidth = 1.5; ctx.beginPath(); let pen = false;
      for (const p of pts) { const v = idx < 0 ? p.asym : val(p, s);
        if (v === null || v === undefined) { pen = false; continue; }
        if (pen) ctx.lineTo(X(p.t), Y(v)); else { ctx.moveTo(X(p.t), Y(v)); pen = true; } }
      ctx.stroke(); ctx.lineWidth = 1;
    }
  });
  ctx.fillStyle = EEG_SIDE_COLOR.L; ctx.fillText("— L", W - 70, 10); ctx.fillStyle = EEG_SIDE_COLOR.R; ctx.fillText("— R", W - 40, 10);
  S.eegTrendDraws = (S.eegTrendDraws || 0) + 1;
}

function drawEegRaw() {
  const f = S.frames.eeg, cv = $("eegraw"); if (!f) return;
  const [ctx, W, H] = sizeCanvas(cv);
  ctx.fillStyle = "#0e1722"; ctx.fillRect(0, 0, W, H);
  const R = EEG.raw, nch = f.channels.length, span = +$("eegrawspan").value, uvdiv = +$("eegscale").value;
  const left = 54, rowH = H / nch, pxPerUv = rowH / 2 / uvdiv;  // a channel's row is two divisions high
  const cols = R.v.length ? R.v[0].length : 0, tEnd = R.t0 === null ? 0 : R.t0 + cols * R.dt, tStart = tEnd - span;
  const X = (t) => left + (t - tStart) / span * (W - left);
  ctx.strokeStyle = "#1c2836";
  for (let s = Math.ceil(tStart); s <= tEnd; s++) { const x = Math.round(X(s)) + 0.5; ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, H); ctx.stroke(); }
  ctx.font = "10px system-ui";
  for (let c = 0; c < nch; c++) {
    const mid = (c + 0.5) * rowH, side = (f.channels[c].match(/\d+/g) || []).map(Number)[0] % 2 ? "L" : "R";
    ctx.fillStyle = EEG_SIDE_COLOR[side]; ctx.fillText(f.channels[c], 2, mid + 3);
    const v = R.v[c] || [], first = Math.max(0, Math.floor((tStart - R.t0) / R.dt));
    ctx.strokeStyle = EEG_SIDE_COLOR[side]; ctx.beginPath(); let pen = false;
    for (let k = first; k < cols; k++) {
      if (v[k] === null) { pen = false; continue; }
      const y = Math.max(mid - rowH / 2, Math.min(mid + rowH / 2, mid + v[k] * R.q * pxPerUv));  // negative up
      if (pen) ctx.lineTo(X(R.t0 + k * R.dt), y); else { ctx.moveTo(X(R.t0 + k * R.dt), y); pen = true; }
    }
    ctx.stroke();
  }
  ctx.fillStyle = "#8aa0b8"; ctx.fillText(uvdiv + " µV/div · 1 s/div · 0.5–35 Hz", W - 150, H - 4);
  S.eegRawDraws = (S.eegRawDraws || 0) + 1;
}

// BAEP: the stack of averages over time (oldest at the top), the newest running average, the baseline in green at the
// bottom; waves I, III and V marked on each; vertex positive up, as BAEPs are read.
function drawBaep() {
  const f = S.frames.baep; if (!f) return;
  $("baeppanel").classList.remove("hidden"); $("baeppanel").dataset.key = f.stream;
  $("baeppanel").classList.toggle("alert", f.state === "alert");
  $("baepbase").disabled = !can("baseline");
  const b = f.baseline;
  $("baepmeta").textContent = f.stream.replace("/", " · ") + " · " + f.channels.join(", ") + " · " + f.sweeps + " sweeps at " +
    f.rate_hz + " Hz · " + f.rejected + " rejected · " + (b ? "baseline " + fmtT(b.t_s) + " (" + b.n + " sweeps)" : "no baseline: press B");
  const cv = $("baepcanvas"), [ctx, W, H] = sizeCanvas(cv);
  ctx.fillStyle = "#0e1722"; ctx.fillRect(0, 0, W, H);
  const rows = f.stack.map((s) => [s, "#8aa0b8", "stack"]);
  if (f.current && (!f.stack.length || f.current.t_s > f.stack[f.stack.length - 1].t_s)) rows.push([f.current, "#58a6ff", "now"]);
  else if (rows.length) rows[rows.length - 1][1] = "#58a6ff";
  if (b) rows.push([b, "#3fb950", "baseline"]);
  const left = 44, right = 110, top = 14, bottom = 16, n = Math.max(rows.length, 4), rowH = (H - top - bottom) / n;
  const uvdiv = +$("baepscale").value, pxPerUv = rowH / uvdiv / 2, msMax = 10, msMin = -f.pre_ms;
  const X = (ms) => left + (ms - msMin) / (msMax - msMin) * (W - left - right);
  ctx.strokeStyle = "#1c2836"; ctx.font = "10px system-ui"; ctx.fillStyle = "#6e849b";
  for (let ms = 0; ms <= msMax; ms++) { const x = Math.round(X(ms)) + 0.5; ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, H - bottom); ctx.stroke();
    if (ms % 2 === 0) ctx.fillText(ms + " ms", x - 8, H - 3); }
  rows.forEach(([a, color, what], r) => {
    const mid = top + (r + 0.5) * rowH, dt = 1000 / f.fs, ip = a.v[0];
    ctx.fillStyle = color; ctx.fillText(what === "baseline" ? "baseline" : fmtT(a.t_s), 2, mid + 3);
    ctx.strokeStyle = color; ctx.lineWidth = what === "stack" ? 1 : 1.6; ctx.beginPath();
    ip.forEach((v, k) => { const x = X(msMin + k * dt), y = mid - v * a.q * pxPerUv;  // positive up
      if (k) ctx.lineTo(x, y); else ctx.moveTo(x, y); });
    ctx.stroke(); ctx.lineWidth = 1;
    for (const w of ["I", "III", "V"]) {  // the marks: a tick at the peak and its name
      const m = a.waves[w]; if (!m) continue;
      const k = Math.round((m.ms - msMin) / dt), y = mid - (ip[k] || 0) * a.q * pxPerUv;
      ctx.strokeStyle = "#e6edf3"; ctx.beginPath(); ctx.moveTo(X(m.ms), y - 3); ctx.lineTo(X(m.ms), y - 9); ctx.stroke();
      ctx.fillStyle = "#e6edf3"; ctx.fillText(w, X(m.ms) - (w.length * 3), y - 11);
    }
    ctx.fillStyle = color;
    ctx.fillText("V " + a.waves.V.ms.toFixed(2) + " ms " + a.waves.V.uv.toFixed(2) + " µV", W - right + 4, mid - 2);
    ctx.fillText("I–V " + a.ipl["I-V"].toFixed(2) + " ms", W - right + 4, mid + 10);
  });
  ctx.fillStyle = "#8aa0b8"; ctx.fillText(uvdiv + " µV/div · vertex positive up · " + f.channels[0], left, 10);
  drawBaepTable(f);
  drawBaepTrend(f);
  S.baepDraws = (S.baepDraws || 0) + 1;
}

function drawBaepTable(f) {
  const a = f.current, b = f.baseline, t = $("baeptable");
  if (!a) { t.textContent = "averaging…"; return; }
  const row = (name, now, base, unit, d) => [name, now == null ? "–" : now.toFixed(d) + unit,
    base == null ? "–" : base.toFixed(d) + unit, now != null && base != null ? (now - base >= 0 ? "+" : "") + (now - base).toFixed(d) : "–"];
  const rows = [];
  for (const w of ["I", "III", "V"]) {
    rows.push(["", row(w + " latency", a.waves[w].ms, b && b.waves[w].ms, " ms", 2)]);
    rows.push(["", row(w + " amplitude", a.waves[w].uv, b && b.waves[w].uv, " µV", 2)]);
  }
  for (const k of ["I-III", "III-V", "I-V"]) rows.push(["ipl", row(k.replace("-", "–") + " IPL", a.ipl[k], b && b.ipl[k], " ms", 2)]);
  tableRows(t, ["", "now (" + a.n + ")", "baseline", "Δ"], rows);
}

function drawBaepTrend(f) {
  const cv = $("baeptrend"), [ctx, W, H] = sizeCanvas(cv);
  ctx.fillStyle = "#0e1722"; ctx.fillRect(0, 0, W, H);
  const pts = f.trend, left = 36, right = 8, gap = 18, top = 12, ph = (H - top - gap - 12) / 2;
  ctx.font = "10px system-ui"; ctx.fillStyle = "#8aa0b8";
  if (!f.baseline || !pts.length) { ctx.fillText(f.baseline ? "averaging…" : "wave V trend: after the baseline", left, H / 2); return; }
  const tEnd = f.t_s, tStart = Math.max(pts[0].t, tEnd - 1800), X = (t) => left + (t - tStart) / Math.max(60, tEnd - tStart) * (W - left - right);
  const plots = [["wave V latency shift (ms)", "v_shift_ms", -0.5, 3, f.criteria.latency_ms, 0],
    ["wave V amplitude (× baseline)", "v_ratio", 0, 1.5, 1 - f.criteria.amplitude_drop, 1]];
  plots.forEach(([label, key, lo, hi, alert, base], k) => {
    const y0 = top + k * (ph + gap), Y = (v) => y0 + ph - (Math.min(Math.max(v, lo), hi) - lo) / (hi - lo) * ph;
    ctx.strokeStyle = "#26364a"; ctx.strokeRect(left, y0, W - left - right, ph);
    ctx.fillStyle = "#8aa0b8"; ctx.fillText(label, left + 4, y0 - 2); ctx.fillText(String(hi), 4, y0 + 8); ctx.fillText(String(lo), 4, y0 + ph);
    for (const [v, c, d] of [[base, "#3fb950", [4, 3]], [alert, "#ff4d4f", []]]) { ctx.strokeStyle = c; ctx.setLineDash(d);
      ctx.beginPath(); ctx.moveTo(left, Y(v)); ctx.lineTo(W - right, Y(v)); ctx.stroke(); ctx.setLineDash([]); }
    ctx.strokeStyle = "#58a6ff"; ctx.lineWidth = 1.5; ctx.beginPath(); let pen = false;
    for (const p of pts) { const v = p[key]; if (p.t < tStart || v === null || v === undefined) { pen = false; continue; }
      if (pen) ctx.lineTo(X(p.t), Y(v)); else { ctx.moveTo(X(p.t), Y(v)); pen = true; } }
    ctx.stroke(); ctx.lineWidth = 1;
  });
}

function toast(text, info) {
  const el = $("toast"); el.textContent = text; el.className = info ? "info" : "";
  clearTimeout(toast.timer); toast.timer = setTimeout(() => el.classList.add("hidden"), 3500);
}

// Acknowledges a banner row: every unacknowledged alert of that channel up to the newest one shown, with the one
// note, in one command (an alert raised while the dialog is open stays unacknowledged, its row stays).
function openAck(g) {
  if (!can("ack")) { toast("Your role (" + S.role + ") cannot acknowledge alerts"); return; }
  g = g || alertGroups()[0]; if (!g) { toast("No alert to acknowledge", true); return; }
  const dlg = $("ackdialog");
  $("acktext").textContent = fmtT(g.last_t_s) + "  " + g.latest.label +
    (g.unacked > 1 ? "  (" + g.unacked + " alerts on this channel)" : "");
  $("acknote").value = "";
  dlg.dataset.uid = g.ack_uid; dlg.showModal(); $("acknote").focus();
}

function openTcmep() {
  if (!can("stim")) { toast("Your role (" + S.role + ") cannot stimulate"); return; }
  const s = S.frames.stim; if (!s) return;
  $("tcmeptext").textContent = s.program.tcmep.train_pulses + " pulses, " + s.program.tcmep.ipi_ms + " ms apart.";
  $("tcmepcheck").checked = false; $("tcmepdialog").showModal();
}

function openBaseline() {
  if (!can("baseline")) { toast("Your role (" + S.role + ") cannot set baselines"); return; }
  $("baseselected").textContent = "Selected: " + (S.selected || "none"); $("basedialog").showModal();
}

function togglePause() {
  S.paused = !S.paused; $("paused").classList.toggle("hidden", !S.paused);
  if (!S.paused) { for (const k of Object.keys(S.frames)) S.dirty.add(k.replace(STREAM_KEYS, ""));
    for (const k of ["timeline", "emgtrace", "eegdsa", "eegraw", "baep"]) S.dirty.add(k); schedule(); }
}

function setup() {
  $("ackdialog").addEventListener("close", () => {
    const dlg = $("ackdialog");
    if (dlg.returnValue !== "ok") return;
    const note = $("acknote").value.trim();
    if (!note) { toast("An acknowledgement needs a note"); return; }
    command({ cmd: "ack", alert: dlg.dataset.uid, group: true, note })
      .then((r) => toast(r.count > 1 ? r.count + " alerts acknowledged" : "Alert acknowledged", true));
  });
  $("basedialog").addEventListener("close", () => {
    const v = $("basedialog").returnValue;
    if (v === "all") command({ cmd: "baseline" }, "Setting baselines of all streams");
    else if (v === "selected" && S.selected) command({ cmd: "baseline", stream: S.selected }, "Setting baseline of " + S.selected);
  });
  $("tcmepdialog").addEventListener("close", () => {
    if ($("tcmepdialog").returnValue !== "ok") return;
    if (!$("tcmepcheck").checked) { toast("Confirm bite block and warning first"); return; }
    stim({ action: "tcmep_train" }, true);
  });
  for (const lv of LEVELS) { const o = document.createElement("option"); o.value = o.textContent = lv; $("screwlevel").appendChild(o); }
  $("screwlevel").value = "L4";
  $("screwform").addEventListener("submit", (e) => {
    e.preventDefault();
    command({ cmd: "screw_test", level: $("screwlevel").value, side: $("screwside").value, dynamic: $("screwdyn").checked,
      hi_ma: +$("screwhi").value }, "Screw test started");
  });
  $("screwstop").addEventListener("click", () => command({ cmd: "screw_stop" }, "Screw test stopping"));
  $("probeform").addEventListener("submit", (e) => {
    e.preventDefault();
    const msg = { cmd: "probe", ma: +$("probema").value, rate_hz: +$("proberate").value };
    if ($("probelabel").value.trim()) msg.label = $("probelabel").value.trim();
    command(msg, "Probe started");
  });
  $("probestop").addEventListener("click", () => command({ cmd: "probe_stop" }, "Probe stopping"));
  $("tofform").addEventListener("submit", (e) => {
    e.preventDefault();
    command({ cmd: "tof", output: +$("tofoutput").value, channel: +$("tofchannel").value }, "Train-of-four started");
  });
  $("tofeveryset").addEventListener("click", () => {
    const s = +$("tofevery").value;
    command(s ? { cmd: "tof_every", s, output: +$("tofoutput").value, channel: +$("tofchannel").value } :
      { cmd: "tof_every", s: 0 }, s ? "Train-of-four every " + s + " s" : "Automatic train-of-four off");
  });
  $("emgsound").addEventListener("click", toggleSound);
  $("emgwarnform").addEventListener("submit", (e) => {
    e.preventDefault();
    command({ cmd: "emg_warning", s: +$("emgwarn").value }, "A-train warning at " + $("emgwarn").value + " s")
      .then(() => $("emgwarn").blur());
  });
  for (const id of ["emgscale", "emgtime"]) $(id).addEventListener("change", () => { S.dirty.add("emgtrace"); schedule(); });
  $("eegspan").addEventListener("change", () => { S.dirty.add("eegdsa"); schedule(); });
  for (const id of ["eegscale", "eegrawspan"]) $(id).addEventListener("change", () => { S.dirty.add("eegraw"); schedule(); });
  $("baepscale").addEventListener("change", () => { S.dirty.add("baep"); schedule(); });
  $("eegpanel").addEventListener("click", () => select("eeg/EEG"));
  $("baeppanel").addEventListener("click", () => { if (S.frames.baep) select(S.frames.baep.stream); });
  $("eegbase").addEventListener("click", (e) => { e.stopPropagation();
    command({ cmd: "baseline", stream: "eeg/EEG" }, "EEG baseline set"); });
  for (const b of document.querySelectorAll("#eegpanel button.mark")) b.addEventListener("click", (e) => {
    e.stopPropagation(); command({ cmd: "mark", event: b.dataset.event }, b.textContent + " marked"); });
  $("baepbase").addEventListener("click", (e) => { e.stopPropagation(); if (!S.frames.baep) return;
    command({ cmd: "baseline", stream: S.frames.baep.stream }, "BAEP baseline set"); });
  $("noteform").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("note").value.trim(); if (!text) return;
    command({ cmd: "note", text }, "Note added").then(() => { $("note").value = ""; $("note").blur(); });
  });
  document.addEventListener("keydown", (e) => {
    const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
    if (e.key === "Escape" && typing) { document.activeElement.blur(); return; }
    if (typing || e.ctrlKey || e.metaKey || e.altKey || document.querySelector("dialog[open]")) return;
    const k = e.key.toLowerCase();
    if (k === " ") { e.preventDefault(); togglePause(); }
    else if (k === "b") { e.preventDefault(); openBaseline(); }
    else if (k === "n") { e.preventDefault(); if (!can("note")) toast("Your role cannot add notes"); else $("note").focus(); }
    else if (k === "a") { e.preventDefault(); openAck(); }
    else if (k === "t") { e.preventDefault(); openTcmep(); }
  });
  window.addEventListener("resize", () => { for (const k of Object.keys(S.frames)) if (k.startsWith("stream:")) S.dirty.add(k.slice(7));
    for (const k of ["emgtrace", "eegdsa", "eegraw", "baep"]) S.dirty.add(k);
    schedule(); });
  connect();
}

document.addEventListener("DOMContentLoaded", setup);

"""A single self-contained HTML file (no network) showing a ``proctap run`` document as a timeline.

One row per process, nested by parent (click a row's label to fold its subtree), a bar from start to end coloured by
outcome, ticks for execs and failed forks, a tooltip on hover, Ctrl+wheel / buttons to zoom, scrollbars to pan.
It draws on one canvas and only the rows in view, so 10,000+ processes stay fast.

Every text shown (title, row labels, tooltips) is formatted in Python by :mod:`proctap.text`, as in the text report
(shell quoting, control characters and non-UTF-8 bytes as ``$'...'`` escapes, the exact bytes taken from ``raw_b64``),
and embedded beside the document; the page never shows a raw control character.

For automated checks the page keeps ``<div id="proctap-status">`` up to date: ``data-rows`` (rows in the document),
``data-visible`` (rows unfolded), ``data-drawn`` (rows drawn in the last frame), ``data-errors`` (errors caught by
window.onerror, their messages in ``#proctap-errors``) and ``data-ms`` (time of the first render).
"""

# ruff: noqa: E501  (the embedded page)
from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Mapping
from typing import Any

from ..events import exact_bytes
from ..text import format_command, format_program, sanitize

__all__ = ["render_html"]


def _embed_json(doc: Mapping[str, Any]) -> str:
    # Inside <script>, only "</" (and "<!--") can end or confuse the element; escape every "<".
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).replace("<", "\\u003c")


def _text(obj: Mapping[str, Any], field: str) -> str | None:
    """A string field of the document as proctap holds it in Python (exact bytes, os.fsdecode), or None."""
    raw = exact_bytes(obj, field)
    return None if raw is None or isinstance(raw, list) else os.fsdecode(raw)


def _words(obj: Mapping[str, Any], field: str) -> list[str] | None:
    """A list-of-strings field (argv) as proctap holds it in Python, or None."""
    raw = exact_bytes(obj, field)
    return None if raw is None or isinstance(raw, bytes) else [os.fsdecode(b) for b in raw]


def _exec_text(entry: Mapping[str, Any]) -> str:
    return format_command(_words(entry, "argv")) or sanitize(_text(entry, "filename") or "?")


def display_texts(doc: Mapping[str, Any]) -> dict[str, Any]:
    """What the page shows for each process (by index in ``processes``), formatted as the text report does:
    ``labels`` (``[pid] program args``), ``commands`` (the full argv), ``files`` (the executed file or null),
    ``execs`` (one command line per exec), and ``title``."""
    labels, commands, files, execs = [], [], [], []
    for proc in doc.get("processes") or []:
        argv, filename = _words(proc, "argv"), _text(proc, "filename")
        label = format_program(argv, filename, _text(proc, "comm"))
        labels.append(f"[{proc.get('pid')}] {label}")
        commands.append(f"[{proc.get('pid')}] {format_command(argv) or label}")
        files.append(None if filename is None else sanitize(filename))
        execs.append([_exec_text(e) for e in proc.get("execs") or []])
    title = "proctap run: " + format_command(_words(doc, "command"))
    return {"title": title, "labels": labels, "commands": commands, "files": files, "execs": execs}


def render_html(doc: dict[str, Any], title: str | None = None) -> str:
    """The page for a document from :func:`proctap.run.report.run_document` (``title``: the page's title, by
    default ``proctap run:`` and the command line; control characters in it are escaped)."""
    texts = display_texts(doc)
    title = texts["title"] if title is None else sanitize(title)
    values = {"TITLE": html.escape(title[:200]), "TEXT": _embed_json(texts), "DATA": _embed_json(doc)}
    # One pass, so that a command line containing "@@DATA@@" stays text.
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], _TEMPLATE)


_PLACEHOLDER = re.compile("@@(TITLE|TEXT|DATA)@@")


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@@TITLE@@</title>
<style>
html,body{margin:0;height:100%;font:13px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;background:#fff}
body{display:flex;flex-direction:column}
header{padding:6px 10px;border-bottom:1px solid #ccc;background:#f6f6f6}
header h1{font-size:15px;margin:0 0 3px 0;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
#summary{color:#444}
#warnings{color:#b00020;font-weight:600}
.bar{display:flex;gap:12px;align-items:center;flex-wrap:wrap;margin-top:4px}
.legend span{display:inline-block;width:12px;height:10px;margin:0 3px 0 8px;vertical-align:middle;border-radius:2px}
button{font:inherit;padding:1px 8px}
#main{position:relative;flex:1;min-height:0}
#scroller{position:absolute;inset:0;overflow:auto}
#spacer{width:1px;height:1px}
#canvas{position:absolute;left:0;top:0;pointer-events:none}
#tip{position:fixed;display:none;max-width:640px;background:#fffff0;border:1px solid #888;padding:5px 7px;
 box-shadow:2px 2px 6px rgba(0,0,0,.25);font:12px/1.35 ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;
 word-break:break-all;pointer-events:none;z-index:5}
#proctap-status{color:#666}
</style></head>
<body>
<header>
 <h1 id="title"></h1>
 <div id="summary"></div>
 <div id="warnings"></div>
 <div class="bar">
  <span class="legend"><span style="background:#43a047"></span>exit 0<span style="background:#fb8c00"></span>exit &ne; 0<span style="background:#e53935"></span>signal<span style="background:#1e88e5"></span>still running<span style="background:#9e9e9e"></span>exit unseen or status unknown<span style="background:#000;width:2px"></span>exec<span style="background:#d500f9;width:3px"></span>failed fork</span>
  <span><button id="zin" title="Zoom in (Ctrl+wheel)">+</button> <button id="zout" title="Zoom out">&minus;</button> <button id="zfit">Fit</button></span>
  <span>Click a name to fold its children.</span>
  <span id="proctap-status" data-rows="0" data-visible="0" data-drawn="0" data-errors="0">loading</span>
 </div>
 <div id="proctap-errors" style="color:#b00020"></div>
</header>
<div id="main"><div id="scroller"><div id="spacer"></div></div><canvas id="canvas"></canvas></div>
<div id="tip"></div>
<script type="application/json" id="proctap-text">@@TEXT@@</script>
<script type="application/json" id="proctap-data">@@DATA@@</script>
<script>
"use strict";
(function () {
const status = document.getElementById("proctap-status");
const errBox = document.getElementById("proctap-errors");
let errors = 0;
window.onerror = function (msg, src, line, col) {
  errors += 1;
  status.dataset.errors = String(errors);
  const d = document.createElement("div");
  d.textContent = "error: " + msg + " (line " + line + ":" + col + ")";
  errBox.appendChild(d);
};
const t0 = performance.now();
const doc = JSON.parse(document.getElementById("proctap-data").textContent);
const TEXT = JSON.parse(document.getElementById("proctap-text").textContent);  // quoted by proctap.text
const procs = doc.processes || [];
const N = procs.length;
const total = Math.max(1, doc.duration_ns || 1);
const COLORS = {ok: "#43a047", failed: "#fb8c00", signaled: "#e53935", running: "#1e88e5", unknown: "#9e9e9e"};
const ROW = 18, AXIS = 24, LABEL = 380;
const kids = new Array(N);
for (let i = 0; i < N; i++) kids[i] = 0;
for (let i = 0; i < N; i++) { const p = procs[i].parent; if (p !== null && p !== undefined) kids[p] += 1; }
const folded = new Uint8Array(N);

function fmtDur(ns) {
  if (ns === null || ns === undefined) return "?";
  if (ns < 1e6) return (ns / 1e3).toFixed(0) + " us";
  if (ns < 1e9) return (ns / 1e6).toFixed(1) + " ms";
  return (ns / 1e9).toFixed(3) + " s";
}
function fmtSize(b) {
  if (b === null || b === undefined) return "-";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(1) : b.toFixed(0)) + " " + u[i];
}
function statusText(p) {
  switch (p.outcome) {
    case "running": return "still running";
    case "unknown": return p.exit_seen ? "ended, status unknown (the backend did not report it)" : "exit unseen (event lost?)";
    case "signaled": return "killed by " + (p.signal_name || ("signal " + p.signal)) + (p.core_dumped ? " (core dumped)" : "");
    default: return "exit " + p.exit_code;
  }
}
const labels = TEXT.labels;

// -- header ----------------------------------------------------------------------------------------------
document.getElementById("title").textContent = TEXT.title;
const c = doc.counts || {};
document.getElementById("summary").textContent =
  "exit status " + doc.exit_status + " \u00b7 " + fmtDur(doc.root_end_offset_ns) + " \u00b7 " + N + " processes (" +
  (c.ok || 0) + " ok, " + (c.failed || 0) + " failed, " + (c.signaled || 0) + " killed, " + (c.running || 0) +
  " still running, " + ((c.unknown || 0) - (c.exit_unseen || 0)) + " status unknown, " + (c.exit_unseen || 0) +
  " exit unseen) \u00b7 " + (c.fork_failures || 0) + " failed forks \u00b7 backend " +
  doc.backend + " \u00b7 accounting " + (doc.accounting_source || "none") + " \u00b7 started " +
  new Date((doc.started_wall || 0) * 1000).toISOString();
const warn = [];
let lost = 0, lostUnknown = 0;
(doc.lost || []).forEach(function (l) { if (l.count === null) lostUnknown++; else lost += l.count; });
if (lost || lostUnknown) warn.push((lost ? lost + " events lost" : "") + (lostUnknown ? " " + lostUnknown + " overruns of unknown size" : "") + ": the tree may be incomplete");
if (doc.accounting_overruns) warn.push("taskstats dropped records " + doc.accounting_overruns + " times");
if (doc.accounting_note) warn.push(doc.accounting_note);
document.getElementById("warnings").textContent = warn.join(" \u00b7 ");

// -- visible rows (folding) ------------------------------------------------------------------------------
let rows = new Int32Array(0);
function computeRows() {
  const out = new Int32Array(N); let n = 0; let skipDepth = -1;
  for (let i = 0; i < N; i++) {
    const d = procs[i].depth;
    if (skipDepth >= 0) { if (d > skipDepth) continue; skipDepth = -1; }
    out[n++] = i;
    if (folded[i]) skipDepth = d;
  }
  rows = out.subarray(0, n);
  status.dataset.visible = String(n);
}

// -- geometry ----------------------------------------------------------------------------------------------
const scroller = document.getElementById("scroller");
const spacer = document.getElementById("spacer");
const canvas = document.getElementById("canvas");
const ctx = canvas.getContext("2d");
let pxPerNs = 1, fitPx = 1;
function viewWidth() { return Math.max(50, scroller.clientWidth - LABEL - 10); }
function layout() {
  spacer.style.width = Math.ceil(LABEL + total * pxPerNs + 10) + "px";
  spacer.style.height = Math.ceil(AXIS + rows.length * ROW + 4) + "px";
}
function fit() { fitPx = viewWidth() / total; pxPerNs = fitPx; layout(); scroller.scrollLeft = 0; draw(); }
function zoom(factor, anchorX) {
  const ax = anchorX === undefined ? viewWidth() / 2 : anchorX;
  const tAt = (scroller.scrollLeft + ax) / pxPerNs;
  pxPerNs = Math.min(Math.max(pxPerNs * factor, fitPx), 2e-3 * 50);  // at most 50 px per microsecond
  layout();
  scroller.scrollLeft = Math.max(0, tAt * pxPerNs - ax);
  draw();
}

function axisStep(nsPerPx) {
  const target = nsPerPx * 110; let step = 1;
  while (step * 10 <= target) step *= 10;
  if (step * 5 <= target) return step * 5;
  if (step * 2 <= target) return step * 2;
  return step;
}

let frame = 0;
function draw() { if (!frame) frame = requestAnimationFrame(paint); }
function paint() {
  frame = 0;
  const dpr = window.devicePixelRatio || 1;
  const W = scroller.clientWidth, H = scroller.clientHeight;
  if (canvas.width !== Math.round(W * dpr) || canvas.height !== Math.round(H * dpr)) {
    canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
    canvas.style.width = W + "px"; canvas.style.height = H + "px";
  }
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, W, H);
  const sx = scroller.scrollLeft, sy = scroller.scrollTop;
  const first = Math.max(0, Math.floor(sy / ROW));
  const last = Math.min(rows.length, Math.ceil((sy + H - AXIS) / ROW) + 1);
  const tStart = sx / pxPerNs, tEnd = (sx + W - LABEL) / pxPerNs;
  ctx.font = "12px ui-monospace,Menlo,Consolas,monospace";
  ctx.textBaseline = "middle";
  let drawn = 0;
  for (let r = first; r < last; r++) {
    const i = rows[r], p = procs[i];
    const y = AXIS + r * ROW - sy;
    if (r % 2) { ctx.fillStyle = "#f7f7f7"; ctx.fillRect(0, y, W, ROW); }
    if (r === hoverRow) { ctx.fillStyle = "#e3f2fd"; ctx.fillRect(0, y, W, ROW); }
    const s = p.start_offset_ns === null ? 0 : p.start_offset_ns;
    const e = p.end_offset_ns === null ? total : p.end_offset_ns;
    if (e >= tStart && s <= tEnd) {
      const x0 = LABEL + s * pxPerNs - sx, x1 = LABEL + e * pxPerNs - sx;
      const bx = Math.max(LABEL, x0), bw = Math.max(1, Math.min(W, x1) - bx);
      ctx.fillStyle = COLORS[p.outcome] || "#9e9e9e";
      ctx.fillRect(bx, y + 3, bw, ROW - 6);
      if (p.outlived_root) { ctx.strokeStyle = "#0d47a1"; ctx.setLineDash([3, 2]); ctx.strokeRect(bx + .5, y + 2.5, bw, ROW - 5); ctx.setLineDash([]); }
      ctx.fillStyle = "#000";
      for (let k = 0; k < p.execs.length; k++) {
        const ex = LABEL + p.execs[k].offset_ns * pxPerNs - sx;
        if (ex >= LABEL && ex <= W) ctx.fillRect(ex, y + 2, 1.5, ROW - 4);
      }
      ctx.fillStyle = "#d500f9";
      for (let k = 0; k < p.fork_failures.length; k++) {
        const fx = LABEL + p.fork_failures[k].offset_ns * pxPerNs - sx;
        if (fx >= LABEL && fx <= W) ctx.fillRect(fx - 1, y, 3, ROW);
      }
    }
    // the label column (does not scroll sideways)
    ctx.fillStyle = r % 2 ? "#f0f0f0" : "#fafafa";
    if (r === hoverRow) ctx.fillStyle = "#d6eaf8";
    ctx.fillRect(0, y, LABEL, ROW);
    const ind = 6 + Math.min(p.depth, 40) * 10;
    ctx.fillStyle = "#555";
    if (kids[i]) ctx.fillText(folded[i] ? "\u25b8" : "\u25be", ind - 2, y + ROW / 2);
    ctx.fillStyle = p.outcome === "ok" ? "#222" : "#b00020";
    ctx.save(); ctx.beginPath(); ctx.rect(0, y, LABEL - 4, ROW); ctx.clip();
    ctx.fillText(labels[i], ind + 10, y + ROW / 2);
    ctx.restore();
    drawn++;
  }
  // the time axis
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, AXIS);
  ctx.strokeStyle = "#999"; ctx.beginPath(); ctx.moveTo(0, AXIS - .5); ctx.lineTo(W, AXIS - .5); ctx.stroke();
  ctx.fillStyle = "#333"; ctx.font = "11px system-ui,sans-serif";
  const step = axisStep(1 / pxPerNs);
  for (let t = Math.floor(tStart / step) * step; t <= tEnd; t += step) {
    const x = LABEL + t * pxPerNs - sx;
    if (x < LABEL) continue;
    ctx.fillRect(x, AXIS - 6, 1, 6);
    ctx.fillText("+" + fmtDur(t), x + 2, AXIS / 2);
  }
  ctx.fillText(rows.length + " of " + N + " processes", 6, AXIS / 2);
  ctx.strokeStyle = "#bbb"; ctx.beginPath(); ctx.moveTo(LABEL - .5, 0); ctx.lineTo(LABEL - .5, H); ctx.stroke();
  status.dataset.drawn = String(drawn);
}

// -- interaction ---------------------------------------------------------------------------------------------
const tip = document.getElementById("tip");
let hoverRow = -1;
function rowAt(ev) {
  const rect = scroller.getBoundingClientRect();
  const y = ev.clientY - rect.top - AXIS;
  if (y < 0) return -1;
  const r = Math.floor((y + scroller.scrollTop) / ROW);
  return r < rows.length ? r : -1;
}
function details(p) {
  const lines = [TEXT.commands[p.id]];
  if (TEXT.files[p.id] !== null) lines.push("file: " + TEXT.files[p.id]);
  lines.push("parent pid: " + (p.ppid === null ? "?" : p.ppid) + (p.parent === null && p.ppid !== null ? " (fork not seen)" : ""));
  lines.push("start: +" + fmtDur(p.start_offset_ns) + "   duration: " + (p.outcome === "running" ? "still running" : fmtDur(p.duration_ns)));
  lines.push("status: " + statusText(p) + (p.outlived_root ? "   (outlived the command)" : ""));
  const a = p.accounting;
  if (a) {
    lines.push("cpu: user " + fmtDur(a.cpu_user_us * 1e3) + ", sys " + fmtDur(a.cpu_system_us * 1e3) +
      "   peak rss: " + (a.peak_rss_kb === null ? "-" : fmtSize(a.peak_rss_kb * 1024)));
    lines.push("io: read " + fmtSize(a.read_bytes) + ", write " + fmtSize(a.write_bytes) +
      "   ctx switches: " + a.voluntary_switches + " voluntary, " + a.involuntary_switches + " involuntary");
  }
  if (p.execs.length > 1 || (p.execs.length === 1 && p.execs[0].offset_ns !== p.start_offset_ns))
    p.execs.forEach(function (e, k) { lines.push("exec at +" + fmtDur(e.offset_ns) + ": " + TEXT.execs[p.id][k]); });
  p.fork_failures.forEach(function (f) { lines.push("FAILED FORK at +" + fmtDur(f.offset_ns) + ": " + f.errno_name + " (" + (f.syscall || "fork") + ")"); });
  if (p.threads.length) lines.push(p.threads.length + " threads");
  if (kids[p.id]) lines.push(kids[p.id] + " child processes");
  return lines.join("\n");
}
scroller.addEventListener("scroll", function () { tip.style.display = "none"; draw(); }, {passive: true});
scroller.addEventListener("mousemove", function (ev) {
  const r = rowAt(ev);
  if (r !== hoverRow) { hoverRow = r; draw(); }
  if (r < 0) { tip.style.display = "none"; return; }
  tip.textContent = details(procs[rows[r]]);
  tip.style.display = "block";
  const tw = tip.offsetWidth, th = tip.offsetHeight;
  tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - tw - 4) + "px";
  tip.style.top = Math.min(ev.clientY + 14, window.innerHeight - th - 4) + "px";
});
scroller.addEventListener("mouseleave", function () { hoverRow = -1; tip.style.display = "none"; draw(); });
scroller.addEventListener("click", function (ev) {
  const rect = scroller.getBoundingClientRect();
  if (ev.clientX - rect.left > LABEL) return;
  const r = rowAt(ev);
  if (r < 0 || !kids[rows[r]]) return;
  folded[rows[r]] ^= 1; computeRows(); layout(); draw();
});
scroller.addEventListener("wheel", function (ev) {
  if (!ev.ctrlKey) return;
  ev.preventDefault();
  const rect = scroller.getBoundingClientRect();
  zoom(ev.deltaY < 0 ? 1.25 : 0.8, Math.max(0, ev.clientX - rect.left - LABEL));
}, {passive: false});
document.getElementById("zin").onclick = function () { zoom(2); };
document.getElementById("zout").onclick = function () { zoom(0.5); };
document.getElementById("zfit").onclick = fit;
window.addEventListener("resize", function () { const keep = pxPerNs / fitPx; fitPx = viewWidth() / total; pxPerNs = fitPx * keep; layout(); draw(); });

computeRows();
fitPx = viewWidth() / total; pxPerNs = fitPx; layout();
paint();
status.dataset.rows = String(N);
status.dataset.ms = String(Math.round(performance.now() - t0));
status.textContent = N + " processes, first render in " + status.dataset.ms + " ms";
})();
</script>
</body></html>
"""

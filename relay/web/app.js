// membrane's picture of the mesh: polls the relay's two JSON APIs (/api/map and
// /api/flows) once a second and draws the service map (SVG) and the latest flows.
// Plain browser JavaScript, no libraries: the relay serves this file as it is.
"use strict";

const COLOURS = { allowed: "#1e8e3e", denied: "#d93025" };
const SVG = "http://www.w3.org/2000/svg";
const POLL_MS = 1000;

const $ = (sel) => document.querySelector(sel);

function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// Columns by depth: a peer that only sends is on the left, each hop one column right.
function columns(nodes, edges) {
  const col = new Map(nodes.map((n) => [n.id, 0]));
  for (let round = 0; round < nodes.length; round++) {
    let moved = false;
    for (const e of edges) {
      if (e.src.id === e.dst.id) continue;
      const want = Math.min(col.get(e.src.id) + 1, 5);
      if (col.get(e.dst.id) < want) {
        col.set(e.dst.id, want);
        moved = true;
      }
    }
    if (!moved) break;
  }
  return col;
}

function layout(map) {
  const col = columns(map.nodes, map.edges);
  const byCol = [];
  for (const n of map.nodes) {
    const c = col.get(n.id);
    (byCol[c] = byCol[c] || []).push(n);
  }
  const cols = byCol.filter(Boolean);
  const rows = Math.max(1, ...cols.map((c) => c.length));
  const width = 1000;
  const height = Math.max(240, rows * 78 + 40);
  const pos = new Map();
  cols.forEach((nodes, i) => {
    nodes.sort((a, b) => a.label.localeCompare(b.label));
    const x = cols.length === 1 ? width / 2 : 110 + (i * (width - 220)) / (cols.length - 1);
    nodes.forEach((n, j) => {
      const y = ((j + 1) * height) / (nodes.length + 1);
      const w = Math.max(120, n.label.length * 9 + 36);
      const ends = map.edges.filter((e) => e.src.id === n.id || e.dst.id === n.id).length;
      pos.set(n.id, { x, y, w, h: Math.max(46, ends * 12 + 16) });
    });
  });
  // Where each edge leaves its source and reaches its destination: spread along the
  // node's side, ordered by the other end's height, so edges do not pile up on one point.
  const ends = new Map();
  for (const [side, mine, other] of [["out", "src", "dst"], ["in", "dst", "src"]]) {
    const by = new Map();
    for (const e of map.edges) {
      if (e.src.id === e.dst.id) continue;
      const k = e[mine].id;
      (by.get(k) || by.set(k, []).get(k)).push(e);
    }
    for (const [k, list] of by) {
      const p = pos.get(k);
      list.sort((a, b) => pos.get(a[other].id).y - pos.get(b[other].id).y);
      const step = Math.min(12, (p.h - 12) / list.length);
      list.forEach((e, i) => {
        ends.set(`${side}:${e.src.id}>${e.dst.id}`, p.y + (i - (list.length - 1) / 2) * step);
      });
    }
  }
  return { pos, ends, width, height };
}

// A point of the cubic Bezier curve p0..p3 at t.
function bezier(t, p0, p1, p2, p3) {
  const u = 1 - t;
  return u * u * u * p0 + 3 * u * u * t * p1 + 3 * u * t * t * p2 + t * t * t * p3;
}

function verdictOf(e) {
  if (e.allowed > 0 && e.denied > 0) return "mixed";
  return e.denied > 0 ? "denied" : "allowed";
}

function tipText(e) {
  const lines = [`${e.src.label} → ${e.dst.label}`];
  lines.push(`allowed ${e.allowed}, denied ${e.denied}` +
    (e.denied_l7 ? ` (${e.denied_l7} requests refused by a sidecar)` : "") + " (verdicts)");
  if (e.allowed_in + e.allowed_out > e.allowed) {
    lines.push(`allowed on the way out ${e.allowed_out}, on the way in ${e.allowed_in}`);
  }
  if (e.ports.length) lines.push(`ports ${e.ports.join(", ")}`);
  const reasons = Object.entries(e.reasons).sort((a, b) => b[1] - a[1]);
  if (reasons.length) {
    lines.push("denied by:");
    for (const [why, n] of reasons) lines.push(`  ${why} ×${n}`);
  }
  lines.push(`last ${e.last}`);
  return lines.join("\n");
}

function showTip(evt, text) {
  const tip = $("#tip");
  const box = $("#map-panel").getBoundingClientRect();
  tip.textContent = text;
  tip.hidden = false;
  tip.style.left = `${evt.clientX - box.left + 14}px`;
  tip.style.top = `${evt.clientY - box.top + 14}px`;
}

function drawEdge(svg, e, a, b, ends) {
  const verdict = verdictOf(e);
  const g = el("g", {
    class: "edge",
    "data-src": e.src.id,
    "data-dst": e.dst.id,
    "data-src-label": e.src.label,
    "data-dst-label": e.dst.label,
    "data-verdict": verdict,
    "data-allowed": e.allowed,
    "data-denied": e.denied,
    "data-denied-l7": e.denied_l7,
  });
  g.appendChild(el("title", {}, tipText(e)));
  const key = `${e.src.id}>${e.dst.id}`;
  const y1 = ends.get(`out:${key}`) ?? a.y, y2 = ends.get(`in:${key}`) ?? b.y;
  const x1 = a.x + a.w / 2, x2 = b.x - b.w / 2 - 6;
  const dx = Math.max(40, Math.abs(x2 - x1) / 2);
  const curve = (dy) => {
    if (e.src.id === e.dst.id) {
      const y = a.y - a.h / 2;
      return `M ${a.x - 20} ${y} C ${a.x - 40} ${y - 50 + dy}, ${a.x + 40} ${y - 50 + dy}, ${a.x + 20} ${y}`;
    }
    return `M ${x1} ${y1 + dy} C ${x1 + dx} ${y1 + dy}, ${x2 - dx} ${y2 + dy}, ${x2} ${y2 + dy}`;
  };
  const kinds = verdict === "mixed" ? [["allowed", -3], ["denied", 3]] : [[verdict, 0]];
  for (const [kind, dy] of kinds) {
    g.appendChild(el("path", {
      d: curve(dy), class: kind, stroke: COLOURS[kind], "marker-end": `url(#arrow-${kind})`,
    }));
  }
  g.appendChild(el("path", { d: curve(0), class: "hit" }));
  // The counts sit on the first third of the curve, near the source, apart from the
  // other edges' counts where edges converge on a destination.
  const selfEdge = e.src.id === e.dst.id;
  let tx = selfEdge ? a.x - 20 : bezier(0.3, x1, x1 + dx, x2 - dx, x2) - 20;
  const ty = selfEdge ? a.y - a.h / 2 - 44 : bezier(0.3, y1, y1, y2, y2) - 8;
  if (e.allowed) {
    g.appendChild(el("text", { x: tx, y: ty, class: "allowed" }, `✓ ${e.allowed}`));
    tx += 16 + String(e.allowed).length * 8;
  }
  if (e.denied) g.appendChild(el("text", { x: tx, y: ty, class: "denied" }, `✗ ${e.denied}`));
  g.addEventListener("mousemove", (evt) => showTip(evt, tipText(e)));
  g.addEventListener("mouseleave", () => { $("#tip").hidden = true; });
  svg.appendChild(g);
}

function drawNode(svg, n, p) {
  const external = !n.namespace;
  const g = el("g", { class: external ? "node external" : "node", "data-id": n.id });
  const sub = external ? n.id.split(":")[0] : `${n.namespace} · ${n.pods.length || "?"} pod${n.pods.length === 1 ? "" : "s"}`;
  g.appendChild(el("title", {}, [n.id, ...n.pods].join("\n")));
  g.appendChild(el("rect", { x: p.x - p.w / 2, y: p.y - p.h / 2, width: p.w, height: p.h, rx: 8 }));
  g.appendChild(el("text", { x: p.x, y: p.y - 7 }, n.label));
  g.appendChild(el("text", { x: p.x, y: p.y + 11, class: "sub" }, sub));
  svg.appendChild(g);
}

function drawMap(map) {
  const svg = $("#map");
  const { pos, ends, width, height } = layout(map);
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.style.height = `${Math.min(height, 520)}px`;
  const defs = el("defs");
  for (const [kind, colour] of Object.entries(COLOURS)) {
    const m = el("marker", {
      id: `arrow-${kind}`, viewBox: "0 0 10 10", refX: 9, refY: 5,
      markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse",
    });
    m.appendChild(el("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: colour }));
    defs.appendChild(m);
  }
  svg.appendChild(defs);
  for (const e of map.edges) drawEdge(svg, e, pos.get(e.src.id), pos.get(e.dst.id), ends);
  for (const n of map.nodes) drawNode(svg, n, pos.get(n.id));
  $("#map-empty").hidden = map.edges.length > 0;
  document.body.dataset.edges = String(map.edges.length);
}

function who(pod, addr, identity) {
  if (pod) return addr ? `${pod} (${addr})` : pod;
  return addr || `identity ${identity}`;
}

function detail(f) {
  if (f.l7) {
    const l = f.l7;
    const rule = l.rule ? ` · ${l.rule}` : "";
    return `${l.direction} ${l.method} ${l.path} → ${l.status}${rule}`;
  }
  if (f.type === "lost") return `${f.count} events lost (${f.reason})`;
  const to = f.to ? ` → ${f.to}` : "";
  return `${f.reason} at ${f.program}${to}`;
}

function drawFlows(reply) {
  const body = $("#flows tbody");
  const rows = reply.flows.map((f) => {
    const tr = document.createElement("tr");
    const verdict = f.type === "drop" ? "denied" : f.verdict || "";
    const cells = [
      f.time.replace("T", " ").replace(/\.(\d{3})\d*Z$/, ".$1"),
      f.node, f.type, verdict, who(f.src_pod, f.src, f.src_identity),
      who(f.dst_pod, f.dst, f.dst_identity),
      `${f.src_identity} → ${f.dst_identity}`, detail(f),
    ];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (i === 3 && verdict) td.className = verdict;
      if (i === 7) td.className = "detail";
      tr.appendChild(td);
    });
    return tr;
  });
  body.replaceChildren(...rows);
  $("#matched").textContent = `${reply.flows.length} shown of ${reply.matched} matching`;
}

function query() {
  const q = new URLSearchParams();
  for (const [k, v] of new FormData($("#filters"))) if (v.trim()) q.set(k, v.trim());
  return q.toString();
}

async function json(url) {
  const r = await fetch(url, { cache: "no-store" });
  const body = await r.json();
  if (!r.ok) throw Object.assign(new Error(body.error || r.statusText), { status: r.status });
  return body;
}

async function poll() {
  const status = $("#status");
  try {
    const map = await json("/api/map");
    drawMap(map);
    status.textContent = `${map.events} events · ${map.lost} lost · updated ${new Date().toLocaleTimeString()}`;
    status.className = "status";
    const err = $("#filter-error");
    try {
      drawFlows(await json(`/api/flows?${query()}`));
      err.hidden = true;
    } catch (e) {
      if (e.status !== 400) throw e;
      // A filter the relay refused: say why and keep the last good table.
      err.textContent = e.message;
      err.hidden = false;
    }
  } catch (e) {
    status.textContent = `relay unreachable: ${e.message}`;
    status.className = "status bad";
  }
}

async function loop() {
  await poll();
  setTimeout(loop, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#filters").addEventListener("input", () => poll());
  $("#filters").addEventListener("reset", () => setTimeout(poll, 0));
  $("#filters").addEventListener("submit", (e) => { e.preventDefault(); poll(); });
  loop();
});

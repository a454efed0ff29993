// effarch diff page: draws the two graphs from the embedded JSON (layouts come from Python),
// lists the changes, shows a node's details on click, searches by name/op, folds unchanged runs.
"use strict";

// Errors go into the page, where a person (and the browser test) can see them.
function reportError(text) {
  document.getElementById("errors").textContent += text + "\n";
}
window.addEventListener("error", (e) => reportError("error: " + e.message));
const consoleError = console.error.bind(console);
console.error = (...args) => { reportError("console.error: " + args.join(" ")); consoleError(...args); };

const SVG = "http://www.w3.org/2000/svg";
const DATA = JSON.parse(document.getElementById("diff-data").textContent);
const LIST_LIMIT = 200;
const state = { collapsed: DATA.collapsed, zoom: 1, hits: [], hit: -1, selected: null };

function el(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function html(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function clip(text, n) {
  return text.length > n ? text.slice(0, n - 1) + "\u2026" : text;
}

// ---- drawing ---------------------------------------------------------------------------------
function drawSide(side) {
  const view = state.collapsed ? side.collapsed : side.full;
  const w = view.nodeW, h = view.nodeH;
  const svg = el("svg", { width: view.width * state.zoom, height: view.height * state.zoom,
                          viewBox: `0 0 ${view.width} ${view.height}`, "data-side": side.name });
  const edges = el("g", { class: "edges" });
  for (const [src, dst] of view.edges) {
    const [x1, y1] = view.pos[src], [x2, y2] = view.pos[dst];
    const sx = x1 + w / 2, sy = y1 + h, tx = x2 + w / 2, ty = y2, my = (sy + ty) / 2;
    edges.appendChild(el("path", { class: "edge", d: `M${sx},${sy} C${sx},${my} ${tx},${my} ${tx},${ty}` }));
  }
  svg.appendChild(edges);
  for (const [id, [x, y]] of Object.entries(view.pos)) svg.appendChild(drawNode(side, id, x, y, w, h));
  const scroll = document.querySelector(`#pane-${side.name} .scroll`);
  scroll.replaceChildren(svg);
}

function drawNode(side, id, x, y, w, h) {
  const info = side.info[id];
  const g = el("g", { class: `node ${info.status}`, "data-id": `${side.name}:${id}`, "data-name": info.label,
                      "data-op": info.op, transform: `translate(${x},${y})` });
  g.appendChild(el("rect", { width: w, height: h }));
  g.appendChild(el("text", { x: 6, y: 12, class: "op" }, clip(info.op, 26)));
  g.appendChild(el("text", { x: 6, y: 25 }, clip(info.label, 28)));
  g.appendChild(el("title", {}, `${info.op} ${info.label}`));
  g.addEventListener("click", () => select(side.name, id));
  return g;
}

function drawAll() {
  drawSide(DATA.a);
  drawSide(DATA.b);
  markHits();
  if (state.selected) mark(state.selected.side, state.selected.id, "selected");
  document.getElementById("status").textContent =
    `rendered ${document.querySelectorAll(".node").length} boxes`;
}

// ---- selection and details -------------------------------------------------------------------
function visibleId(sideName, id) {
  // In the collapsed view a node inside a folded run shows as its fold.
  const side = DATA[sideName];
  const view = state.collapsed ? side.collapsed : side.full;
  if (id in view.pos) return id;
  for (const [fold, info] of Object.entries(side.info)) {
    if (info.kind === "fold" && fold in view.pos && info.members.includes(id)) return fold;
  }
  return null;
}

function nodeElement(sideName, id) {
  const shown = visibleId(sideName, id);
  return shown && document.querySelector(`.node[data-id="${sideName}:${shown}"]`);
}

function mark(sideName, id, cls) {
  const e = nodeElement(sideName, id);
  if (e) e.classList.add(cls);
  return e;
}

function reveal(e) {
  // Scroll only the node's own pane (scrollIntoView would also scroll the page itself).
  if (!e) return;
  const pane = e.closest(".scroll"), box = e.getBoundingClientRect(), frame = pane.getBoundingClientRect();
  pane.scrollLeft += box.left - frame.left - (frame.width - box.width) / 2;
  pane.scrollTop += box.top - frame.top - (frame.height - box.height) / 2;
}

function select(sideName, id) {
  const info = DATA[sideName].info[id];
  if (info.kind === "fold") {  // unfold: show every node, centred on the run
    state.collapsed = false;
    document.getElementById("collapse").checked = false;
    drawAll();
    reveal(nodeElement(sideName, info.members[0]));
    return;
  }
  document.querySelectorAll(".node.selected").forEach((e) => e.classList.remove("selected"));
  state.selected = { side: sideName, id };
  reveal(mark(sideName, id, "selected"));
  const otherSide = sideName === "a" ? "b" : "a";
  if (info.other !== null && info.other !== undefined) reveal(mark(otherSide, `n${info.other}`, "selected"));
  showDetail(sideName, info);
}

function showDetail(sideName, info) {
  const box = document.getElementById("detail");
  const dl = html("dl");
  const row = (term, values) => {
    if (!values || values.length === 0) return;
    dl.appendChild(html("dt", {}, term));
    for (const v of values) dl.appendChild(html("dd", {}, v));
  };
  row("node", [`${sideName.toUpperCase()} ${info.op} '${info.label}'`, `status: ${info.status}`]);
  row("changes", info.notes);
  row("provenance source", info.source ? [info.source] : []);
  row("rewritten by", info.rewrites);
  row("merged sources", info.merged);
  row("attributes", Object.entries(info.attrs || {}).map(([k, v]) => `${k} = ${v}`));
  row("inputs", info.inputs);
  row("outputs", info.outputs);
  row("body", info.body);
  if (info.other !== null && info.other !== undefined) {
    const other = sideName === "a" ? "b" : "a";
    row("counterpart", [`${other.toUpperCase()} ${DATA[other].info["n" + info.other].op} #${info.other}`]);
  }
  box.replaceChildren(dl);
}

// ---- the list of changes ---------------------------------------------------------------------
function listChanges() {
  const nav = document.getElementById("changes");
  const d = DATA.diff;
  const section = (title, entries) => {
    if (entries.length === 0) return;
    nav.appendChild(html("h3", {}, `${title} (${entries.length})`));
    for (const [side, index, text] of entries.slice(0, LIST_LIMIT)) {
      const a = html("a", { class: "change", "data-target": `${side}:n${index}` }, text);
      a.addEventListener("click", () => select(side, `n${index}`));
      nav.appendChild(a);
    }
    if (entries.length > LIST_LIMIT) nav.appendChild(html("div", { class: "more" },
      `... ${entries.length - LIST_LIMIT} more: use search`));
  };
  section("compression", d.compression.map((c) => c.b ? ["b", c.b.index, `${c.a.label}: ${c.scheme}`
    + (c.channels ? `, ${c.channels}` : "")] : ["a", c.a.index, `${c.a.label}: removed`]));
  section("fused", d.fused.map((f) => ["b", f.into.index,
    `${f.into.label}: ${f.sources.map((s) => s.op).join(" + ")}`]));
  section("rewritten", d.rewritten.map((r) => ["b", r.b.index, `${r.b.op} ${r.b.label}`]));
  section("removed", d.removed.map((r) => ["a", r.index, `${r.op} ${r.label}`]));
  section("added", d.added.map((r) => ["b", r.index, `${r.op} ${r.label}`]));
  const consts = d.constants.map((c) => `%${c.a} ${c.type_a} \u2192 ${c.type_b}`);
  if (consts.length) {
    nav.appendChild(html("h3", {}, `constants changed (${consts.length})`));
    for (const text of consts.slice(0, LIST_LIMIT)) nav.appendChild(html("div", {}, text));
  }
}

// ---- search ----------------------------------------------------------------------------------
function findHits(query) {
  const q = query.trim().toLowerCase();
  if (!q) return [];
  const hits = [];
  for (const side of [DATA.a, DATA.b]) {
    for (const [id, info] of Object.entries(side.info)) {
      if (info.kind === "fold") continue;
      const text = [info.label, info.op, info.name || "", ...(info.outputs || [])].join(" ").toLowerCase();
      if (text.includes(q)) hits.push({ side: side.name, id });
    }
  }
  return hits;
}

function markHits() {
  document.querySelectorAll(".node.hit").forEach((e) => e.classList.remove("hit"));
  for (const h of state.hits) mark(h.side, h.id, "hit");
  const n = state.hits.length;
  document.getElementById("hits").textContent = n ? `${state.hit + 1} of ${n}` : "";
}

function onSearch(event) {
  if (event.key === "Enter" && state.hits.length) {
    state.hit = (state.hit + 1) % state.hits.length;
    const h = state.hits[state.hit];
    select(h.side, h.id);
  } else if (event.key !== "Enter") {
    state.hits = findHits(event.target.value);
    state.hit = state.hits.length ? 0 : -1;
  }
  markHits();
}

// ---- start -----------------------------------------------------------------------------------
function start() {
  document.getElementById("title").textContent = DATA.title;
  document.getElementById("summary").textContent = DATA.summaryLine;
  const box = document.getElementById("collapse");
  box.checked = state.collapsed;
  box.addEventListener("change", () => { state.collapsed = box.checked; drawAll(); });
  document.getElementById("search").addEventListener("keyup", onSearch);
  document.getElementById("zoom-in").addEventListener("click", () => { state.zoom *= 1.25; drawAll(); });
  document.getElementById("zoom-out").addEventListener("click", () => { state.zoom /= 1.25; drawAll(); });
  listChanges();
  drawAll();
  applyLink(new URLSearchParams(location.hash.slice(1)));
  document.body.dataset.ready = "1";
}

// A link can open the page on a search or a node: diff.html#q=conv or diff.html#select=b:n3
function applyLink(params) {
  const query = params.get("q");
  if (query) {
    document.getElementById("search").value = query;
    state.hits = findHits(query);
    state.hit = state.hits.length ? 0 : -1;
    markHits();
  }
  const target = params.get("select");
  if (target) {
    const [sideName, id] = [target.slice(0, 1), target.slice(2)];
    if (DATA[sideName] && DATA[sideName].info[id]) select(sideName, id);
    else reportError(`no node ${target} to select`);
  }
}

start();

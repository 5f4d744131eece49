// cnnlens front end: one anywidget module rendering every panel kind.
// Images arrive as raw RGB bytes and maps as float32, so colormap, opacity, signed display and
// hover values are applied here with no round trip. Text from Python is always set with textContent.

import { COLORMAPS, blend, lut, range, toIndices, view } from "./colormaps.js";
import { atlasTile, byGroup, fitPoints, nearest } from "./scatter.js";
import { displayScale, smoothShrink } from "./sizing.js";

function el(tag, cls, parent) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (parent) parent.appendChild(node);
  return node;
}

function hex(color) {
  return `rgb(${color[0]},${color[1]},${color[2]})`;
}

// Stop JupyterLab from turning arrow keys on our sliders into cell navigation.
function guardKeys(root) {
  const area = root.closest(".jp-OutputArea-output, .output_area, .widget-subarea") || root;
  if (area.dataset.cnnlensKeys) return;
  area.dataset.cnnlensKeys = "1";
  area.addEventListener("keydown", (event) => event.stopPropagation());
}

function cmapName(model) {
  const index = model.get("cmap_index");
  return index >= 0 && index < COLORMAPS.length ? COLORMAPS[index] : model.get("cmap");
}

// `whole`: a grid of tiles, shown at a whole multiple of its pixels (see sizing.js).
function drawPixels(canvas, pixels, w, h, size, whole = false) {
  canvas.width = w;
  canvas.height = h;
  canvas.getContext("2d").putImageData(new ImageData(pixels, w, h), 0, 0);
  const scale = displayScale(size, w, h, whole);
  canvas.style.width = `${Math.round(w * scale)}px`;
  canvas.style.height = `${Math.round(h * scale)}px`;
  canvas.style.imageRendering = smoothShrink(scale, whole) ? "auto" : "";
}

function drawRect(canvas, rect, w, h) {
  if (!rect || rect.length !== 4) return;
  const ctx = canvas.getContext("2d");
  const [y0, y1, x0, x1] = rect;
  ctx.strokeStyle = "#00e5ff";
  ctx.lineWidth = Math.max(1, Math.round(Math.max(w, h) / 128));
  ctx.strokeRect(x0 + 0.5, y0 + 0.5, Math.max(x1 - x0 - 1, 1), Math.max(y1 - y0 - 1, 1));
}

function renderHeatmap(model, ui) {
  const [h, w] = model.get("shape");
  const n = h * w;
  if (!n) return null;
  const rgb = model.get("image") ? view(model.get("image"), Uint8Array) : null;
  const heat = model.get("heat") ? view(model.get("heat"), Float32Array) : null;
  let indices = null;
  let lo = 0, hi = 1;
  if (heat && heat.length === n) {
    [lo, hi] = range(heat, model.get("signed"), model.get("vmax"));
    indices = toIndices(heat, lo, hi);
  }
  const pixels = blend(rgb && rgb.length === n * 3 ? rgb : null, indices, lut(cmapName(model)),
    rgb ? model.get("opacity") : 1, n);
  drawPixels(ui.canvas, pixels, w, h, model.get("size"));
  drawRect(ui.canvas, model.get("rect"), w, h);
  ui.canvas.onmousemove = (event) => {
    const box = ui.canvas.getBoundingClientRect();
    const x = Math.floor(((event.clientX - box.left) / box.width) * w);
    const y = Math.floor(((event.clientY - box.top) / box.height) * h);
    if (x < 0 || y < 0 || x >= w || y >= h) return;
    const value = heat && heat.length === n ? heat[y * w + x] : null;
    const names = model.get("legend");
    if (model.get("kind") === "labels" && value !== null && names[value]) {
      ui.hover.textContent = `(${y}, ${x}) ${names[value][0]}`;
    } else {
      ui.hover.textContent = value === null ? `(${y}, ${x})` : `(${y}, ${x}) ${value.toPrecision(4)}`;
    }
    ui.hover.dataset.value = value === null ? "" : String(value);
  };
  ui.scale.textContent = indices ? `scale ${lo.toPrecision(3)} … ${hi.toPrecision(3)}` : "";
  return true;
}

function renderLabels(model, ui) {
  const [h, w] = model.get("shape");
  const n = h * w;
  const labels = view(model.get("heat"), Float32Array);
  if (!n || labels.length !== n) return null;
  const legend = model.get("legend");
  const pixels = new Uint8ClampedArray(n * 4);
  for (let i = 0; i < n; i++) {
    const color = (legend[labels[i]] || ["", [0, 0, 0]])[1];
    pixels.set([color[0], color[1], color[2], 255], i * 4);
  }
  drawPixels(ui.canvas, pixels, w, h, model.get("size"));
  renderHeatmapHover(model, ui, labels, w, h);
  ui.legend.replaceChildren();
  const present = new Set(labels);
  legend.forEach(([name, color], index) => {
    if (!present.has(index)) return;
    const item = el("span", "cl-legend-item", ui.legend);
    el("span", "cl-swatch", item).style.background = hex(color);
    el("span", "", item).textContent = name;
  });
  return true;
}

function renderHeatmapHover(model, ui, values, w, h) {
  const legend = model.get("legend");
  ui.canvas.onmousemove = (event) => {
    const box = ui.canvas.getBoundingClientRect();
    const x = Math.floor(((event.clientX - box.left) / box.width) * w);
    const y = Math.floor(((event.clientY - box.top) / box.height) * h);
    if (x < 0 || y < 0 || x >= w || y >= h) return;
    const v = values[y * w + x];
    ui.hover.textContent = `(${y}, ${x}) ${legend[v] ? legend[v][0] : v}`;
    ui.hover.dataset.value = String(v);
  };
}

function renderGrid(model, ui) {
  const [count, th, tw, channels] = model.get("shape");
  const data = view(model.get("heat"), Float32Array);
  const tile = th * tw * (channels || 1);
  if (!count || data.length !== count * tile) return null;
  const stretch = model.get("normalize");  // each tile to its own range, or values in [0, 1] as they are
  const cols = model.get("columns") > 0 ? Math.min(model.get("columns"), count) : Math.ceil(Math.sqrt(count));
  const rows = Math.ceil(count / cols);
  const gap = 1;
  const W = cols * (tw + gap), H = rows * (th + gap);
  const pixels = new Uint8ClampedArray(W * H * 4).fill(255);
  const table = lut(cmapName(model));
  for (let t = 0; t < count; t++) {
    const values = data.subarray(t * tile, (t + 1) * tile);
    const [lo, hi] = stretch ? range(values, false, 0) : [0, 1];
    const idx = toIndices(values, lo, hi);
    const ox = (t % cols) * (tw + gap), oy = Math.floor(t / cols) * (th + gap);
    for (let y = 0; y < th; y++) {
      for (let x = 0; x < tw; x++) {
        const p = ((oy + y) * W + ox + x) * 4;
        if (channels === 3) {
          for (let c = 0; c < 3; c++) pixels[p + c] = idx[c * th * tw + y * tw + x];
        } else {
          const k = idx[y * tw + x] * 3;
          pixels[p] = table[k]; pixels[p + 1] = table[k + 1]; pixels[p + 2] = table[k + 2];
        }
        pixels[p + 3] = 255;
      }
    }
  }
  drawPixels(ui.canvas, pixels, W, H, model.get("size"), true);
  const chosen = model.get("selected");
  if (chosen >= 0 && chosen < count) {  // outline the selected tile
    const ctx = ui.canvas.getContext("2d");
    ctx.strokeStyle = "#00e5ff";
    ctx.lineWidth = Math.max(1, Math.round(Math.max(tw, th) / 32));
    const inset = ctx.lineWidth / 2;
    // with a zoom box, the part around it as wide as its margins (the frame, not a caption strip below)
    const box = model.get("zoom_box");
    const [oh, ow] = box.length === 4 ? [Math.min(th, 2 * box[0] + box[2]), Math.min(tw, 2 * box[1] + box[3])] : [th, tw];
    ctx.strokeRect((chosen % cols) * (tw + gap) + inset, Math.floor(chosen / cols) * (th + gap) + inset,
      ow - 2 * inset, oh - 2 * inset);
  }
  const zoom = (t) => {
    ui.zoom.hidden = true;
    ui.zoomInfo.textContent = "";
    if (t < 0 || t >= count || !model.get("zoomable")) return;
    const values = data.subarray(t * tile, (t + 1) * tile);
    const [lo, hi] = stretch ? range(values, false, 0) : [0, 1];
    const idx = toIndices(values, lo, hi);
    const px = new Uint8ClampedArray(th * tw * 4);
    for (let i = 0; i < th * tw; i++) {
      if (channels === 3) {
        for (let c = 0; c < 3; c++) px[i * 4 + c] = idx[c * th * tw + i];
      } else {
        px.set(table.subarray(idx[i] * 3, idx[i] * 3 + 3), i * 4);
      }
      px[i * 4 + 3] = 255;
    }
    // zoom_box [top, left, height, width]: the part of a tile worth enlarging (not its frame or caption)
    const [top, left, zh, zw] = model.get("zoom_box").length === 4 ? model.get("zoom_box") : [0, 0, th, tw];
    const part = new Uint8ClampedArray(zh * zw * 4);
    for (let r = 0; r < zh; r++) part.set(px.subarray(((top + r) * tw + left) * 4, ((top + r) * tw + left + zw) * 4), r * zw * 4);
    drawPixels(ui.zoom, part, zw, zh, Math.min(model.get("size"), 192), true);
    // a heat tile's range is its scale; a picture drawn as it is (in [0, 1]) has none worth reading
    ui.zoomInfo.textContent = stretch ? `#${t}: min ${lo.toPrecision(3)}, max ${hi.toPrecision(3)}` : "";
    ui.zoom.hidden = false;
  };
  ui.canvas.onclick = (event) => {
    const box = ui.canvas.getBoundingClientRect();
    const x = Math.floor(((event.clientX - box.left) / box.width) * W / (tw + gap));
    const y = Math.floor(((event.clientY - box.top) / box.height) * H / (th + gap));
    const t = y * cols + x;
    if (x < cols && t < count) {
      model.set("selected", t);  // redraws (change:selected): the outline and the zoom follow
      model.save_changes();
    }
  };
  ui.canvas.onmousemove = (event) => {
    const box = ui.canvas.getBoundingClientRect();
    const x = Math.floor(((event.clientX - box.left) / box.width) * W / (tw + gap));
    const y = Math.floor(((event.clientY - box.top) / box.height) * H / (th + gap));
    const t = y * cols + x;
    ui.hover.textContent = x < cols && t < count ? (model.get("tile_names")[t] || `#${t}`) : "";
  };
  zoom(model.get("selected"));
  captionGrid(ui, model.get("captions"), cols);
  return true;
}

// One line of text under each tile column (row-major, as the tiles): the canvas' width split in `cols`.
function captionGrid(ui, captions, cols) {
  ui.captions.replaceChildren();
  ui.captions.hidden = !captions.length;
  ui.captions.style.width = ui.canvas.style.width;
  ui.captions.style.gridTemplateColumns = `repeat(${cols}, 1fr)`;
  for (const text of captions) el("span", "cl-caption", ui.captions).textContent = text;
}

function renderBars(model, ui) {
  const bars = model.get("bars");
  ui.bars.replaceChildren();
  for (const [name, prob] of bars) {
    const row = el("div", "cl-bar-row", ui.bars);
    const label = el("span", "cl-bar-name", row);
    label.textContent = name;
    label.title = name;  // the whole name on hover, where the column cuts it
    const track = el("span", "cl-bar-track", row);
    el("span", "cl-bar-fill", track).style.width = `${Math.max(0, Math.min(1, prob)) * 100}%`;
    el("span", "cl-bar-prob", row).textContent = `${(prob * 100).toFixed(1)}%`;
  }
  return bars.length > 0 || null;
}

// A scatter of N points (float32 x, y pairs), coloured per point by one of two int32 rows of `groups`
// (labels, predictions; −1 = unknown) through the legend; the third row holds each point's image index.
// Hovering shows the point's thumbnail from `atlas` (N t×t RGB thumbnails, sent once) beside the cursor;
// clicking sets `selected` to the point (Python makes its image the current one).
function renderScatter(model, ui) {
  const points = view(model.get("points"), Float32Array);
  const n = points.length / 2;
  const groups = view(model.get("groups"), Int32Array);
  if (!n || groups.length !== 3 * n) return null;
  const size = model.get("size");
  const ratio = window.devicePixelRatio || 1;
  const coords = fitPoints(points, size, 10);
  const canvas = ui.canvas;
  canvas.width = canvas.height = Math.round(size * ratio);
  canvas.style.width = canvas.style.height = `${size}px`;
  canvas.style.imageRendering = "auto";
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, size, size);
  const legend = model.get("legend");
  const row = model.get("color_by") === 1 ? n : 0;
  const radius = n > 5000 ? 1.5 : n > 1000 ? 2.5 : 3.5;
  const groupsShown = byGroup(groups, row, n);
  for (const [g, members] of groupsShown) {
    ctx.fillStyle = legend[g] ? hex(legend[g][1]) : "rgb(170,170,170)";
    ctx.beginPath();
    for (const i of members) {
      ctx.moveTo(coords[2 * i] + radius, coords[2 * i + 1]);
      ctx.arc(coords[2 * i], coords[2 * i + 1], radius, 0, 2 * Math.PI);
    }
    ctx.fill();
  }
  const chosen = model.get("selected");
  if (chosen >= 0 && chosen < n) {  // the current image: a ring
    ctx.lineWidth = 2;
    ctx.strokeStyle = "#000";
    ctx.beginPath();
    ctx.arc(coords[2 * chosen], coords[2 * chosen + 1], radius + 4, 0, 2 * Math.PI);
    ctx.stroke();
  }
  ui.legend.replaceChildren();
  for (const g of groupsShown.keys()) {
    const item = el("span", "cl-legend-item", ui.legend);
    el("span", "cl-swatch", item).style.background = legend[g] ? hex(legend[g][1]) : "rgb(170,170,170)";
    el("span", "", item).textContent = legend[g] ? legend[g][0] : "unknown";
  }
  if (!ui.tip) {  // the hover card: a thumbnail and its label, next to the cursor
    ui.tip = el("div", "cl-tip", ui.root);
    Object.assign(ui.tip.style, { position: "absolute", pointerEvents: "none", background: "#fff", zIndex: 10,
      border: "1px solid #888", padding: "3px", boxShadow: "0 1px 4px rgba(0,0,0,.3)" });
    ui.tipCanvas = el("canvas", "cl-tip-image", ui.tip);
    ui.tipText = el("div", "cl-tip-text", ui.tip);
    ui.tip.hidden = true;
    ui.root.style.position = "relative";
  }
  const [count, t] = model.get("atlas_shape");
  const atlas = view(model.get("atlas"), Uint8Array);
  const name = (g) => (legend[g] ? legend[g][0] : "unknown");
  const pointAt = (event) => {
    const box = canvas.getBoundingClientRect();
    return nearest(coords, ((event.clientX - box.left) / box.width) * size,
      ((event.clientY - box.top) / box.height) * size, radius + 6);
  };
  canvas.onmousemove = (event) => {
    const i = pointAt(event);
    ui.root.dataset.hovered = String(i);
    if (i < 0) {
      ui.tip.hidden = true;
      ui.hover.textContent = "";
      return;
    }
    const text = `image ${groups[2 * n + i]} · label ${name(groups[i])} · predicted ${name(groups[n + i])}`;
    ui.hover.textContent = text;
    ui.tipText.textContent = text;
    const tile = count === n ? atlasTile(atlas, t, i) : null;
    ui.tipCanvas.hidden = !tile;
    if (tile) drawPixels(ui.tipCanvas, tile, t, t, Math.max(64, t * 2));
    const rootBox = ui.root.getBoundingClientRect();
    ui.tip.style.left = `${event.clientX - rootBox.left + 14}px`;
    ui.tip.style.top = `${event.clientY - rootBox.top + 14}px`;
    ui.tip.hidden = false;
  };
  canvas.onmouseleave = () => {
    ui.tip.hidden = true;
  };
  canvas.onclick = (event) => {
    const i = pointAt(event);
    if (i < 0) return;
    model.set("selected", i);
    model.save_changes();
  };
  return true;
}

const RENDERERS = { heatmap: renderHeatmap, image: renderHeatmap, labels: renderLabels, grid: renderGrid, bars: renderBars,
  scatter: renderScatter };

function render({ model, el: root }) {
  root.classList.add("cnnlens-panel");
  guardKeys(root);
  const ui = { root };
  ui.title = el("div", "cl-title", root);
  ui.canvas = el("canvas", "cl-canvas", root);
  ui.captions = el("div", "cl-captions", root);
  ui.captions.hidden = true;
  ui.zoom = el("canvas", "cl-zoom", root);
  ui.zoom.hidden = true;
  ui.zoomInfo = el("div", "cl-zoom-info", root);
  ui.bars = el("div", "cl-bars", root);
  ui.hover = el("div", "cl-hover", root);
  ui.scale = el("div", "cl-scale", root);
  ui.legend = el("div", "cl-legend", root);
  const status = el("div", "cl-status", root);
  ui.progress = el("progress", "cl-progress", status);
  ui.progress.max = 1;
  ui.stop = el("button", "cl-stop", status);
  ui.stop.textContent = "Stop";
  ui.stop.onclick = () => model.send({ type: "stop" });
  ui.error = el("div", "cl-error", root);
  ui.details = el("details", "cl-details", root);  // the error's traceback, folded
  el("summary", "", ui.details).textContent = "details";
  ui.traceback = el("pre", "cl-traceback", ui.details);
  let count = 0;
  // The readout under the canvas describes the point under the cursor: it goes when the cursor leaves and when
  // new data replaces the picture (else a value of the previous map stays up under the next one).
  const clearHover = () => {
    ui.hover.textContent = "";
    ui.hover.dataset.value = "";
  };
  ui.canvas.addEventListener("mouseleave", clearHover);
  let stale = false;

  const draw = () => {
    const kind = model.get("kind");
    if (stale) clearHover();
    stale = false;
    ui.title.textContent = model.get("title");
    ui.canvas.hidden = kind === "bars";
    let drawn = null;
    try {
      drawn = (RENDERERS[kind] || renderHeatmap)(model, ui);
    } catch (error) {
      ui.error.textContent = `display error: ${error}`;
    }
    // a panel that never had a picture (its first job failed, or none ran yet) shows no empty frame
    ui.canvas.hidden = kind === "bars" || (!drawn && count === 0);
    if (drawn) {
      count += 1;
      root.dataset.computeMs = String(model.get("compute_ms"));
      root.dataset.results = String(model.get("results"));
      root.dataset.partial = String(model.get("partial"));
      root.dataset.renderCount = String(count);
    }
    root.dataset.kind = kind;
    fitTitle();
  };
  // A title wraps within its picture's width: beside another panel it must not run into that one's title.
  const fitTitle = () => {
    const width = ui.canvas.hidden ? 0 : parseFloat(ui.canvas.style.width) || 0;
    ui.title.style.maxWidth = width ? `${Math.max(width, 240)}px` : "";
  };
  // The final result of a job may carry the same picture as its last partial one: no data event, no
  // redraw; its markers still change.
  const markers = () => {
    if (count === 0) return;
    root.dataset.computeMs = String(model.get("compute_ms"));
    root.dataset.results = String(model.get("results"));
    root.dataset.partial = String(model.get("partial"));
  };
  const showStatus = () => {
    const state = model.get("status");
    root.dataset.status = state;
    ui.progress.value = model.get("progress");
    status.hidden = state !== "running";
    ui.error.textContent = model.get("error");
    ui.error.hidden = !model.get("error");
    const details = model.get("details") || "";
    if (ui.traceback.textContent !== details) {
      ui.traceback.textContent = details;
      ui.details.open = false;  // a new error starts folded
    }
    ui.details.hidden = !model.get("error") || !details;
  };
  // One message from Python changes several traits at once: draw once after all of them.
  let scheduled = false;
  const schedule = () => {
    if (scheduled) return;
    scheduled = true;
    queueMicrotask(() => {
      scheduled = false;
      draw();
    });
  };
  // A file from Python (e.g. "save PNG"): the browser downloads it; nothing is written on the kernel's side.
  const onMessage = (msg, buffers) => {
    if (!msg || msg.type !== "download" || !buffers || !buffers.length) return;
    const url = URL.createObjectURL(new Blob([buffers[0]], { type: msg.mime || "application/octet-stream" }));
    const link = el("a", "", document.body);  // outside the output area: no handler of the page sees the click
    link.hidden = true;
    link.href = url;
    link.download = msg.filename || "cnnlens.png";
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
    root.dataset.downloads = String(+(root.dataset.downloads || 0) + 1);
  };
  model.on("msg:custom", onMessage);
  const events = ["change:image", "change:heat", "change:shape", "change:cmap", "change:cmap_index", "change:opacity", "change:signed",
    "change:vmax", "change:rect", "change:legend", "change:bars", "change:size", "change:title", "change:kind", "change:selected", "change:columns", "change:zoomable", "change:zoom_box", "change:normalize",
    "change:tile_names", "change:captions"];
  events.push("change:points", "change:groups", "change:color_by", "change:atlas", "change:atlas_shape");
  const statusEvents = ["change:status", "change:progress", "change:error", "change:details"];
  events.forEach((e) => model.on(e, schedule));
  const newData = ["change:image", "change:heat", "change:shape", "change:kind", "change:points", "change:groups"];
  const markStale = () => { stale = true; };
  newData.forEach((e) => model.on(e, markStale));
  statusEvents.forEach((e) => model.on(e, showStatus));
  const markerEvents = ["change:partial", "change:results", "change:compute_ms"];
  markerEvents.forEach((e) => model.on(e, markers));
  draw();
  showStatus();
  // The kernel counts the views on a page: when the last is removed (output cleared) it stops the job.
  const tell = (type) => {
    try {
      model.send({ type });
    } catch (error) {
      // the widget is closed already: nobody to tell
    }
  };
  tell("attached");
  return () => {
    tell("detached");
    model.off("msg:custom", onMessage);
    events.forEach((e) => model.off(e, schedule));
    newData.forEach((e) => model.off(e, markStale));
    statusEvents.forEach((e) => model.off(e, showStatus));
    markerEvents.forEach((e) => model.off(e, markers));
  };
}

export default { render };
export { COLORMAPS };

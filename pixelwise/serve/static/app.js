// The pixelwise page: upload images, see their segmentation as an overlay, inspect a pixel.
// Everything comes from this service (no outside resource): /info, /predict, /explain.
// Strings from the model (class names), uploads (file names) and errors are only ever set as
// textContent: the service's Content-Security-Policy forbids inline script besides.
"use strict";

let info = null;

async function loadInfo() {
  const response = await fetch("info");
  info = await response.json();
  const runtime = `${info.runtime.name} ${info.runtime.precision}`;
  document.getElementById("model-info").textContent =
    `${info.model} · ${info.classes.length} classes · ${runtime}`;
}

function setStatus(text, isError = false) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

async function errorText(response) {
  try { return (await response.json()).error; } catch { return `HTTP ${response.status}`; }
}

function bitmapToCanvas(canvas, bitmap) {
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0);
  return context.getImageData(0, 0, bitmap.width, bitmap.height);
}

// The mask PNG holds class indices with the palette: the browser decodes it to the class colours,
// which map back to class indices (the palette's colours are distinct).
function classIndices(maskPixels) {
  const lookup = new Map(info.palette.map((c, i) => [(c[0] << 16) | (c[1] << 8) | c[2], i]));
  const data = maskPixels.data;
  const indices = new Int16Array(data.length / 4);
  for (let p = 0; p < indices.length; p++) {
    const key = (data[4 * p] << 16) | (data[4 * p + 1] << 8) | data[4 * p + 2];
    indices[p] = lookup.has(key) ? lookup.get(key) : -1;
  }
  return indices;
}

function drawOverlay(card) {
  const { overlay, indices, hidden, width, height } = card;
  const alpha = Math.round(2.55 * Number(card.element.querySelector(".opacity").value));
  const context = overlay.getContext("2d");
  const image = context.createImageData(width, height);
  for (let p = 0; p < indices.length; p++) {
    const cls = indices[p];
    if (cls < 0 || hidden.has(cls)) continue;
    const colour = info.palette[cls];
    image.data.set([colour[0], colour[1], colour[2], alpha], 4 * p);
  }
  context.putImageData(image, 0, 0);
  overlay.dataset.alpha = String(alpha);
  overlay.dataset.ready = "1";
}

function fillLegend(card, shares) {
  const legend = card.element.querySelector(".legend");
  legend.replaceChildren();
  for (const entry of shares.classes) {
    const item = document.createElement("li");
    item.dataset.index = entry.index;
    const toggle = document.createElement("input");
    toggle.type = "checkbox";
    toggle.checked = true;
    toggle.title = `show or hide ${entry.name}`;
    toggle.addEventListener("change", () => {
      if (toggle.checked) card.hidden.delete(entry.index); else card.hidden.add(entry.index);
      drawOverlay(card);
    });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${entry.color.join(",")})`;
    const name = document.createElement("span");
    name.className = "class-name";
    name.textContent = entry.name;
    const share = document.createElement("span");
    share.className = "share";
    share.textContent = `${(100 * entry.share).toFixed(1)}%`;
    item.append(toggle, swatch, name, share);
    legend.append(item);
  }
}

async function explainPixel(card, event) {
  const rect = card.field.getBoundingClientRect();
  const x = Math.min(card.width - 1, Math.floor((event.clientX - rect.left) * card.width / rect.width));
  const y = Math.min(card.height - 1, Math.floor((event.clientY - rect.top) * card.height / rect.height));
  const panel = card.element.querySelector(".explain");
  panel.textContent = `pixel (${x}, ${y})…`;
  const response = await fetch(`explain?x=${x}&y=${y}&top=3`, { method: "POST", body: card.file,
    headers: { "content-type": card.file.type || "application/octet-stream" } });
  if (!response.ok) { panel.textContent = await errorText(response); return; }
  const result = await response.json();
  // Class names come from the model file: they are text, never markup.
  const heading = document.createElement("strong");
  heading.textContent = `pixel (${x}, ${y})`;
  const table = document.createElement("table");
  table.className = "top";
  for (const t of result.top) {
    const row = table.insertRow();
    row.insertCell().textContent = t.name;
    row.insertCell().textContent = `${(100 * t.probability).toFixed(1)}%`;
  }
  panel.replaceChildren(heading, table);
  const context = card.field.getContext("2d");
  context.clearRect(0, 0, card.width, card.height);
  const field = result.receptive_field;
  if (field) {
    context.lineWidth = Math.max(2, card.width / 300);
    context.strokeStyle = "#ffeb3b";
    context.strokeRect(field.left, field.top, field.right - field.left, field.bottom - field.top);
    const note = document.createElement("p");
    note.className = "field-note";
    note.textContent = `receptive field ${Math.round(field.size[0])}×${Math.round(field.size[1])} px ` +
      `around (${Math.round(field.center[1])}, ${Math.round(field.center[0])})`;
    panel.append(note);
    card.field.dataset.box = [field.left, field.top, field.right, field.bottom].map(Math.round).join(",");
  }
  context.fillStyle = "#ffeb3b";
  context.beginPath();
  context.arc(x + 0.5, y + 0.5, Math.max(3, card.width / 150), 0, 2 * Math.PI);
  context.fill();
}

async function segment(file) {
  const element = document.getElementById("card").content.firstElementChild.cloneNode(true);
  element.querySelector(".name").textContent = file.name;
  document.getElementById("results").append(element);
  const headers = { "content-type": file.type || "application/octet-stream" };
  const [maskResponse, sharesResponse] = await Promise.all([
    fetch("predict", { method: "POST", body: file, headers }),
    fetch("predict?format=json", { method: "POST", body: file, headers }),
  ]);
  if (!maskResponse.ok || !sharesResponse.ok) {
    throw new Error(`${file.name}: ${await errorText(maskResponse.ok ? sharesResponse : maskResponse)}`);
  }
  const maskBlob = await maskResponse.blob();
  const shares = await sharesResponse.json();
  const imageData = bitmapToCanvas(element.querySelector(".image"), await createImageBitmap(file));
  const maskPixels = bitmapToCanvas(document.createElement("canvas"), await createImageBitmap(maskBlob));
  const card = { element, file, width: imageData.width, height: imageData.height, hidden: new Set(),
                 overlay: element.querySelector(".overlay"), field: element.querySelector(".field"),
                 indices: classIndices(maskPixels) };
  for (const canvas of [card.overlay, card.field]) { canvas.width = card.width; canvas.height = card.height; }
  const download = element.querySelector(".download");
  download.href = URL.createObjectURL(maskBlob);
  download.download = file.name.replace(/\.[^.]*$/, "") + "_mask.png";
  element.querySelector(".opacity").addEventListener("input", () => drawOverlay(card));
  card.field.addEventListener("click", event => explainPixel(card, event));
  fillLegend(card, shares);
  drawOverlay(card);
}

async function segmentAll(files) {
  const images = [...files].filter(f => f.type.startsWith("image/") || f.type === "");
  for (const [number, file] of images.entries()) {
    setStatus(`segmenting ${file.name} (${number + 1} of ${images.length})…`);
    try { await segment(file); } catch (error) { setStatus(error.message, true); return; }
  }
  setStatus(images.length ? `segmented ${images.length} image(s)` : "no image files among those");
}

function wireInputs() {
  const input = document.getElementById("files");
  input.addEventListener("change", () => segmentAll(input.files));
  const drop = document.getElementById("drop");
  drop.addEventListener("dragover", event => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", event => {
    event.preventDefault();
    drop.classList.remove("over");
    segmentAll(event.dataTransfer.files);
  });
}

wireInputs();
loadInfo().catch(error => setStatus(`cannot reach the service: ${error}`, true));

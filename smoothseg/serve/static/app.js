// smoothseg_serve's page: upload, job progress, a canvas slice viewer, the lesion table, findings and downloads.
// Every value that comes from an upload, a report or the server is written with textContent (never as HTML).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const WINDOWS = { liver: [60, 160], abdomen: [40, 400] };  // [level, width] in HU
  const POLL_MS = 1000;
  const MAX_CANVAS_PX = 560;
  let current = null;  // { id, meta, plane }
  const slices = new Map();

  async function api(path, options) {
    const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
      throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    }
    return response;
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = !message;
  }

  function fmt(value, digits) {
    return value === null || value === undefined ? "n/a" : Number(value).toFixed(digits);
  }

  async function loadModel() {
    const info = await (await api("/api/model")).json();
    const model = info.model || {};
    const validation = info.validation;
    let text = "Model: " + (model.dataset || "unknown") + " (" + (model.model_id || "") + ").";
    if (validation) {
      text += " Validation on " + validation.n_cases + " cases: tumour Dice " + fmt(validation.mean_dice, 3) +
        ", lesion sensitivity " + fmt(validation.sensitivity, 2) + ", " + fmt(validation.fp_per_tumour_free, 2) +
        " false-positive lesions per tumour-free liver.";
    }
    $("model").textContent = text;
    const fields = $("clinical-fields");
    fields.replaceChildren();
    for (const feature of info.clinical_features || []) {
      const label = document.createElement("label");
      label.textContent = feature.name + " ";
      const input = document.createElement("input");
      input.name = feature.name;
      input.type = "text";
      if (feature.kind === "numeric") input.inputMode = "decimal";
      label.appendChild(input);
      fields.appendChild(label);
    }
    $("clinical").hidden = !(info.clinical_features || []).length;
  }

  function submit(event) {
    event.preventDefault();
    showError("");
    $("result").hidden = true;
    const request = new XMLHttpRequest();
    request.open("POST", "/api/jobs");
    request.upload.onprogress = (e) => { if (e.lengthComputable) $("upload-progress").value = e.loaded / e.total; };
    request.onload = () => {
      let body = {};
      try { body = JSON.parse(request.responseText); } catch (e) { /* not JSON */ }
      if (request.status !== 201) {
        showError("Upload refused: " + (typeof body.detail === "string" ? body.detail : request.statusText));
        return;
      }
      $("upload-progress").value = 1;
      location.hash = "job=" + body.id;
      follow(body.id);
    };
    request.onerror = () => showError("Upload failed: the server could not be reached.");
    $("job").hidden = false;
    $("upload-progress").value = 0;
    request.send(new FormData($("upload-form")));
  }

  async function follow(id) {
    $("job").hidden = false;
    $("job-id").textContent = id.slice(0, 8);
    $("job-name").textContent = "";
    for (;;) {
      let job;
      try {
        job = await (await api("/api/jobs/" + encodeURIComponent(id))).json();
      } catch (e) {
        showError("Job " + id.slice(0, 8) + ": " + e.message);
        return;
      }
      $("job-name").textContent = job.upload_name;
      $("job-state").textContent = job.state;
      $("job-stage").textContent = job.state === "running" ? ", " + job.stage : "";
      $("job-progress").value = job.progress;
      if (job.state === "failed") { showError("The job failed: " + (job.error || "no reason given")); return; }
      if (job.state === "done") { await showResult(job); return; }
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }

  async function showResult(job) {
    const meta = await (await api("/api/jobs/" + job.id + "/view")).json();
    current = { id: job.id, meta: meta, plane: "axial" };
    slices.clear();
    fillLesions(meta.lesions);
    $("findings").textContent = await (await api("/api/jobs/" + job.id + "/files/findings.txt")).text();
    const list = $("downloads");
    list.replaceChildren();
    for (const name of job.files) {
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = "/api/jobs/" + job.id + "/files/" + encodeURIComponent(name);
      link.download = name;
      link.textContent = name;
      item.appendChild(link);
      list.appendChild(item);
    }
    $("result").hidden = false;
    const middle = meta.lesions.length ? meta.lesions[0].largest_axial_slice : Math.floor(meta.planes.axial.slices / 2);
    setPlane("axial", middle);
  }

  function fillLesions(lesions) {
    const body = $("lesions").tBodies[0];
    body.replaceChildren();
    $("no-lesions").hidden = lesions.length > 0;
    for (const lesion of lesions) {
      const row = document.createElement("tr");
      row.dataset.lesion = String(lesion.lesion);
      const range = lesion.axial_slice_range;
      const cells = [String(lesion.lesion), fmt(lesion.volume_ml, 2), fmt(lesion.max_axial_diameter_mm, 1),
        range[0] + "-" + range[1], fmt(lesion.confidence, 2)];
      for (const text of cells) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.appendChild(cell);
      }
      row.addEventListener("click", () => {
        for (const other of body.rows) other.classList.remove("selected");
        row.classList.add("selected");
        setPlane("axial", lesion.largest_axial_slice);
      });
      body.appendChild(row);
    }
  }

  function setPlane(plane, index) {
    current.plane = plane;
    for (const button of document.querySelectorAll("button.plane")) {
      button.setAttribute("aria-pressed", String(button.dataset.plane === plane));
    }
    const count = current.meta.planes[plane].slices;
    const slider = $("slice");
    slider.max = String(count - 1);
    slider.value = String(index === undefined ? Math.floor(count / 2) : Math.min(Math.max(index, 0), count - 1));
    draw();
  }

  async function fetchSlice(plane, index) {
    const key = current.id + "/" + plane + "/" + index;
    if (!slices.has(key)) {
      if (slices.size > 64) slices.delete(slices.keys().next().value);
      slices.set(key, api("/api/jobs/" + current.id + "/view/" + plane + "/" + index).then((r) => r.arrayBuffer()));
    }
    return slices.get(key);
  }

  async function draw() {
    if (!current) return;
    const plane = current.plane;
    const index = Number($("slice").value);
    const info = current.meta.planes[plane];
    $("slice-label").textContent = plane + " slice " + index + " of 0-" + (info.slices - 1) +
      (plane === "axial" ? " (0 = feet)" : "");
    let buffer;
    try { buffer = await fetchSlice(plane, index); } catch (e) { showError("Slice: " + e.message); return; }
    if (current.plane !== plane || Number($("slice").value) !== index) return;  // a newer slice was asked for
    const n = info.rows * info.cols;
    const ct = new Int16Array(buffer, 0, n);
    const labels = new Uint8Array(buffer, 2 * n, n);
    const canvas = $("view");
    canvas.width = info.cols;
    canvas.height = info.rows;
    const scale = MAX_CANVAS_PX / Math.max(info.cols * info.col_mm, info.rows * info.row_mm);
    canvas.style.width = Math.round(info.cols * info.col_mm * scale) + "px";
    canvas.style.height = Math.round(info.rows * info.row_mm * scale) + "px";
    const [level, width] = WINDOWS[$("window").value];
    const low = level - width / 2;
    const overlay = $("overlay").value;
    const image = canvas.getContext("2d").createImageData(info.cols, info.rows);
    const px = image.data;
    let tumourPixels = 0;
    for (let i = 0; i < n; i++) {
      const grey = Math.max(0, Math.min(255, ((ct[i] - low) / width) * 255));
      let r = grey, g = grey, b = grey;
      const label = labels[i];
      if (label === 2) tumourPixels++;
      if (label && overlay !== "off") {
        const x = i % info.cols, y = (i - x) / info.cols;
        const edge = (x > 0 && labels[i - 1] !== label) || (x < info.cols - 1 && labels[i + 1] !== label) ||
          (y > 0 && labels[i - info.cols] !== label) || (y < info.rows - 1 && labels[i + info.cols] !== label);
        const colour = label === 2 ? [255, 40, 40] : [40, 220, 90];
        const alpha = edge ? 1 : (overlay === "both" ? (label === 2 ? 0.45 : 0.25) : 0);
        r = r * (1 - alpha) + colour[0] * alpha;
        g = g * (1 - alpha) + colour[1] * alpha;
        b = b * (1 - alpha) + colour[2] * alpha;
      }
      px[4 * i] = r; px[4 * i + 1] = g; px[4 * i + 2] = b; px[4 * i + 3] = 255;
    }
    canvas.getContext("2d").putImageData(image, 0, 0);
    canvas.dataset.drawn = plane + ":" + index;  // what is on the canvas (read by the browser test)
    canvas.dataset.tumourPixels = String(tumourPixels);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("upload-form").addEventListener("submit", submit);
    $("slice").addEventListener("input", draw);
    $("window").addEventListener("change", draw);
    $("overlay").addEventListener("change", draw);
    for (const button of document.querySelectorAll("button.plane")) {
      button.addEventListener("click", () => setPlane(button.dataset.plane));
    }
    loadModel().catch((e) => showError("The model could not be described: " + e.message));
    const match = /^#job=([0-9a-f]{32})$/.exec(location.hash);
    if (match) follow(match[1]);
  });
})();

// Slide view: the stored slide in OpenSeadragon (Deep Zoom tiles from the review app), the AI's fields as
// rectangles coloured by category, the fields' heatmap layer, the field list and a field's own view.
// The fields opened here, and the one marked diagnostic, go with the decision (decide.js submits it).
(function () {
  "use strict";
  const el = document.getElementById("slide-viewer");
  const items = Array.prototype.slice.call(document.querySelectorAll(".field-item"));
  const fieldsToggle = document.getElementById("fields-toggle");
  const heatToggle = document.getElementById("heat-toggle");
  const opacity = document.getElementById("heat-opacity");
  const opacityValue = document.getElementById("heat-opacity-value");
  const legend = document.getElementById("legend");
  const zoomLevel = document.getElementById("zoom-level");
  const panel = document.getElementById("field-view");
  const viewedInput = document.getElementById("fields-viewed");
  const diagnosticInput = document.getElementById("diagnostic-field");
  const examinedCount = document.getElementById("examined-count");
  const viewed = [];
  let selected = -1;   // index in items
  let openNumber = 0;  // the field shown in the field view, 0 when none
  let heatLayer = null;

  const viewer = OpenSeadragon({
    element: el,
    tileSources: el.dataset.dzi,
    showNavigationControl: false,
    showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT",
    drawer: "canvas",
    maxZoomPixelRatio: 2,
    visibilityRatio: 0.5,
    tileRetryMax: 2,
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
    keyboardShortcuts: false
  });
  window.CDSSlide = { viewer: viewer, viewed: viewed };

  function box(item) { return item.dataset.box.split(",").map(Number); }
  function imageRect(item) {
    const b = box(item);
    return viewer.viewport.imageToViewportRectangle(b[0], b[1], b[2], b[3]);
  }

  viewer.addHandler("open", function () {
    items.forEach(function (item) {
      const mark = document.createElement("div");
      mark.className = "field-box cls-border-" + item.dataset.cls;
      mark.dataset.number = item.dataset.number;
      mark.title = "Field " + item.dataset.number + ": " + item.dataset.name + " " + item.dataset.prob + "%";
      const label = document.createElement("span");
      label.textContent = item.dataset.number;
      mark.appendChild(label);
      viewer.addOverlay({ element: mark, location: imageRect(item) });
      new OpenSeadragon.MouseTracker({
        element: mark,
        clickHandler: function () { openField(items.indexOf(item)); }
      });
    });
    el.classList.add("opened");
  });
  viewer.addHandler("zoom", function () {
    if (!viewer.world.getItemAt(0)) { return; }
    const z = viewer.viewport.viewportToImageZoom(viewer.viewport.getZoom(true));
    zoomLevel.textContent = (z >= 0.1 ? Math.round(z * 100) : (z * 100).toFixed(1)) + "%";
  });

  function showFields(on) {
    el.classList.toggle("fields-hidden", !on);
    fieldsToggle.checked = on;
  }
  fieldsToggle.addEventListener("change", function () { showFields(fieldsToggle.checked); });

  // The heatmap layer: one transparent image over the whole slide, loaded on first use.
  function setOpacity(value) {
    opacity.value = value;
    opacityValue.textContent = value + "%";
    if (heatLayer) { heatLayer.setOpacity(value / 100); }
    document.getElementById("field-heatmap").style.opacity = String(value / 100);
    localStorage.setItem("cds.heatOpacity", String(value));
  }
  function showHeat(on) {
    if (!el.dataset.heatmap) { return; }
    heatToggle.checked = on;
    legend.hidden = !on;
    document.getElementById("field-heatmap").classList.toggle("hidden", !on);
    if (on && !heatLayer) {
      viewer.addTiledImage({
        tileSource: { type: "image", url: el.dataset.heatmap, buildPyramid: false },
        x: 0, y: 0, width: 1, opacity: Number(opacity.value) / 100,
        success: function (e) { heatLayer = e.item; el.classList.add("heat-loaded"); }
      });
    } else if (heatLayer) {
      heatLayer.setOpacity(on ? Number(opacity.value) / 100 : 0);
    }
    localStorage.setItem("cds.heat", on ? "1" : "0");
  }
  if (el.dataset.heatmap) {
    heatToggle.addEventListener("change", function () { showHeat(heatToggle.checked); });
    opacity.addEventListener("input", function () { setOpacity(Number(opacity.value)); });
    setOpacity(Number(localStorage.getItem("cds.heatOpacity") || 45));
    viewer.addOnceHandler("open", function () { showHeat(localStorage.getItem("cds.heat") === "1"); });
  }

  // The field list: select (zoom the slide to it), open (its own view).
  function select(index, zoom) {
    if (index < 0 || index >= items.length) { return; }
    if (selected >= 0) { items[selected].classList.remove("selected"); }
    selected = index;
    const item = items[index];
    item.classList.add("selected");
    item.scrollIntoView({ block: "nearest" });
    el.querySelectorAll(".field-box.selected").forEach(function (b) { b.classList.remove("selected"); });
    const mark = el.querySelector('.field-box[data-number="' + item.dataset.number + '"]');
    if (mark) { mark.classList.add("selected"); }
    if (zoom && viewer.world.getItemAt(0)) {
      const r = imageRect(item);
      const pad = Math.max(r.width, r.height) * 0.6;
      viewer.viewport.fitBounds(new OpenSeadragon.Rect(r.x - pad, r.y - pad, r.width + 2 * pad, r.height + 2 * pad));
    }
  }

  function url(template, number) { return template.replace(/\/field\/0(?=[./])/, "/field/" + number); }

  function openField(index) {
    select(index, true);
    const item = items[index];
    const number = Number(item.dataset.number);
    openNumber = number;
    document.getElementById("field-title").textContent = "Field " + number;
    const cls = document.getElementById("field-class");
    cls.className = "cls cls-" + item.dataset.cls;
    cls.textContent = item.dataset.name;
    document.getElementById("field-prob").textContent = item.dataset.prob + "%";
    const image = document.getElementById("field-image");
    image.src = url(el.dataset.fieldUrl, number);
    const heat = document.getElementById("field-heatmap");
    if (el.dataset.heatmap) { heat.src = url(el.dataset.fieldHeatmapUrl, number); } else { heat.removeAttribute("src"); }
    const probs = document.getElementById("field-probs");
    probs.textContent = "";
    item.dataset.probs.split(";").filter(Boolean).forEach(function (entry) {
      const parts = entry.split(":");
      const row = document.createElement("div");
      row.className = "prob" + (parts[2] === item.dataset.cls ? " pred" : "");
      const head = document.createElement("div");
      head.className = "prob-head";
      const name = document.createElement("span");
      name.className = "prob-name";
      name.textContent = parts[0];
      const num = document.createElement("span");
      num.className = "num";
      num.textContent = parts[1] + "%";
      head.appendChild(name);
      head.appendChild(num);
      const bar = document.createElement("div");
      bar.className = "bar";
      const fill = document.createElement("span");
      fill.style.width = parts[1] + "%";
      bar.appendChild(fill);
      row.appendChild(head);
      row.appendChild(bar);
      probs.appendChild(row);
    });
    const reasons = document.getElementById("field-reasons");
    reasons.textContent = "";
    const texts = item.dataset.reasons ? item.dataset.reasons.split("|") : [];
    (texts.length ? texts : ["not referred on its own"]).forEach(function (text) {
      const li = document.createElement("li");
      li.textContent = text;
      reasons.appendChild(li);
    });
    if (viewed.indexOf(number) < 0) { viewed.push(number); }
    item.classList.add("viewed");
    if (viewedInput) { viewedInput.value = viewed.join(","); }
    if (examinedCount) { examinedCount.textContent = viewed.slice().sort(function (a, b) { return a - b; }).join(", "); }
    markDiagnosticButton();
    panel.hidden = false;
  }
  function closeField() {
    panel.hidden = true;
    openNumber = 0;
    el.focus();
  }
  document.getElementById("field-close").addEventListener("click", closeField);

  function markDiagnosticButton() {
    const on = diagnosticInput && Number(diagnosticInput.value) === openNumber && openNumber > 0;
    const button = document.getElementById("btn-diagnostic");
    button.classList.toggle("on", Boolean(on));
    button.firstChild.textContent = on ? "★ Diagnostic field " : "☆ Diagnostic field ";
  }
  function toggleDiagnostic() {
    if (!openNumber || !diagnosticInput) { return; }
    const on = Number(diagnosticInput.value) !== openNumber;
    diagnosticInput.value = on ? String(openNumber) : "";
    items.forEach(function (item) {
      item.querySelector(".star").hidden = !(on && Number(item.dataset.number) === openNumber);
    });
    markDiagnosticButton();
  }
  document.getElementById("btn-diagnostic").addEventListener("click", toggleDiagnostic);

  // A click zooms the slide to the field; a second click on it (or Enter, or a double click) opens it.
  items.forEach(function (item, index) {
    item.addEventListener("click", function () {
      if (selected === index) { openField(index); } else { select(index, true); }
    });
    item.addEventListener("dblclick", function () { openField(index); });
  });

  document.getElementById("zoom-in").addEventListener("click", function () { viewer.viewport.zoomBy(1.5); });
  document.getElementById("zoom-out").addEventListener("click", function () { viewer.viewport.zoomBy(1 / 1.5); });
  document.getElementById("zoom-fit").addEventListener("click", function () { viewer.viewport.goHome(); });

  window.CDSReview.onKey(function (k) {
    if (k === "Escape" && !panel.hidden) { closeField(); }
    else if (k === "j" || k === "J") { select(Math.min(items.length - 1, selected + 1), true); }
    else if (k === "k" || k === "K") { select(Math.max(0, selected - 1), true); }
    else if (k === "Enter" && selected >= 0 && !document.activeElement.classList.contains("field-item")) { openField(selected); }
    else if ((k === "d" || k === "D") && !panel.hidden) { toggleDiagnostic(); }
    else if (k === "r" || k === "R") { showFields(!fieldsToggle.checked); }
    else if ((k === "h" || k === "H") && el.dataset.heatmap) { showHeat(!heatToggle.checked); }
    else if (k === "f" || k === "F") { viewer.viewport.goHome(); }
    else if (k === "+" || k === "=") { viewer.viewport.zoomBy(1.5); }
    else if (k === "-") { viewer.viewport.zoomBy(1 / 1.5); }
    else { return false; }
    return true;
  });
})();

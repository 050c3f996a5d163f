// Image view: zoom/pan viewer, heatmap layer, its keys (decide.js has the decisions). No dependencies.
(function () {
  "use strict";
  const viewer = document.getElementById("viewer");
  const stage = document.getElementById("stage");
  const image = document.getElementById("image");
  const heat = document.getElementById("heatmap");
  const toggle = document.getElementById("heat-toggle");
  const opacity = document.getElementById("heat-opacity");
  const opacityValue = document.getElementById("heat-opacity-value");
  const zoomLevel = document.getElementById("zoom-level");
  const legend = document.getElementById("legend");
  const view = { scale: 1, x: 0, y: 0, min: 0.05, max: 16 };

  function apply() {
    stage.style.transform = "translate(" + view.x + "px," + view.y + "px) scale(" + view.scale + ")";
    zoomLevel.textContent = Math.round(view.scale * 100) + "%";
    viewer.classList.toggle("pixelated", view.scale >= 4);
  }

  function fit() {
    const w = image.naturalWidth || image.width, h = image.naturalHeight || image.height;
    if (!w || !h) { return; }
    const s = Math.min(viewer.clientWidth / w, viewer.clientHeight / h) * 0.98;
    view.scale = s;
    view.x = (viewer.clientWidth - w * s) / 2;
    view.y = (viewer.clientHeight - h * s) / 2;
    apply();
  }

  function zoomAt(factor, cx, cy) {
    const next = Math.min(view.max, Math.max(view.min, view.scale * factor));
    const k = next / view.scale;
    view.x = cx - (cx - view.x) * k;
    view.y = cy - (cy - view.y) * k;
    view.scale = next;
    apply();
  }

  function zoomCentre(factor) { zoomAt(factor, viewer.clientWidth / 2, viewer.clientHeight / 2); }

  function actualPixels() {
    zoomCentre(1 / view.scale);
  }

  viewer.addEventListener("wheel", function (e) {
    e.preventDefault();
    const r = viewer.getBoundingClientRect();
    zoomAt(Math.exp(-e.deltaY * 0.0015), e.clientX - r.left, e.clientY - r.top);
  }, { passive: false });

  let drag = null;
  viewer.addEventListener("pointerdown", function (e) {
    drag = { x: e.clientX - view.x, y: e.clientY - view.y };
    viewer.setPointerCapture(e.pointerId);
    viewer.classList.add("dragging");
  });
  viewer.addEventListener("pointermove", function (e) {
    if (!drag) { return; }
    view.x = e.clientX - drag.x;
    view.y = e.clientY - drag.y;
    apply();
  });
  function endDrag() { drag = null; viewer.classList.remove("dragging"); }
  viewer.addEventListener("pointerup", endDrag);
  viewer.addEventListener("pointercancel", endDrag);
  viewer.addEventListener("dblclick", function (e) {
    const r = viewer.getBoundingClientRect();
    zoomAt(2, e.clientX - r.left, e.clientY - r.top);
  });

  document.getElementById("zoom-in").addEventListener("click", function () { zoomCentre(1.25); });
  document.getElementById("zoom-out").addEventListener("click", function () { zoomCentre(0.8); });
  document.getElementById("zoom-fit").addEventListener("click", fit);
  document.getElementById("zoom-1").addEventListener("click", actualPixels);
  window.addEventListener("resize", fit);
  if (image.complete && image.naturalWidth) { fit(); } else { image.addEventListener("load", fit); }

  // Heatmap: loaded on first use; on/off and opacity are remembered between cases.
  function showHeat(on) {
    if (!heat) { return; }
    if (on && !heat.getAttribute("src")) { heat.setAttribute("src", heat.dataset.src); }
    heat.classList.toggle("hidden", !on);
    legend.hidden = !on;
    toggle.checked = on;
    localStorage.setItem("cds.heat", on ? "1" : "0");
  }
  function setOpacity(value) {
    opacity.value = value;
    opacityValue.textContent = value + "%";
    if (heat) { heat.style.opacity = String(value / 100); }
    localStorage.setItem("cds.heatOpacity", String(value));
  }
  if (heat) {
    toggle.addEventListener("change", function () { showHeat(toggle.checked); });
    opacity.addEventListener("input", function () { setOpacity(Number(opacity.value)); });
    setOpacity(Number(localStorage.getItem("cds.heatOpacity") || 45));
    showHeat(localStorage.getItem("cds.heat") === "1");
  }

  window.CDSReview.onKey(function (k) {
    if ((k === "h" || k === "H") && heat) { showHeat(!toggle.checked); }
    else if (k === "f" || k === "F") { fit(); }
    else if (k === "0") { actualPixels(); }
    else if (k === "+" || k === "=") { zoomCentre(1.25); }
    else if (k === "-") { zoomCentre(0.8); }
    else { return false; }
    return true;
  });
})();

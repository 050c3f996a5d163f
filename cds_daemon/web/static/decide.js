// Decisions and case navigation, shared by the image view (case.js) and the slide view (slide.js):
// one submit per page, the probability bars, and the keys both views have. No dependencies.
(function () {
  "use strict";
  const form = document.getElementById("decide-form");
  const handlers = [];

  const flashes = document.querySelector(".flashes");
  if (flashes && !flashes.querySelector(".flash-error")) {
    window.setTimeout(function () { flashes.classList.add("fade"); }, 3500);
  }
  document.querySelectorAll("[data-pct]").forEach(function (el) {
    el.style.width = el.dataset.pct + "%";
  });

  let submitted = false;
  if (form) {
    form.addEventListener("submit", function (e) {
      if (submitted) { e.preventDefault(); return; }
      submitted = true;
      form.classList.add("submitting");
    });
  }
  function press(selector) {
    const button = form && form.querySelector(selector);
    if (button && !button.disabled) { button.click(); }
  }
  function go(selector) {
    const link = document.querySelector(selector);
    if (link) { window.location.href = link.href; }
  }

  // A view's own keys come first: handler(key, event) returns true when it used the key.
  window.CDSReview = { press: press, go: go, onKey: function (handler) { handlers.push(handler); } };

  document.addEventListener("keydown", function (e) {
    const t = e.target;
    if (e.ctrlKey || e.metaKey || e.altKey) { return; }
    if (t && (t.tagName === "TEXTAREA" || t.tagName === "INPUT" && t.type !== "checkbox" && t.type !== "range")) {
      if (e.key === "Escape") { t.blur(); }
      return;
    }
    const k = e.key;
    for (let i = 0; i < handlers.length; i++) {
      if (handlers[i](k, e)) { e.preventDefault(); return; }
    }
    const ownArrows = document.activeElement && document.activeElement.closest("[data-own-arrows]");
    if (k === "c" || k === "C") { press("#btn-confirm"); }
    else if (k === "n" || k === "N") { press("#btn-nondx"); }
    else if (/^[1-9]$/.test(k)) { press('.btn-change[data-key="' + k + '"]'); }
    else if (k === "]") { go(".thumb.current + .thumb"); }
    else if (k === "[") {
      const current = document.querySelector(".thumb.current");
      if (current && current.previousElementSibling) { window.location.href = current.previousElementSibling.href; }
    }
    else if (k === "ArrowRight" && !e.shiftKey && !ownArrows) { go("#next-case"); }
    else if (k === "Escape") { go(".back"); }
    else { return; }
    e.preventDefault();
  });
})();

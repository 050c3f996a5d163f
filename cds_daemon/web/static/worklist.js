// Worklist: whole rows open their case; Enter starts with the first case.
(function () {
  "use strict";
  document.querySelectorAll("tr[data-href]").forEach(function (row) {
    row.addEventListener("click", function (e) {
      if (e.target.closest("a")) { return; }
      window.location.href = row.dataset.href;
    });
  });
  document.addEventListener("keydown", function (e) {
    const t = e.target;
    if (e.key !== "Enter" || (t && ["INPUT", "SELECT", "TEXTAREA", "BUTTON", "A"].includes(t.tagName))) { return; }
    const start = document.getElementById("start-review");
    if (start) { window.location.href = start.href; }
  });
})();

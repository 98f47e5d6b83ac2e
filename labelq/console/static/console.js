// Live job figures: poll /api/job every 2 s while the job runs (no inline script: the CSP forbids it).
(function () {
  "use strict";
  var box = document.getElementById("progress");
  if (!box || box.dataset.live !== "yes") return;
  var api = "/api/job?job=" + encodeURIComponent(box.dataset.job);
  function update() {
    fetch(api, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (d) {
        if (!d) return;
        box.querySelectorAll("[data-field]").forEach(function (el) {
          var v = d[el.dataset.field];
          if (v === undefined || v === null) return;
          if (el.tagName === "PROGRESS") el.value = v; else el.textContent = String(v);
        });
        if (d.state !== "done") setTimeout(update, 2000);
      })
      .catch(function () { setTimeout(update, 5000); });
  }
  setTimeout(update, 2000);
})();

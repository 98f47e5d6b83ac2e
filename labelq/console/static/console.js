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

// The review queue by keyboard: j/k move, c confirm, r release, 1-9 label, u undo, ? help; Enter in the label
// field relabels. Decisions go to /review/decide with the item's version; the page is not reloaded.
(function () {
  "use strict";
  var queue = document.getElementById("queue");
  if (!queue) return;
  var toggle = document.getElementById("blur-toggle");
  var stored = window.localStorage ? window.localStorage.getItem("labelq-blur") : null;
  if (stored !== null) queue.classList.toggle("blur", stored === "yes");
  function blurText() { if (toggle) toggle.textContent = queue.classList.contains("blur") ? "show previews" : "blur previews"; }
  blurText();
  if (toggle) toggle.addEventListener("click", function () {
    queue.classList.toggle("blur");
    if (window.localStorage) window.localStorage.setItem("labelq-blur", queue.classList.contains("blur") ? "yes" : "no");
    blurText();
  });
  if (queue.dataset.canWrite !== "yes") return;
  var items = Array.prototype.slice.call(queue.querySelectorAll("li.item"));
  var at = -1;
  var last = null; // {li, id} of this reviewer's last decision on this page

  function say(text, bad) {
    var main = document.querySelector("main");
    var box = document.querySelector("p.flash");
    if (!box) { box = document.createElement("p"); box.className = "flash"; box.setAttribute("role", "status"); main.insertBefore(box, main.firstChild); }
    box.textContent = text;
    box.classList.toggle("error", !!bad);
  }
  function focus(i) {
    if (i < 0) i = 0;
    if (i >= items.length) {
      var next = queue.dataset.next;
      if (next) { window.location.href = next; } else { say("end of this page: nothing more pending here"); }
      return;
    }
    if (items[at]) items[at].classList.remove("focus");
    at = i;
    items[at].classList.add("focus");
    items[at].focus({ preventScroll: true });
    items[at].scrollIntoView({ block: "nearest" });
  }
  function showItem(li, item, notice) {
    if (!item) return;
    li.dataset.version = String(item.version);
    var form = li.querySelector("form.decide");
    if (form) form.querySelector("input[name=version]").value = String(item.version);
    li.className = li.className.replace(/state-\S+/, "state-" + item.state);
    var d = li.querySelector(".decision");
    var text = "";
    if (item.state === "decided") {
      text = item.decision + " by " + item.reviewer + (item.human_label ? " · human label " + item.human_label : "") +
        (item.reason ? " · reason " + item.reason : "");
    } else if (item.state === "claimed" && item.claimed_by) {
      text = "open by " + item.claimed_by;
    }
    d.textContent = text;
    if (notice) { var n = document.createElement("span"); n.className = "notice"; n.textContent = " " + notice; d.appendChild(n); }
    li.querySelectorAll("button.confirm, button.release").forEach(function (b) { b.disabled = item.state === "decided"; });
  }
  function post(path, li, fields) {
    var body = new URLSearchParams();
    body.set("csrf", queue.dataset.csrf);
    body.set("id", li.dataset.id);
    body.set("version", li.dataset.version);
    Object.keys(fields).forEach(function (k) { body.set(k, fields[k]); });
    return fetch(path, { method: "POST", body: body, credentials: "same-origin",
                         headers: { "Accept": "application/json", "X-CSRF-Token": queue.dataset.csrf } })
      .then(function (r) { return r.json().catch(function () { return { ok: false, message: "error " + r.status }; }); });
  }
  function decide(decision, label) {
    var li = items[at];
    if (!li) return;
    var form = li.querySelector("form.decide");
    var fields = { decision: decision, reason: form ? form.querySelector("select[name=reason]").value : "" };
    if (label) fields.human_label = label;
    post("/review/decide", li, fields).then(function (d) {
      say(d.message, !d.ok);
      showItem(li, d.item, d.ok ? "" : d.message);
      if (d.ok) { last = { li: li }; focus(items.indexOf(li) + 1); }
    });
  }
  function undo() {
    if (!last) { say("nothing to undo on this page", true); return; }
    var li = last.li;
    post("/review/undo", li, {}).then(function (d) {
      say(d.message, !d.ok);
      showItem(li, d.item, d.ok ? "" : d.message);
      if (d.ok) { last = null; focus(items.indexOf(li)); }
    });
  }
  queue.addEventListener("keydown", function (e) {
    var t = e.target;
    if (e.key === "Enter" && t.name === "human_label") {
      e.preventDefault();
      var li = t.closest("li.item");
      focus(items.indexOf(li));
      if (t.value.trim()) decide("label", t.value.trim());
    }
  });
  queue.addEventListener("click", function (e) {
    var chip = e.target.closest(".chip[data-label]");
    if (!chip) {
      var li = e.target.closest("li.item");
      if (li && !e.target.closest("button, input, select, a")) focus(items.indexOf(li));
      return;
    }
    focus(items.indexOf(chip.closest("li.item")));
    decide("label", chip.dataset.label);
  });
  document.addEventListener("keydown", function (e) {
    var t = e.target;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA")) return;
    var k = e.key;
    if (k === "?") { var h = document.getElementById("help"); h.hidden = !h.hidden; e.preventDefault(); return; }
    if (!items.length) return;
    if (k === "j") focus(at + 1);
    else if (k === "k") focus(Math.max(0, at - 1));
    else if (k === "c") decide("confirm");
    else if (k === "r") decide("release");
    else if (k === "u") undo();
    else if (/^[1-9]$/.test(k)) {
      if (at < 0) return;
      var chip = items[at].querySelector('.chip[data-n="' + k + '"]');
      if (chip) decide("label", chip.dataset.label);
    } else return;
    e.preventDefault();
  });
  if (items.length) focus(0);
})();

// Live parts: an element with data-part is refreshed from that URL (server-rendered, escaped HTML) every 3 s
// while data-live is "yes"; a job's chart stops once its job is done.
(function () {
  "use strict";
  document.querySelectorAll("[data-part]").forEach(function (box) {
    if (box.dataset.live === "no") return;
    function refresh() {
      fetch(box.dataset.part, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html !== null) box.innerHTML = html;
          var state = document.querySelector("#progress [data-field=state]");
          if (box.id === "charts" && state && state.textContent === "done") return;
          setTimeout(refresh, 3000);
        })
        .catch(function () { setTimeout(refresh, 6000); });
    }
    setTimeout(refresh, 3000);
  });
})();

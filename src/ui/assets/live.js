// loops ui: keeps the page current. The server sends an event on /events whenever its
// file watcher sees a change; this fetches the page again and swaps its main part in.
// Pages work without it: this only saves a reload.
(function () {
  "use strict";
  var area = document.body.getAttribute("data-live");
  if (!area || area === "none" || !window.EventSource) return;
  var status = document.getElementById("live-status");
  var timer = null;

  function busy() {
    var a = document.activeElement;
    return a && (a.tagName === "INPUT" || a.tagName === "TEXTAREA");
  }

  function refresh() {
    timer = null;
    if (busy()) { timer = setTimeout(refresh, 2000); return; }
    fetch(location.href, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (!text) return;
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("main");
        var main = document.getElementById("main");
        if (!fresh || !main) return;
        var open = [];
        main.querySelectorAll("details[open][id]").forEach(function (d) { open.push(d.id); });
        main.replaceWith(fresh);
        open.forEach(function (id) {
          var d = document.getElementById(id);
          if (d) d.open = true;
        });
      })
      .catch(function () {});
  }

  var source = new EventSource("/events");
  source.addEventListener("change", function (e) {
    if (area !== "all" && e.data !== area && e.data !== "all") return;
    if (!timer) timer = setTimeout(refresh, 300);
  });
  source.onopen = function () { if (status) status.textContent = "live"; };
  source.onerror = function () { if (status) status.textContent = "reconnecting…"; };
})();

// Refreshes a live page's <main> every data-refresh seconds, in place, without a full
// reload. Skipped while the tab is hidden, a form field has the focus, or a form on the
// page has been typed into (what was typed is never thrown away). When the
// answer is no longer a dashboard page (signed out, session expired) the page reloads,
// so the sign-in page shows. No other script runs on the dashboard.
(function () {
  "use strict";
  var main = document.getElementById("main");
  if (!main || !main.dataset.refresh) { return; }
  var every = Math.max(1, parseInt(main.dataset.refresh, 10) || 5) * 1000;

  var touched = false;
  main.addEventListener("input", function () { touched = true; });
  main.addEventListener("change", function () { touched = true; });

  function editing() {
    var el = document.activeElement;
    return touched || (el && (el.tagName === "INPUT" || el.tagName === "SELECT" ||
                              el.tagName === "TEXTAREA"));
  }

  function refresh() {
    if (document.hidden || editing()) { return; }
    fetch(window.location.href, {credentials: "same-origin", headers: {"X-Requested-With": "refresh"}})
      .then(function (response) { return response.ok ? response.text() : Promise.reject(response.status); })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("main");
        if (!fresh || fresh.dataset.page !== main.dataset.page) { window.location.reload(); return; }
        main.replaceChildren.apply(main, Array.prototype.slice.call(fresh.childNodes));
        main.dataset.refreshed = String(Date.now());
      })
      .catch(function () { /* the next tick tries again */ });
  }

  window.setInterval(refresh, every);
}());

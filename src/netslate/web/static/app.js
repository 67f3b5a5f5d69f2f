// netslate web console: the few behaviours htmx does not give (no inline scripts: the CSP forbids them).
(function () {
  "use strict";
  function csrf() {
    var m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.content : "";
  }
  // htmx requests carry the session's CSRF token as a header (plain forms carry the csrf_token field).
  document.addEventListener("htmx:configRequest", function (e) {
    e.detail.headers["X-CSRF-Token"] = csrf();
  });
  // Destructive actions ask first: <form data-confirm="Publish generation 4?"> (or a button with it).
  document.addEventListener("submit", function (e) {
    var form = e.target;
    var btn = e.submitter;
    var message = (btn && btn.getAttribute("data-confirm")) || form.getAttribute("data-confirm");
    if (message && !window.confirm(message)) {
      e.preventDefault();
      e.stopImmediatePropagation();
    }
  }, true);
  // "Select all" checkbox for bulk actions.
  document.addEventListener("change", function (e) {
    var t = e.target;
    if (t.matches && t.matches("input[data-select-all]")) {
      var boxes = document.querySelectorAll('input[name="' + t.getAttribute("data-select-all") + '"]');
      boxes.forEach(function (b) { b.checked = t.checked; });
    }
  });
})();

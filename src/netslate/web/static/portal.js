// The portal: a user with exactly one desktop pool is connected straight away. The page marks the
// Connect form with data-autosubmit; Back from the console then lands on /portal?stay=1.
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var form = document.querySelector("form[data-autosubmit]");
    if (!form) { return; }
    history.replaceState(null, "", "/portal?stay=1");
    form.submit();
  });
})();

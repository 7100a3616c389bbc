/* System Status while setup is under way: the setup checks refresh every 20
 * seconds while the page is open (the page's own "check again now" link does
 * the same without JavaScript).  Only the checks and the progress line are
 * replaced, so nothing being typed elsewhere on the page is lost.  Served as
 * a file: the Content-Security-Policy allows no inline script. */
(function () {
  "use strict";
  var PERIOD_MS = 20000;
  var ids = ["setup-checks", "setup-progress"];

  function refresh() {
    if (document.hidden) { return; }
    fetch(window.location.pathname, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html");
        ids.forEach(function (id) {
          var now = document.getElementById(id);
          var next = fresh.getElementById(id);
          if (now && next && now.innerHTML !== next.innerHTML) {
            now.innerHTML = next.innerHTML;
            now.setAttribute("data-refreshed", "1");
          }
        });
      })
      .catch(function () { /* offline for a moment: the next round tries again */ });
  }
  window.setInterval(refresh, PERIOD_MS);
  document.addEventListener("visibilitychange", refresh);
}());

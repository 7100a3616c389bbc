/* The import page's live progress: polls /api/v1/m365/import every few
 * seconds while an import is queued or running and updates the numbers in
 * place.  Without JavaScript the page shows the same numbers and a Refresh
 * link.  Served as a file: the Content-Security-Policy allows no inline
 * script.  Values go in as text, never as HTML. */
(function () {
  "use strict";

  var INTERVAL = 3000;

  function text(id, value) {
    var element = document.getElementById(id);
    if (element) { element.textContent = value; }
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) { return "unknown yet"; }
    if (seconds < 60) { return "under a minute"; }
    if (seconds < 5400) {
      var minutes = Math.round(seconds / 60);
      return "about " + minutes + " minute" + (minutes === 1 ? "" : "s");
    }
    var hours = Math.round(seconds / 3600);
    return hours < 48 ? "about " + hours + " hours" : "about " + Math.round(hours / 24) + " days";
  }

  function showErrors(errors) {
    var wrap = document.getElementById("import-errors-wrap");
    var body = document.querySelector("#import-errors tbody");
    if (!wrap || !body) { return; }
    while (body.firstChild) { body.removeChild(body.firstChild); }
    errors.forEach(function (error) {
      var row = document.createElement("tr");
      [error.mailbox, error.reason].forEach(function (value) {
        var cell = document.createElement("td");
        cell.textContent = value;
        row.appendChild(cell);
      });
      body.appendChild(row);
    });
    wrap.hidden = errors.length === 0;
  }

  function show(data) {
    var bar = document.getElementById("import-bar");
    if (bar) {
      bar.value = data.percent;
      bar.textContent = data.percent + "%";
    }
    text("import-state", data.state);
    text("mailboxes-done", data.mailboxes_done);
    text("mailboxes-total", data.mailboxes_total);
    text("mailboxes-failed", data.mailboxes_failed);
    text("messages-imported", data.messages_imported.toLocaleString());
    text("items-imported", data.items_imported.toLocaleString());
    text("import-rate", data.rate.toFixed(1));
    var active = data.state === "queued" || data.state === "running";
    text("import-eta", active ? duration(data.eta_seconds) : (data.state === "done" ? "finished" : "—"));
    showErrors(data.errors || []);
    return active;
  }

  function poll(section) {
    var request = new XMLHttpRequest();
    request.open("GET", section.getAttribute("data-api"));
    request.setRequestHeader("Accept", "application/json");
    request.onload = function () {
      if (request.status !== 200) { return; }
      var data = JSON.parse(request.responseText);
      if (show(data)) {
        window.setTimeout(function () { poll(section); }, INTERVAL);
      } else if (data.state !== section.getAttribute("data-state")) {
        window.location.reload();  // finished or paused: the form and buttons change with it
      }
    };
    request.send();
  }

  function init() {
    var section = document.getElementById("import-progress");
    if (!section) { return; }
    var state = section.getAttribute("data-state");
    if (state === "queued" || state === "running") {
      window.setTimeout(function () { poll(section); }, INTERVAL);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();

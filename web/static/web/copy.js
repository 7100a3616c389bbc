/* Copy buttons: <button class="copy-button" data-copy="ID" hidden> copies the
 * text of the element #ID.  Without JavaScript the buttons stay hidden and the
 * values remain plain, selectable text.  Served as a file: the
 * Content-Security-Policy allows no inline script. */
(function () {
  "use strict";

  var status = document.createElement("span");
  status.className = "visually-hidden";
  status.setAttribute("aria-live", "polite");
  status.id = "copy-status";

  function selectText(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function show(button, label, message) {
    var original = button.getAttribute("data-label") || button.textContent;
    button.setAttribute("data-label", original);
    button.textContent = label;
    status.textContent = message;
    window.setTimeout(function () { button.textContent = original; }, 2000);
  }

  function copy(button) {
    var target = document.getElementById(button.getAttribute("data-copy"));
    if (!target) { return; }
    var text = target.textContent.trim();
    var fallback = function () {
      selectText(target);
      show(button, "Press Ctrl+C", "Selected. Press Control+C (or Command+C) to copy.");
    };
    if (!navigator.clipboard || !window.isSecureContext) { fallback(); return; }
    navigator.clipboard.writeText(text).then(function () {
      show(button, "Copied ✓", "Copied " + text);
    }, fallback);
  }

  function init() {
    document.body.appendChild(status);
    var buttons = document.querySelectorAll("button[data-copy]");
    for (var i = 0; i < buttons.length; i++) {
      buttons[i].hidden = false;
      buttons[i].addEventListener("click", function (event) { copy(event.currentTarget); });
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();

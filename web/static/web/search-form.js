/* The search form writes the query language into the search box as you type,
 * so people learn the syntax; submitting it runs the box's query.  Without
 * JavaScript the form is sent as it is and the server writes the same query
 * (web/search.py composed_query).  Served as a file: the
 * Content-Security-Policy allows no inline script. */
(function () {
  "use strict";
  var builder = document.getElementById("search-builder");
  if (!builder) { return; }
  var box = document.getElementById(builder.getAttribute("data-box"));
  var boxForm = document.getElementById("search-box-form");

  function escapeRe(text) { return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"); }

  // The same rule as search.query.with_field: replace every field: term.
  function withField(query, field, value) {
    var term = new RegExp("(^|\\s)-?" + escapeRe(field) + ":(\"[^\"]*\"?|\\S*)", "gi");
    var kept = query.replace(term, " ").split(/\s+/).filter(Boolean).join(" ");
    value = value.replace(/"/g, " ").split(/\s+/).filter(Boolean).join(" ");
    if (!value) { return kept; }
    var written = value.indexOf(" ") >= 0 ? field + ":\"" + value + "\"" : field + ":" + value;
    return (kept + " " + written).trim();
  }

  function write(input) {
    var field = input.getAttribute("data-field");
    var value = input.type === "checkbox" ? (input.checked ? "attachment" : "") : input.value;
    box.value = withField(box.value, field, value);
  }

  var inputs = builder.querySelectorAll("[data-field]");
  Array.prototype.forEach.call(inputs, function (input) {
    input.addEventListener(input.type === "checkbox" || input.type === "date" ? "change" : "input", function () {
      write(input);
    });
  });
  builder.addEventListener("submit", function (event) {
    event.preventDefault();
    boxForm.submit();
  });
}());

// postern admin page: conveniences only; every page reads and works without this script.
// Copy buttons (shown only when this runs) and confirmation of destructive actions.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var live = document.createElement("p");
  live.className = "sr-only";
  live.setAttribute("aria-live", "polite");
  document.body.appendChild(live);
  document.querySelectorAll("button.copy[data-copy]").forEach(function (b) {
    b.hidden = false;
    b.addEventListener("click", function () {
      var text = b.getAttribute("data-copy");
      var done = function () {
        b.textContent = "Copied";
        live.textContent = "Copied to the clipboard";
        setTimeout(function () { b.textContent = "Copy"; }, 1500);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () { select(b); });
      } else {
        select(b);
      }
    });
  });
  document.querySelectorAll("button[data-confirm]").forEach(function (b) {
    b.addEventListener("click", function (e) {
      if (!window.confirm(b.getAttribute("data-confirm"))) { e.preventDefault(); }
    });
  });
});
// Without the clipboard API: select the value so the user can copy it.
function select(button) {
  var code = button.parentNode.querySelector("code");
  if (!code) { return; }
  var range = document.createRange();
  range.selectNodeContents(code);
  var sel = window.getSelection();
  sel.removeAllRanges();
  sel.addRange(range);
}

// Auto-refresh: while the box is ticked (remembered in this browser), reload every 5 s,
// except while someone is typing in a field.
(function () {
  "use strict";
  var box = document.getElementById("auto-refresh");
  if (!box) return;
  var key = "aiki.dashboard.autoRefresh";
  var timer = null;
  box.parentElement.hidden = false;
  box.checked = window.localStorage.getItem(key) === "1";
  function typing() {
    var el = document.activeElement;
    return el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA") && el.type !== "checkbox";
  }
  function schedule() {
    window.clearTimeout(timer);
    if (!box.checked) return;
    timer = window.setTimeout(function () {
      if (typing()) schedule();
      else window.location.reload();
    }, 5000);
  }
  box.addEventListener("change", function () {
    window.localStorage.setItem(key, box.checked ? "1" : "0");
    schedule();
  });
  schedule();
})();

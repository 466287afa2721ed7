// Live search on the code index: as you type, fetch /codes?q=... (the same page the
// form gets without JavaScript) and swap in its results. Nothing else depends on it.
(function () {
  "use strict";
  var form = document.querySelector("form[data-live-search]");
  var results = document.getElementById("results");
  var count = document.getElementById("result-count");
  if (!form || !results || !count || !window.fetch || !window.DOMParser) return;
  var input = form.querySelector("input[name=q]");
  var timer = 0;
  var pending = null;

  function update() {
    var q = input.value.trim();
    var url = form.action + (q ? "?q=" + encodeURIComponent(q) : "");
    if (pending) pending.abort();
    pending = new AbortController();
    fetch(url, { signal: pending.signal, credentials: "same-origin" })
      .then(function (r) { return r.text(); })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("results");
        var freshCount = doc.getElementById("result-count");
        if (!fresh || !freshCount) return;
        results.innerHTML = fresh.innerHTML;
        // The count is a live region that stays in the page, so screen readers hear it.
        count.className = freshCount.className;
        count.textContent = freshCount.textContent;
        // The language switch links to this search in the other language.
        var sw = document.querySelector(".lang-switch");
        var freshSw = doc.querySelector(".lang-switch");
        if (sw && freshSw) sw.innerHTML = freshSw.innerHTML;
        history.replaceState(null, "", url);
        document.title = doc.title;
      })
      .catch(function () { /* aborted or offline: the form still works */ });
  }

  input.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(update, 200);
  });
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    clearTimeout(timer);
    update();
  });
})();

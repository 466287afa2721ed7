// Admin actions ask first: a form with data-confirm asks its question with confirm()
// and, on yes, marks itself confirmed; on no it is not sent. Without JavaScript the
// server answers the unconfirmed POST with a confirmation page instead.
(function () {
  "use strict";
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-confirm")) return;
    if (window.confirm(form.getAttribute("data-confirm"))) {
      form.elements.namedItem("confirmed").value = "1";
    } else {
      event.preventDefault();
    }
  });
})();

// Uploads being checked ([data-check-url], on a model's or dataset's page): poll the object's
// small JSON status every second and reload the page once the checking worker has given its
// verdict (ready or rejected). Watches <main> being replaced too (upload.js puts the object's
// page there after an upload). Without JavaScript the page says to reload it.
(function () {
  "use strict";

  function watch(element) {
    if (element.dataset.checkWatched) return;
    element.dataset.checkWatched = "1";
    function poll() {
      fetch(element.dataset.checkUrl, {headers: {Accept: "application/json"}, credentials: "same-origin"})
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (answer) {
          if (answer && answer.status !== "checking") {
            window.location.reload();
          } else {
            window.setTimeout(poll, 1000);
          }
        })
        .catch(function () { window.setTimeout(poll, 2000); });
    }
    window.setTimeout(poll, 500);
  }

  function scan() {
    document.querySelectorAll("[data-check-url]").forEach(watch);
  }

  document.addEventListener("DOMContentLoaded", function () {
    scan();
    new MutationObserver(scan).observe(document.body, {childList: true, subtree: true});
  });
})();

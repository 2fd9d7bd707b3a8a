// Upload forms (form[data-upload]): send the form with XMLHttpRequest to show its progress in a
// <progress> bar. The server's answer replaces <main>: the new page after a redirect (its URL
// replaces the upload page's in the history), or the form with its errors. Without JavaScript
// the form posts normally. A form with a "source" choice shows the fieldsets
// [data-source-fields="<source>"] of the chosen source only (without JavaScript all show).
(function () {
  "use strict";

  function megabytes(bytes) {
    return (bytes / 1048576).toFixed(1) + " MB";
  }

  function bindSource(form) {
    var choices = form.querySelectorAll("input[name=source]");
    if (!choices.length) return;
    function update() {
      var chosen = form.querySelector("input[name=source]:checked");
      form.querySelectorAll("[data-source-fields]").forEach(function (fields) {
        fields.hidden = chosen !== null && fields.dataset.sourceFields !== chosen.value;
      });
    }
    choices.forEach(function (choice) { choice.addEventListener("change", update); });
    update();
  }

  function bind(form) {
    bindSource(form);
    var box = form.querySelector("[data-upload-progress]");
    var bar = box.querySelector("progress");
    var status = box.querySelector("[data-upload-status]");
    var button = form.querySelector("button[type=submit]");
    var maxBytes = Number(form.dataset.maxBytes);

    function show(text) {
      box.hidden = false;
      status.textContent = text;
    }

    function fail(text) {
      button.disabled = false;
      bar.value = 0;
      show(text);
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var total = 0;
      form.querySelectorAll("input[type=file]").forEach(function (input) {
        Array.prototype.forEach.call(input.files, function (file) { total += file.size; });
      });
      if (maxBytes && total > maxBytes) {
        fail("The file is larger than the " + form.dataset.limit + " limit.");
        return;
      }

      var url = form.action;  // absolute: the page's own URL when the form has no action
      var xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.upload.addEventListener("progress", function (e) {
        if (!e.lengthComputable) return;
        bar.max = e.total;
        bar.value = e.loaded;
        show(megabytes(e.loaded) + " of " + megabytes(e.total));
      });
      xhr.upload.addEventListener("load", function () {
        bar.removeAttribute("value");  // indeterminate while the server checks the file
        show("Uploaded; checking the file…");
      });
      xhr.addEventListener("load", function () {
        var page = new DOMParser().parseFromString(xhr.responseText, "text/html");
        var main = page.querySelector("main");
        if (xhr.status !== 200 || !main) {
          fail(xhr.status === 413 ? "The file is larger than the " + form.dataset.limit + " limit."
                                  : "The upload failed (HTTP " + xhr.status + ").");
          return;
        }
        if (xhr.responseURL && xhr.responseURL !== url) {
          history.replaceState(null, "", xhr.responseURL);
        }
        document.title = page.title;
        document.querySelector("main").replaceWith(document.adoptNode(main));
        var again = document.querySelector("form[data-upload]");
        if (again) bind(again);
      });
      xhr.addEventListener("error", function () {
        fail("The upload was interrupted. Files must be at most " + form.dataset.limit + ".");
      });
      button.disabled = true;
      bar.value = 0;
      show("Starting the upload…");
      xhr.send(new FormData(form));
    });
  }

  var form = document.querySelector("form[data-upload]");
  if (form) bind(form);
})();

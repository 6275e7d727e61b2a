// Drag-and-drop or picked FITS files go up one at a time by XHR, so each
// shows its own progress bar and its own result (accepted, or why not).
(function () {
  "use strict";
  const zone = document.getElementById("dropzone");
  const input = document.getElementById("file-input");
  const list = document.getElementById("upload-results");
  const selectAll = document.getElementById("select-all");
  if (selectAll) {
    selectAll.addEventListener("change", function () {
      document.querySelectorAll('input[name="exposure"]').forEach(function (box) { box.checked = selectAll.checked; });
    });
  }
  if (!zone) return;
  const url = zone.dataset.url;

  function csrfToken() {
    const m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return m ? decodeURIComponent(m[1]) : "";
  }

  function row(file) {
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = file.name;
    const bar = document.createElement("progress");
    bar.max = 100; bar.value = 0;
    const msg = document.createElement("span");
    msg.className = "upload-msg";
    msg.textContent = "waiting";
    li.append(name, " ", bar, " ", msg);
    list.append(li);
    return { li: li, bar: bar, msg: msg };
  }

  function send(file, ui) {
    return new Promise(function (resolve) {
      const form = new FormData();
      form.append("files", file, file.name);
      const xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.setRequestHeader("X-CSRFToken", csrfToken());
      xhr.upload.addEventListener("progress", function (ev) {
        if (ev.lengthComputable) {
          ui.bar.value = Math.round((100 * ev.loaded) / ev.total);
          ui.msg.textContent = "uploading " + ui.bar.value + "%";
        }
      });
      xhr.addEventListener("load", function () {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
        const result = body && body.results && body.results[0];
        if (xhr.status === 413) {
          ui.li.className = "failed"; ui.msg.textContent = "refused: the file is over the server's size limit";
        } else if (result && result.ok) {
          ui.bar.value = 100;
          ui.li.className = "ok";
          ui.msg.textContent = result.note ? result.note + " " : "stored ";
          const link = document.createElement("a");
          link.href = result.url; link.textContent = "open exposure #" + result.id;
          ui.msg.append(link);
        } else {
          ui.li.className = "failed";
          ui.msg.textContent = "refused: " + ((result && result.error) || (body && body.error) || ("server answered " + xhr.status));
        }
        resolve(result && result.ok);
      });
      xhr.addEventListener("error", function () {
        ui.li.className = "failed"; ui.msg.textContent = "network error: the upload did not complete";
        resolve(false);
      });
      ui.msg.textContent = "uploading";
      xhr.send(form);
    });
  }

  async function uploadAll(files) {
    const uis = Array.from(files).map(function (f) { return [f, row(f)]; });
    let anyOk = false;
    for (const [file, ui] of uis) {
      if (await send(file, ui)) anyOk = true;
    }
    if (anyOk) {
      const again = document.createElement("li");
      const a = document.createElement("a");
      a.href = window.location.pathname; a.textContent = "Refresh the list";
      again.append(a); list.append(again);
    }
  }

  input.addEventListener("change", function () { if (input.files.length) uploadAll(input.files); input.value = ""; });
  ["dragenter", "dragover"].forEach(function (t) {
    zone.addEventListener(t, function (ev) { ev.preventDefault(); zone.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (t) {
    zone.addEventListener(t, function (ev) { ev.preventDefault(); zone.classList.remove("over"); });
  });
  zone.addEventListener("drop", function (ev) { if (ev.dataTransfer.files.length) uploadAll(ev.dataTransfer.files); });
})();

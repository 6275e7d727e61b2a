// While a run is queued or running, poll its status and update the page;
// when it ends, reload once to show results or the failure.
(function () {
  "use strict";
  const box = document.getElementById("run-state");
  if (!box || box.dataset.active !== "1") return;
  const url = box.dataset.statusUrl;
  const status = document.getElementById("run-status");
  const stage = document.getElementById("run-stage");
  const bar = document.getElementById("run-progress");
  const pct = document.getElementById("run-percent");

  function tick() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data) { setTimeout(tick, 3000); return; }
        if (!data.active) { window.location.reload(); return; }
        status.textContent = data.status_display;
        status.className = "status status-" + data.status;
        stage.textContent = "· stage " + data.stage;
        if (bar) bar.value = data.progress;
        if (pct) pct.textContent = Math.round(data.progress) + "%";
        setTimeout(tick, 1000);
      })
      .catch(function () { setTimeout(tick, 3000); });
  }
  setTimeout(tick, 500);
})();

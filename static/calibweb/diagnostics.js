// Diagnostics tabs of the run page. Each plot section is a Bokeh json_item fetched from
// its own URL the first time its tab is opened, then embedded with Bokeh.embed.embed_item,
// so the run page itself stays light. A tab can be opened from the URL: #diag-astrometry.
// Load times are kept on the panel (data-load-ms: from the request to the plots painted)
// and in window.calibwebDiagnostics.timings.
(function () {
  "use strict";
  const root = document.getElementById("diagnostics");
  if (!root) return;
  const tabs = Array.from(root.querySelectorAll("[role=tab]"));
  const timings = {};
  window.calibwebDiagnostics = { timings: timings };

  function painted() {
    // Two animation frames: Bokeh draws its canvases on the first.
    return new Promise(function (resolve) {
      requestAnimationFrame(function () { requestAnimationFrame(resolve); });
    });
  }

  function load(panel) {
    const url = panel.dataset.itemUrl;
    if (!url || panel.dataset.state) return;
    const name = panel.dataset.section;
    const state = panel.querySelector(".diag-state");
    const target = panel.querySelector(".bk-target");
    panel.dataset.state = "loading";
    if (state) state.textContent = "Loading plots…";
    const t0 = performance.now();
    let fetched = 0;
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        return r.json().then(function (body) {
          if (!r.ok) throw new Error(body && body.error ? body.error : "HTTP " + r.status);
          return body;
        });
      })
      .then(function (item) {
        fetched = performance.now();
        if (typeof Bokeh === "undefined") throw new Error("BokehJS did not load");
        return Bokeh.embed.embed_item(item, target.id);
      })
      .then(painted)
      .then(function () {
        const done = performance.now();
        timings[name] = { fetch_ms: fetched - t0, total_ms: done - t0, since_navigation_ms: done };
        panel.dataset.loadMs = (done - t0).toFixed(0);
        panel.dataset.state = "ready";
        if (state) state.textContent = "";
      })
      .catch(function (err) {
        panel.dataset.state = "failed";
        if (state) {
          state.textContent = "The plots could not be shown: " + err.message;
          state.classList.add("failed");
        }
      });
  }

  function show(name) {
    tabs.forEach(function (tab) {
      const selected = tab.dataset.tab === name;
      tab.setAttribute("aria-selected", selected ? "true" : "false");
      const panel = document.getElementById(tab.getAttribute("aria-controls"));
      if (!panel) return;
      panel.hidden = !selected;
      if (selected) load(panel);
    });
  }

  tabs.forEach(function (tab) {
    tab.addEventListener("click", function () {
      show(tab.dataset.tab);
      history.replaceState(null, "", "#diag-" + tab.dataset.tab);
    });
  });
  const wanted = (location.hash || "").replace(/^#diag-/, "");
  show(tabs.some(function (t) { return t.dataset.tab === wanted; }) ? wanted : "summary");
})();

// Bokeh json items on the history pages (trends, comparison). An element with class bk-item and
//   data-item-json="<id of a json_script>"  is embedded at once (the item came with the page);
//   data-item-url="<url>"                  is fetched and embedded when it becomes visible: at
//                                          once, or when its closed <details> is opened.
// The element's data-state is "loading", then "ready" or "failed" (the text says why).
(function () {
  "use strict";

  function setState(el, state, text) {
    el.dataset.state = state;
    const p = el.querySelector(".bk-state");
    if (p) {
      p.textContent = text || "";
      p.classList.toggle("failed", state === "failed");
      if (state === "ready") p.remove();
    }
  }

  function embed(el, item) {
    if (typeof Bokeh === "undefined") throw new Error("BokehJS did not load");
    return Promise.resolve(Bokeh.embed.embed_item(item, el.id)).then(function () { setState(el, "ready"); });
  }

  function load(el) {
    if (el.dataset.state) return;
    setState(el, "loading", "Loading the plots…");
    let job;
    if (el.dataset.itemJson) {
      const script = document.getElementById(el.dataset.itemJson);
      job = Promise.resolve(JSON.parse(script.textContent)).then(function (item) { return embed(el, item); });
    } else {
      job = fetch(el.dataset.itemUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) {
          return r.json().then(function (body) {
            if (!r.ok) throw new Error(body && body.error ? body.error : "HTTP " + r.status);
            return body;
          });
        })
        .then(function (item) { return embed(el, item); });
    }
    job.catch(function (err) { setState(el, "failed", "The plots could not be shown: " + err.message); });
  }

  document.querySelectorAll(".bk-item").forEach(function (el) {
    const details = el.closest("details");
    if (!details || details.open) {
      load(el);
    } else {
      details.addEventListener("toggle", function () { if (details.open) load(el); });
    }
  });
})();

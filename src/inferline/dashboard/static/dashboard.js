// inferline dashboard: htmx requests carry the CSRF token; the review queue's keyboard.
(function () {
  "use strict";
  function csrf() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }
  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRF-Token"] = csrf();
  });
  function typing(target) {
    var tag = target && target.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT";
  }
  function move(step) {
    var links = Array.prototype.slice.call(document.querySelectorAll("#queue a[data-case]"));
    if (!links.length) { return; }
    var current = document.querySelector("#case");
    var at = current ? links.findIndex(function (a) { return a.dataset.case === current.dataset.case; }) : -1;
    var next = links[Math.min(links.length - 1, Math.max(0, at + step))];
    window.location.href = next.getAttribute("href");
  }
  function press(id) {
    var button = document.getElementById(id);
    if (button) { button.click(); }
  }
  document.addEventListener("keydown", function (event) {
    if (!document.getElementById("queue") || event.ctrlKey || event.metaKey || event.altKey) { return; }
    if (typing(event.target)) {
      // Enter in the comment must not submit the form (its first button approves)
      if (event.key === "Escape" || (event.key === "Enter" && event.target.id === "comment")) {
        event.preventDefault();
        event.target.blur();
      }
      return;
    }
    var actions = {
      j: function () { move(1); },
      k: function () { move(-1); },
      a: function () { press("approve"); },
      c: function () { var comment = document.getElementById("comment"); if (comment) { comment.focus(); } },
      r: function () { press("reject"); },
      e: function () { var answer = document.getElementById("answer"); if (answer) { answer.focus(); } }
    };
    var action = actions[event.key];
    if (action) { event.preventDefault(); action(); }
  });
}());
// The overview's charts: series from the per-minute rollups, redrawn every 10 s.
(function () {
  "use strict";
  var charts = document.getElementById("charts");
  if (!charts || typeof uPlot === "undefined") { return; }
  var plots = [];
  function draw(data) {
    plots.forEach(function (p) { p.destroy(); });
    plots = [];
    Array.prototype.forEach.call(charts.querySelectorAll(".chart"), function (box) {
      var values = (data[box.dataset.key] || []).map(function (v) { return v === null ? null : v; });
      var opts = {
        title: box.dataset.title, width: Math.max(300, box.clientWidth - 10), height: 200,
        series: [{}, { label: box.dataset.title, stroke: "#1f77b4", width: 2, spanGaps: false }],
        axes: [{}, { size: 60 }], legend: { show: false }
      };
      plots.push(new uPlot(opts, [data.t || [], values], box));
    });
  }
  function load() {
    fetch(charts.dataset.series, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data) { draw(data); } });
  }
  load();
  setInterval(load, 10000);
}());

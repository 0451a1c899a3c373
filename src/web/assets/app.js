// cranium dashboard: progressive enhancement only; every page reads without this script.
"use strict";
(function () {
  const $ = (s, el) => (el || document).querySelector(s);
  const $$ = (s, el) => Array.from((el || document).querySelectorAll(s));
  const tz = document.body.dataset.tz || "UTC";
  const tzq = tz === "UTC" ? "" : "tz=" + encodeURIComponent(tz);
  const iso = (secs) => new Date(secs * 1000).toISOString().replace(".000Z", "Z");

  // The time zone switch submits itself.
  $$("form.tz select").forEach((s) => s.addEventListener("change", () => s.form.submit()));

  // Cell hit-testing on the grid and the strips: one request per click.
  function cellAt(svg, ev) {
    const r = svg.getBoundingClientRect();
    const scale = r.width / svg.width.baseVal.value;
    const cw = +svg.dataset.cw, ch = +(svg.dataset.ch || r.height / scale);
    const x0 = +(svg.dataset.x0 || 0), y0 = +(svg.dataset.y0 || 0);
    const col = Math.floor(((ev.clientX - r.left) / scale - x0) / cw);
    const row = Math.floor(((ev.clientY - r.top) / scale - y0) / ch);
    return { col, row };
  }
  const starts = (svg) => (svg.dataset.starts || "").split(" ").filter(Boolean).map(Number);

  const grid = $("svg.grid");
  const wrap = $(".grid-wrap");
  if (grid && wrap) {
    const rows = $$(".row-label", grid).map((t) => t.textContent);
    grid.addEventListener("click", async (ev) => {
      const { col, row } = cellAt(grid, ev);
      const s = starts(grid)[col];
      if (s === undefined || row < 0 || row >= rows.length) return;
      const url = wrap.dataset.href + "/intervals/" + iso(s) + "?fragment=1&step=" +
        encodeURIComponent(rows[row]) + (tzq ? "&" + tzq : "");
      const panel = $("#panel");
      panel.setAttribute("aria-busy", "true");
      const res = await fetch(url, { headers: { Accept: "text/html" } });
      panel.innerHTML = await res.text();
      panel.removeAttribute("aria-busy");
      panel.dataset.loaded = iso(s) + " " + rows[row];
    });
  }
  $$("svg.strip").forEach((svg) => svg.addEventListener("click", (ev) => {
    const { col } = cellAt(svg, ev);
    const s = starts(svg)[col];
    if (s !== undefined) location.href = svg.dataset.href + "/intervals/" + iso(s) + (tzq ? "?" + tzq : "");
  }));

  // Live state: one EventSource per page.
  const SVGNS = "http://www.w3.org/2000/svg";
  function paintCell(svg, layer, col, row, cls) {
    const cw = +svg.dataset.cw, ch = +(svg.dataset.ch || svg.height.baseVal.value);
    const x = +(svg.dataset.x0 || 0) + col * cw, y = +(svg.dataset.y0 || 0) + row * ch;
    const id = "c" + col + "-" + row;
    let rect = layer.querySelector('[data-cell="' + id + '"]');
    if (!rect) {
      rect = document.createElementNS(SVGNS, "rect");
      rect.setAttribute("data-cell", id);
      rect.setAttribute("x", x); rect.setAttribute("y", y);
      rect.setAttribute("width", cw - 1); rect.setAttribute("height", ch - 1);
      layer.appendChild(rect);
    }
    rect.setAttribute("class", "s-" + cls);
  }
  function onChange(c) {
    if (grid && wrap && wrap.dataset.job === c.job) {
      const col = starts(grid).indexOf(c.start);
      const row = $$(".row-label", grid).findIndex((t) => t.textContent === c.step);
      if (col >= 0 && row >= 0) paintCell(grid, $("g.live", grid), col, row, c.state);
      const node = $('svg.dag .node[data-step="' + CSS.escape(c.step) + '"]');
      if (node && col === 0) node.setAttribute("class", "node s-" + c.state);
    }
    const jobRow = $('tr.job[data-job="' + CSS.escape(c.job) + '"]');
    if (jobRow) {
      const strip = $("svg.strip", jobRow);
      const col = starts(strip).indexOf(c.start);
      if (col >= 0) {
        let layer = $("g.live", strip);
        if (!layer) { layer = document.createElementNS(SVGNS, "g"); layer.setAttribute("class", "live"); strip.appendChild(layer); }
        paintCell(strip, layer, col, 0, c.interval_state);
        if (col === 0) { const st = $(".state", jobRow); st.className = "state s-" + c.interval_state; st.textContent = c.interval_state; }
      }
    }
    const stepRow = $('table.steps tr[data-step="' + CSS.escape(c.step) + '"]');
    if (stepRow && document.body.dataset.page === "interval" && location.pathname.indexOf("/intervals/" + iso(c.start)) >= 0) {
      const st = $(".state", stepRow); st.className = "state s-" + c.state; st.textContent = c.state;
    }
    const log = $("#log");
    if (log && log.dataset.running === "true" && c.state !== "running" &&
        location.pathname.endsWith("/steps/" + encodeURIComponent(c.step) + "/log")) {
      setTimeout(() => { log.dataset.running = "false"; const t = $("#tail-state"); if (t) t.textContent = "The attempt ended: " + c.state + "."; }, 1500);
    }
  }
  if (window.EventSource && ["jobs", "job", "interval", "log"].includes(document.body.dataset.page)) {
    let url = "/events";
    if (wrap) url += "?job=" + encodeURIComponent(wrap.dataset.job);
    const es = new EventSource(url);
    es.addEventListener("step", (ev) => { try { onChange(JSON.parse(ev.data)); } catch (e) { /* ignore */ } });
    es.addEventListener("stale", () => location.reload());
    window.craniumEvents = es;
  }

  // The log: a live tail while the attempt runs, and earlier parts on demand.
  const log = $("#log");
  if (log) {
    const tail = async () => {
      if (log.dataset.running !== "true") return;
      const res = await fetch(log.dataset.raw, { headers: { Range: "bytes=" + log.dataset.offset + "-" } });
      if (res.status === 206) {
        const text = await res.text();
        const total = (res.headers.get("Content-Range") || "").split("/")[1];
        if (text) log.append(text);
        if (total) log.dataset.offset = total;
      }
      setTimeout(tail, 1000);
    };
    setTimeout(tail, 1000);
    const earlier = $("a.earlier");
    if (earlier) earlier.addEventListener("click", async (ev) => {
      ev.preventDefault();
      const before = +earlier.dataset.before;
      const from = Math.max(0, before - 262144);
      const res = await fetch(log.dataset.raw, { headers: { Range: "bytes=" + from + "-" + (before - 1) } });
      let text = await res.text();
      let start = from;
      if (from > 0) { const nl = text.indexOf("\n"); start = from + new TextEncoder().encode(text.slice(0, nl + 1)).length; text = text.slice(nl + 1); }
      log.prepend(text);
      earlier.dataset.before = start;
      if (start === 0) earlier.parentElement.remove();
    });
  }
})();

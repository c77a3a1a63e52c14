// Runs the dashboard's script (src/admin/dashboard.html) in node against a
// running Portico: a stand-in `document` records what the page renders.
//   node dashboard_smoke.js http://127.0.0.1:PORT/api/dashboard
"use strict";
const url = new URL(process.argv[2]);
(async () => {
  const html = await (await fetch(url)).text();
  const script = html.match(/<script>([\s\S]*)<\/script>/)[1];
  const els = {};
  const document = {
    getElementById: id => (els[id] = els[id] || {innerHTML: "", textContent: ""}),
  };
  const location = {pathname: url.pathname};
  const base = url.origin;
  const pageFetch = (path, opts) => fetch(new URL(path, base), opts);
  const timers = [];
  const setInterval = (fn, ms) => timers.push(fn);
  const run = new Function("document", "location", "fetch", "setInterval", script + "\nreturn tick;");
  const tick = run(document, location, pageFetch, setInterval);
  await new Promise(r => setTimeout(r, 300)); // the first tick() the page started
  await tick(); // a second read: rates appear
  console.log(JSON.stringify(Object.fromEntries(
    Object.entries(els).map(([k, v]) => [k, v.innerHTML || v.textContent]))));
})().catch(e => { console.error(e); process.exit(1); });

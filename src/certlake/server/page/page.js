"use strict";
// The live page: one WebSocket on the lite stream (its query string is the filter box's text),
// and a poll of /api/logs and /api/stats. Unfiltered, the table starts with the newest
// certificates from /latest.json and the stream joins right after them (`since=` the newest
// one's cursor). After a dropped connection it reconnects with `since=<the last cursor seen>`,
// so the server replays what the page missed meanwhile.
// Certificate fields are attacker-chosen text, so they only ever reach the DOM through
// textContent and dataset, never as markup.
(() => {
  const ROW_LIMIT = 200; // rows kept in the table: the DOM stays small at any stream rate
  const RATE_WINDOW_S = 10;
  const POLL_MS = 3000;
  const RETRY_FIRST_MS = 1000;
  const RETRY_MAX_MS = 10000;

  const $ = (id) => document.getElementById(id);
  const el = {
    conn: $("conn"), rate: $("rate"), serverRate: $("server-rate"), total: $("total"),
    skipped: $("skipped"), clients: $("clients"), form: $("filter-form"), filter: $("filter"),
    clear: $("clear"), pause: $("pause"), active: $("active-filter"), error: $("filter-error"),
    rows: $("rows"), empty: $("empty"), shown: $("shown"), logs: $("logs"),
    logsStatus: $("logs-status"), logsSummary: $("logs-summary"),
  };
  const number = new Intl.NumberFormat("en-US");
  const base = new URL(".", location.href);
  const token = new URLSearchParams(location.search).get("token");

  // --- the filter box's syntax: `key=value&key=value`, the stream endpoints' query ----------

  // Values are taken literally, as typed: URLSearchParams would turn a regex's "+" into a
  // space, so each pair is split by hand and then percent-encoded whole.
  function parseFilter(text) {
    return text.trim().replace(/^\?/, "").split("&")
      .map((part) => part.trim())
      .filter((part) => part !== "")
      .map((part) => {
        const eq = part.indexOf("=");
        return eq < 0 ? [part, ""] : [part.slice(0, eq).trim(), part.slice(eq + 1).trim()];
      });
  }

  function formatFilter(pairs) {
    return pairs.map(([k, v]) => `${k}=${v}`).join("&");
  }

  function query(pairs) {
    const all = token === null ? pairs : [...pairs, ["token", token]];
    const text = all.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
    return text.length ? `?${text.join("&")}` : "";
  }

  function endpoint(path, pairs = []) {
    const url = new URL(path, base);
    url.search = query(pairs);
    return url;
  }

  function streamUrl(pairs) {
    const url = endpoint(".", pairs);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url;
  }

  // --- the live stream ------------------------------------------------------------------------

  let filterPairs = [...new URLSearchParams(location.search)].filter(([k]) => k !== "token");
  let socket = null;
  let retryMs = RETRY_FIRST_MS;
  let retryTimer = 0;
  let paused = false;
  let pending = []; // newest last; rendered on the next animation frame
  let frameQueued = false;
  let total = 0;
  let skipped = 0;
  let lastCursor = null; // of the newest certificate under the current filter
  let buckets = new Map(); // second → certificates received in it
  let countingSince = performance.now();

  function setState(state, text) {
    el.conn.dataset.state = state;
    el.conn.textContent = text;
  }

  function connect(resume = false) {
    clearTimeout(retryTimer);
    if (socket !== null) {
      socket.onclose = null;
      socket.onmessage = null;
      socket.close();
    }
    const pairs = filterPairs;
    const since = resume && lastCursor !== null ? [["since", String(lastCursor)]] : [];
    const ws = new WebSocket(streamUrl([...pairs.filter(([k]) => k !== "since"), ...since]));
    let opened = false;
    socket = ws;
    setState("connecting", "connecting…");
    ws.onopen = () => {
      opened = true;
      retryMs = RETRY_FIRST_MS;
      setState("live", "live");
      el.error.hidden = true;
    };
    ws.onmessage = (event) => {
      if (typeof event.data === "string") receive(JSON.parse(event.data));
    };
    ws.onclose = () => {
      if (socket !== ws) return;
      socket = null;
      if (opened) retry();
      else explainRefusal(pairs);
    };
  }

  function retry() {
    setState("reconnecting", `reconnecting in ${Math.round(retryMs / 1000)} s`);
    retryTimer = setTimeout(() => connect(true), retryMs);
    retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
  }

  // A browser WebSocket hides why an upgrade was refused. The same query on the SSE endpoint
  // gets the same checks and shows the server's answer; a stream that does start is dropped.
  async function explainRefusal(pairs) {
    const abort = new AbortController();
    let status = 0;
    let reason = "";
    try {
      const sse = endpoint("sse", [["stream", "lite"], ...pairs]);
      const response = await fetch(sse, { signal: abort.signal, cache: "no-store" });
      status = response.status;
      if (!response.ok) reason = (await response.json()).error || "";
    } catch {
      // unreachable server or a body that is not JSON: nothing more to say than a retry
    } finally {
      abort.abort();
    }
    if (pairs !== filterPairs) return; // the filter changed meanwhile
    // A refused filter or token stays refused: retrying would only repeat the refusal.
    if (status === 400 || status === 401 || status === 403) {
      setState("rejected", `refused (HTTP ${status})`);
      el.active.textContent = "Showing nothing: the server refused this stream.";
      showError(reason || `the server refused this stream (HTTP ${status})`);
      return;
    }
    if (reason) showError(reason);
    retry();
  }

  function showError(text) {
    el.error.textContent = text;
    el.error.hidden = false;
  }

  function receive(msg) {
    if (msg.message_type === "certificate_update") {
      total += 1;
      if (Number.isSafeInteger(msg.data?.cursor)) lastCursor = msg.data.cursor;
      const second = Math.floor(performance.now() / 1000);
      buckets.set(second, (buckets.get(second) || 0) + 1);
      pending.push({ msg, fresh: true });
      if (pending.length > ROW_LIMIT) pending = pending.slice(-ROW_LIMIT);
      queueRender();
    } else if (msg.message_type === "heartbeat" && Number.isFinite(msg.skipped)) {
      skipped += msg.skipped;
    } else if (msg.message_type === "resume_gap" && Number.isFinite(msg.lost)) {
      skipped += msg.lost; // gone from the server's replay ring before the page came back
    }
  }

  // The newest certificates the server has seen, so the table does not wait for the next one
  // (a quiet stream, a slow network). They carry their stream cursors: connecting with `since=`
  // the newest continues right after them, nothing missed and nothing shown twice. Not with a
  // filter: the server filters streams, not /latest.json. They are history, not counted as
  // received.
  async function prefill(pairs) {
    let messages = [];
    try {
      messages = (await getJson("latest.json")).messages;
    } catch {
      return; // switched off or unreachable: the stream alone fills the table
    }
    if (pairs !== filterPairs) return; // the filter changed meanwhile
    const certs = messages.filter(
      (m) => m.message_type === "certificate_update" && Number.isSafeInteger(m.data?.cursor),
    );
    if (certs.length === 0) return;
    lastCursor = certs[0].data.cursor; // newest first
    pending = [...certs.reverse().map((msg) => ({ msg, fresh: false })), ...pending];
    queueRender();
  }

  function queueRender() {
    if (!paused && !frameQueued) {
      frameQueued = true;
      requestAnimationFrame(render);
    }
  }

  function render() {
    frameQueued = false;
    if (paused || pending.length === 0) return;
    const fragment = document.createDocumentFragment();
    for (let i = pending.length - 1; i >= 0; i -= 1) {
      fragment.append(certRow(pending[i].msg, pending[i].fresh));
    }
    pending = [];
    el.rows.prepend(fragment);
    while (el.rows.childElementCount > ROW_LIMIT) el.rows.lastElementChild.remove();
    showRowCount();
  }

  function showRowCount() {
    const n = el.rows.childElementCount;
    el.shown.textContent = `${number.format(n)} row${n === 1 ? "" : "s"}`;
    el.empty.hidden = n > 0;
  }

  function cell(className, text, title) {
    const td = document.createElement("td");
    td.className = className;
    td.textContent = text;
    if (title) td.title = title;
    return td;
  }

  function issuerName(issuer) {
    if (!issuer) return "";
    const parts = [issuer.O, issuer.CN].filter(Boolean);
    return parts.length ? parts.join(" · ") : issuer.aggregated || "";
  }

  function clock(seconds) {
    const d = Number.isFinite(seconds) ? new Date(seconds * 1000) : new Date();
    return d.toTimeString().slice(0, 8);
  }

  function certRow(msg, fresh) {
    const data = msg.data || {};
    const leaf = data.leaf_cert || {};
    const source = data.source || {};
    const domains = Array.isArray(leaf.all_domains) ? leaf.all_domains : [];
    const issuer = issuerName(leaf.issuer);
    const precert = data.update_type === "PrecertLogEntry";

    const tr = document.createElement("tr");
    tr.className = fresh ? "cert fresh" : "cert";
    tr.dataset.cursor = Number.isSafeInteger(data.cursor) ? String(data.cursor) : "";
    tr.dataset.log = source.url || "";
    tr.dataset.logName = source.name || "";
    tr.dataset.issuer = issuer;
    tr.dataset.updateType = data.update_type || "";
    tr.dataset.domains = domains.join(" ");

    tr.append(cell("seen", clock(data.seen)));
    const names = cell("domains", domains[0] || "(no names)", domains.join("\n"));
    if (domains.length > 1) {
      const more = document.createElement("span");
      more.className = "more";
      more.textContent = `+${domains.length - 1}`;
      names.append(more);
    }
    tr.append(names);
    tr.append(cell("issuer", issuer, leaf.issuer && leaf.issuer.aggregated));
    tr.append(cell("log", source.name || source.url || "", source.url));
    const type = cell("type", "");
    const badge = document.createElement("span");
    badge.className = precert ? "badge precert" : "badge";
    badge.textContent = precert ? "precert" : "cert";
    type.append(badge);
    tr.append(type);
    return tr;
  }

  function tick() {
    const now = performance.now();
    const second = Math.floor(now / 1000);
    let count = 0;
    for (const [s, n] of buckets) {
      if (s <= second - RATE_WINDOW_S) buckets.delete(s);
      else count += n;
    }
    const span = Math.min(RATE_WINDOW_S, Math.max(1, (now - countingSince) / 1000));
    const rate = count / span;
    el.rate.dataset.value = String(rate);
    el.rate.textContent = rate.toFixed(1);
    el.total.dataset.value = String(total);
    el.total.textContent = number.format(total);
    el.skipped.dataset.value = String(skipped);
    el.skipped.textContent = number.format(skipped);
  }

  // --- the filter box -------------------------------------------------------------------------

  function applyFilter(pairs) {
    filterPairs = pairs;
    el.filter.value = formatFilter(pairs);
    el.active.textContent = pairs.length
      ? `Showing certificates matching ${formatFilter(pairs)}`
      : "Showing every certificate.";
    el.error.hidden = true;
    // The address bar keeps the filter, so the view can be bookmarked or shared.
    history.replaceState(null, "", endpoint(location.pathname, pairs));
    el.rows.replaceChildren();
    pending = [];
    buckets = new Map();
    countingSince = performance.now();
    lastCursor = null;
    showRowCount();
    retryMs = RETRY_FIRST_MS;
    if (pairs.length) {
      connect();
    } else {
      prefill(pairs).finally(() => {
        if (pairs === filterPairs) connect(true);
      });
    }
  }

  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    applyFilter(parseFilter(el.filter.value));
  });
  el.clear.addEventListener("click", () => applyFilter([]));
  el.pause.addEventListener("click", () => {
    paused = !paused;
    el.pause.setAttribute("aria-pressed", String(paused));
    el.pause.textContent = paused ? "Resume" : "Pause";
    if (!paused) render();
  });

  // --- logs and server figures ----------------------------------------------------------------

  function ago(unixSeconds) {
    if (!Number.isFinite(unixSeconds)) return "never";
    const s = Math.max(0, Date.now() / 1000 - unixSeconds);
    if (s < 90) return `${Math.round(s)} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    return `${Math.round(s / 3600)} h ago`;
  }

  function fact(label, value) {
    const span = document.createElement("span");
    const b = document.createElement("b");
    b.textContent = value;
    span.append(label ? `${label} ` : "", b);
    return span;
  }

  // "ok": every entry up to the newest head checked so far reproduces the log's signed root.
  function verifiedText(log) {
    if (log.verification === "off") return "off";
    const upTo = log.verified_index === null ? "–" : number.format(log.verified_index);
    return log.verification === "ok" ? upTo : `${upTo} (${log.verification})`;
  }

  function logItem(log) {
    const li = document.createElement("li");
    li.className = "log";
    li.dataset.url = log.url;
    li.dataset.health = log.health;
    li.dataset.lag = log.lag === null ? "" : String(log.lag);
    li.dataset.verification = log.verification;
    li.title = log.url;
    const name = document.createElement("div");
    name.className = "name";
    const dot = document.createElement("i");
    dot.className = "dot";
    const label = document.createElement("span");
    label.textContent = log.name || log.url;
    name.append(dot, label);
    const facts = document.createElement("div");
    facts.className = "facts";
    facts.append(
      fact("", log.health),
      fact("lag", log.lag === null ? "–" : number.format(log.lag)),
      fact("", log.lag_seconds ? `${Math.round(log.lag_seconds)} s` : "0 s"),
      fact("seen", number.format(log.entries)),
      fact("verified", verifiedText(log)),
      fact("ok", ago(log.last_success)),
    );
    li.append(name, facts);
    if (log.behind_reason) {
      const why = document.createElement("div");
      why.className = "err";
      why.textContent = `cannot keep up: ${log.behind_reason}`;
      li.append(why);
    }
    if (log.verification_error) {
      const lie = document.createElement("div");
      lie.className = "err";
      lie.textContent = log.verification_error;
      li.append(lie);
    }
    if (log.last_error && log.health !== "healthy") {
      const err = document.createElement("div");
      err.className = "err";
      err.textContent = log.last_error;
      li.append(err);
    }
    return li;
  }

  async function getJson(path) {
    const response = await fetch(endpoint(path), { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return response.json();
  }

  async function poll() {
    try {
      await refresh();
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  async function refresh() {
    const [logs, stats] = await Promise.allSettled([getJson("api/logs"), getJson("api/stats")]);
    if (logs.status === "fulfilled") {
      const list = logs.value.logs;
      el.logs.replaceChildren(...list.map(logItem));
      const healthy = list.filter((l) => l.health === "healthy").length;
      const behind = list.filter((l) => l.health === "behind").length;
      const lying = list.filter((l) => l.verification === "inconsistent").length;
      el.logsSummary.textContent =
        `${healthy} of ${list.length} healthy` +
        (behind ? `, ${behind} behind` : "") +
        (lying ? `, ${lying} inconsistent` : "");
      const listError = logs.value.log_list && logs.value.log_list.error;
      el.logsStatus.textContent = listError ? `Log list: ${listError}` : "";
      el.logsStatus.hidden = !listError;
    } else {
      el.logsStatus.hidden = false;
      el.logsStatus.textContent = `Log status unavailable (${logs.reason.message}).`;
    }
    if (stats.status === "fulfilled") {
      el.serverRate.textContent = stats.value.messages_per_second.toFixed(1);
      el.clients.textContent = number.format(stats.value.clients.total);
    }
  }

  applyFilter(filterPairs);
  setInterval(tick, 1000);
  poll();
})();

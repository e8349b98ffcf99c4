// stsgate admin page. Plain script, no build step, no dependency.
// Every value from the gate is written with textContent (never as HTML):
// user names and user agents come from attackers.
"use strict";

(function () {
  const TOKEN_KEY = "stsgate.admin.token";
  const ORIGIN = "admin-ui"; // X-Stsgate-Origin: how the gate logs our actions
  const REFRESH_MS = 3000;
  const POINTS = 60; // chart history (3 minutes at 3 s)
  const COLORS = ["#1b6ac9", "#c62828", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#5d4037", "#ad1457"];

  let token = null;
  let access = null;
  let timer = null;
  let previous = null; // last stats sample
  const history = []; // [{ t, rates: Map(action -> per second) }]

  const $ = (id) => document.getElementById(id);

  // An element with text children only (strings become text nodes).
  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c == null ? "" : c);
    return e;
  }

  function cell(value) {
    return el("td", { text: value == null ? "" : String(value) });
  }

  function fill(tbodyParent, rows, emptyNote) {
    const tbody = tbodyParent.querySelector("tbody");
    tbody.replaceChildren(...rows);
    if (emptyNote) emptyNote.hidden = rows.length > 0;
  }

  function status(message, kind) {
    const s = $("status");
    s.textContent = message;
    s.className = kind || "";
  }

  class Refused extends Error {}

  // One API call; 401 signs out with a clear message.
  async function api(method, path, body) {
    const headers = { "Authorization": "Bearer " + token, "X-Stsgate-Origin": ORIGIN };
    const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch("/api/v1/" + path, init);
    const text = await r.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (e) { data = null; }
    }
    if (r.status === 401) {
      signOut("The gate refused this token (401). Check the first line of admin.token_file.");
      throw new Refused("401");
    }
    return { status: r.status, data };
  }

  function errorText(res) {
    if (res.status === 403) return "This token may only read (admin.read_token_file): actions are off.";
    const why = res.data && res.data.error ? res.data.error : "no detail";
    return "Failed (" + res.status + "): " + why;
  }

  // ---- sign in / out ------------------------------------------------------

  async function signIn(candidate, quiet) {
    token = candidate;
    const err = $("signin-error");
    err.textContent = "";
    let res;
    try {
      const r = await fetch("/api/v1/whoami", {
        headers: { "Authorization": "Bearer " + token },
        cache: "no-store", credentials: "omit",
      });
      res = { status: r.status, data: r.ok ? await r.json() : null };
    } catch (e) {
      err.textContent = "The gate's admin listener did not answer.";
      token = null;
      return;
    }
    if (res.status === 401) {
      token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      if (!quiet) err.textContent = "Wrong token: the gate refused it (401).";
      return;
    }
    if (res.status === 404) {
      token = null;
      err.textContent = "The admin API is off: the gate has no admin.token_file.";
      return;
    }
    if (res.status !== 200 || !res.data) {
      token = null;
      err.textContent = "Unexpected answer from the gate (" + res.status + ").";
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    access = res.data.access;
    document.body.classList.toggle("read-only", access !== "full");
    for (const b of document.querySelectorAll(".act button, button.act, .act input, .act select")) {
      b.disabled = access !== "full";
    }
    $("who").textContent = res.data.instance + " · stsgate " + res.data.version +
      (access === "full" ? "" : " · read-only token");
    $("token").value = "";
    $("signin").hidden = true;
    $("main").hidden = false;
    $("signout").hidden = false;
    previous = null;
    history.length = 0;
    await refresh();
    await loadRules();
    timer = setInterval(refresh, REFRESH_MS);
  }

  function signOut(message) {
    token = null;
    access = null;
    sessionStorage.removeItem(TOKEN_KEY);
    if (timer) clearInterval(timer);
    timer = null;
    $("main").hidden = true;
    $("signout").hidden = true;
    $("signin").hidden = false;
    $("who").textContent = "";
    $("signin-error").textContent = message || "";
  }

  // ---- confirm step -------------------------------------------------------

  function confirmThen(question, action) {
    $("confirm-text").textContent = question;
    $("confirm").hidden = false;
    $("confirm-yes").onclick = async () => {
      $("confirm").hidden = true;
      try { await action(); } catch (e) { if (!(e instanceof Refused)) status(String(e), "error"); }
    };
    $("confirm-no").onclick = () => {
      $("confirm").hidden = true;
      status("Cancelled.", "");
    };
    $("confirm-yes").focus();
  }

  // ---- views --------------------------------------------------------------

  async function refresh() {
    if (!token) return;
    try {
      const [stats, events, blocks, lockouts] = await Promise.all([
        api("GET", "stats"), api("GET", "events?limit=100"), api("GET", "blocks"), api("GET", "lockouts"),
      ]);
      if (stats.status === 200) showStats(stats.data);
      if (events.status === 200) showEvents(events.data);
      if (blocks.status === 200) showBlocks(blocks.data);
      if (lockouts.status === 200) showLockouts(lockouts.data);
      $("refreshed").textContent = "updated " + new Date().toLocaleTimeString();
    } catch (e) {
      if (!(e instanceof Refused)) $("refreshed").textContent = "cannot reach the gate";
    }
  }

  function showStats(s) {
    const counts = new Map();
    for (const d of s.decisions) counts.set(d.stage + "\u0000" + d.action, d);
    const rows = [];
    const byAction = new Map();
    const dt = previous ? (s.at_ms - previous.at_ms) / 1000 : 0;
    for (const d of s.decisions) {
      const key = d.stage + "\u0000" + d.action;
      const before = previous && previous.counts.get(key);
      const rate = dt > 0 ? Math.max(0, d.count - (before ? before.count : 0)) / dt : 0;
      byAction.set(d.action, (byAction.get(d.action) || 0) + rate);
      if (d.count > 0) rows.push({ d, rate });
    }
    rows.sort((a, b) => b.rate - a.rate || b.d.count - a.d.count);
    fill($("rates"), rows.map(({ d, rate }) =>
      el("tr", {}, cell(d.stage), cell(d.action), cell(dt > 0 ? rate.toFixed(2) : "…"), cell(d.count))));
    if (dt > 0) {
      history.push({ t: s.at_ms, rates: byAction });
      while (history.length > POINTS) history.shift();
    }
    previous = { at_ms: s.at_ms, counts };
    const si = s.signins || {};
    const g = s.gauges || {};
    $("signins").textContent = "Sign-ins the STS answered: " + (si.success || 0) + " success, " +
      (si.failure || 0) + " failure. Live blocks: " + ((g.blocks_active_ip || 0) + (g.blocks_active_user || 0)) +
      "; users locked: " + (g.users_locked || 0) + ".";
    drawChart();
  }

  function drawChart() {
    const canvas = $("chart");
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height, left = 48, bottom = 20, top = 10;
    ctx.clearRect(0, 0, w, h);
    const actions = [];
    for (const p of history) for (const a of p.rates.keys()) if (!actions.includes(a)) actions.push(a);
    actions.sort((a, b) => (a === "forward" ? -1 : b === "forward" ? 1 : a.localeCompare(b)));
    let max = 1;
    for (const p of history) for (const v of p.rates.values()) max = Math.max(max, v);
    ctx.strokeStyle = "#ddd";
    ctx.fillStyle = "#555";
    ctx.font = "11px system-ui, sans-serif";
    for (let i = 0; i <= 4; i++) {
      const y = top + (h - top - bottom) * i / 4;
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(w, y); ctx.stroke();
      ctx.fillText((max * (4 - i) / 4).toFixed(max < 4 ? 1 : 0) + "/s", 2, y + 4);
    }
    ctx.fillText("last " + Math.round(POINTS * REFRESH_MS / 60000) + " min", left, h - 4);
    const x = (i) => left + (w - left) * (i + POINTS - history.length) / (POINTS - 1);
    const y = (v) => top + (h - top - bottom) * (1 - v / max);
    const legend = [];
    actions.forEach((a, n) => {
      const color = COLORS[n % COLORS.length];
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      history.forEach((p, i) => {
        const v = p.rates.get(a) || 0;
        if (i === 0) ctx.moveTo(x(i), y(v)); else ctx.lineTo(x(i), y(v));
      });
      ctx.stroke();
      const swatch = el("span", { class: "swatch", "data-color": String(n % COLORS.length) });
      legend.push(el("span", { class: "key" }, swatch, a));
    });
    ctx.lineWidth = 1;
    $("legend").replaceChildren(...legend);
  }

  function showEvents(events) {
    fill($("events"), events.map((e) =>
      el("tr", { class: e.action === "forward" ? "" : "refused" },
        cell(e.ts), cell(e.client_ip), cell(e.user), cell(e.user_agent), cell(e.application),
        cell(e.stage), cell([e.list, e.entry].filter(Boolean).join(": ")), cell(e.action),
        cell(e.status), cell(e.signin))), $("events-empty"));
  }

  function duration(seconds) {
    const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600),
      m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + s + "s";
    return s + "s";
  }

  function actionButton(label, question, action) {
    const b = el("button", { type: "button", class: "act", text: label });
    b.disabled = access !== "full";
    b.addEventListener("click", () => confirmThen(question, action));
    return b;
  }

  function showBlocks(blocks) {
    fill($("blocks"), blocks.map((b) => {
      const kind = b.ip !== undefined ? "ip" : "user";
      const target = b.ip !== undefined ? b.ip : b.user;
      const remove = actionButton("Remove", "Remove block " + b.id + " on " + kind + " " + target + "?", async () => {
        const res = await api("DELETE", "blocks/" + encodeURIComponent(b.id));
        if (res.status === 204) status("Block " + b.id + " on " + kind + " " + target + " removed.", "ok");
        else status(errorText(res), "error");
        await refresh();
      });
      const row = el("tr", { "data-id": b.id },
        el("td", {}, el("span", { class: "kind", text: kind }), " ", target),
        cell(b.action), cell(b.reason), cell(b.origin),
        el("td", { title: "until " + b.expires_at, text: duration(b.ttl_left_seconds) }),
        el("td", { class: "act" }, remove));
      return row;
    }), $("blocks-empty"));
  }

  function showLockouts(locked) {
    fill($("lockouts"), locked.map((l) => {
      const unlock = actionButton("Unlock", "Unlock " + l.user + " and clear the counts?", async () => {
        const res = await api("DELETE", "lockouts/" + encodeURIComponent(l.user));
        if (res.status === 204) status(l.user + " unlocked.", "ok");
        else status(errorText(res), "error");
        await refresh();
      });
      return el("tr", { "data-user": l.user },
        cell(l.user), cell(l.unfamiliar_failures), cell(l.familiar_failures),
        cell(l.locked_until), el("td", { class: "act" }, unlock));
    }), $("lockouts-empty"));
  }

  async function loadRules() {
    const res = await api("GET", "rules");
    if (res.status !== 200) return;
    const r = res.data;
    const rows = [
      ["file", r.rules], ["SHA-256", r.sha256], ["loaded at", r.loaded_at + " (" + r.trigger + ")"],
      ["file on disk", r.file_ok ? "compiles" : "does NOT compile: the rules in force are older"],
    ];
    $("rules").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
    $("rules-summary").replaceChildren(...r.summary.map((line) => el("li", { text: line })));
  }

  function addBlock(ev) {
    ev.preventDefault();
    const kind = $("block-kind").value;
    const target = $("block-target").value.trim();
    const ttl = $("block-ttl").value.trim();
    const action = $("block-action").value;
    const reason = $("block-reason").value.trim();
    if (!target || !ttl) {
      status("A block needs a target and a TTL.", "error");
      return;
    }
    const body = { [kind]: target, ttl, action };
    if (reason) body.reason = reason;
    confirmThen("Block " + kind + " " + target + " for " + ttl + " (" + action + ")?", async () => {
      const res = await api("POST", "blocks", body);
      if (res.status === 201 || res.status === 200) {
        status("Block " + res.data.id + " on " + kind + " " + target + " " + (res.data.result || "added") + ".", "ok");
        $("block-target").value = "";
        $("block-reason").value = "";
      } else {
        status(errorText(res), "error");
      }
      await refresh();
    });
  }

  function reload() {
    confirmThen("Reload the rule file now?", async () => {
      const res = await api("POST", "reload");
      const out = $("reload-result");
      if (res.status === 200) {
        out.textContent = "Reloaded:\n" + res.data.summary.join("\n");
        out.className = "ok";
        status("Rules reloaded.", "ok");
      } else if (res.status === 422) {
        out.textContent = "Refused, the old rules stay:\n" + res.data.errors.join("\n");
        out.className = "error";
        status("The rule file does not compile; the old rules stay.", "error");
      } else {
        out.textContent = errorText(res);
        out.className = "error";
      }
      await loadRules();
    });
  }

  async function explain(ev) {
    ev.preventDefault();
    const q = { ip: $("explain-ip").value.trim() };
    const opt = { peer: "explain-peer", user: "explain-user", path: "explain-path" };
    for (const [k, id] of Object.entries(opt)) {
      const v = $(id).value.trim();
      if (v) q[k] = v;
    }
    q.headers = $("explain-headers").value.split("\n").map((l) => l.trim()).filter(Boolean);
    const out = $("explain-decision");
    const table = $("explain-steps");
    if (!q.ip) {
      out.textContent = "Give the client IP.";
      out.className = "error";
      return;
    }
    try {
      const res = await api("POST", "explain", q);
      if (res.status !== 200) {
        out.textContent = errorText(res);
        out.className = "error";
        table.hidden = true;
        return;
      }
      const r = res.data;
      const entry = (e) => e ? e.text + (e.file ? " (" + e.file + ":" + e.line + ")" : "") : "";
      out.textContent = "Decision: stage " + r.stage + ", action " + r.action +
        (r.entry ? ", entry " + entry(r.entry) : "") + " → " + r.response;
      out.className = r.action === "forward" ? "ok" : "error";
      fill(table, r.steps.map((s) => el("tr", { class: s.outcome },
        cell(s.stage), cell(s.outcome), cell(s.list), cell(entry(s.entry)), cell(s.action), cell(s.note))));
      table.hidden = false;
    } catch (e) {
      if (!(e instanceof Refused)) {
        out.textContent = String(e);
        out.className = "error";
      }
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const t = $("token").value.trim();
      if (!t) {
        $("signin-error").textContent = "Paste the token first.";
        return;
      }
      signIn(t, false);
    });
    $("signout").addEventListener("click", () => signOut("Signed out."));
    $("block-form").addEventListener("submit", addBlock);
    $("reload").addEventListener("click", reload);
    $("explain-form").addEventListener("submit", explain);
    const kept = sessionStorage.getItem(TOKEN_KEY);
    if (kept) signIn(kept, true);
    else $("token").focus();
  });
})();

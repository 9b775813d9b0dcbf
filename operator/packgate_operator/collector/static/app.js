// The packgate Events page: read-only, newest first, filters, a detail view, live updates.
// Every request carries the signed-in Kubernetes token; the collector decides what it may see.
// Data is only ever inserted as text (textContent), never as HTML.
"use strict";

const FILTERS = ["namespace", "pack", "pod", "policy", "decision", "status", "since", "until"];
const state = { token: sessionStorage.getItem("packgate-token") || "", cursor: 0, generation: 0 };
const $ = (id) => document.getElementById(id);

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: "Bearer " + state.token } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = (body.error && body.error.message) || response.statusText;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

function filterParams() {
  const form = new FormData($("filters"));
  const params = new URLSearchParams();
  for (const name of FILTERS) {
    const value = (form.get(name) || "").trim();
    if (value) params.set(name, value);
  }
  return params;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "-" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
}

function recordRow(r, fresh) {
  const tr = document.createElement("tr");
  tr.className = r.decision + (fresh ? " fresh" : "");
  tr.dataset.uid = r.pod_uid;
  tr.dataset.seq = r.seq;
  cell(tr, r.time); cell(tr, r.namespace); cell(tr, r.pod); cell(tr, r.pack);
  cell(tr, r.status); cell(tr, r.decision, "decision");
  cell(tr, r.policies.join(", ") || "-"); cell(tr, r.endpoint);
  cell(tr, r.latency_ms == null ? null : Number(r.latency_ms).toFixed(1));
  tr.addEventListener("click", () => showDetail(r.pod_uid, r.seq));
  return tr;
}

async function load() {
  const generation = ++state.generation;
  const params = filterParams();
  location.hash = params.toString();
  try {
    const body = await api("/api/v1/records?" + params.toString());
    if (generation !== state.generation) return;
    const tbody = $("records").querySelector("tbody");
    tbody.replaceChildren(...body.records.map((r) => recordRow(r, false)));
    $("empty").hidden = body.records.length > 0;
    state.cursor = body.cursor;
    showError("");
    follow(generation);
  } catch (error) {
    showError(error.message);
  }
}

// Live updates: a long poll for records ingested after the cursor, with the same filters.
async function follow(generation) {
  while (generation === state.generation) {
    const params = filterParams();
    params.set("after", String(state.cursor));
    params.set("wait", "20");
    try {
      const body = await api("/api/v1/records?" + params.toString());
      if (generation !== state.generation) return;
      $("live").classList.remove("off");
      const tbody = $("records").querySelector("tbody");
      for (const r of body.records.slice().reverse()) tbody.prepend(recordRow(r, true));
      if (body.records.length) $("empty").hidden = true;
      state.cursor = Math.max(state.cursor, body.cursor);
    } catch (error) {
      $("live").classList.add("off");
      showError(error.message);
      await new Promise((resolve) => setTimeout(resolve, 3000));
    }
  }
}

function fields(dl, pairs) {
  dl.replaceChildren();
  for (const [name, value] of pairs) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value == null ? "-" : String(value);
    dl.append(dt, dd);
  }
}

async function showDetail(uid, seq) {
  try {
    const d = await api(`/api/v1/records/${encodeURIComponent(uid)}/${encodeURIComponent(seq)}`);
    const r = d.record;
    const usage = r.usage || {};
    fields($("detail-fields"), [
      ["Time", r.time], ["Namespace", r.namespace], ["Pod", r.pod], ["Pack", r.pack],
      ["Pack version", r.pack_version], ["Request id", r.request_id], ["Endpoint", r.endpoint],
      ["Model", r.model], ["Target", r.target], ["Status", r.status], ["Decision", d.decision],
      ["Streamed", r.streamed], ["Latency ms", r.latency_ms],
      ["Prompt tokens", usage.prompt_tokens], ["Completion tokens", usage.completion_tokens],
      ["Usage estimated", usage.estimated], ["Cost USD", r.cost_usd],
      ["Tags", Object.entries(r.tags || {}).map(([k, v]) => `${k}=${v}`).join(", ")],
    ]);
    const tbody = $("decisions").querySelector("tbody");
    tbody.replaceChildren(...(r.decisions || []).map((x) => {
      const tr = document.createElement("tr");
      cell(tr, x.policy); cell(tr, x.decision); cell(tr, x.reason);
      return tr;
    }));
    fields($("detail-seal"), [
      ["Pod uid", d.pod_uid], ["Seq", d.seq], ["Sealed", d.sealed.ts],
      ["Hash", d.sealed.hash], ["MAC verified", d.sealed.mac_checked],
    ]);
    $("detail").hidden = false;
  } catch (error) {
    showError(error.message);
  }
}

async function signIn() {
  try {
    const who = await api("/api/v1/whoami");
    sessionStorage.setItem("packgate-token", state.token);
    $("who").textContent = who.user;
    $("namespaces").replaceChildren(...who.namespaces.map((ns) => {
      const option = document.createElement("option");
      option.value = ns;
      return option;
    }));
    $("signin").hidden = true;
    $("main").hidden = false;
    if (!who.namespaces.length) {
      showError(`${who.user} may not get policypacks in any namespace with audit records`);
      return;
    }
    await load();
  } catch (error) {
    sessionStorage.removeItem("packgate-token");
    showError(error.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const initial = new URLSearchParams(location.hash.slice(1));
  for (const name of FILTERS) {
    const input = $("filters").elements.namedItem(name);
    if (input && initial.get(name)) input.value = initial.get(name);
  }
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token").value.trim();
    signIn();
  });
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  $("close").addEventListener("click", () => { $("detail").hidden = true; });
  if (state.token) signIn();
});

// Shared by the three pages: calling the API, escaping, the voter's identity, notices.

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

// JSON from the API, or an ApiError carrying the server's {error, detail}.
export async function api(path, options = {}) {
  const init = { ...options, headers: { Accept: "application/json", ...(options.headers || {}) } };
  if (options.json !== undefined) {
    init.body = JSON.stringify(options.json);
    init.headers["Content-Type"] = "application/json";
    delete init.json;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "network", "the server cannot be reached; is it running?");
  }
  if (!response.ok) throw await errorOf(response);
  if (response.status === 204) return null;
  return response.json();
}

export async function errorOf(response) {
  if (response.status === 401) {  // the key was revoked or the sign-in expired: sign in again, then come back
    location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
  }
  let body = {};
  try { body = await response.json(); } catch { /* not JSON */ }
  const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || body);
  return new ApiError(response.status, body.error, detail || response.statusText);
}

export function escapeHtml(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// Build an element: h("button", {class: "x", onclick: f}, "text", child…).
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "html") el.innerHTML = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// Replace an element's children, leaving out null/false/undefined ones.
export function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

export function pagesLabel(pages) {
  if (!pages || !pages.length) return "";
  return pages.length === 1 ? `p. ${pages[0]}` : `pp. ${pages[0]}–${pages[pages.length - 1]}`;
}

export function formatDate(value) {
  if (!value) return "";
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? String(value) : d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function percent(value, digits = 1) {
  return value === null || value === undefined ? "–" : `${(value * 100).toFixed(digits)} %`;
}

// Where a citation's original document opens: PDFs at the page, other files at the passage.
export function documentLink(citation) {
  if (!citation.doc_id) return null;
  const base = `/v1/documents/${encodeURIComponent(citation.doc_id)}`;
  if (/\.pdf$/i.test(citation.source || "") && citation.pages && citation.pages.length) return `${base}/file#page=${citation.pages[0]}`;
  if (/\.pdf$/i.test(citation.source || "")) return `${base}/file`;
  return `${base}/view#p-${encodeURIComponent(citation.point_id)}`;
}

// The voter: an id and team kept in this browser (the header's fields), sent with each vote.
const USER_KEY = "finrag.user";
const SEGMENT_KEY = "finrag.segment";
export function voter() {
  let user = localStorage.getItem(USER_KEY);
  if (!user) {
    user = `web-${Math.random().toString(36).slice(2, 10)}`;
    localStorage.setItem(USER_KEY, user);
  }
  return { user_id: user, segment: localStorage.getItem(SEGMENT_KEY) || null };
}

export function initVoterFields() {
  const user = document.getElementById("user-id");
  const segment = document.getElementById("segment");
  if (!user || !segment) return;
  const v = voter();
  user.value = v.user_id;
  segment.value = v.segment || "";
  user.addEventListener("change", () => {
    const value = user.value.trim();
    if (/^[A-Za-z0-9._@:-]{1,200}$/.test(value)) localStorage.setItem(USER_KEY, value);
    else { user.value = voter().user_id; toast("A user id may contain only letters, digits and . _ @ - :", true); }
  });
  segment.addEventListener("change", () => {
    if (segment.value) localStorage.setItem(SEGMENT_KEY, segment.value);
    else localStorage.removeItem(SEGMENT_KEY);
  });
}

let toastTimer;
export function toast(message, bad = false) {
  let el = document.querySelector(".toast");
  if (!el) {
    el = h("div", { class: "toast", role: "status", "aria-live": "polite" });
    document.body.append(el);
  }
  el.textContent = message;
  el.classList.toggle("bad", bad);
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 5000);
}

export async function loadCollections(select, preferred) {
  const collections = await api("/v1/collections");
  select.replaceChildren(...collections.map((c) => h("option", { value: c.name }, `${c.name} (${plural(c.documents, "document")})`)));
  const stored = preferred || localStorage.getItem("finrag.collection");
  const fallback = collections.find((c) => c.default);
  if (stored && collections.some((c) => c.name === stored)) select.value = stored;
  else if (fallback) select.value = fallback.name;
  return collections;
}

// The chat page: ask (streamed), read answers with clickable citations, rate them, browse conversations.
import { api, fill, documentLink, errorOf, escapeHtml, formatDate, h, initVoterFields, loadCollections, pagesLabel, toast, voter } from "/static/common.js";

const $ = (id) => document.getElementById(id);
const state = { conversationId: null, collection: null, controller: null, openCite: null };
// A thumb (up); rotated for down. Drawn, not an emoji: not every machine has an emoji font.
const THUMB = '<svg class="icon" viewBox="0 0 24 24" aria-hidden="true" focusable="false"><path fill="currentColor" d="M2 21h3V9H2v12zm20-11a2 2 0 0 0-2-2h-6.3l1-4.6v-.3c0-.4-.2-.8-.4-1.1L13.2 1 6.6 7.6C6.2 8 6 8.5 6 9v10a2 2 0 0 0 2 2h9c.8 0 1.5-.5 1.8-1.2l3-7.1c.1-.2.2-.5.2-.7v-2z"/></svg>';
const REASONS = [
  ["", "Why? (optional)"], ["wrong_answer", "The answer is wrong"], ["wrong_evidence", "Wrong or irrelevant sources"],
  ["incomplete", "Incomplete"], ["outdated", "Outdated"], ["other", "Other"],
];

// ---- scope: collection and filters -------------------------------------------------------------------------

async function loadFacets() {
  const selects = [...document.querySelectorAll("[data-filter]")];
  let facets = {};
  try { facets = await api(`/v1/collections/${encodeURIComponent(state.collection)}/facets`); } catch (err) { toast(`Filters unavailable: ${err.message}`, true); }
  for (const select of selects) {
    const values = facets[select.dataset.filter] || [];
    select.replaceChildren(h("option", { value: "" }, "Any"), ...values.map((v) => h("option", { value: String(v) }, String(v))));
    select.disabled = values.length === 0;
    select.closest(".field").title = values.length ? "" : "No document in this collection has this field";
  }
}

function currentFilters() {
  const filters = {};
  for (const select of document.querySelectorAll("[data-filter]")) if (select.value) filters[select.dataset.filter] = select.value;
  return Object.keys(filters).length ? filters : null;
}

// ---- rendering an answer -----------------------------------------------------------------------------------

// The answer's text as paragraphs and lists, [n] turned into buttons that open source n.
function renderAnswerText(container, text, citations, turn) {
  const byN = new Map(citations.map((c) => [c.n, c]));
  const inline = (line) => escapeHtml(line)
    .replace(/\*\*(.+?)\*\*/g, "<strong>$1</strong>")
    .replace(/\[(\d+)\]/g, (m, n) => byN.has(Number(n))
      ? `<button type="button" class="cite" data-n="${n}" aria-expanded="false" aria-controls="panel" aria-label="Source ${n}: ${escapeHtml(citeLabel(byN.get(Number(n))))}">${n}</button>`
      : m);
  const blocks = [];
  let list = null;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    const item = line.match(/^(?:[-*•]|\d+[.)])\s+(.*)$/);
    if (item) { (list ||= []).push(`<li>${inline(item[1])}</li>`); continue; }
    if (list) { blocks.push(`<ul>${list.join("")}</ul>`); list = null; }
    if (line) blocks.push(`<p>${inline(line)}</p>`);
  }
  if (list) blocks.push(`<ul>${list.join("")}</ul>`);
  container.innerHTML = blocks.join("");
  for (const button of container.querySelectorAll("button.cite")) {
    button.addEventListener("click", () => openSource(byN.get(Number(button.dataset.n)), button, turn));
  }
}

function citeLabel(c) {
  return [c.source, pagesLabel(c.pages), c.section].filter(Boolean).join(", ");
}

function renderWarnings(response) {
  const items = [...(response.warnings || [])];
  if (!items.length) return null;
  return h("div", { class: "warnings", role: "note" },
    h("strong", {}, "⚠ Check before relying on this answer"),
    h("ul", {}, items.map((w) => h("li", {}, w))));
}

function renderSources(citations, turn, title) {
  if (!citations.length) return null;
  return h("div", {},
    h("div", { class: "meta" }, title),
    h("ol", { class: "sources" }, citations.map((c) => h("li", {},
      h("span", { class: "muted" }, `[${c.n}]`),
      h("button", { type: "button", class: "link", onclick: (e) => openSource(c, e.currentTarget, turn) }, citeLabel(c))))));
}

function renderFinal(turn, response) {
  const { answerEl } = turn;
  turn.response = response;
  turn.collection = turn.collection || state.collection;
  answerEl.replaceChildren();
  const text = h("div", { class: "text" });
  if (response.refused) text.classList.add("refused");
  renderAnswerText(text, response.answer, response.citations || [], turn);
  answerEl.append(text);
  const warnings = renderWarnings(response);
  if (warnings) answerEl.append(warnings);
  const sources = renderSources(response.citations || [], turn, "Sources");
  if (sources) answerEl.append(sources);
  const closest = renderSources(response.closest_sources || [], turn, "Closest passages found (they do not answer the question)");
  if (closest) answerEl.append(closest);
  const meta = [];
  if (response.standalone_question) meta.push(`understood as: “${response.standalone_question}”`);
  if (response.inferred_filters && Object.keys(response.inferred_filters).length) meta.push(`kept to ${Object.entries(response.inferred_filters).map(([k, v]) => `${k}=${v}`).join(", ")}`);
  if (response.model) meta.push(response.model);
  if (response.latency_ms) meta.push(`${(response.latency_ms / 1000).toFixed(1)} s`);
  if (meta.length) answerEl.append(h("div", { class: "meta" }, meta.join(" · ")));
  if (response.answer_id) answerEl.append(feedbackControls(turn));
}

// ---- feedback ----------------------------------------------------------------------------------------------

function feedbackControls(turn) {
  const citations = turn.response.citations || [];
  const id = turn.response.answer_id;
  const status = h("span", { class: "status", role: "status", "aria-live": "polite" });
  const up = h("button", { type: "button", class: "vote-up", "aria-pressed": "false", html: `${THUMB} Helpful` });
  const down = h("button", { type: "button", class: "vote-down", "aria-pressed": "false", html: `${THUMB.replace("<svg", '<svg transform="rotate(180)"')} Not helpful` });
  const more = h("button", { type: "button", "aria-expanded": "false" }, "Details & correction…");
  const reason = h("select", { id: `reason-${id}` }, REASONS.map(([v, l]) => h("option", { value: v }, l)));
  const correction = h("textarea", { id: `correction-${id}`, maxlength: "20000", placeholder: "What should the answer say? Paste the rule or figure if you can." });
  const comment = h("input", { id: `comment-${id}`, maxlength: "5000", placeholder: "Anything else (optional)" });
  const marks = h("div", { class: "marks" }, citations.map((c) => h("div", { class: "mark", role: "radiogroup", "aria-label": `Was source ${c.n} useful?` },
    h("span", {}, `[${c.n}] ${citeLabel(c)}`),
    h("label", {}, h("input", { type: "radio", name: `mark-${id}-${c.n}`, value: "useful", "data-n": c.n }), "useful"),
    h("label", {}, h("input", { type: "radio", name: `mark-${id}-${c.n}`, value: "not", "data-n": c.n }), "not useful"))));
  const send = h("button", { type: "submit", class: "primary" }, "Send feedback");
  const details = h("form", { class: "details", hidden: true, "aria-label": "Feedback details" },
    h("div", { class: "field" }, h("label", { for: reason.id }, "Reason"), reason),
    citations.length ? h("fieldset", {}, h("legend", {}, "Were the sources useful?"), marks) : null,
    h("div", { class: "field" }, h("label", { for: correction.id }, "Suggest a correction"), correction),
    h("div", { class: "field" }, h("label", { for: comment.id }, "Comment"), comment),
    h("div", { class: "row" }, send));
  let rating = null;

  async function submit() {
    if (!rating) { status.textContent = "Choose Helpful or Not helpful first."; status.className = "status bad"; return; }
    const body = { answer_id: id, rating, ...voter() };
    if (reason.value) body.reason = reason.value;
    if (correction.value.trim()) body.correction = correction.value.trim();
    if (comment.value.trim()) body.comment = comment.value.trim();
    const checked = [...marks.querySelectorAll("input:checked")].map((i) => ({ n: Number(i.dataset.n), useful: i.value === "useful" }));
    if (checked.length) body.citations = checked;
    if (!body.segment) delete body.segment;
    status.textContent = "Sending…"; status.className = "status";
    try {
      const result = await api("/v1/feedback", { method: "POST", json: body });
      status.textContent = result.updated ? "✓ Vote updated — thank you" : "✓ Vote recorded — thank you";
      status.className = "status ok";
      status.dataset.feedbackId = result.feedback_id;
    } catch (err) {
      status.textContent = `Not recorded: ${err.message}`; status.className = "status bad";
    }
  }

  function choose(value) {
    rating = value;
    up.setAttribute("aria-pressed", String(value === "up"));
    down.setAttribute("aria-pressed", String(value === "down"));
    if (value === "down" && details.hidden) toggleDetails(true);
    submit();
  }
  function toggleDetails(open = details.hidden) {
    details.hidden = !open;
    more.setAttribute("aria-expanded", String(open));
    if (open) reason.focus();
  }
  up.addEventListener("click", () => choose("up"));
  down.addEventListener("click", () => choose("down"));
  more.addEventListener("click", () => toggleDetails());
  details.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!rating) choose(correction.value.trim() ? "down" : "up"); else submit();
  });
  return h("div", { class: "feedback" }, h("div", { class: "row" }, up, down, more, status), details);
}

// ---- the source panel --------------------------------------------------------------------------------------

function highlight(text, quote) {
  const escaped = escapeHtml(text);
  if (!quote) return escaped;
  const q = escapeHtml(quote.trim());
  const at = escaped.indexOf(q);
  if (at >= 0) return `${escaped.slice(0, at)}<mark>${q}</mark>${escaped.slice(at + q.length)}`;
  // the chunk's whitespace may differ from the quote's: match word by word
  const words = quote.trim().split(/\s+/).map((w) => escapeHtml(w).replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  const match = escaped.match(new RegExp(words.join("\\s+")));
  if (!match) return escaped;
  return `${escaped.slice(0, match.index)}<mark>${match[0]}</mark>${escaped.slice(match.index + match[0].length)}`;
}

// The figures the answer's sentences citing [n] state (not years): emphasised in the passage.
function citedFigures(answer, n) {
  const figures = new Set();
  for (const sentence of (answer || "").split(/(?<=[.!?])\s+|\n+/)) {
    if (!new RegExp(`\\[${n}\\]`).test(sentence)) continue;
    for (const f of sentence.replace(/\[\d+\]/g, " ").match(/\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+|\d{3,}/g) || []) {
      if (!/^(19|20)\d\d$/.test(f)) figures.add(f);
    }
  }
  return [...figures];
}

function emphasise(html, figures) {
  let out = html;
  for (const f of figures) out = out.replace(new RegExp(`(?<![\\d,.])${f.replace(/[.,]/g, "\\$&")}(?![\\d]|[,.]\\d)`, "g"), `<strong class="figure">${f}</strong>`);
  return out;
}

async function openSource(citation, trigger, turn) {
  if (!citation) return;
  const panel = $("panel");
  if (state.openCite) state.openCite.setAttribute("aria-expanded", "false");
  state.openCite = trigger;
  trigger?.setAttribute("aria-expanded", "true");
  panel.hidden = false;
  $("layout").classList.add("with-panel");
  $("panel-title").textContent = `[${citation.n}] ${citation.source}`;
  const rows = [["File", citation.source], ["Pages", pagesLabel(citation.pages).replace(/^pp?\. /, "") || "–"], ["Section", citation.section || "–"]];
  fill($("panel-where"), h("dl", {}, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
  const link = documentLink(citation);
  const label = /\.pdf$/i.test(citation.source) && citation.pages?.length ? `Open the document at page ${citation.pages[0]} ↗` : "Open the document at this passage ↗";
  fill($("panel-open"), link ? h("a", { class: "button", href: link, target: "_blank", rel: "noopener", id: "open-document" }, label) : h("span", { class: "muted" }, "The original document is not available."));
  const passage = $("panel-passage");
  const figures = citedFigures(turn?.response?.answer, citation.n);
  passage.innerHTML = emphasise(highlight(citation.snippet || "", citation.quote), figures);
  panel.focus();
  const collection = turn?.collection || state.collection;
  try {
    const chunk = await api(`/v1/chunks/${encodeURIComponent(citation.point_id)}?collection=${encodeURIComponent(collection)}`);
    if (state.openCite !== trigger) return; // another citation was opened meanwhile
    passage.innerHTML = emphasise(highlight(chunk.text, citation.quote || citation.snippet?.slice(0, 160)), figures);
    if (!citation.doc_id && chunk.doc_id) {
      const a = documentLink({ ...citation, doc_id: chunk.doc_id });
      fill($("panel-open"), h("a", { class: "button", href: a, target: "_blank", rel: "noopener", id: "open-document" }, label));
    }
    passage.querySelector("mark")?.scrollIntoView({ block: "center" });
  } catch (err) {
    if (state.openCite === trigger) passage.prepend(h("p", { class: "muted" }, `Showing the recorded snippet (${err.message}).`));
  }
}

function closePanel() {
  $("panel").hidden = true;
  $("layout").classList.remove("with-panel");
  if (state.openCite) { state.openCite.setAttribute("aria-expanded", "false"); state.openCite.focus(); }
  state.openCite = null;
}

// ---- asking ------------------------------------------------------------------------------------------------

function addTurn(question) {
  $("empty")?.remove();
  const answerEl = h("div", { class: "answer", "aria-busy": "true" }, h("div", { class: "text streaming" }, ""));
  const el = h("article", { class: "turn" }, h("div", { class: "question" }, question), answerEl);
  $("messages").append(el);
  el.scrollIntoView({ block: "end" });
  return { el, answerEl, collection: state.collection };
}

// Server-Sent Events from a fetch body: yields {event, data}.
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { event, data: data.join("\n") };
    }
  }
}

async function ask(question) {
  const turn = addTurn(question);
  const text = turn.answerEl.querySelector(".text");
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  const body = { question, collection: state.collection, stream: true };
  const filters = currentFilters();
  if (filters) body.filters = filters;
  if (state.conversationId) body.conversation_id = state.conversationId;
  let raw = "";
  try {
    const response = await fetch("/v1/chat", { method: "POST", headers: { "Content-Type": "application/json", Accept: "text/event-stream" }, body: JSON.stringify(body), signal: controller.signal });
    if (!response.ok) throw await errorOf(response);
    if (!(response.headers.get("content-type") || "").includes("text/event-stream")) {
      renderFinal(turn, await response.json()); // answered without streaming (e.g. a refusal before generation)
    } else {
      for await (const { event, data } of sseEvents(response)) {
        if (event === "token") { raw += JSON.parse(data).text; text.textContent = raw; turn.el.scrollIntoView({ block: "end" }); }
        else if (event === "done") renderFinal(turn, JSON.parse(data));
        else if (event === "error") { const e = JSON.parse(data); throw new Error(e.detail || e.error); }
      }
    }
    if (turn.response) {
      if (turn.response.conversation_id && turn.response.conversation_id !== state.conversationId) {
        state.conversationId = turn.response.conversation_id;
      }
      loadConversations();
    } else if (!controller.signal.aborted) {
      throw new Error("the answer ended before it was complete");
    }
  } catch (err) {
    text.classList.remove("streaming");
    const stopped = err.name === "AbortError";
    turn.answerEl.append(h("p", { class: stopped ? "muted" : "error-text", role: stopped ? null : "alert" },
      stopped ? "Stopped." : `Could not answer: ${err.message}`));
  } finally {
    text.classList.remove("streaming");
    turn.answerEl.removeAttribute("aria-busy");
    state.controller = null;
    setBusy(false);
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").hidden = !busy;
  $("collection").disabled = busy;
}

// ---- conversations -----------------------------------------------------------------------------------------

async function loadConversations() {
  const list = $("conversations");
  try {
    const items = await api(`/v1/conversations?collection=${encodeURIComponent(state.collection)}&limit=50`);
    fill(list, ...items.map((c) => h("li", {}, h("button", {
      type: "button", "aria-current": String(c.id === state.conversationId), title: c.title || "",
      onclick: () => openConversation(c.id),
    }, c.title || "(untitled)", h("small", {}, formatDate(c.updated_at))))));
    if (!items.length) fill(list, h("li", { class: "none" }, "No conversations yet."));
  } catch (err) {
    fill(list, h("li", { class: "error-text" }, err.message));
  }
}

async function openConversation(id) {
  if (state.controller) return;
  const conversation = await api(`/v1/conversations/${encodeURIComponent(id)}`);
  state.conversationId = id;
  if (conversation.collection !== state.collection && [...$("collection").options].some((o) => o.value === conversation.collection)) {
    $("collection").value = conversation.collection;
    await selectCollection(conversation.collection, false);
  }
  fill($("messages"));
  closePanel();
  for (const t of conversation.turns) {
    const turn = addTurn(t.question);
    turn.collection = conversation.collection;
    renderFinal(turn, { answer_id: t.answer_id, answer: t.answer, citations: t.citations || [], refused: t.refused, warnings: [] });
    turn.answerEl.removeAttribute("aria-busy");
  }
  loadConversations();
}

function newConversation() {
  if (state.controller) state.controller.abort();
  state.conversationId = null;
  closePanel();
  fill($("messages"), h("p", { class: "empty", id: "empty" }, "New conversation. Ask a question below."));
  loadConversations();
  $("question").focus();
}

async function selectCollection(name, reset = true) {
  state.collection = name;
  localStorage.setItem("finrag.collection", name);
  if (reset) { state.conversationId = null; }
  await Promise.all([loadFacets(), loadConversations()]);
}

// ---- start -------------------------------------------------------------------------------------------------

async function start() {
  initVoterFields();
  $("ask").addEventListener("submit", (e) => {
    e.preventDefault();
    const question = $("question").value.trim();
    if (!question || state.controller) return;
    $("question").value = "";
    ask(question);
  });
  $("question").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("ask").requestSubmit(); }
  });
  $("stop").addEventListener("click", () => state.controller?.abort());
  $("panel-close").addEventListener("click", closePanel);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && !$("panel").hidden) closePanel(); });
  $("new-conversation").addEventListener("click", newConversation);
  $("clear-filters").addEventListener("click", () => { for (const s of document.querySelectorAll("[data-filter]")) s.value = ""; });
  $("collection").addEventListener("change", (e) => { newConversation(); selectCollection(e.target.value); });
  try {
    const collections = await loadCollections($("collection"));
    if (!collections.length) {
      $("empty").innerHTML = 'No documents are indexed yet. <a href="/ingest">Add documents</a> to start.';
      return;
    }
    await selectCollection($("collection").value);
  } catch (err) {
    toast(`Cannot load collections: ${err.message}`, true);
  }
}

start();

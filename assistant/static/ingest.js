// The documents page: upload files into a collection, follow their ingestion, list and delete documents.
import { api, fill, errorOf, formatDate, h, initVoterFields, loadCollections, plural, toast } from "/static/common.js";

const $ = (id) => document.getElementById(id);
const NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/;
const LABELS = { queued: "queued", parsing: "reading", embedding: "embedding", indexed: "indexed ✓", unchanged: "unchanged ✓", failed: "failed", rejected: "rejected" };

function collection() {
  const typed = $("new-collection").value.trim();
  return typed || $("collection").value;
}

function size(bytes) {
  if (bytes == null) return "";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

async function upload(files) {
  if (!files.length) return;
  const target = collection();
  if (!NAME.test(target)) { toast("A collection name may contain letters, digits, _ . - (up to 64 characters).", true); return; }
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  const job = h("div", { class: "job" });
  $("jobs").prepend(job);
  job.append(h("p", {}, `Uploading ${files.length} file(s) to ${target}…`));
  let accepted;
  try {
    const response = await fetch(`/v1/documents?collection=${encodeURIComponent(target)}`, { method: "POST", body: form });
    if (!response.ok) throw await errorOf(response);
    accepted = await response.json();
  } catch (err) {
    fill(job, h("p", { class: "error-text", role: "alert" }, `Upload failed: ${err.message}`));
    return;
  }
  renderJob(job, { id: accepted.job_id, collection: target, state: "queued", files: accepted.files });
  if (accepted.job_id) follow(job, accepted.job_id, accepted.files.filter((f) => f.status === "rejected"));
}

function renderJob(el, job, rejected = []) {
  const files = [...(job.files || []), ...rejected.filter((r) => !(job.files || []).some((f) => f.name === r.name))];
  const rows = files.map((f) => {
    const done = f.chunks_done ?? 0;
    const total = f.chunks_total ?? 0;
    const progress = f.status === "embedding" && total
      ? h("progress", { max: total, value: done, "aria-label": `${f.name}: ${done} of ${total} chunks embedded` }, `${done}/${total}`)
      : null;
    const cls = f.status === "failed" || f.status === "rejected" ? "badge bad" : f.status === "indexed" || f.status === "unchanged" ? "badge live" : "badge";
    return h("tr", { "data-file": f.name },
      h("td", {}, f.name),
      h("td", {}, h("span", { class: cls }, LABELS[f.status] || f.status), " ", progress, progress ? ` ${done}/${total} chunks` : ""),
      h("td", { class: f.error ? "error-text" : "muted" }, f.error || (f.chunks_total ? plural(f.chunks_total, "chunk") : "")));
  });
  fill(el,
    h("h3", {}, `Ingest job ${job.id ? job.id.slice(0, 8) : ""} → ${job.collection} — ${job.state}`),
    h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "File"), h("th", { scope: "col" }, "Status"), h("th", { scope: "col" }, "Details"))), h("tbody", {}, rows))));
}

async function follow(el, jobId, rejected) {
  for (;;) {
    let job;
    try { job = await api(`/v1/ingest/jobs/${encodeURIComponent(jobId)}`); } catch (err) { el.append(h("p", { class: "error-text" }, err.message)); return; }
    renderJob(el, job, rejected);
    if (job.state === "done") {
      const failed = job.files.filter((f) => f.status === "failed").length;
      toast(failed ? `Ingestion finished: ${failed} file(s) failed` : "Ingestion finished", failed > 0);
      await refreshCollections(job.collection);
      return;
    }
    await new Promise((r) => setTimeout(r, 700));
  }
}

async function refreshCollections(select) {
  const collections = await loadCollections($("collection"), select);
  if (select && collections.some((c) => c.name === select)) { $("collection").value = select; $("new-collection").value = ""; }
  await loadDocuments();
}

async function loadDocuments() {
  const name = $("collection").value;
  $("documents-collection").textContent = name || "–";
  const body = $("documents").querySelector("tbody");
  if (!name) { fill(body, h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No collection yet: upload files to create one."))); return; }
  let docs;
  try { docs = await api(`/v1/documents?collection=${encodeURIComponent(name)}`); } catch (err) { fill(body, h("tr", {}, h("td", { colspan: 7, class: "error-text" }, err.message))); return; }
  if (!docs.length) { fill(body, h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No documents."))); return; }
  fill(body, ...docs.map((d) => h("tr", { "data-doc": d.id },
    h("td", {}, d.file_available ? h("a", { href: `/v1/documents/${encodeURIComponent(d.id)}/file`, target: "_blank", rel: "noopener" }, d.source) : d.source,
      d.title && d.title !== d.source ? h("div", { class: "muted" }, d.title) : null),
    h("td", {}, d.doc_type),
    h("td", { class: "num" }, d.pages ?? ""),
    h("td", { class: "num" }, d.chunks),
    h("td", { class: "num" }, size(d.size_bytes)),
    h("td", {}, formatDate(d.indexed_at)),
    h("td", {}, h("button", { type: "button", class: "danger", "aria-label": `Delete ${d.source}`, onclick: () => remove(d) }, "Delete")))));
}

async function remove(doc) {
  if (!window.confirm(`Delete “${doc.source}” from ${doc.collection}? Its chunks leave the index; answers already given keep their citations.`)) return;
  try {
    await api(`/v1/documents/${encodeURIComponent(doc.id)}`, { method: "DELETE" });
    toast(`Deleted ${doc.source}`);
  } catch (err) {
    toast(`Could not delete: ${err.message}`, true);
  }
  await loadDocuments();
}

async function start() {
  initVoterFields();
  const drop = $("drop");
  $("files").addEventListener("change", (e) => { upload([...e.target.files]); e.target.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); upload([...e.dataTransfer.files]); });
  $("collection").addEventListener("change", () => { localStorage.setItem("finrag.collection", $("collection").value); loadDocuments(); });
  $("upload").addEventListener("submit", (e) => e.preventDefault());
  try { await refreshCollections(); } catch (err) { toast(err.message, true); }
}

start();

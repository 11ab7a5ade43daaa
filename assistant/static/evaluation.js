// The evaluation page: feedback by segment and model version, learned model versions, evaluation reports.
import { api, fill, escapeHtml, formatDate, h, initVoterFields, percent, toast } from "/static/common.js";

const $ = (id) => document.getElementById(id);

function table(caption, columns, rows) {
  if (!rows.length) return h("p", { class: "muted" }, `${caption}: none yet.`);
  return h("div", { class: "table-wrap" }, h("table", {},
    h("caption", { class: "visually-hidden" }, caption),
    h("thead", {}, h("tr", {}, columns.map(([label, , num]) => h("th", { scope: "col", class: num ? "num" : null }, label)))),
    h("tbody", {}, rows.map((row) => h("tr", {}, columns.map(([, get, num]) => h("td", { class: num ? "num" : null }, get(row))))))));
}

const VOTES = [["Votes", (r) => r.total, true], ["Up", (r) => r.up, true], ["Down", (r) => r.down, true], ["Up-rate", (r) => percent(r.up_rate), true]];

async function loadStats() {
  const params = new URLSearchParams();
  if ($("stats-collection").value) params.set("collection", $("stats-collection").value);
  if ($("stats-since").value) params.set("since", `${$("stats-since").value}T00:00:00Z`);
  const el = $("stats");
  let s;
  try { s = await api(`/v1/feedback/stats?${params}`); } catch (err) { fill(el, h("p", { class: "error-text" }, err.message)); return; }
  const kpi = (v, k) => h("div", { class: "kpi" }, h("div", { class: "v" }, v), h("div", { class: "k" }, k));
  fill(el,
    h("div", { class: "kpis" }, kpi(s.total, "votes"), kpi(percent(s.up_rate, 0), "thumbs up"), kpi(s.down, "thumbs down"), kpi(s.corrections, "corrections")),
    h("div", { class: "grid2" },
      h("div", {}, h("h3", {}, "By segment"), table("Votes by segment", [["Segment", (r) => r.segment ?? "(none given)"], ...VOTES], s.by_segment)),
      h("div", {}, h("h3", {}, "By generator"), table("Votes by model", [["Model", (r) => r.model], ...VOTES], s.by_model)),
      h("div", {}, h("h3", {}, "By embedder version"), table("Votes by embedder version", [["Embedder", (r) => r.version], ...VOTES], s.by_version.embedder)),
      h("div", {}, h("h3", {}, "By reranker version"), table("Votes by reranker version", [["Reranker", (r) => r.version], ...VOTES], s.by_version.reranker)),
      h("div", {}, h("h3", {}, "By prompt version"), table("Votes by prompt version", [["Prompt", (r) => r.version], ...VOTES], s.by_version.prompt_version)),
      h("div", {}, h("h3", {}, "Why answers were voted down"), table("Down-vote reasons", [["Reason", (r) => r.reason.replace("_", " ")], ["Count", (r) => r.count, true]], s.by_reason))),
    h("h3", {}, "Sources most voted down"),
    table("Most down-voted sources", [["Source", (r) => r.source], ["Section", (r) => r.section ?? ""], ["Pages", (r) => r.pages.join(", ")], ["Down", (r) => r.down, true], ["Marked useful", (r) => r.up, true]], s.most_downvoted_sources));
}

function metricCells(metrics) {
  const sets = Object.entries(metrics || {});
  if (!sets.length) return h("span", { class: "muted" }, "–");
  return h("div", {}, sets.map(([set, m]) => h("div", {}, h("span", { class: "muted" }, `${set}: `),
    `MRR ${m.mrr?.toFixed(3) ?? "–"} · hit@1 ${m["hit@1"]?.toFixed(3) ?? "–"} · recall@10 ${m["recall@10"]?.toFixed(3) ?? "–"}`)));
}

async function loadModels() {
  const el = $("models");
  let m;
  try { m = await api("/v1/admin/models"); } catch (err) { fill(el, h("p", { class: "error-text" }, err.message)); return; }
  const live = (on) => (on ? h("span", { class: "badge live" }, "live") : h("span", { class: "badge" }, "not serving"));
  const rows = [
    { version: m.shipped.embedder, kind: "embedder (shipped)", live: !m.embedder, created: "", verdict: "", metrics: null, baseline: null },
    { version: m.shipped.reranker || "none (fused order)", kind: "reranker (shipped)", live: !m.reranker, created: "", verdict: "", metrics: null, baseline: null },
    ...m.versions.slice().reverse().map((v) => ({ ...v, verdict: v.better === true ? "better than what served" : v.better === false ? "not better" : "", })),
  ];
  fill(el, table("Model versions", [
    ["Version", (r) => h("span", {}, h("strong", {}, r.version), " ", live(r.live))],
    ["Kind", (r) => r.kind],
    ["Trained", (r) => formatDate(r.created)],
    ["Held-out and dev sets (this version)", (r) => metricCells(r.metrics)],
    ["Baseline when trained", (r) => metricCells(r.baseline)],
    ["Verdict", (r) => h("span", { title: r.reason || "" }, r.verdict)],
  ], rows),
  Object.keys(m.collections).length ? h("p", { class: "muted" }, `Re-embedded collections: ${Object.entries(m.collections).map(([a, b]) => `${a} → ${b}`).join(", ")}`) : null);
}

const HEADLINE = ["recall@5", "recall@10", "mrr", "ndcg@10", "citation_precision", "numeric_match", "refusal_accuracy", "over_refusal"];

function headline(metrics) {
  return HEADLINE.filter((k) => k in metrics).map((k) => h("div", { class: "kpi" }, h("div", { class: "v" }, metrics[k].toFixed(3)), h("div", { class: "k" }, k)));
}

async function loadReports() {
  let reports;
  try { reports = await api("/v1/eval/reports"); } catch (err) { fill($("latest"), h("p", { class: "error-text" }, err.message)); return; }
  if (!reports.length) { fill($("latest"), h("p", { class: "muted" }, "No evaluation reports yet: run python -m eval run … --out eval/results/NAME.")); return; }
  const latest = reports[0];
  fill($("latest"), h("h3", {}, `Latest: ${latest.name}`),
    h("p", { class: "muted" }, [formatDate(latest.started_at), latest.collection && `collection ${latest.collection}`, latest.questions && `${latest.questions} questions`, latest.retriever && `retriever ${latest.retriever}`].filter(Boolean).join(" · ")),
    h("div", { class: "kpis" }, headline(latest.metrics)));
  fill($("report"), ...reports.map((r) => h("option", { value: r.name }, `${r.name}${r.started_at ? ` — ${formatDate(r.started_at)}` : ""}`)));
  $("report").addEventListener("change", () => showReport($("report").value));
  await showReport(latest.name);
}

async function showReport(name) {
  const el = $("report-detail");
  let r;
  try { r = await api(`/v1/eval/reports/${encodeURIComponent(name)}`); } catch (err) { fill(el, h("p", { class: "error-text" }, err.message)); return; }
  fill($("report-link"), r.has_html ? h("a", { class: "button", href: `/v1/eval/reports/${encodeURIComponent(name)}/report.html`, target: "_blank", rel: "noopener" }, "Open the full report ↗") : "");
  const keys = HEADLINE.filter((k) => k in r.metrics);
  const segments = Object.entries(r.segments).map(([segment, m]) => ({ segment, ...m }));
  fill(el,
    h("div", { class: "kpis" }, headline(r.metrics)),
    r.command ? h("p", { class: "muted" }, h("code", {}, r.command)) : null,
    h("h3", {}, "By segment"),
    table(`Metrics by segment of ${name}`, [["Segment", (s) => s.segment], ["Questions", (s) => s.questions ?? "", true], ...keys.map((k) => [k, (s) => (s[k] ?? null) === null ? "–" : Number(s[k]).toFixed(3), true])], segments),
    r.report_md ? h("details", {}, h("summary", {}, "Report (Markdown)"), h("pre", { class: "report", html: escapeHtml(r.report_md) })) : null);
}

async function start() {
  initVoterFields();
  try {
    const collections = await api("/v1/collections");
    $("stats-collection").append(...collections.map((c) => h("option", { value: c.name }, c.name)));
  } catch (err) { toast(err.message, true); }
  $("stats-collection").addEventListener("change", loadStats);
  $("stats-since").addEventListener("change", loadStats);
  await Promise.all([loadStats(), loadModels(), loadReports()]);
}

start();

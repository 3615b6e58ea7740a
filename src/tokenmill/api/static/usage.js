// The usage page: this key's project's tokens and cost by UTC day and model (GET /v1/usage).

import { colourOf, stackedBars } from "./chart.js";
import { bindKeyField, bindProjectField, getJson, project, showError } from "./common.js";

const $ = (id) => document.getElementById(id);
const DAY_MS = 86_400_000;
const COLUMNS = ["requests", "prompt_tokens", "cached_tokens", "completion_tokens", "total_tokens"];

/** The UTC days of the last ``n`` (today included) and the range's bounds in UNIX seconds. */
function range(n) {
  const now = Date.now();
  const today = Math.floor(now / DAY_MS) * DAY_MS; // UTC midnight, as the ledger's days are
  const first = today - (n - 1) * DAY_MS;
  const days = [];
  for (let t = first; t <= today; t += DAY_MS) days.push(new Date(t).toISOString().slice(0, 10));
  return { days, start: first / 1000, end: Math.ceil(now / 1000) + 1 };
}

function cell(row, text, numeric = false) {
  const td = document.createElement("td");
  td.textContent = text;
  if (numeric) td.className = "num";
  row.append(td);
  return td;
}

const count = (n) => n.toLocaleString("en");
const money = (n) => `$${n.toFixed(n !== 0 && Math.abs(n) < 0.01 ? 6 : 2)}`;

function renderTable(data) {
  const body = $("usage-table").tBodies[0];
  const foot = $("usage-table").tFoot;
  body.replaceChildren();
  foot.replaceChildren();
  const totals = Object.fromEntries([...COLUMNS, "cost"].map((c) => [c, 0]));
  for (const item of data) {
    const row = body.insertRow();
    row.dataset.day = item.day;
    row.dataset.model = item.model;
    cell(row, item.day);
    cell(row, item.model);
    for (const c of COLUMNS) {
      cell(row, count(item[c]), true);
      totals[c] += item[c];
    }
    cell(row, money(item.cost), true);
    totals.cost += item.cost;
  }
  $("no-usage").hidden = data.length > 0;
  if (data.length) {
    const row = foot.insertRow();
    cell(row, "Total");
    cell(row, "");
    for (const c of COLUMNS) cell(row, count(totals[c]), true);
    cell(row, money(totals.cost), true);
  }
  return totals;
}

function renderChart(days, data) {
  const models = [...new Set(data.map((d) => d.model))].sort();
  const series = models.map((name) => ({
    name,
    values: new Map(data.filter((d) => d.model === name).map((d) => [d.day, d.total_tokens])),
  }));
  $("chart").replaceChildren(stackedBars(days, series));
  $("legend").replaceChildren(
    ...models.map((name, i) => {
      const item = document.createElement("span");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.backgroundColor = colourOf(i);
      item.append(swatch, name);
      return item;
    }),
  );
}

async function refresh() {
  showError($("error"), null);
  const { days, start, end } = range(parseInt($("range").value, 10));
  const query = new URLSearchParams({ group_by: "day,model", start_time: start, end_time: end });
  if (project()) query.set("ai_project_id", project());
  $("refresh").disabled = true;
  try {
    const answer = await getJson(`/v1/usage?${query}`);
    const totals = renderTable(answer.data);
    renderChart(days, answer.data);
    $("summary").textContent = `Project ${answer.project_id}: ${count(totals.requests)} requests, `
      + `${count(totals.total_tokens)} tokens, ${money(totals.cost)}`;
  } catch (e) {
    renderTable([]);
    $("no-usage").hidden = true;
    $("chart").replaceChildren();
    $("legend").replaceChildren();
    $("summary").textContent = "";
    showError($("error"), e);
  } finally {
    $("refresh").disabled = false;
  }
}

function init() {
  bindKeyField($("api-key"), refresh);
  bindProjectField($("project"), refresh);
  $("range").addEventListener("change", refresh);
  $("filters").addEventListener("submit", (e) => {
    e.preventDefault();
    refresh();
  });
  refresh();
}

init();

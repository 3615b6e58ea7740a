// The playground page: settings, the conversation, one streamed answer at a time.

import { chatBody, responseFormat, streamChat } from "./chat.js";
import { ApiError, bindKeyField, getJson, showError } from "./common.js";
import { TokenSpans } from "./tokens.js";

const $ = (id) => document.getElementById(id);
const history = []; // {role, content}: what the next request sends after the system prompt
let controller = null; // the AbortController of the answer being streamed

function number(id, parse) {
  const text = $(id).value.trim();
  return text === "" ? null : parse(text);
}

function settings() {
  return {
    model: $("model").value,
    temperature: number("temperature", parseFloat),
    topP: number("top-p", parseFloat),
    maxTokens: number("max-tokens", (t) => parseInt(t, 10)),
    seed: number("seed", (t) => parseInt(t, 10)),
    responseFormat: responseFormat($("format").value, $("schema-name").value.trim(), $("schema").value),
    logprobs: $("logprobs").checked,
  };
}

async function loadModels() {
  const select = $("model");
  const previous = select.value;
  try {
    const { data } = await getJson("/v1/models");
    select.replaceChildren(...data.map((m) => new Option(m.id, m.id)));
    if (data.some((m) => m.id === previous)) select.value = previous;
    showError($("error"), null);
  } catch (e) {
    const loading = e instanceof ApiError && e.code === "model_loading";
    select.replaceChildren(new Option(loading ? "(loading…)" : "(no models: check the key)", ""));
    showError($("error"), e);
    if (loading) setTimeout(loadModels, 3000); // the page is served while the model loads
  }
}

function bubble(role, text) {
  $("empty").hidden = true;
  const item = document.createElement("div");
  item.className = `msg ${role}`;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role;
  const body = document.createElement("div");
  body.className = "body";
  body.textContent = text;
  item.append(label, body);
  $("conversation").append(item);
  return { item, body };
}

function setStat(id, text) {
  $(id).textContent = text;
}

function resetStats() {
  for (const id of ["prompt-tokens", "cached-tokens", "completion-tokens", "ttft", "total-time", "tps"]) {
    setStat(id, "–");
  }
}

function busy(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
  $("clear").disabled = on;
}

async function send() {
  showError($("error"), null);
  const content = $("message").value;
  if (!content.trim()) return;
  let s;
  try {
    s = settings();
  } catch (e) {
    showError($("error"), e); // e.g. a schema that is not JSON: nothing is sent
    return;
  }
  const system = $("system").value.trim();
  const messages = [...(system ? [{ role: "system", content: system }] : []), ...history];
  messages.push({ role: "user", content });
  const user = bubble("user", content);
  const answer = bubble("assistant", "");
  const spans = s.logprobs ? new TokenSpans(answer.body) : null;
  $("message").value = "";
  resetStats();
  setStat("status", "waiting…");
  busy(true);
  controller = new AbortController();
  const started = performance.now();
  let firstAt = null;
  let text = "";
  let completionTokens = null;
  let outcome = "done";
  try {
    await streamChat(chatBody(s, messages), controller.signal, {
      onChoice(choice) {
        const delta = choice.delta || {};
        if (delta.content) {
          if (firstAt === null) {
            firstAt = performance.now();
            setStat("ttft", `${Math.round(firstAt - started)} ms`);
            setStat("status", "streaming…");
          }
          text += delta.content;
          if (!spans) answer.body.append(delta.content);
        }
        if (spans && choice.logprobs && choice.logprobs.content) spans.add(choice.logprobs.content);
        else if (spans) spans.catchUp(text);
        if (choice.finish_reason) outcome = `done (${choice.finish_reason})`;
      },
      onUsage(usage) {
        completionTokens = usage.completion_tokens;
        setStat("prompt-tokens", String(usage.prompt_tokens));
        setStat("cached-tokens", String((usage.prompt_tokens_details || {}).cached_tokens ?? 0));
        setStat("completion-tokens", String(usage.completion_tokens));
      },
    });
  } catch (e) {
    outcome = e.name === "AbortError" ? "stopped" : "error";
    if (outcome === "error") {
      showError($("error"), e instanceof ApiError ? e : new Error(`Network error: ${e.message}`));
    }
  } finally {
    if (spans) spans.finish();
    controller = null;
    busy(false);
  }
  const total = performance.now() - started;
  setStat("total-time", `${Math.round(total)} ms`);
  if (firstAt !== null && completionTokens > 1 && total > firstAt - started) {
    const rate = (completionTokens - 1) / ((total - (firstAt - started)) / 1000);
    setStat("tps", rate.toFixed(1));
  }
  setStat("status", outcome);
  if (text) {
    history.push({ role: "user", content }, { role: "assistant", content: text });
    if (outcome === "stopped" || outcome === "error") answer.item.classList.add("partial");
  } else {
    // Nothing came back (refused, or stopped at once): as if never sent, ready to retry.
    user.item.remove();
    answer.item.remove();
    $("message").value = content;
    $("empty").hidden = $("conversation").querySelector(".msg") !== null;
  }
}

function clear() {
  history.length = 0;
  for (const item of $("conversation").querySelectorAll(".msg")) item.remove();
  $("empty").hidden = false;
  showError($("error"), null);
  resetStats();
  setStat("status", "idle");
}

function init() {
  bindKeyField($("api-key"), loadModels);
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    if (!controller) send();
  });
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("clear").addEventListener("click", clear);
  const format = $("format");
  const toggleSchema = () => { $("schema-fields").hidden = format.value !== "json_schema"; };
  format.addEventListener("change", toggleSchema);
  toggleSchema();
  const legend = () => { $("logprob-legend").hidden = !$("logprobs").checked; };
  $("logprobs").addEventListener("change", legend);
  legend();
  loadModels();
}

init();

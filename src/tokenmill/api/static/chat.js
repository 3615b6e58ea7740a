// One streamed chat completion: the request body from the page's settings, and the stream's
// chunks handed to callbacks. No DOM here.

import { ApiError, authHeaders, responseError } from "./common.js";
import { readEvents } from "./sse.js";

/** The ``response_format`` for the chosen format, or throws ``ApiError`` (no request then). */
export function responseFormat(kind, schemaName, schemaText) {
  if (kind === "json_object") return { type: "json_object" };
  if (kind !== "json_schema") return undefined; // plain text: the API's default
  let schema;
  try {
    schema = JSON.parse(schemaText);
  } catch (e) {
    throw new ApiError(`The JSON schema is not valid JSON: ${e.message}`, { code: "invalid_schema" });
  }
  if (schema === null || typeof schema !== "object" || Array.isArray(schema)) {
    throw new ApiError("The JSON schema must be a JSON object.", { code: "invalid_schema" });
  }
  return {
    type: "json_schema",
    json_schema: { name: schemaName || "answer", schema, strict: true },
  };
}

/** The request body; unset numbers are left out, so the server's defaults apply. */
export function chatBody(s, messages) {
  const body = {
    model: s.model,
    messages,
    stream: true,
    stream_options: { include_usage: true },
  };
  for (const [name, value] of Object.entries({
    temperature: s.temperature, top_p: s.topP, max_tokens: s.maxTokens, seed: s.seed,
  })) {
    if (value !== null && !Number.isNaN(value)) body[name] = value;
  }
  if (s.responseFormat) body.response_format = s.responseFormat;
  if (s.logprobs) {
    body.logprobs = true;
    body.top_logprobs = 5;
  }
  return body;
}

/**
 * POST ``body`` and read its events: ``onChoice(choice)`` for each chunk's first choice,
 * ``onUsage(usage)`` for the final usage. Throws ``ApiError`` for an error answer, or an
 * error event mid-stream (as ``data: {"error": ...}``, or under ``event: error``), and
 * DOMException "AbortError" when ``signal`` aborts.
 */
export async function streamChat(body, signal, { onChoice, onUsage }) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...authHeaders() },
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await responseError(response);
  for await (const { event, data } of readEvents(response.body)) {
    if (data === "[DONE]") return;
    let chunk;
    try {
      chunk = JSON.parse(data);
    } catch {
      throw new ApiError(`The server sent an event that is not JSON: ${data.slice(0, 200)}`);
    }
    if (event === "error" || chunk.error) {
      throw ApiError.fromBody(chunk.error || chunk); // no status: the answer began as a 200
    }
    const choice = (chunk.choices || []).find((c) => c.index === 0);
    if (choice) onChoice(choice);
    if (chunk.usage) onUsage(chunk.usage);
  }
  throw new ApiError("The stream ended before [DONE]: the connection was cut.");
}

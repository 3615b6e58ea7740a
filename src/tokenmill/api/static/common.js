// What both pages share: the API key (and project) of this tab, and calls to the API.
//
// The key lives in sessionStorage only: it is gone when the tab closes, other tabs and sites
// never see it, and it is never sent as a cookie. An empty key sends no Authorization header
// at all, which a server with no keys configured accepts.

const KEY = "tokenmill.apiKey";
const PROJECT = "tokenmill.project";

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function project() {
  return sessionStorage.getItem(PROJECT) || "";
}

/** Keep ``input``'s value in sessionStorage under ``name``; ``onChange`` after each edit. */
function bindStored(input, name, onChange) {
  input.value = sessionStorage.getItem(name) || "";
  input.addEventListener("change", () => {
    const value = input.value.trim();
    if (value) sessionStorage.setItem(name, value);
    else sessionStorage.removeItem(name);
    if (onChange) onChange();
  });
}

export function bindKeyField(input, onChange) {
  bindStored(input, KEY, onChange);
}

export function bindProjectField(input, onChange) {
  bindStored(input, PROJECT, onChange);
}

export function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** An error the API answered with (OpenAI's shape), or one of the page's own. */
export class ApiError extends Error {
  constructor(message, { status = null, type = null, code = null, param = null } = {}) {
    super(message);
    this.status = status;
    this.type = type;
    this.code = code;
    this.param = param;
  }

  /** From an error object ``{message, type, param, code}`` (the body's ``error``). */
  static fromBody(error, status = null) {
    const message = (error && error.message) || "Unknown error";
    return new ApiError(message, { status, ...(error || {}) });
  }

  describe() {
    const head = [this.status, this.code || this.type].filter((p) => p != null).join(" ");
    const param = this.param ? ` (parameter: ${this.param})` : "";
    return head ? `${head}: ${this.message}${param}` : `${this.message}${param}`;
  }
}

/** The error in a non-2xx response; the body may not be JSON (a proxy's page). */
export async function responseError(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && body.error) return ApiError.fromBody(body.error, response.status);
  } catch {
    // not JSON: fall through
  }
  const message = text.trim().slice(0, 300) || response.statusText || "request failed";
  return new ApiError(message, { status: response.status });
}

/** GET ``path`` with this tab's key; the JSON body, or throws ``ApiError``. */
export async function getJson(path) {
  const response = await fetch(path, { headers: authHeaders() });
  if (!response.ok) throw await responseError(response);
  return response.json();
}

/** Show ``error`` (an ``ApiError`` or any Error) in ``box``, or hide the box with null. */
export function showError(box, error) {
  if (!error) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.hidden = false;
  box.textContent = error instanceof ApiError ? error.describe() : String(error.message || error);
}

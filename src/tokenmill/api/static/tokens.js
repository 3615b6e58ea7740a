// Generated tokens as spans coloured by probability, with the top alternatives in a tooltip.
// Model output only ever reaches the page through textContent and title, never as markup.

/** Green for a likely token through yellow to red for an unlikely one. */
export function probabilityColour(p) {
  const hue = Math.round(120 * Math.min(1, Math.max(0, p)));
  return `hsl(${hue}, 70%, 82%)`;
}

function percent(p) {
  const pct = p * 100;
  return `${pct >= 1 ? pct.toFixed(1) : pct.toPrecision(2)}%`;
}

// Whitespace and control tokens made visible: "\n" rather than a line break in a tooltip.
const shown = (token) => JSON.stringify(token);

function tooltip(entry) {
  const lines = [`${shown(entry.token)}  ${percent(Math.exp(entry.logprob))}`];
  const top = entry.top_logprobs || [];
  if (top.length) {
    lines.push("top alternatives:");
    for (const alt of top) lines.push(`  ${shown(alt.token)}  ${percent(Math.exp(alt.logprob))}`);
  }
  return lines.join("\n");
}

/**
 * Appends one span per token to an element. A token's text comes from its bytes through one
 * streaming decoder, so a character split across tokens shows whole (in the later span)
 * instead of as two replacement characters.
 */
export class TokenSpans {
  constructor(parent) {
    this.parent = parent;
    this.decoder = new TextDecoder("utf-8");
    this.last = null;
    this.chars = 0; // of text shown so far
  }

  add(entries) {
    for (const entry of entries) {
      const span = document.createElement("span");
      span.className = "tok";
      const p = Math.exp(entry.logprob);
      span.textContent = Array.isArray(entry.bytes)
        ? this.decoder.decode(new Uint8Array(entry.bytes), { stream: true })
        : entry.token;
      span.dataset.p = p.toFixed(4);
      span.style.backgroundColor = probabilityColour(p);
      span.title = tooltip(entry);
      this.parent.append(span);
      this.last = span;
      this.chars += span.textContent.length;
    }
  }

  /**
   * Show the end of ``text`` (the answer so far) that no token has shown: text that came
   * without logprobs. Text held back by the server comes after its tokens: already shown.
   */
  catchUp(text) {
    if (text.length <= this.chars) return;
    this.parent.append(text.slice(this.chars));
    this.chars = text.length;
  }

  /** Whatever bytes an unfinished character left in the decoder. */
  finish() {
    const rest = this.decoder.decode();
    if (rest && this.last) this.last.textContent += rest;
    this.chars += rest.length;
  }
}

// A stacked bar chart in SVG, drawn here: the page loads nothing from other origins.

const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#2f6fae", "#e07b39", "#3a9d5d", "#c2477a", "#7b61c4", "#a08a2a", "#3aa6b5"];
const SIZE = { width: 760, height: 260, left: 56, right: 12, top: 12, bottom: 36 };

function el(name, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = text;
  return node;
}

export function colourOf(index) {
  return PALETTE[index % PALETTE.length];
}

/** A round axis maximum at or above ``max``: 1, 2 or 5 times a power of ten. */
function niceMax(max) {
  if (max <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(max));
  return [1, 2, 5, 10].map((m) => m * power).find((v) => v >= max);
}

function compact(n) {
  return new Intl.NumberFormat("en", { notation: "compact" }).format(n);
}

/**
 * ``days``: the x axis (every day of the range, empty ones too, so gaps show);
 * ``series``: [{name, values: Map(day -> value)}], stacked in that order.
 */
export function stackedBars(days, series) {
  const { width, height, left, right, top, bottom } = SIZE;
  const svg = el("svg", {
    viewBox: `0 0 ${width} ${height}`, role: "img", class: "bars",
    "aria-label": "Tokens per day by model",
  });
  const totals = days.map((d) => series.reduce((sum, s) => sum + (s.values.get(d) || 0), 0));
  const yMax = niceMax(Math.max(0, ...totals));
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const y = (v) => top + plotH - (v / yMax) * plotH;
  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    const v = yMax * tick;
    svg.append(el("line", { x1: left, x2: width - right, y1: y(v), y2: y(v), class: "grid" }));
    svg.append(el("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", class: "axis" }, compact(v)));
  }
  const step = plotW / Math.max(1, days.length);
  const barW = Math.max(1, step * 0.7);
  const labelEvery = Math.ceil(days.length / 10);
  days.forEach((day, i) => {
    const x = left + i * step + (step - barW) / 2;
    let base = 0;
    series.forEach((s, k) => {
      const v = s.values.get(day) || 0;
      if (v <= 0) return;
      const rect = el("rect", {
        x, y: y(base + v), width: barW, height: Math.max(1, y(base) - y(base + v)),
        fill: colourOf(k), class: "bar", "data-day": day, "data-model": s.name,
      });
      rect.append(el("title", {}, `${day} · ${s.name}: ${v.toLocaleString("en")} tokens`));
      svg.append(rect);
      base += v;
    });
    if (i % labelEvery === 0 || i === days.length - 1) {
      svg.append(el("text", {
        x: left + i * step + step / 2, y: height - bottom + 16, "text-anchor": "middle", class: "axis",
      }, day.slice(5)));
    }
  });
  svg.append(el("line", { x1: left, x2: width - right, y1: y(0), y2: y(0), class: "axis-line" }));
  return svg;
}

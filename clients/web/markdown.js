// Safe Markdown for model output: the whole text is HTML-escaped FIRST, then a small set of
// constructs is turned into tags this file writes itself. Model output can therefore never
// inject markup, attributes or scripts; links are kept only for http(s) URLs.
(() => {
"use strict";

function escapeHtml(text) {
  return text
    .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
}

// Input is already escaped, so neither `<` nor `"` can appear raw in it.
function renderInline(escaped) {
  const codes = [];
  // code spans first, parked behind NUL markers so nothing inside them is formatted
  let s = escaped.replace(/`([^`\n]+)`/g, (_, code) => {
    codes.push(code);
    return `\u0000${codes.length - 1}\u0000`;
  });
  s = s.replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>");
  s = s.replace(/(^|[^*\w])\*([^*\n]+)\*(?![*\w])/g, "$1<em>$2</em>");
  s = s.replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/g,
    (_, label, url) => `<a href="${url}" target="_blank" rel="noopener noreferrer">${label}</a>`);
  return s.replace(/\u0000(\d+)\u0000/g, (_, i) => `<code>${codes[Number(i)]}</code>`);
}

const BLOCK_START = /^(```|#{1,6}\s|\s*[-*+]\s|\s*\d+[.)]\s|&gt;)/;

function renderList(lines, i, pattern, tag) {
  const items = [];
  let m;
  while (i < lines.length && (m = lines[i].match(pattern))) {
    items.push(`<li>${renderInline(m[1])}</li>`);
    i += 1;
  }
  return [`<${tag}>${items.join("")}</${tag}>`, i];
}

function renderMarkdown(source) {
  // NULs are our placeholder marker: drop any the model produced before escaping
  const lines = escapeHtml(String(source).replace(/\u0000/g, "")).split("\n");
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(/^```\s*([\w+-]*)\s*$/);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !/^```\s*$/.test(lines[i])) body.push(lines[i++]);
      i += 1; // the closing fence; an unclosed one (still streaming) runs to the end
      const cls = fence[1] ? ` class="lang-${fence[1]}"` : "";
      out.push(`<pre><code${cls}>${body.join("\n")}</code></pre>`);
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    if (heading) {
      const n = heading[1].length;
      out.push(`<h${n}>${renderInline(heading[2])}</h${n}>`);
      i += 1;
      continue;
    }
    let html;
    if (/^\s*[-*+]\s+/.test(line)) {
      [html, i] = renderList(lines, i, /^\s*[-*+]\s+(.*)$/, "ul");
      out.push(html);
      continue;
    }
    if (/^\s*\d+[.)]\s+/.test(line)) {
      [html, i] = renderList(lines, i, /^\s*\d+[.)]\s+(.*)$/, "ol");
      out.push(html);
      continue;
    }
    if (line.startsWith("&gt;")) {
      const quoted = [];
      while (i < lines.length && lines[i].startsWith("&gt;")) quoted.push(lines[i++].replace(/^&gt;\s?/, ""));
      out.push(`<blockquote>${quoted.map(renderInline).join("<br>")}</blockquote>`);
      continue;
    }
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && (para.length === 0 || !BLOCK_START.test(lines[i]))) {
      para.push(renderInline(lines[i++]));
    }
    out.push(`<p>${para.join("<br>")}</p>`);
  }
  return out.join("\n");
}

window.glmserveMarkdown = { escapeHtml, renderInline, renderMarkdown };
})(); // a closure: classic scripts share one global scope with app.js

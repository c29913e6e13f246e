// glmserve web chat. Streams with fetch + ReadableStream (the OpenAI SSE format), stops with
// AbortController (closing the stream makes the server abort the request), renders replies with
// markdown.js (escape first, then format). The API key lives in this browser's localStorage only.
"use strict";

const $ = (id) => document.getElementById(id);
const { renderMarkdown } = window.glmserveMarkdown;
const KEY_STORAGE = "glmserve.apiKey";
const history = []; // chat turns sent with each request: {role, content}

function authHeaders() {
  const key = $("api-key").value.trim();
  const h = { "Content-Type": "application/json" };
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function errorText(resp) {
  const text = await resp.text();
  try {
    const err = JSON.parse(text).error;
    return `${resp.status}: ${typeof err === "string" ? err : err.message}`;
  } catch (_) {
    return `${resp.status}: ${text.slice(0, 300) || resp.statusText}`;
  }
}

// POSTs `body`, calls onEvent(json) for each `data:` event; throws on HTTP or in-stream errors.
async function streamSSE(path, body, signal, onEvent) {
  const resp = await fetch(path, { method: "POST", headers: authHeaders(), body: JSON.stringify(body), signal });
  if (!resp.ok) throw new Error(await errorText(resp));
  const reader = resp.body.getReader();
  const decoder = new TextDecoder(); // stream mode keeps a UTF-8 character split across chunks whole
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, "");
      buf = buf.slice(nl + 1);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (!data) continue;
      if (data === "[DONE]") return;
      const event = JSON.parse(data);
      if (event.error) throw new Error(event.error.message || String(event.error));
      onEvent(event);
    }
  }
}

function numberField(id) {
  const v = parseFloat($(id).value);
  return Number.isFinite(v) ? v : undefined;
}

// ---- chat -----------------------------------------------------------------------------------
let chatAbort = null;

function addMessage(role, text) {
  const el = document.createElement("div");
  el.className = `msg ${role}`;
  const content = document.createElement("div");
  content.className = "content";
  if (role === "user") content.textContent = text; // user text is never interpreted
  else content.innerHTML = renderMarkdown(text);
  el.appendChild(content);
  $("messages").appendChild(el);
  el.scrollIntoView({ block: "end" });
  return el;
}

function setChatBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

async function sendChat(text) {
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const msg = addMessage("assistant", "");
  msg.classList.add("streaming");
  const content = msg.querySelector(".content");
  chatAbort = new AbortController();
  setChatBusy(true);
  $("chat-status").textContent = "…";
  let answer = "";
  let chunks = 0;
  let pending = false;
  const start = performance.now();
  let first = null;
  const paint = () => { pending = false; content.innerHTML = renderMarkdown(answer); msg.scrollIntoView({ block: "end" }); };
  const body = { model: $("model").value, messages: history.slice(), stream: true,
                 stream_options: { include_usage: true },
                 max_tokens: numberField("max-tokens"), temperature: numberField("temperature") };
  let usageTokens = null; // exact count from the final usage chunk; a stopped stream has none
  let outcome = "done";
  try {
    await streamSSE("v1/chat/completions", body, chatAbort.signal, (ev) => {
      if (ev.usage && ev.usage.completion_tokens != null) usageTokens = ev.usage.completion_tokens;
      const delta = ev.choices && ev.choices[0] && ev.choices[0].delta;
      if (!delta || !delta.content) return;
      if (first === null) first = performance.now();
      answer += delta.content;
      chunks += 1;
      if (!pending) { pending = true; requestAnimationFrame(paint); } // one re-render per frame
    });
  } catch (err) {
    outcome = err.name === "AbortError" ? "stopped" : "error";
    if (outcome === "error") $("chat-status").textContent = `error: ${err.message}`;
  }
  paint();
  msg.classList.remove("streaming");
  msg.classList.add(outcome);
  if (answer) history.push({ role: "assistant", content: answer });
  else if (outcome === "error") history.pop(); // the server never answered: let the user resend
  if (outcome !== "error") {
    const end = performance.now();
    const tokens = usageTokens === null ? chunks : usageTokens;
    const parts = [first === null ? "no tokens" : `TTFT ${Math.round(first - start)} ms`,
                   `${usageTokens === null ? "~" : ""}${tokens} tokens`];
    if (first !== null && tokens > 1 && end > first) parts.push(`${((tokens - 1) * 1000 / (end - first)).toFixed(1)} tok/s`);
    if (outcome === "stopped") parts.push("stopped");
    $("chat-status").textContent = parts.join(" · ");
  }
  chatAbort = null;
  setChatBusy(false);
}

// ---- summarize / translate ---------------------------------------------------------------------
function taskRunner(prefix, path, chunkObject, buildBody) {
  let abort = null;
  $(`${prefix}-run`).addEventListener("click", async () => {
    const out = $(`${prefix}-output`);
    const status = $(`${prefix}-status`);
    out.textContent = "";
    status.textContent = "…";
    abort = new AbortController();
    $(`${prefix}-run`).disabled = true;
    $(`${prefix}-stop`).disabled = false;
    let text = "";
    try {
      await streamSSE(path, buildBody(), abort.signal, (ev) => {
        if (ev.object && ev.object !== chunkObject) return;
        const d = typeof ev.delta === "string" ? ev.delta : (ev.delta && ev.delta.content) || "";
        text += d;
        out.textContent = text; // plain text: task output is never interpreted as markup
      });
      status.textContent = "done";
    } catch (err) {
      status.textContent = err.name === "AbortError" ? "stopped" : `error: ${err.message}`;
    }
    $(`${prefix}-run`).disabled = false;
    $(`${prefix}-stop`).disabled = true;
  });
  $(`${prefix}-stop`).addEventListener("click", () => abort && abort.abort());
}

function summarizeBody() {
  const body = { text: $("sum-input").value, stream: true, model: $("model").value || undefined };
  const maxLength = numberField("sum-max-length");
  if (maxLength) body.max_length = maxLength;
  if ($("sum-style").value) body.style = $("sum-style").value;
  if ($("sum-unit").value) body.length_unit = $("sum-unit").value;
  return body;
}

function translateBody() {
  const body = { text: $("tr-input").value, target_lang: $("tr-target").value.trim() || "en", stream: true,
                 model: $("model").value || undefined };
  if ($("tr-source").value.trim()) body.source_lang = $("tr-source").value.trim();
  return body;
}

// ---- page setup --------------------------------------------------------------------------------
async function loadModels() {
  const select = $("model");
  try {
    const resp = await fetch("v1/models", { headers: authHeaders() });
    if (!resp.ok) throw new Error(await errorText(resp));
    const { data } = await resp.json();
    select.replaceChildren(...data.map((m) => new Option(m.id, m.id)));
    $("chat-status").textContent = "";
  } catch (err) {
    select.replaceChildren(new Option("(unavailable)", ""));
    $("chat-status").textContent = `cannot list models: ${err.message}`;
  }
}

function showTab(name) {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const on = tab.dataset.tab === name;
    tab.setAttribute("aria-selected", String(on));
    $(`panel-${tab.dataset.tab}`).hidden = !on;
  }
}

function init() {
  $("api-key").value = localStorage.getItem(KEY_STORAGE) || "";
  $("api-key").addEventListener("change", () => {
    localStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    loadModels(); // a new key may unlock the model list
  });
  for (const tab of document.querySelectorAll("[role=tab]")) tab.addEventListener("click", () => showTab(tab.dataset.tab));
  $("chat-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("prompt").value.trim();
    if (!text || chatAbort) return;
    $("prompt").value = "";
    sendChat(text);
  });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { // isComposing: Chinese IME confirms with Enter
      e.preventDefault();
      $("chat-form").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => chatAbort && chatAbort.abort());
  $("reset").addEventListener("click", () => {
    if (chatAbort) chatAbort.abort();
    history.length = 0;
    $("messages").replaceChildren();
    $("chat-status").textContent = "";
  });
  taskRunner("sum", "v1/summarize", "summary.chunk", summarizeBody);
  taskRunner("tr", "v1/translate", "translation.chunk", translateBody);
  loadModels();
}

init();

// The codegemma playground: chat (POST /v1/chat/completions) and fill-in-the-middle
// (POST /infill), both streamed as server-sent events. No build step, nothing fetched from
// elsewhere. `?demo=chat&prompt=...` or `?demo=fim&prefix=...&suffix=...` (with optional
// `max_tokens`) runs one request at load, for tests and links.
"use strict";

const $ = (id) => document.getElementById(id);
let running = null; // the AbortController of the request in flight
const history = []; // the chat so far: {role, content}

function headers() {
  const out = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) out.Authorization = "Bearer " + key;
  return out;
}

// POST `body` to `path` and call `onEvent` with each SSE event's JSON; resolves with the number
// of events once the stream ends.
async function streamEvents(path, body, onEvent) {
  running = new AbortController();
  const response = await fetch(path, {
    method: "POST", headers: headers(), body: JSON.stringify(body), signal: running.signal,
  });
  if (!response.ok) {
    const error = await response.json().catch(() => ({}));
    throw new Error((error.error && error.error.message) || response.statusText);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "", events = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffered.indexOf("\n\n")) >= 0) {
      const block = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") continue;
        const event = JSON.parse(data);
        if (event.error) throw new Error(event.error.message || String(event.error));
        events += 1;
        onEvent(event);
      }
    }
  }
  return events;
}

function report(text, done) {
  $("status").textContent = text;
  if (done) document.body.dataset.done = "1";
}

async function run(task) {
  if (running) running.abort();
  const started = performance.now();
  report("streaming…", false);
  try {
    const { chunks, chars } = await task();
    const ms = Math.round(performance.now() - started);
    report(`streamed ${chunks} chunks, ${chars} characters in ${ms} ms`, true);
  } catch (error) {
    report(error.name === "AbortError" ? "stopped" : "error: " + error.message, true);
  } finally {
    running = null;
  }
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "message " + role;
  div.textContent = text;
  $("conversation").appendChild(div);
  return div;
}

function chat(prompt, maxTokens, temperature) {
  return run(async () => {
    history.push({ role: "user", content: prompt });
    addMessage("user", prompt);
    const out = addMessage("assistant", "");
    let chunks = 0;
    // The model name is the server's own (`--alias`): ask it rather than guess.
    const models = await (await fetch("/v1/models", { headers: headers() })).json();
    const body = {
      model: models.data[0].id, messages: history, stream: true,
      max_tokens: maxTokens, temperature,
    };
    await streamEvents("/v1/chat/completions", body, (event) => {
      const text = (event.choices[0] && event.choices[0].delta.content) || "";
      if (text) { out.textContent += text; chunks += 1; }
    });
    history.push({ role: "assistant", content: out.textContent });
    return { chunks, chars: out.textContent.length };
  });
}

function fim(prefix, suffix, maxTokens, temperature) {
  return run(async () => {
    const out = $("fim-output");
    out.textContent = "";
    let chunks = 0;
    const body = {
      input_prefix: prefix, input_suffix: suffix, n_predict: maxTokens,
      temperature, stream: true,
    };
    await streamEvents("/infill", body, (event) => {
      if (event.content) { out.textContent += event.content; chunks += 1; }
    });
    return { chunks, chars: out.textContent.length };
  });
}

function show(name) {
  for (const other of ["chat", "fim"]) {
    $(other).hidden = other !== name;
    $("tab-" + other).classList.toggle("active", other === name);
  }
}

function number(id) { return Number($(id).value); }

$("tab-chat").onclick = () => show("chat");
$("tab-fim").onclick = () => show("fim");
for (const stop of document.querySelectorAll(".stop")) {
  stop.onclick = () => running && running.abort();
}
$("chat").onsubmit = (event) => {
  event.preventDefault();
  const prompt = $("chat-input").value.trim();
  if (!prompt) return;
  $("chat-input").value = "";
  chat(prompt, number("chat-max"), number("chat-temp"));
};
$("chat-input").onkeydown = (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("chat").requestSubmit(); }
};
$("fim").onsubmit = (event) => {
  event.preventDefault();
  fim($("fim-prefix").value, $("fim-suffix").value, number("fim-max"), number("fim-temp"));
};

const demo = new URLSearchParams(location.search);
if (demo.get("demo") === "chat") {
  if (demo.has("max_tokens")) $("chat-max").value = demo.get("max_tokens");
  chat(demo.get("prompt") || "Hello", number("chat-max"), 0);
} else if (demo.get("demo") === "fim") {
  show("fim");
  if (demo.has("prefix")) $("fim-prefix").value = demo.get("prefix");
  if (demo.has("suffix")) $("fim-suffix").value = demo.get("suffix");
  if (demo.has("max_tokens")) $("fim-max").value = demo.get("max_tokens");
  fim($("fim-prefix").value, $("fim-suffix").value, number("fim-max"), 0);
}

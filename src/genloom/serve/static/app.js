// genloom's web page: plain JavaScript over the server's own OpenAI-compatible API (no build step).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { messages: [], controller: null };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

function showError(text) { $("status").textContent = text || ""; }

async function errorOf(response) {
  try { return (await response.json()).error.message; } catch { return `HTTP ${response.status}`; }
}

function numberOr(id, fallback) {
  const value = $(id).value.trim();
  return value === "" ? fallback : Number(value);
}

// ---- models -------------------------------------------------------------------------------------------
async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) { showError(await errorOf(response)); return; }
  const models = (await response.json()).data;
  const fill = (id, kind, accept) => {
    const select = $(id);
    select.innerHTML = "";
    for (const m of models.filter((m) => m.kind === kind && accept(m))) {
      const option = document.createElement("option");
      option.value = m.id;
      option.textContent = m.chat === false ? `${m.id} (completion)` : m.method ? `${m.id} (${m.method})` : m.id;
      select.appendChild(option);
    }
  };
  fill("chat-model", "text", () => true);
  fill("image-model", "images", () => true);
  fill("translate-model", "translation", () => true);
  state.models = Object.fromEntries(models.map((m) => [m.id, m]));
  showImageSteps();
  showError("");
}

// A token model draws in a fixed number of steps; a diffusion model's are the user's choice.
function showImageSteps() {
  const m = state.models && state.models[$("image-model").value];
  const field = $("image-steps");
  field.disabled = !!m && m.method === "tokens";
  field.placeholder = m ? `${m.steps}${m.method === "tokens" ? " (fixed)" : ""}` : "model's";
  if (field.disabled) field.value = "";
}

// ---- chat ---------------------------------------------------------------------------------------------
function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = `message ${role}`;
  div.innerHTML = `<span class="role"></span><span class="text"></span>`;
  div.querySelector(".role").textContent = role;
  div.querySelector(".text").textContent = text;
  $("chat-log").appendChild(div);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
  return div.querySelector(".text");
}

// Reads server-sent events from a fetch response; calls onData with each parsed JSON chunk.
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) !== -1) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }
}

async function sendChat(event) {
  event.preventDefault();
  const text = $("chat-input").value;
  if (!text.trim() || state.controller) return;
  const model = $("chat-model").value;
  const isChat = !state.models || !state.models[model] || state.models[model].chat !== false;
  $("chat-input").value = "";
  addMessage("user", text);
  state.messages.push({ role: "user", content: text });
  const out = addMessage("assistant", "");
  const system = $("chat-system").value.trim();
  const body = {
    model, stream: true,
    temperature: numberOr("chat-temperature", 0.7), top_p: numberOr("chat-top-p", 1),
  };
  const maxTokens = numberOr("chat-max-tokens", null);  // none: the server's default, the rest of the context
  if (maxTokens !== null) body.max_tokens = maxTokens;
  else if (!isChat) body.max_tokens = 64;
  const seed = numberOr("chat-seed", null);
  if (seed !== null) body.seed = seed;
  let url = "/v1/chat/completions";
  if (isChat) {
    body.messages = (system ? [{ role: "system", content: system }] : []).concat(state.messages);
  } else {  // a base model: continue the transcript as plain text
    url = "/v1/completions";
    body.prompt = state.messages.map((m) => m.content).join("\n");
  }
  state.controller = new AbortController();
  $("chat-stop").disabled = false;
  $("chat-send").disabled = true;
  let reply = "";
  try {
    const response = await fetch(url, { method: "POST", headers: headers(), body: JSON.stringify(body),
                                        signal: state.controller.signal });
    if (!response.ok) throw new Error(await errorOf(response));
    await readEvents(response, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      for (const choice of chunk.choices || []) {
        const piece = isChat ? (choice.delta && choice.delta.content) || "" : choice.text || "";
        reply += piece;
        out.textContent = reply;
      }
      $("chat-log").scrollTop = $("chat-log").scrollHeight;
    });
    showError("");
  } catch (e) {
    if (e.name !== "AbortError") showError(e.message);
  } finally {
    state.messages.push({ role: "assistant", content: reply });
    state.controller = null;
    $("chat-stop").disabled = true;
    $("chat-send").disabled = false;
  }
}

// ---- images -------------------------------------------------------------------------------------------
async function sendImages(event) {
  event.preventDefault();
  const prompt = $("image-prompt").value.trim();
  if (!prompt) return;
  const body = { model: $("image-model").value, prompt, n: numberOr("image-n", 4), response_format: "b64_json",
                 guidance_scale: numberOr("image-guidance", 3), negative_prompt: $("image-negative").value };
  const seed = numberOr("image-seed", null);
  if (seed !== null) body.seed = seed;
  const steps = numberOr("image-steps", null);
  if (steps !== null) body.steps = steps;
  const rerank = numberOr("image-rerank", null);
  if (rerank !== null) body.rerank = rerank;
  $("image-send").disabled = true;
  try {
    const response = await fetch("/v1/images/generations", { method: "POST", headers: headers(),
                                                             body: JSON.stringify(body) });
    if (!response.ok) throw new Error(await errorOf(response));
    const result = await response.json();
    result.data.forEach((image, i) => {
      const figure = document.createElement("figure");
      const link = document.createElement("a");
      link.href = `data:image/png;base64,${image.b64_json}`;
      link.download = `genloom-${result.seed + i}.png`;
      const img = document.createElement("img");
      img.src = link.href;
      img.alt = prompt;
      img.className = "generated";
      link.appendChild(img);
      const caption = document.createElement("figcaption");
      caption.textContent = `${prompt} · seed ${result.seed + i}`;
      figure.append(link, caption);
      $("gallery").prepend(figure);
    });
    showError("");
  } catch (e) {
    showError(e.message);
  } finally {
    $("image-send").disabled = false;
  }
}

// ---- translation --------------------------------------------------------------------------------------
async function sendTranslation(event) {
  event.preventDefault();
  const texts = $("translate-input").value.split("\n").filter((t) => t.trim());
  if (!texts.length) return;
  const body = { model: $("translate-model").value, text: texts, beam_size: numberOr("translate-beam", 4) };
  if ($("translate-source").value.trim()) body.source_language = $("translate-source").value.trim();
  if ($("translate-target").value.trim()) body.target_language = $("translate-target").value.trim();
  $("translate-send").disabled = true;
  try {
    const response = await fetch("/v1/translations/text", { method: "POST", headers: headers(),
                                                            body: JSON.stringify(body) });
    if (!response.ok) throw new Error(await errorOf(response));
    $("translate-output").textContent = (await response.json()).translations.map((t) => t.text).join("\n");
    showError("");
  } catch (e) {
    showError(e.message);
  } finally {
    $("translate-send").disabled = false;
  }
}

// ---- wiring -------------------------------------------------------------------------------------------
for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === tab));
    document.querySelectorAll(".panel").forEach((p) => p.classList.toggle("active", p.id === `panel-${tab.dataset.tab}`));
  });
}
$("chat-form").addEventListener("submit", sendChat);
$("chat-input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); }
});
$("chat-stop").addEventListener("click", () => state.controller && state.controller.abort());
$("chat-reset").addEventListener("click", () => { state.messages = []; $("chat-log").innerHTML = ""; });
$("image-form").addEventListener("submit", sendImages);
$("image-model").addEventListener("change", showImageSteps);
$("translate-form").addEventListener("submit", sendTranslation);
$("api-key").value = localStorage.getItem("genloom-api-key") || "";
$("api-key").addEventListener("change", () => { localStorage.setItem("genloom-api-key", $("api-key").value); loadModels(); });
loadModels();

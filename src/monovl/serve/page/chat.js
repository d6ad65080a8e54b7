// monovl chat page. The conversation is kept here as OpenAI messages and sent whole with every
// question (the server is stateless); the image goes, as a data: URL, in the user message that was
// sent after it was chosen. Answers stream over SSE from /v1/chat/completions, and grounding markup
// <ref>label</ref><box>[[x1, y1, x2, y2], ...]</box> (0-1000, relative to the image) is drawn as boxes.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  model: null,
  messages: [],        // OpenAI messages sent so far (user and assistant)
  pendingImage: null,  // data: URL chosen but not yet sent
  controller: null,    // AbortController of the answer being streamed
};

// ---- grounding boxes -------------------------------------------------------------------------------

// [{label, box: [x1, y1, x2, y2]}] in 0-1000 coordinates; a <box> may hold several boxes, and one
// with no <ref> right before it has no label (the same rules as monovl.processing.grounding).
function parseBoxes(text) {
  const markup = /(?:<ref>([\s\S]*?)<\/ref>\s*)?<box>([\s\S]*?)<\/box>/g;
  const number = "\\s*(-?\\d+(?:\\.\\d+)?)\\s*";
  const one = new RegExp("\\[" + [number, number, number, number].join(",") + "\\]", "g");
  const out = [];
  for (const m of text.matchAll(markup)) {
    for (const b of m[2].matchAll(one)) {
      out.push({ label: m[1] === undefined ? null : m[1].trim(), box: b.slice(1, 5).map(Number) });
    }
  }
  return out;
}

// Boxes are percentages of the image's box, so they stay right when the image is resized.
function drawBoxes(boxes) {
  const layer = $("boxes");
  layer.replaceChildren();
  for (const { label, box } of boxes) {
    const [x1, y1, x2, y2] = box;
    const div = document.createElement("div");
    div.className = "box";
    Object.assign(div.style, { left: x1 / 10 + "%", top: y1 / 10 + "%",
                               width: (x2 - x1) / 10 + "%", height: (y2 - y1) / 10 + "%" });
    if (label) {
      const tag = document.createElement("span");
      tag.textContent = label;
      div.append(tag);
    }
    layer.append(div);
  }
}

// ---- image input -----------------------------------------------------------------------------------

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function setImage(file) {
  if (!file || !file.type.startsWith("image/")) return;
  state.pendingImage = await readAsDataURL(file);
  $("image").src = state.pendingImage;
  $("stage").hidden = false;
  drawBoxes([]);
}

$("image-input").addEventListener("change", (e) => setImage(e.target.files[0]));
document.addEventListener("paste", (e) => {
  const item = [...(e.clipboardData?.items || [])].find((i) => i.type.startsWith("image/"));
  if (item) { e.preventDefault(); setImage(item.getAsFile()); }
});
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  setImage(e.dataTransfer.files[0]);
});

// ---- conversation ----------------------------------------------------------------------------------

function bubble(role, text, image) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  if (image) {
    const img = document.createElement("img");
    img.src = image;
    div.append(img);
  }
  div.append(document.createTextNode(text));
  $("messages").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function busy(on) {
  $("send").disabled = on;
  $("stop").hidden = !on;
}

// Reads an SSE response: calls onData(parsed JSON) per `data:` event until [DONE].
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }
}

async function ask(question) {
  const content = [];
  if (state.pendingImage) content.push({ type: "image_url", image_url: { url: state.pendingImage } });
  content.push({ type: "text", text: question });
  const userMessage = { role: "user", content };
  bubble("user", question, state.pendingImage);
  const answer = bubble("assistant", "");
  answer.dataset.done = "false";
  const text = answer.lastChild;
  busy(true);
  state.controller = new AbortController();
  let reply = "";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      signal: state.controller.signal,
      body: JSON.stringify({
        model: state.model, stream: true, messages: [...state.messages, userMessage],
        max_tokens: Number($("max-tokens").value) || 256, temperature: Number($("temperature").value) || 0,
      }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error?.message || `HTTP ${response.status}`);
    }
    await readEvents(response, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      const piece = chunk.choices?.[0]?.delta?.content;
      if (piece) {
        reply += piece;
        text.data = reply;
        drawBoxes(parseBoxes(reply));
        answer.scrollIntoView({ block: "end" });
      }
    });
    // Only a finished exchange joins the history; the image is sent once, with this message.
    state.messages.push(userMessage, { role: "assistant", content: reply });
    state.pendingImage = null;
  } catch (err) {
    if (err.name !== "AbortError") bubble("error", String(err.message || err));
  } finally {
    answer.dataset.done = "true";
    state.controller = null;
    busy(false);
  }
}

$("ask").addEventListener("submit", (e) => {
  e.preventDefault();
  const question = $("question").value.trim();
  if (!question || state.controller) return;
  $("question").value = "";
  ask(question);
});
$("question").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("ask").requestSubmit(); }
});
$("stop").addEventListener("click", () => state.controller?.abort());
$("reset").addEventListener("click", () => {
  state.controller?.abort();
  state.messages = [];
  state.pendingImage = null;
  $("messages").replaceChildren();
  $("stage").hidden = true;
  $("image-input").value = "";
  drawBoxes([]);
});

fetch("/v1/models").then((r) => r.json()).then((body) => {
  const m = body.data[0];
  state.model = m.id;
  $("model").textContent = `${m.id} (max ${m.max_model_len} tokens)`;
  document.body.dataset.ready = "true";
}).catch((err) => { $("model").textContent = "cannot reach the server: " + err; });

window.monovlChat = { parseBoxes, drawBoxes, state };

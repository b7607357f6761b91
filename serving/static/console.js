// The agent console: keeps the conversation in the page, sends it with the draft to /v1/hint while the agent
// types (debounced; an older answer never overwrites a newer one) and shows the hints with their evidence.
"use strict";

const DEBOUNCE_MS = 250;
const $ = (selector) => document.querySelector(selector);
const conversation = [];
let pending = null;   // timer of the debounced request
let inFlight = null;  // AbortController of the request on the wire
let latest = 0;       // number of the newest request; answers to older ones are dropped

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "className") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

// Evidence offsets count Unicode code points (Python's str), not UTF-16 units: slice code points.
function highlighted(text, spans) {
  const chars = Array.from(text);
  const fragment = document.createDocumentFragment();
  let position = 0;
  for (const span of [...spans].sort((a, b) => a.start - b.start)) {
    if (span.start < position) continue;
    fragment.append(chars.slice(position, span.start).join(""));
    const mark = element("mark", {title: (span.source || []).join(" + ")}, chars.slice(span.start, span.end).join(""));
    fragment.append(mark);
    position = span.end;
  }
  fragment.append(chars.slice(position).join(""));
  return fragment;
}

function mergedSpans(spanLists) {
  const merged = [];
  for (const span of spanLists.flat().sort((a, b) => a.start - b.start)) {
    const last = merged[merged.length - 1];
    if (last && span.start <= last.end) last.end = Math.max(last.end, span.end);
    else merged.push({start: span.start, end: span.end, source: span.source});
  }
  return merged;
}

function renderConversation() {
  const list = $("#conversation");
  list.replaceChildren(...conversation.map((turn) => element("li", {className: turn.role}, turn.text)));
  list.scrollTop = list.scrollHeight;
}

function setHints(state, draft, ...children) {
  const hints = $("#hints");
  hints.dataset.state = state;
  hints.dataset.draft = draft;
  hints.replaceChildren(...children);
}

function renderScores(result) {
  const scores = $("#scores");
  scores.replaceChildren(...Object.entries(result.labels).map(([label, hint]) => element(
    "span", {className: hint.fired ? "over" : "", title: `阈值 ${hint.threshold}`},
    `${hint.title.split(" / ")[0]} ${hint.score.toFixed(2)}　`)));
}

function hintCard(label, hint, draft) {
  const alternatives = hint.suggestion.alternatives.map((text) => {
    const button = element("button", {type: "button", title: "用这句替换草稿"}, text);
    button.addEventListener("click", () => { $("#draft").value = text; requestHint(); });
    return element("li", {}, button);
  });
  return element("article", {className: "hint", dataset: {label}},
    element("h3", {}, hint.title, element("code", {}, label),
      element("span", {className: "score"}, `${hint.score.toFixed(2)} ≥ ${hint.threshold}`)),
    element("p", {className: "evidence"}, highlighted(draft, hint.evidence)),
    element("p", {className: "advice"}, hint.suggestion.advice),
    element("p", {className: "alternatives-title"}, "可以这样回复（点一句替换草稿）："),
    element("ul", {className: "alternatives"}, ...alternatives));
}

function render(result, draft) {
  renderScores(result);
  const fired = result.fired;
  $("#draft-preview").replaceChildren(
    fired.length ? highlighted(draft, mergedSpans(fired.map((label) => result.labels[label].evidence))) : "");
  if (!fired.length) {
    setHints("clean", draft, element("p", {className: "clean"}, "✓ 没有发现问题"));
    return;
  }
  setHints("flagged", draft, ...fired.map((label) => hintCard(label, result.labels[label], draft)));
}

async function fetchHint(draft, number) {
  inFlight?.abort();
  inFlight = new AbortController();
  $("#hints").dataset.state = "loading";
  try {
    const response = await fetch("/v1/hint", {
      method: "POST", headers: {"Content-Type": "application/json"}, signal: inFlight.signal,
      body: JSON.stringify({context: conversation, draft, draft_ts: new Date().toISOString()}),
    });
    if (number !== latest) return;
    if (response.status === 401) {
      setHints("error", draft, element("p", {className: "error"}, "需要令牌：请用 /?token=<令牌> 打开本页"));
      return;
    }
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      setHints("error", draft, element("p", {className: "error"}, `请求失败（${response.status}）${body.detail || ""}`));
      return;
    }
    const result = await response.json();
    if (number === latest) render(result, draft);
  } catch (error) {
    if (error.name !== "AbortError" && number === latest) {
      setHints("error", draft, element("p", {className: "error"}, `连接失败：${error.message}`));
    }
  }
}

function requestHint() {
  clearTimeout(pending);
  const draft = $("#draft").value;
  const number = ++latest;
  if (!draft.trim()) {
    inFlight?.abort();
    $("#draft-preview").replaceChildren();
    $("#scores").replaceChildren();
    setHints("idle", "", element("p", {className: "note"}, "输入草稿后，这里会显示提示。"));
    return;
  }
  pending = setTimeout(() => fetchHint(draft, number), DEBOUNCE_MS);
}

function addTurn(role, text) {
  if (!text.trim()) return;
  conversation.push({role, text, ts: new Date().toISOString()});
  renderConversation();
  requestHint();
}

$("#add-turn").addEventListener("submit", (event) => {
  event.preventDefault();
  addTurn($("#turn-role").value, $("#turn-text").value);
  $("#turn-text").value = "";
});
$("#clear-conversation").addEventListener("click", () => {
  conversation.length = 0;
  renderConversation();
  requestHint();
});
$("#send").addEventListener("click", () => {
  addTurn("agent", $("#draft").value);
  $("#draft").value = "";
  requestHint();
});
$("#draft").addEventListener("input", requestHint);
$("#draft").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && event.ctrlKey) $("#send").click();
});

fetch("/info").then((response) => (response.ok ? response.json() : null)).then((info) => {
  if (!info) return;
  $("#model-info").textContent = `模型 ${info.name} ${info.version} · ${info.engine} ${info.quantization || ""}`;
});
renderConversation();

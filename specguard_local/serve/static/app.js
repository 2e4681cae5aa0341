// The tutor page: asks /v1/chat/completions (streamed) and /v1/check on this server only, renders math with the
// vendored KaTeX. No other address is ever contacted.
"use strict";

const $ = (id) => document.getElementById(id);
const DELIMITERS = [{left: "$$", right: "$$", display: true}, {left: "\\[", right: "\\]", display: true},
                    {left: "\\(", right: "\\)", display: false}, {left: "$", right: "$", display: false}];

function renderMath(element) {
  if (window.renderMathInElement) {
    window.renderMathInElement(element, {delimiters: DELIMITERS, throwOnError: false});
  }
}

function headers() {
  const key = $("api-key").value.trim();
  return key ? {"Content-Type": "application/json", "Authorization": `Bearer ${key}`}
             : {"Content-Type": "application/json"};
}

function showError(box, message) {
  box.textContent = message;
  box.hidden = false;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return `${body.error.message} (HTTP ${response.status})`;
  } catch (_) {
    return `The server answered HTTP ${response.status}.`;
  }
}

function fmt(value) {
  return typeof value === "number" ? (Number.isInteger(value) ? String(value) : value.toFixed(3)) : String(value);
}

function scoreLines(scores) {
  return Object.entries(scores || {}).map(([key, value]) => `${key} = ${fmt(value)}`).join("\n");
}

// One step in the list: its mark (who wrote it) toggles its scores, for hover, tap or keyboard alike.
function stepItem(kind, label, text, details) {
  const item = document.createElement("li");
  item.className = kind;
  const mark = document.createElement("button");
  mark.type = "button";
  mark.className = "mark";
  mark.textContent = label;
  mark.title = details;
  mark.setAttribute("aria-expanded", "false");
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text.trim();
  const scores = document.createElement("div");
  scores.className = "scores";
  scores.textContent = details;
  scores.hidden = true;
  mark.addEventListener("click", () => {
    scores.hidden = !scores.hidden;
    mark.setAttribute("aria-expanded", String(!scores.hidden));
  });
  item.append(mark, body, scores);
  renderMath(body);
  return item;
}

function whoWrote(step) {
  if (step.verdict === "accepted") return ["kept", "draft ✓"];
  if (step.verdict === "salvaged") return ["salvaged", `salvaged ${step.accepted}/${step.drafted}`];
  if (step.source === "draft") return ["kept", "draft"];
  return ["target", step.verdict === "rejected" ? "target ↻" : "target"];
}

function lastBoxed(text) {
  const at = text.lastIndexOf("\\boxed{");
  if (at < 0) return null;
  let depth = 0;
  for (let i = at + 6; i < text.length; i++) {
    if (text[i] === "{") depth++;
    if (text[i] === "}" && --depth === 0) return text.slice(at + 7, i);
  }
  return null;
}

function showStats(stats, steps) {
  const total = steps.reduce((n, s) => n + s.tokens, 0) || 1;
  const kept = steps.reduce((n, s) => n + (s.accepted || 0), 0);
  const share = (n) => `${Math.round(100 * n / total)}%`;
  const parts = [`${stats.tokens} tokens · ${stats.tokens_per_s.toFixed(1)} tokens/s · ${stats.wall_s.toFixed(1)} s`];
  if (stats.kept) {  // salvage: who wrote the answer's tokens
    const k = stats.kept;
    parts.push(`who wrote it: the draft, kept whole ${share(k.kept_whole)}, kept as the target's agreed prefix ` +
               `${share(k.salvaged)}; the target ${share(total - k.kept_whole - k.salvaged)} ` +
               `(${k.passes} target passes)`);
  } else {
    parts.push(`who wrote it: the draft ${share(kept)}, the target ${share(total - kept)}`);
  }
  if (stats.control && stats.control.verifier) parts.push(`verifier ${stats.control.verifier}` +
    (stats.control.reason ? ` · ${stats.control.reason}` : ""));
  const time = Object.entries(stats.timings || {}).map(([k, v]) => `${k.replace(/_/g, " ")} ${v.toFixed(2)} s`);
  if (time.length) parts.push(`time: ${time.join(", ")}`);
  $("stats").textContent = parts.join("\n");
  $("stats").hidden = false;
}

async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true}).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("");
      if (data && data !== "[DONE]") onData(JSON.parse(data));
    }
  }
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  const errorBox = $("ask-error");
  errorBox.hidden = true;
  if (!question) return showError(errorBox, "Write a question first.");
  const body = {model: $("method").value, stream: true, messages: [{role: "user", content: question}],
                max_tokens: Number($("max-tokens").value) || 512};
  if ($("verifier").value) body.verifier = $("verifier").value;
  if ($("tau").value !== "") body.tau = Number($("tau").value);
  $("steps").replaceChildren();
  $("answer").hidden = $("stats").hidden = true;
  $("ask-button").disabled = true;
  const steps = [];
  let text = "";
  try {
    const response = await fetch("/v1/chat/completions", {method: "POST", headers: headers(), body: JSON.stringify(body)});
    if (!response.ok) return showError(errorBox, await errorMessage(response));
    await readEvents(response, (data) => {
      if (data.error) return showError(errorBox, data.error.message);
      const extension = data.specguard || {};
      if (extension.step) {
        const step = extension.step;
        steps.push(step);
        text += step.text;
        const [kind, label] = whoWrote(step);
        $("steps").append(stepItem(kind, label, step.text, scoreLines(step.scores)));
      }
      if (extension.stats) showStats(extension.stats, steps);
    });
    const boxed = lastBoxed(text);
    if (boxed !== null) {
      $("answer").textContent = `Answer: \\(\\boxed{${boxed}}\\)`;
      renderMath($("answer"));
      $("answer").hidden = false;
    }
  } catch (error) {
    showError(errorBox, `Cannot reach the server: ${error.message}`);
  } finally {
    $("ask-button").disabled = false;
  }
}

async function check(event) {
  event.preventDefault();
  const errorBox = $("check-error");
  errorBox.hidden = true;
  const question = $("check-question").value.trim();
  const solution = $("solution").value.trim();
  if (!question || !solution) return showError(errorBox, "Write the question and your steps first.");
  $("checked").replaceChildren();
  $("verdict").hidden = true;
  $("check-button").disabled = true;
  try {
    const response = await fetch("/v1/check", {method: "POST", headers: headers(),
                                                body: JSON.stringify({question, solution})});
    if (!response.ok) return showError(errorBox, await errorMessage(response));
    const result = await response.json();
    for (const step of result.steps) {
      const item = stepItem(step.doubtful ? "doubtful" : "right", step.doubtful ? `✗ ${step.evidence}` : "✓ right",
                            step.text, scoreLines(step.scores));
      if (step.doubtful) {
        const why = document.createElement("div");
        why.className = "why";
        why.textContent = `Why: ${step.reason}`;
        item.querySelector(".text").after(why);
      }
      if (step.index === result.first_doubtful) item.classList.add("first");
      $("checked").append(item);
    }
    const verdict = $("verdict");
    if (result.first_doubtful === null) {
      verdict.textContent = `Every step looks right (your answer: ${result.answer}).`;
    } else {
      verdict.textContent = `Step ${result.first_doubtful + 1} looks wrong: ${result.steps[result.first_doubtful].reason}.` +
                            (result.hint ? ` Hint — that step done right: ${result.hint}` : "");
    }
    renderMath(verdict);
    verdict.hidden = false;
  } catch (error) {
    showError(errorBox, `Cannot reach the server: ${error.message}`);
  } finally {
    $("check-button").disabled = false;
  }
}

function selectTab(tab) {
  for (const other of document.querySelectorAll('[role="tab"]')) {
    const on = other === tab;
    other.setAttribute("aria-selected", String(on));
    other.tabIndex = on ? 0 : -1;
    $(other.getAttribute("aria-controls")).hidden = !on;
  }
  tab.focus();
}

document.addEventListener("DOMContentLoaded", () => {
  $("ask-form").addEventListener("submit", ask);
  $("check-form").addEventListener("submit", check);
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (event) => {
      if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
        selectTab(tabs[(i + (event.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length]);
      }
    });
  });
  for (const form of ["ask-form", "check-form"]) {
    $(form).addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $(form).requestSubmit();
    });
  }
  fetch("/health").then((r) => r.json()).then((h) => {
    $("pair").textContent = `Draft ${h.draft.split("/").pop()} → target ${h.target.split("/").pop()}.`;
  }).catch(() => {});
});

// parley's web page: talk to the server it came from over WebRTC, and see each turn's latency.
//
// Plain ES module, no build step, nothing from elsewhere: every URL is relative to the page, so
// it works behind a path prefix too. Audio goes out as the microphone track of one
// RTCPeerConnection and comes back as its remote track; the OpenAI Realtime events travel on
// the data channel "oai-events". A pasted key lives in a variable of this module only.
//
// Tests read window.parleyTurns (one entry per reply), window.parleyEvents (server events
// received), window.parleySession (the session as the server last described it) and
// window.parleyMic.lastVoicedAt, and wait on <body data-state="idle|connecting|live|ended|error">.

import { Conversation } from "./conversation.js";
import { BLOCK_MS, Level, SpeechEnds } from "./levels.js";

const $ = (id) => document.getElementById(id);
const ui = {
  body: document.body,
  keyPanel: $("key-panel"), demoRow: $("demo-row"), demoKey: $("demo-key"),
  pasteForm: $("paste-form"), apiKey: $("api-key"), keyStatus: $("key-status"),
  forgetKey: $("forget-key"),
  talk: $("talk"), mute: $("mute"), sendTurn: $("send-turn"), micLevel: $("mic-level"),
  status: $("status"), error: $("error"), cost: $("cost"), costValue: $("cost-value"),
  audio: $("reply-audio"), transcript: $("transcript"), empty: $("transcript-empty"),
  settings: $("settings"), voice: $("voice"), instructions: $("instructions"),
  transcription: $("transcription"), settingsStatus: $("settings-status"),
};

const LOUD_RMS = 0.006; // about -44 dBFS: speech, not silence or Opus's quiet floor
const POLL_MS = 20;
const ICE_WAIT_MS = 2000;

window.parleyTurns = [];
window.parleyEvents = [];
window.parleySession = null;
window.parleyMic = {
  // When the microphone last carried speech (performance.now() ms), this call; null: not yet.
  get lastVoicedAt() {
    return call && Number.isFinite(call.speech.last) ? call.speech.last : null;
  },
};

let config = null;
let pastedKey = null; // never written to storage, cookies or the DOM
let demoReady = false;
let call = null;
let costUsd = 0;
const conversation = new Conversation(ui.transcript, ui.empty, (usd) => {
  costUsd += usd;
  ui.costValue.textContent = `$${costUsd.toFixed(4)}`;
});

class UserError extends Error {}

// --- state and status ------------------------------------------------------------------------

function setState(next, message) {
  ui.body.dataset.state = next;
  ui.talk.dataset.state = next;
  const active = next === "connecting" || next === "live";
  ui.talk.textContent = active ? "Hang up" : "Talk";
  ui.talk.classList.toggle("danger", active);
  ui.mute.disabled = next !== "live";
  if (!active) setMuted(false);
  updateSendTurn();
  if (message) status(message);
}

function status(text) {
  ui.status.textContent = text;
}

function showError(text) {
  ui.error.textContent = text;
  ui.error.hidden = !text;
}

function currentSettings() {
  const form = new FormData(ui.settings);
  return {
    voice: ui.voice.value,
    instructions: ui.instructions.value,
    turn: form.get("turn") || "server_vad",
    transcription: ui.transcription.checked,
  };
}

function sessionConfig(s = currentSettings()) {
  const session = {
    type: "realtime",
    instructions: s.instructions,
    audio: {
      input: {
        turn_detection: s.turn === "manual" ? null : { type: s.turn },
        transcription: s.transcription ? {} : null,
      },
      output: {},
    },
  };
  // The voice goes out only once the person picked one: the server's default otherwise.
  if (s.voice && ui.voice.dataset.picked === "true") session.audio.output.voice = s.voice;
  return session;
}

function updateSendTurn() {
  const manual = (call ? call.settings.turn : currentSettings().turn) === "manual";
  ui.sendTurn.hidden = !manual;
  ui.sendTurn.disabled = !(manual && ui.body.dataset.state === "live");
}

function setMuted(muted) {
  ui.mute.setAttribute("aria-pressed", String(muted));
  if (call && call.mic) call.mic.getAudioTracks().forEach((t) => { t.enabled = !muted; });
}

// --- the server's configuration and keys ---------------------------------------------------

async function loadConfig() {
  const response = await fetch("v1/parley/web/config", { cache: "no-store" });
  if (!response.ok) throw new UserError(`The server's page settings did not load (${response.status}).`);
  config = await response.json();
  ui.voice.replaceChildren();
  for (const v of config.voices || []) {
    const option = new Option(v.language ? `${v.name} (${v.language})` : v.name, v.id);
    ui.voice.append(option);
  }
  if (config.default_voice) ui.voice.value = config.default_voice;
  ui.voice.disabled = !(config.voices || []).length;
  ui.instructions.value = config.instructions || "";
  const turn = ui.settings.querySelector(`input[name=turn][value="${config.turn_detection}"]`);
  if (turn) turn.checked = true;
  ui.keyPanel.hidden = !config.auth;
  ui.demoRow.hidden = !config.demo_key;
  $("key-howto").hidden = Boolean(config.demo_key);
  ui.cost.hidden = !config.metering;
  updateSendTurn();
  updateKeyStatus();
}

function updateKeyStatus() {
  let text = "";
  if (pastedKey) text = `Using the pasted key ending in …${pastedKey.slice(-4)}.`;
  else if (demoReady) text = "Using demo keys from this server: each call gets a fresh one.";
  else if (config && config.auth) text = config.demo_key ? "Get a demo key or paste one." : "Paste a key to talk.";
  ui.keyStatus.textContent = text;
  ui.forgetKey.hidden = !pastedKey;
}

async function mintDemoKey(session) {
  const response = await fetch("v1/parley/web/client_secrets", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ session }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new UserError(errorText(body, `No demo key (${response.status}).`));
  demoReady = true;
  updateKeyStatus();
  return body.value;
}

// The Bearer token for one call: the pasted key, or a fresh single-use demo key.
async function callToken(session) {
  if (!config.auth) return null;
  if (pastedKey) return pastedKey;
  if (config.demo_key) return mintDemoKey(session);
  throw new UserError("This server needs a key: paste one above.");
}

function errorText(body, fallback) {
  return (body && body.error && body.error.message) || fallback;
}

// --- the page's own clock: when speech ended here, when the reply sounded here ---------------

function pollLevels() {
  const c = call;
  if (!c || !c.micLevel) return;
  const now = performance.now();
  let peak = 0;
  for (const block of c.micLevel.read(now)) {
    peak = Math.max(peak, block.rms);
    c.speech.add(block);
  }
  ui.micLevel.style.width = `${Math.min(100, Math.round(Math.sqrt(peak) * 250))}%`;
  if (!c.replyLevel) return;
  const blocks = c.replyLevel.read(now);
  const wait = c.listening;
  if (!wait) return;
  for (const block of blocks) {
    const began = block.at - BLOCK_MS;
    if (block.loud && began >= wait.armedAt) {
      c.listening = null;
      const v2v = wait.lastVoicedAt === null ? null : began - wait.lastVoicedAt;
      conversation.heard(wait.responseId, began, v2v);
      break;
    }
  }
}

// --- the call --------------------------------------------------------------------------------

async function startCall() {
  showError("");
  const settings = currentSettings();
  call = {
    settings, pc: null, dc: null, mic: null, ctx: null, micLevel: null, replyLevel: null,
    timer: null, callId: null, token: null, speech: new SpeechEnds(), pending: null,
    listening: null,
  };
  const mine = call;
  setState("connecting", "Asking for the microphone…");
  try {
    if (!navigator.mediaDevices || !window.RTCPeerConnection) {
      throw new UserError(
        window.isSecureContext
          ? "This browser cannot make WebRTC calls."
          : "Browsers give the microphone only to pages over HTTPS or on this machine: open the page as https://… (behind a TLS proxy) or as http://127.0.0.1.",
      );
    }
    mine.mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    if (call !== mine) return teardown(mine); // hung up meanwhile
    mine.ctx = new AudioContext();
    await mine.ctx.resume().catch(() => {});
    mine.micLevel = new Level(mine.ctx, mine.mic, LOUD_RMS);
    mine.timer = setInterval(pollLevels, POLL_MS);
    status("Connecting…");
    const pc = new RTCPeerConnection({ iceServers: [] });
    mine.pc = pc;
    pc.addTransceiver(mine.mic.getAudioTracks()[0], { direction: "sendrecv", streams: [mine.mic] });
    pc.ontrack = (event) => onRemoteTrack(mine, event);
    pc.onconnectionstatechange = () => onConnectionState(mine);
    const dc = pc.createDataChannel("oai-events");
    mine.dc = dc;
    dc.onopen = () => {
      if (call === mine) setState("live", liveText(mine));
    };
    dc.onmessage = (event) => onServerEvent(mine, event.data);
    dc.onclose = () => {
      if (call === mine && ui.body.dataset.state === "live") endCall("The call ended.");
    };
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc, ICE_WAIT_MS);
    const session = sessionConfig(settings);
    mine.token = await callToken(session);
    if (call !== mine) return teardown(mine); // hung up meanwhile
    const form = new FormData();
    form.append("sdp", pc.localDescription.sdp);
    form.append("session", JSON.stringify(session));
    const headers = mine.token ? { Authorization: `Bearer ${mine.token}` } : {};
    const response = await fetch("v1/realtime/calls?parley_timeline=1", {
      method: "POST", headers, body: form,
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new UserError(errorText(body, `The server refused the call (${response.status}).`));
    }
    const location = response.headers.get("Location") || "";
    mine.callId = location.split("/").filter(Boolean).pop() || null;
    const answer = await response.text();
    if (call !== mine) return teardown(mine); // hung up meanwhile
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
    status("Connecting audio…");
  } catch (err) {
    if (call === mine) failCall(err);
  }
}

function liveText(c) {
  return c.settings.turn === "manual"
    ? "Live: speak, then press Send turn."
    : "Live: speak any time; talk over a reply to interrupt it.";
}

function iceGathered(pc, ms) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    const timer = setTimeout(done, ms);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

function onRemoteTrack(c, event) {
  if (call !== c) return;
  const stream = event.streams[0] || new MediaStream([event.track]);
  ui.audio.srcObject = stream;
  ui.audio.play().catch(() => status("Press Talk again if you hear nothing: playback was blocked."));
  if (c.ctx && !c.replyLevel) c.replyLevel = new Level(c.ctx, stream, LOUD_RMS);
}

function onConnectionState(c) {
  if (call !== c) return;
  const s = c.pc.connectionState;
  if (s === "failed") failCall(new UserError("The audio connection failed: the server's media address is not reachable from here."));
  else if (s === "closed" && ui.body.dataset.state === "live") endCall("The call ended.");
}

function send(c, event) {
  if (c && c.dc && c.dc.readyState === "open") c.dc.send(JSON.stringify(event));
}

function teardown(c) {
  clearInterval(c.timer);
  if (c.dc) c.dc.close();
  if (c.pc) c.pc.close();
  if (c.mic) c.mic.getTracks().forEach((t) => t.stop());
  if (c.micLevel) c.micLevel.close();
  if (c.replyLevel) c.replyLevel.close();
  if (c.ctx) c.ctx.close().catch(() => {});
  if (call === null) { // a newer call owns the player and the meter otherwise
    ui.audio.srcObject = null;
    ui.micLevel.style.width = "0";
  }
}

async function endCall(message = "Call ended.") {
  const c = call;
  if (!c) return;
  call = null;
  // An ephemeral key is spent on the offer: closing the connection is how such a call ends.
  // With a standing key (or none needed) the server is told first, while the call still runs.
  const standing = !config.auth || (c.token && !c.token.startsWith("ek_"));
  const hangup = c.callId && standing && c.dc && c.dc.readyState === "open";
  if (c.mic) c.mic.getTracks().forEach((t) => t.stop()); // stop listening at once
  setState("ended", message);
  if (hangup) {
    const headers = c.token ? { Authorization: `Bearer ${c.token}` } : {};
    const url = `v1/realtime/calls/${encodeURIComponent(c.callId)}/hangup`;
    const timeout = AbortSignal.timeout(2000);
    await fetch(url, { method: "POST", headers, signal: timeout }).catch(() => {});
  }
  teardown(c);
}

function failCall(err) {
  const c = call;
  call = null;
  if (c) teardown(c);
  let text = err instanceof UserError ? err.message : `Could not start the call: ${err.message || err}`;
  if (err && err.name === "NotAllowedError") text = "The microphone was not allowed: allow it in the browser and press Talk.";
  if (err && err.name === "NotFoundError") text = "No microphone was found.";
  showError(text);
  setState("error", "Not connected.");
}

// --- server events ---------------------------------------------------------------------------

function onServerEvent(c, raw) {
  if (call !== c) return;
  let ev;
  try {
    ev = JSON.parse(raw);
  } catch {
    return;
  }
  window.parleyEvents.push({ type: ev.type, response_id: ev.response_id || (ev.response && ev.response.id) || null, at: performance.now() });
  if (window.parleyEvents.length > 2000) window.parleyEvents.splice(0, 500);
  switch (ev.type) {
    case "session.created":
      window.parleySession = ev.session;
      break;
    case "session.updated":
      window.parleySession = ev.session;
      ui.settingsStatus.textContent = "Applied.";
      break;
    case "input_audio_buffer.speech_started":
      conversation.user(ev.item_id);
      status("Hearing you…");
      break;
    case "input_audio_buffer.speech_stopped":
      c.pending = newTurn(c);
      status("Thinking…");
      break;
    case "input_audio_buffer.committed": {
      const entry = conversation.user(ev.item_id);
      if (!c.settings.transcription && !entry.text.textContent) {
        entry.text.textContent = "(spoken, not transcribed)";
      }
      break;
    }
    case "conversation.item.input_audio_transcription.delta":
      conversation.userText(ev.item_id, ev.delta || "", false);
      break;
    case "conversation.item.input_audio_transcription.completed":
      conversation.userText(ev.item_id, ev.transcript || "", true);
      break;
    case "response.created":
      replyCreated(c, ev.response.id);
      break;
    case "response.output_item.added":
      if (ev.item && ev.item.id) conversation.items.set(ev.item.id, ev.response_id);
      break;
    case "response.output_audio_transcript.delta":
    case "response.output_text.delta":
      conversation.replyText(ev.response_id, ev.item_id, ev.delta || "");
      break;
    case "output_audio_buffer.started":
      status("parley is speaking…");
      break;
    case "output_audio_buffer.stopped":
      if (ui.body.dataset.state === "live") status(liveText(c));
      break;
    case "output_audio_buffer.cleared":
    case "conversation.item.truncated":
      conversation.interrupted(ev);
      break;
    case "response.done":
      conversation.done(ev.response);
      if (ui.status.textContent === "Thinking…") status(liveText(c));
      break;
    case "parley.turn.timeline":
      conversation.timeline(ev);
      break;
    case "error":
      showError(errorText(ev, "The server reported an error."));
      break;
    default:
      break;
  }
}

// A turn of the caller's, from the page's side: when their speech ended here.
function newTurn(c) {
  return { lastVoicedAt: c.speech.lastEnded(performance.now()), responseId: null, armedAt: null };
}

// The reply to the caller's turn: listen for its first sound from now on (none of its audio
// can have played before the server announced it).
function replyCreated(c, responseId) {
  conversation.reply(responseId);
  const pending = c.pending;
  c.pending = null;
  c.listening = null;
  if (pending) {
    pending.responseId = responseId;
    pending.armedAt = performance.now();
    c.listening = pending;
  }
}

// --- controls --------------------------------------------------------------------------------

ui.talk.addEventListener("click", () => {
  const s = ui.body.dataset.state;
  if (s === "connecting" || s === "live") endCall();
  else startCall();
});

ui.mute.addEventListener("click", () => {
  setMuted(ui.mute.getAttribute("aria-pressed") !== "true");
});

ui.sendTurn.addEventListener("click", () => {
  if (!call) return;
  call.pending = newTurn(call);
  send(call, { type: "input_audio_buffer.commit" });
  send(call, { type: "response.create" });
  status("Thinking…");
});

ui.settings.addEventListener("submit", (event) => {
  event.preventDefault();
  if (call && ui.body.dataset.state === "live") {
    call.settings = currentSettings();
    ui.settingsStatus.textContent = "Applying…";
    send(call, { type: "session.update", session: sessionConfig(call.settings) });
    status(liveText(call));
  } else {
    ui.settingsStatus.textContent = "Saved: the next call uses these.";
  }
  updateSendTurn();
});

ui.voice.addEventListener("change", () => { ui.voice.dataset.picked = "true"; });

ui.settings.addEventListener("change", () => {
  ui.settingsStatus.textContent = "";
  if (!call) updateSendTurn();
});

ui.pasteForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const value = ui.apiKey.value.trim();
  ui.apiKey.value = "";
  pastedKey = value || null;
  updateKeyStatus();
});

ui.forgetKey.addEventListener("click", () => {
  pastedKey = null;
  updateKeyStatus();
  ui.apiKey.focus();
});

ui.demoKey.addEventListener("click", async () => {
  showError("");
  try {
    await mintDemoKey(sessionConfig());
  } catch (err) {
    showError(err.message);
  }
});

window.addEventListener("pagehide", () => { if (call) endCall(); });

loadConfig().catch((err) => {
  showError(err instanceof UserError ? err.message : "The server's page settings did not load.");
  ui.talk.disabled = true;
});

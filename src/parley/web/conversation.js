// The conversation as the page shows it: each side's words, replies cut by a barge-in (the rest
// struck through), and under each reply its latency bar with the total in ms.
//
// Every reply also gets a plain record in window.parleyTurns, for tests and the benchmark:
// {response_id, item_id, status, v2v_ms, server_turn_gap_ms, network_ms, stages_ms, cost_usd,
//  interrupted}. v2v_ms is the page's own measurement (the caller's last speech -> the reply's
// first sound here); network_ms is v2v_ms minus the server's turn_gap_ms.

// The latency bar's server stages, in order (parley.turn.timeline stages_ms keys).
const STAGES = [
  ["endpointing", "endpointing"],
  ["asr_final", "ASR final"],
  ["llm_first_token", "LLM first token"],
  ["tts_first_audio", "TTS first audio"],
];
const BAR_FULL_MS = 2500; // a bar this long fills the width (longer ones fill it too)
const CHARS_PER_S = 14; // speaking rate, to place a cut before the reply's length is known

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

export class Conversation {
  constructor(list, empty, onCost) {
    this.list = list;
    this.empty = empty;
    this.onCost = onCost;
    this.users = new Map(); // item_id -> {li, text}
    this.replies = new Map(); // response_id -> reply
    this.items = new Map(); // item_id -> response_id
  }

  add(li) {
    this.list.append(li);
    this.empty.hidden = true;
    li.scrollIntoView({ block: "nearest" });
  }

  // The caller's entry for an input item, made when their speech starts.
  user(itemId) {
    const key = itemId || `local-${this.users.size}`;
    let entry = this.users.get(key);
    if (!entry) {
      const li = element("li", "turn user partial");
      const text = element("p", "text");
      li.append(element("span", "who", "You"), text);
      this.add(li);
      entry = { li, text };
      this.users.set(key, entry);
    }
    return entry;
  }

  userText(itemId, text, final) {
    const entry = this.user(itemId);
    if (final) {
      entry.text.textContent = text.trim() || "(nothing recognised)";
      entry.li.classList.remove("partial");
    } else {
      entry.text.textContent += text;
    }
  }

  reply(responseId) {
    let reply = this.replies.get(responseId);
    if (reply) return reply;
    const li = element("li", "turn assistant");
    li.dataset.responseId = responseId;
    const textEl = element("p", "text");
    const latency = element("div", "latency");
    latency.hidden = true;
    li.append(element("span", "who", "parley"), textEl, latency);
    this.add(li);
    const record = {
      response_id: responseId, item_id: null, status: null, v2v_ms: null,
      server_turn_gap_ms: null, network_ms: null, stages_ms: {}, cost_usd: null,
      interrupted: false,
    };
    window.parleyTurns.push(record);
    reply = { li, textEl, latency, text: "", cutMs: null, audioMs: null, timeline: null, record, firstAudioAt: null };
    this.replies.set(responseId, reply);
    return reply;
  }

  replyText(responseId, itemId, delta) {
    const reply = this.reply(responseId);
    if (itemId) this.items.set(itemId, responseId);
    reply.text += delta;
    this.renderText(reply);
  }

  done(response) {
    const reply = this.reply(response.id);
    reply.record.status = response.status;
    if (response.status === "cancelled") {
      reply.record.interrupted = true;
      if (reply.cutMs === null) reply.cutMs = 0;
      this.renderText(reply);
    }
  }

  // output_audio_buffer.cleared or conversation.item.truncated: the reply was cut.
  interrupted(ev) {
    const responseId = ev.response_id || this.items.get(ev.item_id);
    const reply = responseId && this.replies.get(responseId);
    if (!reply) return;
    reply.record.interrupted = true;
    if (typeof ev.audio_end_ms === "number") reply.cutMs = ev.audio_end_ms;
    else if (reply.cutMs === null && reply.firstAudioAt !== null) {
      reply.cutMs = Math.max(0, performance.now() - reply.firstAudioAt);
    }
    this.renderText(reply);
  }

  // The page heard the reply's first sound, v2v_ms after the caller's last speech.
  heard(responseId, firstAudioAt, v2vMs) {
    const reply = this.reply(responseId);
    reply.firstAudioAt = firstAudioAt;
    reply.record.v2v_ms = v2vMs === null ? null : Math.round(v2vMs);
    this.renderLatency(reply);
  }

  timeline(ev) {
    const reply = this.reply(ev.response_id);
    const record = reply.record;
    reply.timeline = ev;
    if (ev.item_id) this.items.set(ev.item_id, ev.response_id);
    record.item_id = ev.item_id || null;
    record.status = ev.status || record.status;
    record.stages_ms = ev.stages_ms || {};
    record.server_turn_gap_ms = ev.turn_gap_ms ?? null;
    if (typeof ev.audio_ms === "number" && ev.audio_ms > 0) reply.audioMs = ev.audio_ms;
    if (typeof ev.cost_usd === "number") {
      record.cost_usd = ev.cost_usd;
      this.onCost(ev.cost_usd);
    }
    this.renderText(reply);
    this.renderLatency(reply);
  }

  // The reply's words; after a barge-in, what was heard, a marker, and struck through the rest.
  renderText(reply) {
    const { text, textEl } = reply;
    if (!reply.record.interrupted || reply.cutMs === null) {
      textEl.textContent = text;
      return;
    }
    // Where the cut falls in the text: at the share of the reply's audio that was played.
    const total = reply.audioMs || (text.length / CHARS_PER_S) * 1000;
    let at = total > 0 ? Math.round(text.length * Math.min(1, reply.cutMs / total)) : 0;
    while (at > 0 && at < text.length && !/\s/.test(text[at])) at--; // whole words heard
    const unheard = element("del", "unheard", text.slice(at).trimStart());
    unheard.title = "not heard: you spoke over it";
    textEl.replaceChildren(
      element("span", "heard", text.slice(0, at).trimEnd()),
      element("span", "cut", `interrupted at ${(reply.cutMs / 1000).toFixed(1)} s`),
      unheard,
    );
    reply.li.classList.add("interrupted");
  }

  renderLatency(reply) {
    const tl = reply.timeline;
    if (!tl) return;
    const record = reply.record;
    const stages = tl.stages_ms || {};
    const segments = STAGES.map(([key, label]) => ({ key, label, ms: Math.max(0, stages[key] || 0) }));
    const serverMs = segments.reduce((sum, s) => sum + s.ms, 0);
    let total;
    let restLabel;
    if (record.v2v_ms !== null) {
      total = record.v2v_ms;
      restLabel = "network + playout";
      if (record.server_turn_gap_ms !== null) {
        record.network_ms = Math.max(0, Math.round(total - record.server_turn_gap_ms));
      }
    } else if (typeof tl.turn_gap_ms === "number") {
      total = tl.turn_gap_ms; // the page heard no reply audio: the server's figure
      restLabel = "server send";
    } else {
      return; // no reply audio at all: nothing was waited for
    }
    // The rest of the wait: the server's send plus the network and playout here.
    segments.push({ key: "network", label: restLabel, ms: Math.max(0, total - serverMs) });
    const scale = Math.max(BAR_FULL_MS, total, serverMs);
    const bar = element("div", "bar");
    bar.setAttribute("role", "img");
    const words = segments.map((s) => `${s.label} ${Math.round(s.ms)} ms`).join(", ");
    bar.setAttribute("aria-label", `Waited ${Math.round(total)} ms: ${words}`);
    for (const s of segments) {
      const seg = element("span", `seg seg-${s.key}`);
      seg.style.width = `${((s.ms / scale) * 100).toFixed(2)}%`;
      seg.title = `${s.label}: ${Math.round(s.ms)} ms`;
      bar.append(seg);
    }
    const label = element("span", "total", `${Math.round(total)} ms`);
    label.title = record.v2v_ms !== null
      ? `voice to voice as heard here; the server's own share ${Math.round(tl.turn_gap_ms ?? serverMs)} ms`
      : "as the server measured it: this page heard no reply audio";
    const parts = [bar, label];
    if (typeof record.cost_usd === "number") {
      parts.push(element("span", "turn-cost", `$${record.cost_usd.toFixed(4)}`));
    }
    reply.latency.replaceChildren(...parts);
    reply.latency.hidden = false;
  }
}

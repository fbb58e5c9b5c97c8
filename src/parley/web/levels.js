// Loudness of the microphone and of the reply, as the page hears them: the page's own clock for
// voice-to-voice latency (the caller's last speech -> the reply's first sound played here).
//
// An AnalyserNode holds the newest ~85 ms of a stream; polled every 20 ms, it yields 10 ms
// blocks stamped on performance.now(). A block is loud when it stands above a fixed level, 15 dB
// above the stream's noise floor, and within 30 dB of its recent peak, so that neither a noisy
// room nor the room tone after a sentence (which a microphone's automatic gain lifts) passes for
// speech.

export const BLOCK_MS = 10;
export const QUIET_MS = 150; // a pause this long ends a stretch of speech
const ABOVE_FLOOR = 5.6; // 15 dB over the noise floor
const FLOOR_RISE = 1.0006; // per block: the floor follows rising noise at about 0.5 dB/s
const BELOW_PEAK = 0.0316; // 30 dB under the recent peak
const PEAK_FALL = 0.99312; // per block: the peak falls by 6 dB a second

export class Level {
  constructor(ctx, stream, minRms) {
    this.source = ctx.createMediaStreamSource(stream);
    this.analyser = ctx.createAnalyser();
    this.analyser.fftSize = 4096;
    this.samples = new Float32Array(this.analyser.fftSize);
    this.block = Math.max(1, Math.round((ctx.sampleRate * BLOCK_MS) / 1000));
    this.rate = ctx.sampleRate;
    this.minRms = minRms;
    this.floor = minRms / ABOVE_FLOOR;
    this.peak = 0;
    this.lastAt = -Infinity;
    this.source.connect(this.analyser);
  }

  // The blocks that came in since the last read, oldest first: {at (its end), rms, loud}.
  read(now) {
    this.analyser.getFloatTimeDomainData(this.samples);
    const n = this.samples.length;
    const out = [];
    for (let start = n % this.block; start + this.block <= n; start += this.block) {
      const end = start + this.block;
      const at = now - ((n - end) / this.rate) * 1000;
      if (at <= this.lastAt + BLOCK_MS / 2) continue; // seen in an earlier read
      let sum = 0;
      for (let i = start; i < end; i++) sum += this.samples[i] * this.samples[i];
      const rms = Math.sqrt(sum / this.block);
      this.floor = Math.min(this.floor * FLOOR_RISE, Math.max(rms, 1e-5));
      this.peak = Math.max(this.peak * PEAK_FALL, rms);
      const bar = Math.max(this.minRms, this.floor * ABOVE_FLOOR, this.peak * BELOW_PEAK);
      out.push({ at, rms, loud: rms >= bar });
    }
    if (out.length) this.lastAt = out[out.length - 1].at;
    return out;
  }

  close() {
    this.source.disconnect();
  }
}

// Where the caller's stretches of speech ended.
export class SpeechEnds {
  constructor() {
    this.last = -Infinity; // the newest loud block
    this.ends = [];
  }

  add(block) {
    if (!block.loud) return;
    if (block.at - this.last > QUIET_MS && Number.isFinite(this.last)) {
      this.ends.push(this.last);
      if (this.ends.length > 32) this.ends.shift();
    }
    this.last = block.at;
  }

  // When the speech the server has just called finished ended: the end of the newest stretch
  // followed by a pause. A stretch still going on is new speech, begun while the server's
  // verdict was on its way, so it is not the one.
  lastEnded(now) {
    if (Number.isFinite(this.last) && now - this.last >= QUIET_MS) return this.last;
    return this.ends.length ? this.ends[this.ends.length - 1] : null;
  }
}

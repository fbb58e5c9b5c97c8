"""The audio watermark: round trip on real speech, keys, streaming, attacks, CLI and route."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import soxr
from starlette.applications import Starlette
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from parley.audio.files import read_audio, write_audio
from parley.audio.frames import Frame
from parley.audio.g711 import ulaw_decode, ulaw_encode
from parley.cli import main
from parley.errors import ConfigError
from parley.server.auth import Principal
from parley.server.watermark import watermark_route
from parley.store import Database
from parley.trust import Embedder, WatermarkKey, detect, embed, watermark

SPEECH = Path(__file__).resolve().parents[3] / "shared" / "speech"
KEY = WatermarkKey.from_hex("5a" * 32)
PAYLOAD = 0xC0FFEE42

pytestmark = pytest.mark.skipif(not SPEECH.is_dir(), reason="../shared/speech is not here")


@pytest.fixture(scope="module")
def speech() -> Frame:
    return read_audio(SPEECH / "en_jfk_wav.wav")  # 11 s, 16 kHz


@pytest.fixture(scope="module")
def marked(speech: Frame) -> Frame:
    return embed(KEY, PAYLOAD, speech)


def excerpt(frame: Frame, start_s: float, seconds: float) -> Frame:
    a = round(start_s * frame.sample_rate)
    return Frame(frame.samples[a : a + round(seconds * frame.sample_rate)], frame.sample_rate)


def test_watermark_round_trip_recovers_the_payload(speech: Frame, marked: Frame) -> None:
    assert len(marked) == len(speech) and marked.sample_rate == speech.sample_rate
    found = detect(KEY, marked)
    assert found.detected and found.payload == PAYLOAD
    assert found.p_value < 1e-6


def test_watermark_code_corrects_soft_errors_and_the_crc_rejects_a_wrong_word() -> None:
    # The code alone: unit margins with noise of sigma 0.6 flip about 5 % of the 80 coded bits
    # (a 40-bit word would rarely survive that uncoded); the tail-biting Viterbi undoes them.
    rng = np.random.default_rng(5)
    flipped = wrong = 0
    for _ in range(40):
        value = int(rng.integers(0, 2**32))
        coded = watermark._coded_bits(value)
        assert coded.shape == (watermark.CODED_BITS,)
        assert watermark._decode_bits(2.0 * coded - 1.0, 0) == (value, True)
        soft = 2.0 * coded - 1.0 + rng.normal(0.0, 0.6, coded.shape)
        flipped += int(np.sum((soft > 0) != (coded > 0)))
        got, ok = watermark._decode_bits(soft, 0)
        wrong += int(not ok or got != value)
    assert flipped >= 40 and wrong <= 1
    # A codeword whose CRC does not match is decoded but not accepted.
    info = watermark._info_bits(0x12345678)
    info[-1] ^= 1
    word = int("".join(str(int(b)) for b in info), 2)
    assert watermark._crc8(word >> watermark.CRC_BITS) != word & 0xFF


def test_watermark_payload_survives_a_recording_6_db_louder(marked: Frame) -> None:
    # Uncoded (40 bits x 48 tiles), four of these five 6 s windows lost a bit and failed the CRC.
    other = read_audio(SPEECH / "en_librivox_0870.wav")  # 16 kHz
    assert other.sample_rate == marked.sample_rate
    x = np.resize(other.samples.astype(np.float64), len(marked))
    y = marked.samples.astype(np.float64)
    gain = np.sqrt(np.mean(x**2) / np.mean(y**2)) * 10 ** (-6 / 20)
    mixed = Frame(np.clip(np.rint(x + gain * y), -32768, 32767).astype(np.int16), 16000)
    for start in range(5):
        found = detect(KEY, excerpt(mixed, start, 6.0))
        assert found.detected and found.payload == PAYLOAD


def test_watermark_unmarked_and_wrong_key_are_not_detected(speech: Frame, marked: Frame) -> None:
    assert not detect(KEY, speech).detected
    other = detect(WatermarkKey.from_hex("a5" * 32), marked)
    assert not other.detected and other.payload is None
    silence = Frame(np.zeros(16000 * 4, np.int16), 16000)
    assert not detect(KEY, silence).detected
    noise = np.random.default_rng(1).normal(0, 3000, 16000 * 4).astype(np.int16)
    assert not detect(KEY, Frame(noise, 16000)).detected


def test_watermark_adds_nothing_in_silence_and_little_energy(speech: Frame) -> None:
    quiet = Frame(np.zeros(8000, np.int16), 16000)
    assert not np.any(embed(KEY, 1, quiet).samples)
    marked = embed(KEY, 1, speech).samples.astype(np.float64)
    added = marked - speech.samples
    snr = 10 * np.log10(np.sum(speech.samples.astype(np.float64) ** 2) / np.sum(added**2))
    assert snr > 6  # multiplicative: a +-3 dB keyed ripple on the speech's own spectrum


@pytest.mark.parametrize("chunk_ms", [40, 100, 333])
def test_watermark_streaming_equals_whole_and_holds_back_at_most_a_frame(
    speech: Frame, marked: Frame, chunk_ms: int
) -> None:
    embedder = Embedder(KEY, PAYLOAD, speech.sample_rate)
    step = speech.sample_rate * chunk_ms // 1000
    fed = out = 0
    pieces = []
    for start in range(0, len(speech), step):
        chunk = Frame(speech.samples[start : start + step], speech.sample_rate)
        got = embedder.process(chunk)
        assert got.samples.dtype == np.int16 and got.sample_rate == speech.sample_rate
        fed += len(chunk)
        out += len(got)
        # Held back: less than one 40 ms analysis frame, never more than one chunk of 40 ms+.
        assert fed - out < speech.sample_rate * 0.040
        pieces.append(got.samples)
    pieces.append(embedder.flush().samples)
    assert np.array_equal(np.concatenate(pieces), marked.samples)


def test_watermark_survives_mulaw_8k_and_a_3s_excerpt(marked: Frame) -> None:
    narrow = np.asarray(soxr.resample(marked.samples, 16000, 8000), np.int16)
    phone = Frame(ulaw_decode(ulaw_encode(narrow)), 8000)
    found = detect(KEY, phone)
    assert found.detected and found.payload == PAYLOAD
    short = detect(KEY, excerpt(marked, 4.0, 3.0))
    assert short.detected


def test_watermark_detect_is_fast(marked: Frame) -> None:
    long = Frame(np.tile(marked.samples, 3), marked.sample_rate)  # 33 s
    began = time.perf_counter()
    detect(KEY, long)
    assert time.perf_counter() - began < 2.0


def test_watermark_key_file_is_created_private_and_refused_when_shared(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "wm.key"
    key = WatermarkKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert WatermarkKey.load_or_create(path) == key
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="readable by others"):
        WatermarkKey.load_or_create(path)
    path.chmod(0o600)
    path.write_bytes(b"short")
    with pytest.raises(ConfigError, match="bytes"):
        WatermarkKey.load_or_create(path)
    with pytest.raises(ConfigError):
        WatermarkKey.from_hex("zz")


def test_cli_watermark_detect_prints_the_json_shape(
    marked: Frame, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audio = tmp_path / "reply.wav"
    write_audio(audio, marked)
    db = tmp_path / "parley.db"
    with Database(str(db)) as database:
        database.execute(
            "INSERT INTO watermark_marks (id, tenant, response_id, created_at) "
            "VALUES (:id, 'acme', 'resp_1', 1700000000.0)",
            {"id": PAYLOAD},
        )
    config = tmp_path / "parley.toml"
    config.write_text(f'[server]\ndatabase = "{db}"\n[trust]\nwatermark_key = "{"5a" * 32}"\n')
    assert main(["watermark", "detect", str(audio), "--json", "--config", str(config)]) == 0
    body = json.loads(capsys.readouterr().out)
    assert set(body) == {"detected", "score", "p_value", "payload"}
    assert body["detected"] is True
    assert body["payload"] == {
        "id": PAYLOAD,
        "tenant": "acme",
        "response_id": "resp_1",
        "time": 1700000000.0,
    }


class _As:
    """Sets the request's principal as the auth middleware would."""

    def __init__(self, app: ASGIApp, tenant: str) -> None:
        self.app, self.tenant = app, tenant

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("state", {})["principal"] = Principal(self.tenant)
        await self.app(scope, receive, send)


def test_watermark_route_answers_the_payload_only_to_its_tenant(
    marked: Frame, tmp_path: Path
) -> None:
    audio = tmp_path / "reply.wav"
    write_audio(audio, marked)
    marks = {PAYLOAD: {"tenant": "acme", "response_id": "resp_1", "time": 1.0}}
    route = watermark_route(lambda: KEY, marks.get)
    for tenant, expected in [("acme", marks[PAYLOAD]), ("globex", None)]:
        app = _As(Starlette(routes=[route]), tenant)
        with TestClient(app) as client:
            reply = client.post(
                "/v1/audio/watermark/detect", files={"file": ("reply.wav", audio.read_bytes())}
            )
        assert reply.status_code == 200
        body = reply.json()
        assert body["detected"] is True and body["payload"] == expected
    with TestClient(_As(Starlette(routes=[route]), "acme")) as client:
        missing = client.post("/v1/audio/watermark/detect", data={"x": "1"})
        bad = client.post("/v1/audio/watermark/detect", files={"file": ("a.wav", b"nope")})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"
    assert bad.status_code == 400

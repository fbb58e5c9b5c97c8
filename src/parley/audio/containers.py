"""Uploaded audio of any common container in, streamed audio of the OpenAI formats out.

Decoding (:func:`open_upload`) tries libsndfile first (wav, flac, ogg vorbis/opus, mp3, aiff)
and falls back to PyAV (FFmpeg) for what libsndfile cannot read: webm/matroska (opus, vorbis),
m4a/mp4 (aac, alac), raw ADTS aac. FFmpeg is only ever given a demuxer chosen from the file's
magic bytes, never asked to probe: probing would reach demuxers (playlists, concat lists) that
open other files or URLs named inside an upload. An upload is decoded as a stream of mono int16
blocks, consumed one at a time, and refused past ``max_duration_s`` from its header or as soon
as its audio passes the limit: a small compressed file cannot expand into gigabytes of PCM.
Whatever the decoders raise on a bad upload is a ``BadAudioError`` about the ``file``.

Encoding (:func:`open_encoder`) turns a stream of frames into the bytes of one file, chunk by
chunk, so a server can send audio while it is still being synthesised:

- ``pcm``: raw s16le; ``wav``: a header declaring unknown sizes (0xFFFFFFFF, what readers take
  as "until the end of the data"), then raw s16le.
- ``mp3`` (MPEG layer III frames, no Xing header, which could not be rewritten on a stream),
  ``opus`` (Ogg, a page per ~100 ms) and ``aac`` (ADTS): FFmpeg encoders through PyAV.
- ``flac``: buffered and encoded once at the end; its header states the total length, and
  libsndfile mis-reads a streamed FLAC whose length is left unknown.
- Without PyAV, ``mp3`` and ``opus`` are buffered and encoded by libsndfile at the end, and
  ``aac`` is refused.

PyAV is optional: this module imports it lazily and works (with fewer formats) without it.
It neither resamples to an engine's rate nor knows about HTTP; callers do that.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import soundfile as sf

from parley.audio.files import check_sample_rate, encode_audio, mono_blocks
from parley.audio.frames import PCM16, Frame
from parley.errors import BadAudioError, Code, ParleyError, PayloadTooLargeError

if TYPE_CHECKING:
    import av
    import av.container

__all__ = [
    "CONTAINER_FORMATS",
    "INPUT_FORMATS",
    "SPEECH_FORMATS",
    "AudioEncoder",
    "Upload",
    "av_available",
    "decode_upload",
    "encode_container",
    "open_encoder",
    "open_upload",
    "sniff",
]

INPUT_FORMATS = "wav, flac, mp3, ogg (vorbis or opus), webm, m4a/mp4 or aac"
"""What :func:`decode_upload` reads, in words for error messages."""

SPEECH_FORMATS: tuple[str, ...] = ("mp3", "opus", "aac", "flac", "wav", "pcm")
"""The formats :func:`open_encoder` streams (OpenAI's ``response_format`` values)."""

CONTAINER_FORMATS: tuple[str, ...] = ("aac", "m4a", "webm")
"""What :func:`encode_container` writes (through PyAV) besides libsndfile's formats."""

_BLOCK_FRAMES = 65536
_NONE: PCM16 = np.zeros(0, np.int16)
_SF_COUNT_MAX = 2**63 - 1
# The OpenAI API's name for the uploaded file: every decoding error is about it.
_PARAM = "file"
# Kind sniffed from magic bytes -> the FFmpeg demuxer that may read it.
_DEMUXERS = {
    "wav": "wav",
    "flac": "flac",
    "ogg": "ogg",
    "mp3": "mp3",
    "mp4": "mp4",
    "webm": "matroska",
    "aac": "aac",
}
# Kinds libsndfile never reads: go straight to PyAV.
_AV_ONLY = frozenset({"mp4", "webm", "aac"})
_MEDIA_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
# format -> (FFmpeg muxer, encoder, bit rate, muxer options)
_AV_ENCODERS: dict[str, tuple[str, str, int, dict[str, str]]] = {
    "mp3": ("mp3", "libmp3lame", 64000, {"write_xing": "0"}),
    "opus": ("ogg", "libopus", 32000, {"page_duration": "100000"}),
    "aac": ("adts", "aac", 64000, {}),
}


def av_available() -> bool:
    """Whether PyAV (and so webm, m4a and aac) can be used."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def sniff(data: bytes) -> str | None:
    """The container ``data`` starts like (wav, flac, ogg, mp3, mp4, webm, aac), or None."""
    head = data[:12]
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"ID3":
        return "mp3"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if len(head) >= 2 and head[0] == 0xFF:
        if head[1] & 0xF6 == 0xF0:  # 12 sync bits, then layer 00: ADTS
            return "aac"
        if head[1] & 0xE0 == 0xE0 and head[1] & 0x06:  # 11 sync bits, a layer: MPEG audio
            return "mp3"
    return None


def open_upload(
    data: bytes, *, name: str = "upload", max_duration_s: float | None = None
) -> Upload:
    """An uploaded audio file, opened: its header read and its first block decoded, so that a
    file that is not audio, holds no samples, has an absurd sample rate or declares a length past
    ``max_duration_s`` fails here. Iterate the result for its frames, then close it.

    Raises :class:`BadAudioError` (one line naming ``name`` and the cause) for anything that
    gives no audio, :class:`PayloadTooLargeError` past ``max_duration_s``; ``param`` ``file``.
    """
    if not data:
        raise BadAudioError(f"{name} is empty (0 bytes)", param=_PARAM)
    kind = sniff(data)
    reason = "format not recognised"
    if kind not in _AV_ONLY:
        try:
            return Upload(_open_soundfile(data, name), name, max_duration_s)
        except _Unreadable as exc:
            reason = str(exc)
    if kind is None:
        raise BadAudioError(
            f"{name}: unsupported or corrupt audio ({reason}); expected {INPUT_FORMATS}",
            param=_PARAM,
        )
    if not av_available():
        raise BadAudioError(
            f"{name} looks like {kind}, which this server cannot decode (PyAV is not installed);"
            " send wav, flac, mp3 or ogg",
            param=_PARAM,
        )
    return Upload(_open_av(data, kind, name), name, max_duration_s)


def decode_upload(
    data: bytes, *, name: str = "upload", max_duration_s: float | None = None
) -> Frame:
    """An uploaded audio file as one mono frame at its own rate (:func:`open_upload`, whole)."""
    with contextlib.closing(open_upload(data, name=name, max_duration_s=max_duration_s)) as up:
        blocks = [frame.samples for frame in up]
    return Frame(np.concatenate(blocks), up.sample_rate)


class Upload:
    """An opened upload (:func:`open_upload`): mono frames at ``sample_rate``, a decoded block
    (~64k samples) per step, until :class:`PayloadTooLargeError` past the duration limit;
    ``samples`` counts what was decoded. A step is blocking work (a worker thread's); a
    :meth:`close` from another thread waits for the block being decoded, never frees it."""

    __slots__ = ("_blocks", "_close", "_limit", "_lock", "kind", "name", "sample_rate", "samples")

    def __init__(self, source: _Source, name: str, max_duration_s: float | None) -> None:
        self.name, self.kind, self.sample_rate = name, source.kind, source.rate
        self.samples = 0
        self._blocks: Iterator[PCM16] | None = itertools.chain([source.first], source.rest)
        self._close = source.close
        self._lock = threading.RLock()
        self._limit = max_duration_s
        if not len(source.first):
            self.close()
            raise BadAudioError(f"{name} holds no audio samples", param=_PARAM)
        if max_duration_s is not None and source.length is not None:
            # An mp3's length is an estimate (from its size and first frame): only a gross
            # excess is refused here; the block loop enforces the limit exactly.
            declared = source.length / source.rate
            if declared > (max_duration_s if source.exact else 2 * max_duration_s + 1):
                self.close()
                raise _too_long(name, max_duration_s, declared, exact=source.exact)

    def __iter__(self) -> Upload:
        return self

    def __next__(self) -> Frame:
        with self._lock:
            if self._blocks is None:
                raise StopIteration
            try:
                block = next(self._blocks)
            except BaseException as exc:
                self.close()
                if isinstance(exc, ParleyError | StopIteration) or not isinstance(exc, Exception):
                    raise
                # Hostile bytes reach C decoders here: whatever they raise is the file's fault.
                seconds = self.samples / self.sample_rate
                raise BadAudioError(
                    f"{self.name}: corrupt {self.kind} audio after {seconds:.1f} s"
                    f" ({_reason(exc)})",
                    param=_PARAM,
                ) from None
            self.samples += len(block)
            if self._limit is not None and self.samples > self._limit * self.sample_rate:
                self.close()
                raise _too_long(self.name, self._limit)
            return Frame(block, self.sample_rate)

    def close(self) -> None:
        """Free the decoder; iteration ends. Idempotent."""
        with self._lock:
            if self._blocks is not None:
                self._blocks = None
                self._close()


@dataclass(frozen=True, slots=True)
class _Source:
    """An opened decoder: what :class:`Upload` needs of libsndfile or PyAV."""

    kind: str  # the container, for messages
    rate: int
    length: int | None  # frames the header declares, if it does
    exact: bool  # whether ``length`` is exact (an mp3's is an estimate)
    first: PCM16  # the first block (empty: the file holds no samples)
    rest: Iterator[PCM16]
    close: Callable[[], None]


class _Unreadable(Exception):
    """libsndfile cannot read the file (its reason is the argument); PyAV may."""


def _span(seconds: float) -> str:
    """A duration as people say it: ``1 s``, ``90 s``, ``24 min``, ``24.5 min``."""
    return f"{round(seconds, 1):g} s" if seconds < 120 else f"{round(seconds / 60, 1):g} min"


def _too_long(
    name: str, limit: float, declared: float | None = None, *, exact: bool = True
) -> PayloadTooLargeError:
    if declared is None:
        message = f"{name} is longer than the limit of {_span(limit)}"
    else:
        about = "" if exact else "about "
        message = f"{name} is {about}{_span(declared)} long; the limit is {_span(limit)}"
    return PayloadTooLargeError(message, param=_PARAM, code=Code.AUDIO_TOO_LONG)


def _reason(exc: BaseException) -> str:
    """A decoder's own words for ``exc``: libsndfile's error string, FFmpeg's strerror."""
    text = getattr(exc, "error_string", None) or getattr(exc, "strerror", None) or str(exc)
    return str(text).strip().rstrip(".") or type(exc).__name__


def _open_soundfile(data: bytes, name: str) -> _Source:
    try:
        with contextlib.ExitStack() as on_error:
            snd = sf.SoundFile(io.BytesIO(data))
            on_error.callback(snd.close)
            rate = check_sample_rate(int(snd.samplerate), name, param=_PARAM)
            blocks = mono_blocks(snd)
            first = next(blocks, _NONE)
            on_error.pop_all()
    except ParleyError:
        raise
    except Exception as exc:
        raise _Unreadable(_reason(exc)) from None
    return _Source(
        kind=str(snd.format).lower(),
        rate=rate,
        # libsndfile says SF_COUNT_MAX for a length it does not know (a FLAC's is optional).
        length=int(snd.frames) if 0 < snd.frames < _SF_COUNT_MAX else None,
        exact=snd.format != "MP3",
        first=first,
        rest=blocks,
        close=snd.close,
    )


def _open_av(data: bytes, kind: str, name: str) -> _Source:
    import av

    try:
        with contextlib.ExitStack() as on_error:
            container = av.open(io.BytesIO(data), mode="r", format=_DEMUXERS[kind])
            on_error.callback(container.close)
            if not container.streams.audio:
                raise BadAudioError(f"{name}: the {kind} file has no audio track", param=_PARAM)
            stream = container.streams.audio[0]
            # None when FFmpeg has no decoder for the codec (a wav of format 0x1234, say).
            if (codec := stream.codec_context) is None:
                raise BadAudioError(
                    f"{name}: the {kind} file's audio is in a codec this server cannot decode;"
                    f" expected {INPUT_FORMATS}",
                    param=_PARAM,
                )
            rate = check_sample_rate(int(codec.sample_rate or 0), name, param=_PARAM)
            blocks = _av_blocks(container, stream, rate)
            first = next(blocks, _NONE)
            on_error.pop_all()
    except ParleyError:
        raise
    except Exception as exc:
        raise BadAudioError(
            f"{name}: unsupported or corrupt {kind} audio ({_reason(exc)});"
            f" expected {INPUT_FORMATS}",
            param=_PARAM,
        ) from None
    duration = container.duration  # microseconds, an estimate; None if unknown
    return _Source(
        kind=kind,
        rate=rate,
        length=None if duration is None else duration * rate // 1_000_000,
        exact=False,
        first=first,
        rest=blocks,
        close=container.close,
    )


def _av_blocks(
    container: av.container.InputContainer, stream: av.AudioStream, rate: int
) -> Iterator[PCM16]:
    """The stream's audio as mono int16 in blocks of about :data:`_BLOCK_FRAMES` (decoded
    frames are a few ms each: a block per frame would cost a thread hop per frame)."""
    import av

    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    pending: list[PCM16] = []
    size = 0
    # None at the end drains the resampler.
    for frame in itertools.chain(container.decode(stream), [None]):
        for out in resampler.resample(frame):
            pending.append(out.to_ndarray().reshape(-1).astype(np.int16, copy=False))
            size += len(pending[-1])
        if size >= _BLOCK_FRAMES or (frame is None and size):
            yield np.concatenate(pending)
            pending.clear()
            size = 0


def _av_frame(samples: PCM16, rate: int, pts: int) -> av.AudioFrame:
    import av

    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(samples, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = rate
    frame.pts = pts
    return frame


def encode_container(frame: Frame, format: str) -> bytes:
    """``frame`` as a whole file in one of :data:`CONTAINER_FORMATS` (needs PyAV)."""
    import av

    specs = {"aac": ("adts", "aac"), "m4a": ("ipod", "aac"), "webm": ("webm", "libopus")}
    spec = specs.get(format)
    if spec is None:
        raise BadAudioError(
            f"unsupported container {format!r}; supported: {', '.join(CONTAINER_FORMATS)}"
        )
    muxer, codec = spec
    rate = frame.sample_rate
    if codec == "libopus" and rate not in (8000, 12000, 16000, 24000, 48000):
        from parley.audio.resample import resample

        frame = resample(frame, 48000)
        rate = 48000
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=muxer) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        for packet in stream.encode(_av_frame(frame.samples, rate, 0)):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


# --- Streaming encoders ----------------------------------------------------------------------


class AudioEncoder(Protocol):
    """Frames in, the bytes of one file out, as soon as they can be sent."""

    @property
    def media_type(self) -> str: ...

    def write(self, frame: Frame) -> bytes:
        """Encode ``frame`` (at the encoder's rate); returns the bytes now ready."""
        ...

    def close(self) -> bytes:
        """The rest of the file; the encoder is finished afterwards (a second call gives b"")."""
        ...

    def abort(self) -> None:
        """Finish without the rest of the file (the stream was abandoned)."""
        ...


def open_encoder(format: str, sample_rate: int) -> AudioEncoder:
    """A streaming encoder for one of :data:`SPEECH_FORMATS` at ``sample_rate``.

    Raises :class:`BadAudioError` for an unknown format or ``aac`` without PyAV.
    """
    if format not in SPEECH_FORMATS:
        raise BadAudioError(
            f"unsupported response_format {format!r}; supported: {', '.join(SPEECH_FORMATS)}",
            param="response_format",
        )
    if format == "pcm":
        return _RawEncoder(sample_rate, header=b"", media_type=_MEDIA_TYPES["pcm"])
    if format == "wav":
        return _RawEncoder(sample_rate, header=_wav_header(sample_rate), media_type="audio/wav")
    if format in _AV_ENCODERS and av_available():
        return _AVEncoder(format, sample_rate)
    if format == "aac":
        supported = ", ".join(f for f in SPEECH_FORMATS if f != "aac")
        raise BadAudioError(
            f"response_format 'aac' needs PyAV, which is not installed; supported: {supported}",
            param="response_format",
        )
    return _BufferedEncoder(format, sample_rate)


def _wav_header(rate: int) -> bytes:
    unknown = struct.pack("<I", 0xFFFFFFFF)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return b"RIFF" + unknown + b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + unknown


def _check_rate(frame: Frame, rate: int) -> None:
    if frame.sample_rate != rate:
        raise ValueError(f"frame at {frame.sample_rate} Hz fed to a {rate} Hz encoder")


class _RawEncoder:
    __slots__ = ("_header", "media_type", "sample_rate")

    def __init__(self, sample_rate: int, *, header: bytes, media_type: str) -> None:
        self.sample_rate = sample_rate
        self.media_type = media_type
        self._header = header

    def _take_header(self) -> bytes:
        header, self._header = self._header, b""
        return header

    def write(self, frame: Frame) -> bytes:
        _check_rate(frame, self.sample_rate)
        return self._take_header() + frame.to_bytes()

    def close(self) -> bytes:
        return self._take_header()

    def abort(self) -> None:
        self._header = b""


class _BufferedEncoder:
    """Collects the whole stream and encodes it once with libsndfile."""

    __slots__ = ("_blocks", "_closed", "format", "media_type", "sample_rate")

    def __init__(self, format: str, sample_rate: int) -> None:
        self.format = format
        self.sample_rate = sample_rate
        self.media_type = _MEDIA_TYPES[format]
        self._blocks: list[PCM16] = []
        self._closed = False

    def write(self, frame: Frame) -> bytes:
        _check_rate(frame, self.sample_rate)
        self._blocks.append(frame.samples)
        return b""

    def close(self) -> bytes:
        if self._closed:
            return b""
        self._closed = True
        samples = np.concatenate(self._blocks) if self._blocks else np.zeros(0, np.int16)
        self._blocks.clear()
        if not len(samples):
            # libsndfile refuses to write an empty mp3; a few ms of silence is still a file.
            samples = np.zeros(self.sample_rate // 100, np.int16)
        return encode_audio(Frame(samples, self.sample_rate), self.format)

    def abort(self) -> None:
        self._closed = True
        self._blocks.clear()


class _Sink:
    """A write-only, unseekable file for FFmpeg's muxers: what they write is sent at once."""

    __slots__ = ("_chunks",)

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


class _AVEncoder:
    __slots__ = ("_container", "_pts", "_sink", "_stream", "media_type", "sample_rate")

    def __init__(self, format: str, sample_rate: int) -> None:
        import av

        muxer, codec, bit_rate, options = _AV_ENCODERS[format]
        self.sample_rate = sample_rate
        self.media_type = _MEDIA_TYPES[format]
        self._sink = _Sink()
        self._pts = 0
        try:
            container: av.container.OutputContainer = av.open(
                self._sink, mode="w", format=muxer, options=options
            )
            stream = container.add_stream(codec, rate=sample_rate, layout="mono")
            assert isinstance(stream, av.AudioStream)
            stream.bit_rate = bit_rate
        except (av.FFmpegError, ValueError) as exc:
            raise BadAudioError(f"cannot encode audio as {format}: {_reason(exc)}") from None
        self._container: av.container.OutputContainer | None = container
        self._stream = stream

    def _encode(self, frame: av.AudioFrame | None) -> bytes:
        container = self._container
        assert container is not None
        for packet in self._stream.encode(frame):
            container.mux(packet)
        return self._sink.take()

    def write(self, frame: Frame) -> bytes:
        _check_rate(frame, self.sample_rate)
        if self._container is None:
            raise ValueError("write() after close()")
        if not len(frame):
            return b""
        av_frame = _av_frame(frame.samples, self.sample_rate, self._pts)
        self._pts += len(frame)
        return self._encode(av_frame)

    def close(self) -> bytes:
        container = self._container
        if container is None:
            return b""
        try:
            out = b""
            if self._pts == 0:
                # FFmpeg writes no header before the first packet; a few ms of silence make
                # the empty stream a file that decoders accept.
                silence = np.zeros(self.sample_rate // 100, np.int16)
                out = self._encode(_av_frame(silence, self.sample_rate, 0))
            out += self._encode(None)
        finally:
            self._container = None
            container.close()
        return out + self._sink.take()

    def abort(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            # FFmpeg may refuse to finish a half-written file: it is thrown away anyway.
            with contextlib.suppress(ValueError, OSError):
                container.close()
            self._sink.take()

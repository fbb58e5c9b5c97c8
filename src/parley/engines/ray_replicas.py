"""What runs inside a Ray Serve replica: parley's own engine, fed in batches by ``@serve.batch``.

A replica builds the configured engine with :func:`~parley.engines.registry.build_tts` or
:func:`~parley.engines.registry.build_asr` from the gateway's ``[tts]`` / ``[asr]`` sections
(the same code path as in-process), so Whisper, Piper or espeak-ng behave as they do locally,
their own schedulers included. Ray Serve's ``@serve.batch`` gathers the requests of every
gateway into one batch; the batch's requests are started together on the engine (whose own
batcher, where it has one, runs them as one model call), and their audio streams back.

Ray Serve's batch queue is FIFO and runs ``max_concurrent_batches`` batches at a time; a request
whose caller went away (its handle response cancelled: a barge-in) while it waited in that queue
is dropped by Ray before the batch starts, and one that goes away while its batch runs has its
engine work cancelled at the next chunk. :class:`ReplicaStats` counts both, per replica.

Nothing here imports Ray at module level: :func:`deployment_classes` imports it when a
deployment is made (in the gateway that deploys, and in the replicas that unpickle it).

Over the wire (Ray's object store) only plain data travels: PCM16 bytes, dicts; never parley
classes, so a replica and a gateway of different builds still understand each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import warnings
from collections import Counter, deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from parley.audio.frames import Frame
from parley.config import Settings
from parley.engines.base import ASR, TTS, SpeechOptions, Transcript, Word
from parley.engines.registry import build_asr, build_tts
from parley.errors import EngineError, ParleyError

__all__ = [
    "ASR_DEPLOYMENT",
    "TTS_DEPLOYMENT",
    "ReplicaStats",
    "deployment_classes",
    "error_of",
    "failure",
    "transcript_from",
    "transcript_to",
]

TTS_DEPLOYMENT = "TTSDeployment"
ASR_DEPLOYMENT = "ASRDeployment"

_GONE_KEPT = 4096  # ids of callers that left, kept until their batch (if any) sees them


# --- plain data over the wire ----------------------------------------------------------------


def failure(exc: BaseException) -> dict[str, Any]:
    """An engine's error as plain data: the caller re-raises it (:func:`error_of`)."""
    if isinstance(exc, ParleyError):
        return {
            "error": type(exc).__name__,
            "message": exc.message,
            "param": exc.param,
            "code": str(exc.code),
        }
    return {"error": "EngineError", "message": f"{type(exc).__name__}: {exc}", "param": None}


def error_of(data: dict[str, Any]) -> ParleyError:
    """The parley error that :func:`failure` described (an EngineError for an unknown one)."""
    import parley.errors

    cls = getattr(parley.errors, str(data.get("error")), None)
    if not (isinstance(cls, type) and issubclass(cls, ParleyError)):
        cls = EngineError
    return cls(
        str(data.get("message", "engine error")), param=data.get("param"), code=data.get("code")
    )


def transcript_to(t: Transcript) -> dict[str, Any]:
    return {
        "text": t.text,
        "is_final": t.is_final,
        "language": t.language,
        "words": [(w.text, w.start_s, w.end_s, w.confidence) for w in t.words],
    }


def transcript_from(data: dict[str, Any]) -> Transcript:
    return Transcript(
        text=data["text"],
        is_final=data["is_final"],
        language=data.get("language"),
        words=tuple(Word(*w) for w in data.get("words", ())),
    )


def _speech_options(data: dict[str, Any]) -> SpeechOptions:
    return SpeechOptions(
        voice=data.get("voice"),
        language=data.get("language"),
        speed=float(data.get("speed", 1.0)),
        sample_rate=int(data.get("sample_rate", 24000)),
        stream=data.get("stream"),
        continuation=bool(data.get("continuation", False)),
    )


# --- bookkeeping -----------------------------------------------------------------------------


@dataclass
class ReplicaStats:
    """One replica's counts, as :meth:`as_dict` reports them to ``stats()`` callers."""

    batches: int = 0
    sizes: Counter[int] = field(default_factory=Counter)
    """Batch size -> number of batches of that size."""
    started: int = 0
    """Requests handed to the engine."""
    completed: int = 0
    aborted: int = 0
    """Caller left while the engine worked on its request: the work was cancelled."""
    dropped: int = 0
    """Caller left while its request waited in the batch queue: the engine never saw it. (A
    request cancelled before its method started on the replica is dropped by Ray unseen.)"""
    failed: int = 0
    recent_streams: deque[str] = field(default_factory=lambda: deque(maxlen=256))
    """``SpeechOptions.stream`` (or a request tag) of the most recent started requests."""
    recent_batches: deque[tuple[str | None, ...]] = field(default_factory=lambda: deque(maxlen=64))
    """The tags of each recent batch's requests, as Ray handed them over."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "sizes": dict(self.sizes),
            "max_batch": max(self.sizes, default=0),
            "started": self.started,
            "completed": self.completed,
            "aborted": self.aborted,
            "dropped": self.dropped,
            "failed": self.failed,
            "recent_streams": list(self.recent_streams),
            "recent_batches": [list(b) for b in self.recent_batches],
        }


@dataclass(frozen=True, slots=True)
class _Request:
    id: int
    payload: Any
    tag: str | None


def _keep_on_loopback() -> None:
    """On a loopback cluster, bind Serve's inter-deployment gRPC server to 127.0.0.1.

    Ray Serve 2.60 binds it to ``[::]:0`` (every interface) whatever the node's address. On a
    node whose address is loopback (``.ci/ray.sh``) nothing outside can use it, so it is bound
    where the node is. Runs in the replica before Serve starts that server (after the
    constructor); elsewhere, and with another Ray, it changes nothing.
    """
    import ray
    from ray.serve._private import replica

    node = ray.util.get_node_ip_address()
    original = getattr(replica, "add_port_to_grpc_server", None)
    if not node.startswith("127.") or original is None or hasattr(original, "parley"):
        return

    def bind_loopback(server: Any, address: str) -> Any:
        if address.startswith("[::]:"):
            address = f"{node}:{address.rsplit(':', 1)[1]}"
        return original(server, address)

    bind_loopback.parley = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = bind_loopback


class _Replica:
    """What both replicas share: the engine, its stats, and who left."""

    kind = ""

    def __init__(self, config: dict[str, Any]) -> None:
        with contextlib.suppress(ImportError):
            _keep_on_loopback()
        self.config = config
        self.counts = ReplicaStats()
        self._ids = itertools.count(1)
        # Request id -> its engine task, from launch until its caller has its answer.
        self._tasks: dict[int, asyncio.Task[Any]] = {}
        self._launched: set[int] = set()
        self._gone: dict[int, None] = {}  # an ordered set, trimmed to _GONE_KEPT

    def _enter(self, payload: Any, tag: str | None) -> _Request:
        return _Request(next(self._ids), payload, tag)

    def _leave(self, request: _Request, answered: bool) -> None:
        """The caller is done with ``request``: answered, or gone (cancelled, closed)."""
        launched = request.id in self._launched
        self._launched.discard(request.id)
        task = self._tasks.pop(request.id, None)
        if answered:
            return
        if not launched:
            self.counts.dropped += 1
            self._gone[request.id] = None
            while len(self._gone) > _GONE_KEPT:
                del self._gone[next(iter(self._gone))]
            return
        self.counts.aborted += 1
        if task is not None and not task.done():
            task.cancel()

    def _launch(self, batch: Sequence[_Request], run: Callable[[int, _Request], Any]) -> list[bool]:
        """Start each live request of ``batch`` on the engine; whether each was started."""
        self.counts.batches += 1
        self.counts.sizes[len(batch)] += 1
        self.counts.recent_batches.append(tuple(r.tag for r in batch))
        live = []
        for i, request in enumerate(batch):
            if self._gone.pop(request.id, 0) is None:  # left between Ray's check and now
                live.append(False)
                continue
            self._launched.add(request.id)
            self._tasks[request.id] = asyncio.create_task(run(i, request))
            self.counts.started += 1
            if request.tag:
                self.counts.recent_streams.append(request.tag)
            live.append(True)
        return live

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "version": self.config.get("version")}

    def stats(self) -> dict[str, Any]:
        """This replica's :class:`ReplicaStats` and its id (a remote method)."""
        from ray import serve

        context = serve.get_replica_context()
        return {**self.counts.as_dict(), "replica": context.replica_id.unique_id}


# --- TTS -------------------------------------------------------------------------------------


class TTSReplica(_Replica):
    """Speech synthesis: ``synthesize`` streams PCM16 bytes (or one error dict) per request."""

    kind = "tts"

    async def __init__(  # type: ignore[misc]
        self, config: dict[str, Any], peer: Any = None
    ) -> None:
        # ``peer``: the ASR deployment bound into the same application (unused here).
        super().__init__(config)
        settings = Settings.model_validate(config["settings"])
        self.engine: TTS = build_tts(settings.tts)
        if config.get("warm_up", True):
            async for _ in self.engine.synthesize("Ready.", SpeechOptions()):
                pass

    def describe(self) -> dict[str, Any]:
        voices = [(v.id, v.name, v.language, v.gender) for v in self.engine.voices()]
        return {**super().describe(), "name": self.engine.name, "voices": voices}

    async def synthesize(
        self, text: str, options: dict[str, Any]
    ) -> AsyncGenerator[bytes | dict[str, Any], None]:
        request = self._enter((text, _speech_options(options)), options.get("stream"))
        batched = cast(
            Callable[[_Request], AsyncGenerator[Any, None]],
            self._batch,  # the serve.batch wrapper (see deployment_classes)
        )
        answered = False
        try:
            async for item in batched(request):
                if item:
                    yield item
            answered = True
        finally:
            self._leave(request, answered)

    async def speak(self, text: str, options: dict[str, Any]) -> list[bytes | dict[str, Any]]:
        """:meth:`synthesize` whole, for callers that cannot stream (Ray Client)."""
        return [item async for item in self.synthesize(text, options)]

    async def _batch(
        self, batch: list[_Request]
    ) -> AsyncGenerator[list[bytes | dict[str, Any] | type[StopIteration] | None], None]:
        """Ray calls this with a batch; each step yields one entry per request: its new audio
        (bytes, maybe empty), an error dict, or StopIteration once it is done."""
        audio: list[list[bytes]] = [[] for _ in batch]
        outcome: list[BaseException | bool | None] = [None] * len(batch)
        changed = asyncio.Event()

        async def pump(i: int, request: _Request) -> None:
            text, options = request.payload
            try:
                async with contextlib.aclosing(self.engine.synthesize(text, options)) as frames:
                    async for frame in frames:
                        audio[i].append(frame.to_bytes())
                        changed.set()
                outcome[i] = True
                self.counts.completed += 1
            except asyncio.CancelledError:
                outcome[i] = False
                raise
            except Exception as exc:
                outcome[i] = exc
                self.counts.failed += 1
            finally:
                changed.set()

        live = self._launch(batch, pump)
        reported = [not ok for ok in live]
        try:
            while not all(reported):
                await changed.wait()
                changed.clear()
                step: list[bytes | dict[str, Any] | type[StopIteration] | None] = []
                fresh = False
                for i in range(len(batch)):
                    end = outcome[i]
                    if reported[i]:
                        step.append(StopIteration)  # Ray ignores it for a finished caller
                        continue
                    fresh = fresh or bool(audio[i]) or end is not None
                    if audio[i]:
                        step.append(b"".join(audio[i]))
                        audio[i].clear()
                        if end is not None:
                            changed.set()  # its end goes in the next step
                    elif isinstance(end, BaseException):
                        step.append(failure(end))
                        reported[i] = True
                    elif end is not None:
                        step.append(StopIteration)
                        reported[i] = True
                    else:
                        step.append(b"")
                if fresh:
                    yield step
        finally:
            for i, request in enumerate(batch):
                task = self._tasks.get(request.id)
                if live[i] and task is not None and not task.done():
                    task.cancel()


# --- ASR -------------------------------------------------------------------------------------


class ASRReplica(_Replica):
    """Speech recognition: ``transcribe`` takes a recording, answers a transcript dict."""

    kind = "asr"

    async def __init__(self, config: dict[str, Any]) -> None:  # type: ignore[misc]
        super().__init__(config)
        settings = Settings.model_validate(config["settings"])
        self.engine: ASR = build_asr(settings.asr)
        if config.get("warm_up", True):
            await self.engine.transcribe(Frame.silence(200, self.engine.sample_rate))

    def describe(self) -> dict[str, Any]:
        from parley.engines.registry import languages_of

        return {
            **super().describe(),
            "name": self.engine.name,
            "sample_rate": self.engine.sample_rate,
            "languages": sorted(languages_of(self.engine)),
        }

    async def transcribe(
        self, pcm: bytes, sample_rate: int, language: str | None = None, tag: str | None = None
    ) -> dict[str, Any]:
        request = self._enter((Frame.from_bytes(pcm, sample_rate), language), tag)
        batched = cast(Callable[[_Request], Any], self._batch)
        answered = False
        try:
            result: dict[str, Any] = await batched(request)
            answered = True
            return result
        finally:
            self._leave(request, answered)

    async def _batch(self, batch: list[_Request]) -> list[dict[str, Any]]:
        """Ray calls this with a batch: every live request is transcribed at once (the
        engine's own batcher, where it has one, decodes them together)."""

        async def one(_: int, request: _Request) -> dict[str, Any]:
            frame, language = request.payload
            try:
                transcript = await self.engine.transcribe(frame, language=language)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.counts.failed += 1
                return failure(exc)
            self.counts.completed += 1
            return transcript_to(transcript)

        self._launch(batch, one)
        results: list[dict[str, Any]] = []
        for request in batch:
            task = self._tasks.get(request.id)
            if task is None:
                results.append(failure(EngineError("request left before it ran")))
                continue
            try:
                results.append(await task)
            except asyncio.CancelledError:
                if (current := asyncio.current_task()) is not None and current.cancelling():
                    raise
                results.append(failure(EngineError("request cancelled")))
        return results


# --- Ray Serve deployments -------------------------------------------------------------------


@functools.cache
def deployment_classes(
    max_batch_size: int, batch_wait_timeout_s: float, max_concurrent_batches: int
) -> tuple[Any, Any]:
    """``(TTSDeployment, ASRDeployment)``: Ray Serve deployments of the two replicas, their
    ``_batch`` wrapped in ``@serve.batch`` with these settings. Imports Ray."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Ray's import-time noise
        from ray import serve

    def batched(method: Callable[..., Any]) -> Any:
        return serve.batch(
            max_batch_size=max_batch_size,
            batch_wait_timeout_s=batch_wait_timeout_s,
            max_concurrent_batches=max_concurrent_batches,
        )(method)

    tts = type(TTS_DEPLOYMENT, (TTSReplica,), {"_batch": batched(TTSReplica._batch)})
    asr = type(ASR_DEPLOYMENT, (ASRReplica,), {"_batch": batched(ASRReplica._batch)})
    return (
        serve.deployment(name=TTS_DEPLOYMENT)(tts),
        serve.deployment(name=ASR_DEPLOYMENT)(asr),
    )

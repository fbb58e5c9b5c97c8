"""ASR and TTS as Ray Serve deployments shared by every gateway (``[engines] backend = "ray"``).

Gateways (``parley serve`` replicas) keep sessions, turn-taking and the LLM; the heavy engines
run once in a Ray cluster, as the deployments ``TTSDeployment`` and ``ASRDeployment`` of one
Serve application (``engines.app_name``), built from the gateway's own ``[tts]`` / ``[asr]``
settings (:mod:`parley.engines.ray_replicas`). Each replica batches the requests of every
gateway with ``@serve.batch``, and scales between ``engines.min_replicas`` and
``engines.max_replicas``.

- :func:`deploy` connects to the cluster and deploys the application when it is absent: the
  first gateway to start deploys it, the others find it by name. Deployments carry a version
  derived from the engine settings, so two gateways racing to deploy the same settings leave
  the replicas as they are.
- :class:`RemoteTTS` and :class:`RemoteASR` implement parley's :class:`~parley.engines.base.TTS`
  and :class:`~parley.engines.base.ASR` on a ``DeploymentHandle``. TTS streams: each batch step
  of the replica's audio comes back as one frame as soon as it is synthesised. ASR does not
  stream: Ray Serve handles take no streamed *input*, so :meth:`RemoteASR.stream` buffers the
  turn's audio and transcribes it when the turn ends, with no partials (a partial would
  re-send and re-decode the whole turn so far). A pause mark (an empty frame) starts that
  transcription early; if no audio follows, it is the final.
- Cancellation: closing a :class:`RemoteTTS` stream or cancelling a :class:`RemoteASR` call
  cancels the Ray request (``response.cancel()``). Ray drops a cancelled request still queued
  for a batch; one already running has its engine work cancelled at the next chunk.
- :func:`remote_engines` is what the server calls at start-up: the local
  :class:`~parley.engines.registry.Engines` with ASR and TTS replaced when the backend is Ray.

Ray is an optional extra (``pip install 'parley[ray]'``), imported only here and only when used.
Ray leaves loopback by default; on one machine run its head with
``--node-ip-address 127.0.0.1`` and ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (see
``.ci/ray.sh``), usage stats off.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import time
import warnings
from collections.abc import AsyncGenerator, AsyncIterable, Sequence
from typing import Any

import numpy as np

from parley.audio.frames import Frame
from parley.config import EnginesSettings, Settings
from parley.engines.base import EngineHealth, SpeechOptions, Transcript, Voice
from parley.engines.ray_replicas import (
    ASR_DEPLOYMENT,
    TTS_DEPLOYMENT,
    deployment_classes,
    error_of,
    transcript_from,
)
from parley.engines.registry import Engines
from parley.errors import ConfigError, EngineUnavailableError, ParleyError

__all__ = [
    "ASR_DEPLOYMENT",
    "TTS_DEPLOYMENT",
    "RemoteASR",
    "RemoteTTS",
    "app",
    "application",
    "close_remote_engines",
    "connect",
    "deploy",
    "engine_config",
    "remote_engines",
]

log = logging.getLogger("parley.engines.ray_serve")

# The environment that keeps Ray quiet (set in this process before Ray is imported, unless
# the operator set them).
_QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
    # Never start a local cluster behind our back: a Ray call made after ray.shutdown() (Serve
    # tidying its handles as the process exits) would otherwise ray.init() a new one.
    "RAY_ENABLE_AUTO_CONNECT": "0",
}
# Unhealthy for this long after a call failed for a reason of Ray's (not the engine's).
_DEGRADED_S = 30.0


def _ray() -> tuple[Any, Any]:
    """``(ray, ray.serve)``, or a ConfigError naming the extra to install."""
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    try:
        with warnings.catch_warnings():
            # Ray's own modules warn at import (pydantic deprecations): noise to a gateway.
            warnings.simplefilter("ignore", DeprecationWarning)
            import ray
            from ray import serve
    except ImportError as exc:
        raise ConfigError(
            "engines.backend = 'ray' needs Ray Serve: pip install 'parley[ray]'",
            param="engines.backend",
        ) from exc
    return ray, serve


def _parley_version() -> str:
    try:
        return importlib.metadata.version("parley")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def engine_config(settings: Settings) -> dict[str, Any]:
    """What a replica is built from: the engine sections only (no keys or secrets travel), the
    batching settings, and a version that changes when any of them does."""
    e = settings.engines
    config: dict[str, Any] = {
        "settings": {
            "profile": settings.profile,
            "asr": settings.asr.model_dump(mode="json"),
            "tts": settings.tts.model_dump(mode="json"),
        },
        "batching": [e.max_batch_size, e.batch_wait_timeout_s, e.max_concurrent_batches],
        "parley": _parley_version(),
    }
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    config["version"] = digest[:16]
    return config


def application(settings: Settings) -> Any:
    """The Serve application of ``settings.engines.kinds``, ready for ``serve.run``.

    A Serve application has one ingress: with both kinds, TTS is the ingress and ASR is bound
    into it as an argument it ignores, which makes ASR part of the same application.
    """
    e = settings.engines
    config = engine_config(settings)
    tts_cls, asr_cls = deployment_classes(
        e.max_batch_size, e.batch_wait_timeout_s, e.max_concurrent_batches
    )
    target = e.target_ongoing_requests or float(e.max_batch_size)
    options: dict[str, Any] = {
        # Room for a running batch and a full one queued behind it (per concurrent batch).
        "max_ongoing_requests": 2 * e.max_batch_size * e.max_concurrent_batches,
        "autoscaling_config": {
            "min_replicas": e.min_replicas,
            "initial_replicas": max(e.min_replicas, 1),
            "max_replicas": e.max_replicas,
            "target_ongoing_requests": target,
        },
        "ray_actor_options": {"num_cpus": e.replica_cpus, "num_gpus": e.replica_gpus},
    }
    kinds = set(e.kinds)
    if not kinds:
        raise ConfigError("engines.kinds names no engine", param="engines.kinds")
    asr = _versioned(asr_cls, options, config["version"]).bind(config) if "asr" in kinds else None
    if "tts" not in kinds:
        return asr
    tts = _versioned(tts_cls, options, config["version"])
    return tts.bind(config) if asr is None else tts.bind(config, peer=asr)


def app(args: dict[str, Any]) -> Any:
    """Ray Serve's application builder (``import_path: parley.engines.ray_serve:app``, as in a
    RayService's serveConfigV2): ``args`` is a parley config tree (``profile``, ``asr``, ``tts``,
    ``engines``), validated as :class:`~parley.config.Settings`."""
    try:
        settings = Settings.model_validate(dict(args))
    except ValueError as exc:
        raise ConfigError(f"Ray Serve args are not parley settings: {exc}") from exc
    return application(settings)


def _versioned(deployment: Any, options: dict[str, Any], version: str) -> Any:
    """``deployment.options(**options)`` with a fixed code version, so that deploying the
    same settings again (two gateways starting at once) keeps the running replicas. Serve
    took ``version`` out of its public options; without its internal flag every deploy gets
    a random version and replaces the replicas."""
    try:
        return deployment.options(**options, version=version, _internal=True)
    except (TypeError, ValueError):
        return deployment.options(**options)


def connect(e: EnginesSettings) -> None:
    """``ray.init`` to ``e.address`` in ``e.ray_namespace`` unless this process is connected."""
    ray, _ = _ray()
    if ray.is_initialized():
        return
    if e.address.split("://")[-1].startswith(("127.", "localhost", "[::1]")):
        # A loopback cluster: the driver takes the loopback address too, not the machine's.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(
        address=e.address,
        namespace=e.ray_namespace,
        log_to_driver=False,
        logging_level=logging.WARNING,
        configure_logging=False,
    )


def _app_status(serve: Any, name: str) -> tuple[str | None, str]:
    """The application's status (None: absent) and Serve's message about it."""
    found = serve.status().applications.get(name)
    if found is None:
        return None, ""
    return str(getattr(found.status, "value", found.status)), str(getattr(found, "message", ""))


def deploy(settings: Settings, address: str | None = None) -> bool:
    """Connect (to ``address``, default ``engines.address``), and deploy the engines
    application unless it is there; blocks (call it in a thread). True when this call deployed
    it. Waits until the application runs (another gateway may be deploying it), up to
    ``engines.deploy_timeout_s``; a failed or late deployment is an EngineUnavailableError."""
    e = settings.engines
    if address is not None:
        e = e.model_copy(update={"address": address})
    connect(e)
    _, serve = _ray()
    deployed = False
    deadline = time.monotonic() + e.deploy_timeout_s
    while True:
        status, message = _app_status(serve, e.app_name)
        if status == "RUNNING":
            return deployed
        if status is None and not deployed:
            ours = engine_config(settings)["version"]
            log.info("deploying the Ray Serve application %s (version %s)", e.app_name, ours)
            serve.start(proxy_location="Disabled")  # handles only: no HTTP proxy
            serve.run(application(settings), name=e.app_name, route_prefix=None)
            deployed = True
            continue
        if status == "DEPLOY_FAILED" or time.monotonic() > deadline:
            raise EngineUnavailableError(
                f"Ray Serve application {e.app_name} is {status or 'absent'}: "
                f"{message or 'not running in time'}"
            )
        time.sleep(0.5)  # DEPLOYING (maybe by another gateway), UNHEALTHY, DELETING


def _handle(e: EnginesSettings, deployment: str) -> Any:
    connect(e)
    _, serve = _ray()
    return serve.get_deployment_handle(deployment, e.app_name)


def _raised(exc: BaseException) -> BaseException:
    """A Ray-side failure as a parley error: an engine's own error (carried as the cause of
    Ray's wrapper) as it was, anything else as EngineUnavailableError."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, ParleyError):
        return cause
    if isinstance(exc, ParleyError):
        return exc
    return EngineUnavailableError(f"Ray Serve: {type(exc).__name__}: {exc}")


class _Remote:
    """What both client engines share: a handle, a name, and the health of their calls."""

    def __init__(self, handle: Any, info: dict[str, Any]) -> None:
        self.handle = handle
        self.name: str = info["name"]
        self.version: str | None = info.get("version")
        self._failed_at = -_DEGRADED_S
        self._failure = ""

    def _fault(self, exc: BaseException) -> BaseException:
        error = _raised(exc)
        if isinstance(error, EngineUnavailableError):
            self._failed_at, self._failure = time.monotonic(), str(error)
        return error

    def health(self) -> EngineHealth:
        if time.monotonic() - self._failed_at < _DEGRADED_S:
            return EngineHealth("degraded", self._failure)
        return EngineHealth("ok")

    async def aclose(self) -> None:
        """Stop this handle's router (its threads and metrics pushes); calls fail after it."""
        await self.handle.shutdown_async()

    async def stats(self) -> dict[str, Any]:
        """The stats of one replica (whichever Ray routes to)."""
        result: dict[str, Any] = await self.handle.stats.remote()
        return result


class RemoteTTS(_Remote):
    """A :class:`~parley.engines.base.TTS` whose work is done by ``TTSDeployment``."""

    def __init__(self, handle: Any, info: dict[str, Any]) -> None:
        super().__init__(handle, info)
        try:
            self._stream: Any = handle.options(stream=True)
        except RuntimeError:  # Ray Client: no streaming handles; the audio comes whole
            self._stream = None
        self._voices = tuple(Voice(*v) for v in info.get("voices", ()))

    @classmethod
    async def connect(cls, e: EnginesSettings) -> RemoteTTS:
        """The TTS of the running application ``e.app_name`` (after :func:`deploy`)."""
        handle = await asyncio.to_thread(_handle, e, TTS_DEPLOYMENT)
        return cls(handle, await handle.describe.remote())

    def voices(self) -> Sequence[Voice]:
        return self._voices

    async def synthesize(self, text: str, options: SpeechOptions) -> AsyncGenerator[Frame, None]:
        """Frames at ``options.sample_rate`` as the replica synthesises them; closing this
        generator cancels the request on the replica."""
        request = (text, dataclasses.asdict(options))
        if self._stream is not None:
            response = self._stream.synthesize.remote(*request)
        else:
            response = self.handle.speak.remote(*request)
        done = False
        try:
            items = response if self._stream is not None else _whole(response)
            async for item in items:
                if isinstance(item, dict):
                    raise error_of(item)
                yield Frame(np.frombuffer(item, "<i2").astype(np.int16), options.sample_rate)
            done = True
        except ParleyError:
            raise
        except Exception as exc:
            raise self._fault(exc) from exc
        finally:
            if not done:
                response.cancel()


async def _whole(response: Any) -> AsyncGenerator[Any, None]:
    for item in await response:
        yield item


class RemoteASR(_Remote):
    """An :class:`~parley.engines.base.ASR` whose work is done by ``ASRDeployment``."""

    def __init__(self, handle: Any, info: dict[str, Any]) -> None:
        super().__init__(handle, info)
        self.sample_rate: int = info["sample_rate"]
        self.languages = frozenset(info.get("languages", ()))

    @classmethod
    async def connect(cls, e: EnginesSettings) -> RemoteASR:
        handle = await asyncio.to_thread(_handle, e, ASR_DEPLOYMENT)
        return cls(handle, await handle.describe.remote())

    async def transcribe(self, audio: Frame, *, language: str | None = None) -> Transcript:
        """The whole recording, transcribed by a replica; cancelling this cancels it there."""
        response = self.handle.transcribe.remote(audio.to_bytes(), audio.sample_rate, language)
        try:
            result: dict[str, Any] = await response
        except asyncio.CancelledError:
            response.cancel()
            raise
        except Exception as exc:
            raise self._fault(exc) from exc
        if "error" in result:
            raise error_of(result)
        return transcript_from(result)

    async def stream(
        self,
        audio: AsyncIterable[Frame],
        *,
        language: str | None = None,
        partials: bool = True,
    ) -> AsyncGenerator[Transcript, None]:
        """One final transcript when ``audio`` ends, no partials (see the module docstring).

        A pause mark (an empty frame) starts transcribing what came so far; if nothing
        follows before the end, that transcription is the final, else it is cancelled."""
        chunks: list[Frame] = []
        samples = 0
        early: tuple[int, asyncio.Task[Transcript]] | None = None
        try:
            async for frame in audio:
                if len(frame):
                    chunks.append(frame)
                    samples += len(frame)
                elif samples and (early is None or early[0] != samples):
                    if early is not None:
                        early[1].cancel()
                    whole = _joined(chunks, self.sample_rate)
                    early = (
                        samples,
                        asyncio.create_task(self.transcribe(whole, language=language)),
                    )
            if early is not None and early[0] == samples:
                final = await early[1]
            else:
                if early is not None:
                    early[1].cancel()
                if not samples:
                    final = Transcript(text="", is_final=True, language=language)
                else:
                    whole = _joined(chunks, self.sample_rate)
                    final = await self.transcribe(whole, language=language)
            early = None
            yield final
        finally:
            if early is not None:
                early[1].cancel()
                with contextlib.suppress(BaseException):
                    await early[1]


def _joined(chunks: list[Frame], rate: int) -> Frame:
    if len(chunks) > 1:
        chunks[:] = [Frame(np.concatenate([c.samples for c in chunks]), chunks[0].sample_rate)]
    return chunks[0] if chunks else Frame(np.zeros(0, np.int16), rate)


async def remote_engines(settings: Settings, local: Engines) -> Engines:
    """``local`` with ASR and TTS served by Ray when ``engines.backend`` is ``ray`` (after
    deploying the application if absent), else ``local`` itself. Call it at start-up."""
    e = settings.engines
    if e.backend != "ray":
        return local
    await asyncio.to_thread(deploy, settings)
    replaced: dict[str, Any] = {}
    if "tts" in e.kinds:
        replaced["tts"] = await RemoteTTS.connect(e)
    if "asr" in e.kinds:
        replaced["asr"] = await RemoteASR.connect(e)
    mine = engine_config(settings)["version"]
    for engine in replaced.values():
        if engine.version != mine:
            log.warning(
                "the Ray Serve %s deployment runs other engine settings (version %s, ours %s): "
                "the first gateway's settings win; redeploy to change them",
                engine.name,
                engine.version,
                mine,
            )
    return dataclasses.replace(local, **replaced)


async def close_remote_engines(engines: Engines) -> None:
    """The server's shutdown: stop the remote engines' handles and leave the Ray cluster (the
    deployments keep running for the other gateways). Nothing to do without them."""
    remote = [e for e in (engines.asr, engines.tts) if isinstance(e, _Remote)]
    for engine in remote:
        with contextlib.suppress(Exception):
            await engine.aclose()
    if remote:
        ray, _ = _ray()
        await asyncio.to_thread(ray.shutdown)

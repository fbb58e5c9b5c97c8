from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import numpy as np
import pytest

from parley.audio.frames import Frame
from parley.engines.base import (
    ASR,
    LLM,
    TTS,
    ChatRequest,
    Finish,
    LLMEvent,
    Message,
    SpeechOptions,
    TextDelta,
    Transcript,
    Usage,
)
from parley.engines.openai_llm import OpenAILLM
from parley.errors import EngineError, EngineUnavailableError, InputTooLargeError
from parley.routing.failover import ASRChain, Attempt, Breaker, LLMChain, TTSChain
from tests.fakes.flaky import FlakyASR, FlakyLLM, FlakyTTS
from tests.fakes.openai_server import BASE_URL, MODEL, FakeChatCompletionsServer

SECRET = "my card number is 4111 1111 1111 1111"
REQUEST = ChatRequest(messages=(Message("user", SECRET),))
TIMEOUT_S = 0.05


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Reports(list[Attempt]):
    def __call__(self, attempt: Attempt) -> None:
        self.append(attempt)

    @property
    def outcomes(self) -> list[tuple[str, str]]:
        return [(a.engine, a.outcome) for a in self]


@pytest.fixture
def server() -> FakeChatCompletionsServer:
    return FakeChatCompletionsServer()


@pytest.fixture
async def remote(server: FakeChatCompletionsServer) -> AsyncIterator[OpenAILLM]:
    engine = OpenAILLM(base_url=BASE_URL, model=MODEL, max_retries=0, http_client=server.client())
    yield engine
    await engine.aclose()


def llm_chain(
    *engines: tuple[str, LLM], breaker: Breaker | None = None, timeout_s: float | None = TIMEOUT_S
) -> LLMChain:
    return LLMChain(engines, breaker or Breaker(), first_token_timeout_s=timeout_s)


async def collect(stream: AsyncGenerator[Any, None]) -> list[Any]:
    return [item async for item in stream]


def text_of(events: list[LLMEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


# --- LLM -------------------------------------------------------------------------------------


async def test_failover_llm_connection_error_next_engine_answers(
    remote: OpenAILLM, server: FakeChatCompletionsServer
) -> None:
    server.refuse_connection()
    backup = FlakyLLM()
    reports = Reports()

    events = await collect(
        llm_chain(("remote", remote), ("local", backup)).stream(REQUEST, report=reports)
    )

    assert text_of(events) == "Hello there."
    assert events[-2:] == [Usage(3, 2), Finish("stop")]
    assert reports.outcomes == [("remote", "failed_over"), ("local", "ok")]
    assert reports[0].error == "connection error (ConnectError)"
    assert reports[0].first_ms is None


async def test_failover_llm_503_next_engine_answers(
    remote: OpenAILLM, server: FakeChatCompletionsServer
) -> None:
    server.fail(503, "overloaded")
    reports = Reports()

    events = await collect(
        llm_chain(("remote", remote), ("local", FlakyLLM())).stream(REQUEST, report=reports)
    )

    assert text_of(events) == "Hello there."
    assert reports.outcomes == [("remote", "failed_over"), ("local", "ok")]
    assert reports[0].error == "HTTP 503"


async def test_failover_llm_hang_past_first_token_timeout_closes_the_stream(
    remote: OpenAILLM, server: FakeChatCompletionsServer
) -> None:
    server.stream_then_hang()  # headers, then nothing
    reports = Reports()

    events = await collect(
        llm_chain(("remote", remote), ("local", FlakyLLM())).stream(REQUEST, report=reports)
    )

    assert text_of(events) == "Hello there."
    assert server.closed_streams == 1  # the hung response was closed, not leaked
    assert reports.outcomes == [("remote", "failed_over"), ("local", "ok")]
    assert reports[0].error == "timeout: no first token in 50 ms"
    assert reports[0].latency_ms >= 1000 * TIMEOUT_S * 0.9


async def test_failover_llm_hanging_double_is_closed_on_timeout() -> None:
    hung = FlakyLLM(hang_after=0)

    events = await collect(llm_chain(("hung", hung), ("ok", FlakyLLM())).stream(REQUEST))

    assert text_of(events) == "Hello there."
    assert (hung.calls, hung.closed) == (1, 1)


async def test_failover_llm_error_after_first_token_propagates(
    remote: OpenAILLM, server: FakeChatCompletionsServer
) -> None:
    flaky = FlakyLLM(error=EngineError("dropped"), error_after=1)
    backup = FlakyLLM()
    breaker = Breaker(failures=1)
    reports = Reports()
    seen: list[LLMEvent] = []

    with pytest.raises(EngineError, match="dropped"):
        async for event in llm_chain(("a", flaky), ("b", backup), breaker=breaker).stream(
            REQUEST, report=reports
        ):
            seen.append(event)

    assert seen == [TextDelta("Hello")]
    assert backup.calls == 0
    assert reports.outcomes == [("a", "error")]
    assert reports[0].first_ms is not None
    assert breaker.state("a") == "open"  # it counts against the engine


async def test_failover_llm_client_error_is_not_failed_over() -> None:
    flaky = FlakyLLM(error=InputTooLargeError("too long"))
    backup = FlakyLLM()
    breaker = Breaker(failures=1)
    reports = Reports()

    with pytest.raises(InputTooLargeError):
        await collect(
            llm_chain(("a", flaky), ("b", backup), breaker=breaker).stream(REQUEST, report=reports)
        )

    assert backup.calls == 0
    assert reports.outcomes == [("a", "error")]
    assert breaker.state("a") == "closed"


async def test_failover_llm_upstream_400_fails_over(
    remote: OpenAILLM, server: FakeChatCompletionsServer
) -> None:
    # OpenAILLM reports any upstream status as an EngineError: the endpoint, not the caller,
    # is at fault as far as parley can tell (a wrong key, a missing model, its rate limit).
    server.fail(400, SECRET)
    reports = Reports()

    await collect(llm_chain(("a", remote), ("b", FlakyLLM())).stream(REQUEST, report=reports))

    assert reports.outcomes == [("a", "failed_over"), ("b", "ok")]
    assert reports[0].error == "HTTP 400"


async def test_failover_llm_all_engines_failing_raises_engine_unavailable(
    remote: OpenAILLM, server: FakeChatCompletionsServer
) -> None:
    server.fail(500, SECRET)
    reports = Reports()
    chain = llm_chain(
        ("remote", remote),
        ("local", FlakyLLM(error=EngineError(SECRET))),
        ("hung", FlakyLLM(hang_after=0)),
    )

    with pytest.raises(EngineUnavailableError) as caught:
        await collect(chain.stream(REQUEST, report=reports))

    message = caught.value.message
    assert message == (
        "every llm engine failed: remote: HTTP 500; local: EngineError; "
        "hung: timeout: no first token in 50 ms"
    )
    assert "4111" not in message
    assert [a.outcome for a in reports] == ["failed_over"] * 3


async def test_failover_llm_ok_report_carries_latency_and_first_token() -> None:
    slow = FlakyLLM(reply=("a", "b", "c"))
    reports = Reports()

    await collect(llm_chain(("slow", slow)).stream(REQUEST, report=reports))

    (attempt,) = reports
    assert (attempt.stage, attempt.engine, attempt.outcome, attempt.error) == (
        "llm",
        "slow",
        "ok",
        None,
    )
    assert attempt.first_ms is not None
    assert 0 <= attempt.first_ms <= attempt.latency_ms


async def test_failover_llm_cancellation_closes_the_inner_stream_and_leaves_the_breaker(
    remote: OpenAILLM, server: FakeChatCompletionsServer
) -> None:
    server.stream_then_hang("Hi")
    breaker = Breaker(failures=1)
    reports = Reports()
    first = asyncio.Event()

    async def listen() -> None:
        async for _ in llm_chain(("remote", remote), breaker=breaker).stream(
            REQUEST, report=reports
        ):
            first.set()

    task = asyncio.create_task(listen())
    await asyncio.wait_for(first.wait(), 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert server.closed_streams == 1
    assert reports == []
    assert breaker.states() == {"remote": "closed"}


async def test_failover_llm_closing_the_stream_closes_the_engine() -> None:
    hung = FlakyLLM(hang_after=1)
    breaker = Breaker(failures=1)
    reports = Reports()
    stream = llm_chain(("hung", hung), ("b", FlakyLLM()), breaker=breaker).stream(
        REQUEST, report=reports
    )

    assert await anext(stream) == TextDelta("Hello")
    await stream.aclose()

    assert hung.closed == 1
    assert reports == []
    assert breaker.state("hung") == "closed"


# --- Breaker ---------------------------------------------------------------------------------


async def test_failover_breaker_opens_skips_half_opens_and_closes(
    remote: OpenAILLM, server: FakeChatCompletionsServer
) -> None:
    clock = Clock()
    breaker = Breaker(failures=2, open_s=30, clock=clock)
    chain = llm_chain(("remote", remote), ("local", FlakyLLM()), breaker=breaker)
    server.fail(503)
    server.fail(503)

    for _ in range(2):
        await collect(chain.stream(REQUEST))
    assert breaker.state("remote") == "open"

    reports = Reports()
    await collect(chain.stream(REQUEST, report=reports))
    assert len(server.requests) == 2  # skipped: no request reached it
    assert reports.outcomes == [("local", "ok")]

    clock.now += 30
    assert breaker.state("remote") == "half_open"
    server.stream_text("back")
    reports = Reports()
    events = await collect(chain.stream(REQUEST, report=reports))
    assert text_of(events) == "back"
    assert reports.outcomes == [("remote", "ok")]
    assert breaker.states() == {"local": "closed", "remote": "closed"}


async def test_failover_breaker_all_open_are_tried_anyway_in_order() -> None:
    breaker = Breaker(failures=1, open_s=30, clock=Clock())
    breaker.failure("a")
    breaker.failure("b")
    a, b = FlakyLLM(reply=("from a",)), FlakyLLM()
    reports = Reports()

    events = await collect(
        llm_chain(("a", a), ("b", b), breaker=breaker).stream(REQUEST, report=reports)
    )

    assert text_of(events) == "from a"
    assert (a.calls, b.calls) == (1, 0)
    assert reports.outcomes == [("a", "ok")]
    assert breaker.state("a") == "closed"


async def test_failover_breaker_open_engine_is_the_last_resort() -> None:
    breaker = Breaker(failures=1, open_s=30, clock=Clock())
    breaker.failure("a")
    reports = Reports()
    chain = llm_chain(
        ("a", FlakyLLM(reply=("from a",))),
        ("b", FlakyLLM(error=EngineError("down"))),
        breaker=breaker,
    )

    events = await collect(chain.stream(REQUEST, report=reports))

    assert text_of(events) == "from a"
    assert reports.outcomes == [("b", "failed_over"), ("a", "ok")]


def test_failover_breaker_counts_consecutive_failures() -> None:
    breaker = Breaker(failures=3, open_s=10, clock=Clock())
    for _ in range(2):
        breaker.failure("x")
    breaker.success("x")
    breaker.failure("x")
    breaker.failure("x")
    assert breaker.state("x") == "closed"
    assert breaker.allow("x")
    breaker.failure("x")
    assert breaker.state("x") == "open"
    assert not breaker.allow("x")
    assert breaker.state("unknown") == "closed"


def test_failover_breaker_half_open_lets_one_trial_through() -> None:
    clock = Clock()
    breaker = Breaker(failures=1, open_s=10, clock=clock)
    breaker.failure("x")
    clock.now += 10

    assert breaker.state("x") == "half_open"
    assert breaker.allow("x")
    assert not breaker.allow("x")  # the trial is out

    breaker.failure("x")  # the trial failed: open again, for open_s from now
    assert breaker.state("x") == "open"
    clock.now += 9.9
    assert not breaker.allow("x")
    clock.now += 0.1
    assert breaker.allow("x")
    clock.now += 10  # that trial never reported: another may go
    assert breaker.allow("x")
    breaker.success("x")
    assert breaker.states() == {"x": "closed"}


def test_failover_breaker_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        Breaker(failures=0)
    with pytest.raises(ValueError):
        Breaker(open_s=-1)


# --- TTS -------------------------------------------------------------------------------------


def tts_chain(*engines: tuple[str, TTS], breaker: Breaker | None = None) -> TTSChain:
    return TTSChain(engines, breaker or Breaker(), first_audio_timeout_s=TIMEOUT_S)


async def test_failover_tts_before_first_frame() -> None:
    broken = FlakyTTS(error=EngineError("no voice"))
    backup = FlakyTTS(frames=4)
    reports = Reports()

    frames = await collect(
        tts_chain(("a", broken), ("b", backup)).synthesize(
            "Hello.", SpeechOptions(), report=reports
        )
    )

    assert len(frames) == 4
    assert backup.texts == ["Hello."]
    assert reports.outcomes == [("a", "failed_over"), ("b", "ok")]
    assert [a.stage for a in reports] == ["tts", "tts"]
    assert reports[1].first_ms is not None


async def test_failover_tts_hang_before_first_frame_times_out() -> None:
    hung = FlakyTTS(hang_after=0)
    reports = Reports()

    frames = await collect(
        tts_chain(("a", hung), ("b", FlakyTTS())).synthesize("Hi.", SpeechOptions(), report=reports)
    )

    assert len(frames) == 3
    assert hung.closed == 1
    assert reports[0].error == "timeout: no first audio in 50 ms"


async def test_failover_tts_error_after_first_frame_propagates() -> None:
    flaky = FlakyTTS(error=EngineError("crash"), error_after=1)
    backup = FlakyTTS()
    reports = Reports()

    with pytest.raises(EngineError, match="crash"):
        await collect(
            tts_chain(("a", flaky), ("b", backup)).synthesize(
                "Hi.", SpeechOptions(), report=reports
            )
        )

    assert backup.texts == []
    assert reports.outcomes == [("a", "error")]


async def test_failover_tts_fails_over_per_clause() -> None:
    breaker = Breaker(failures=5)
    flaky = FlakyTTS(error=EngineError("x"))
    backup = FlakyTTS()
    chain = tts_chain(("a", flaky), ("b", backup), breaker=breaker)

    await collect(chain.synthesize("One.", SpeechOptions()))
    flaky.error = None
    await collect(chain.synthesize("Two.", SpeechOptions()))

    assert flaky.texts == ["One.", "Two."]
    assert backup.texts == ["One."]
    assert chain.voices()[0].id == "flaky-tts-voice"


# --- ASR -------------------------------------------------------------------------------------


def frames_of(*lengths: int, rate: int = 16000) -> list[Frame]:
    return [Frame(np.full(n, i + 1, np.int16), rate) for i, n in enumerate(lengths)]


async def live(frames: list[Frame]) -> AsyncGenerator[Frame, None]:
    for frame in frames:
        await asyncio.sleep(0)
        yield frame


def asr_chain(
    *engines: tuple[str, ASR], timeout_s: float | None = TIMEOUT_S, **kw: Any
) -> ASRChain:
    return ASRChain(engines, Breaker(), timeout_s=timeout_s, **kw)


async def test_failover_asr_stream_replays_the_audio_to_the_next_engine() -> None:
    audio = frames_of(320, 0, 160, 480, 320)  # with a pause mark
    broken = FlakyASR(error=EngineError("gpu lost"), error_after=3)
    backup = FlakyASR(text="hello from b")
    reports = Reports()

    transcripts = await collect(
        asr_chain(("a", broken), ("b", backup)).stream(live(audio), report=reports)
    )

    assert broken.frames == [320, 0, 160]
    assert backup.frames == [320, 0, 160, 480, 320]
    assert transcripts[-1] == Transcript("hello from b", is_final=True)
    assert any(not t.is_final for t in transcripts)
    assert reports.outcomes == [("a", "failed_over"), ("b", "ok")]
    assert reports[0].first_ms is not None  # its partials came


async def test_failover_asr_engine_reading_from_its_own_task_does_not_end_the_audio() -> None:
    queue: asyncio.Queue[Frame | None] = asyncio.Queue()

    async def audio() -> AsyncGenerator[Frame, None]:
        while (frame := await queue.get()) is not None:
            yield frame

    frames = frames_of(100, 200, 300, 400)
    broken = FlakyASR(error=EngineError("x"), error_after=2, own_reader=True)
    backup = FlakyASR(own_reader=True)
    for frame in frames[:2]:
        queue.put_nowait(frame)
    task = asyncio.create_task(collect(asr_chain(("a", broken), ("b", backup)).stream(audio())))
    for _ in range(200):
        if len(backup.frames) == 2:
            break
        await asyncio.sleep(0.001)
    # The second engine has heard the replay and waits on the read the first one started.
    for frame in [*frames[2:], None]:
        queue.put_nowait(frame)
    transcripts = await asyncio.wait_for(task, 1)

    assert backup.frames == [100, 200, 300, 400]
    assert transcripts[-1].is_final


async def test_failover_asr_past_the_replay_limit_reports_error() -> None:
    broken = FlakyASR(error=EngineError("x"), error_after=3)
    backup = FlakyASR()
    reports = Reports()
    chain = asr_chain(("a", broken), ("b", backup), max_replay_s=0.02)  # 320 samples

    with pytest.raises(EngineError):
        await collect(chain.stream(live(frames_of(160, 160, 160, 160)), report=reports))

    assert backup.frames == []
    assert reports.outcomes == [("a", "error")]


async def test_failover_asr_no_final_after_the_audio_ends_times_out() -> None:
    hung = FlakyASR(hang_at_end=True)
    backup = FlakyASR()
    reports = Reports()

    transcripts = await collect(
        asr_chain(("a", hung), ("b", backup)).stream(
            live(frames_of(160, 160)), partials=False, report=reports
        )
    )

    assert transcripts == [Transcript("hello parley", is_final=True)]
    assert backup.frames == [160, 160]
    assert hung.closed == 1
    assert reports[0].error == "timeout: no final transcript 50 ms after the audio ended"


async def test_failover_asr_timeout_does_not_run_while_the_caller_speaks() -> None:
    async def slow() -> AsyncGenerator[Frame, None]:
        for frame in frames_of(160, 160, 160):
            await asyncio.sleep(TIMEOUT_S)  # three timeouts of speech in all
            yield frame

    reports = Reports()
    transcripts = await collect(
        asr_chain(("a", FlakyASR())).stream(slow(), partials=False, report=reports)
    )

    assert transcripts[-1].is_final
    assert reports.outcomes == [("a", "ok")]


async def test_failover_asr_resamples_for_an_engine_of_another_rate() -> None:
    broken = FlakyASR(error=EngineError("x"), error_after=1)
    narrow = FlakyASR(sample_rate=8000)

    await collect(asr_chain(("a", broken), ("b", narrow)).stream(live(frames_of(1600, 1600, 1600))))

    assert narrow.rates == {8000}
    assert abs(sum(narrow.frames) - 2400) <= 16


async def test_failover_asr_transcribe_fails_over() -> None:
    broken = FlakyASR(error=EngineError("x"))
    hung = FlakyASR(hang_at_end=True)
    backup = FlakyASR(text="third time")
    reports = Reports()

    transcript = await asr_chain(("a", broken), ("b", hung), ("c", backup)).transcribe(
        frames_of(1600)[0], report=reports
    )

    assert transcript == Transcript("third time", is_final=True)
    assert reports.outcomes == [("a", "failed_over"), ("b", "failed_over"), ("c", "ok")]
    assert reports[1].error == "timeout: no transcript in 50 ms"


async def test_failover_asr_cancellation_leaves_the_breaker_alone() -> None:
    breaker = Breaker(failures=1)
    engine = FlakyASR()
    reports = Reports()
    chain = ASRChain([("a", engine)], breaker, timeout_s=TIMEOUT_S)

    async def endless() -> AsyncGenerator[Frame, None]:
        while True:
            await asyncio.sleep(0)
            yield frames_of(160)[0]

    stream = chain.stream(endless(), report=reports)
    await anext(stream)
    await stream.aclose()

    assert engine.closed == 1
    assert reports == []
    assert breaker.states() == {"a": "closed"}


# --- The chains as engines -------------------------------------------------------------------


def test_failover_chains_satisfy_the_engine_protocols() -> None:
    breaker = Breaker()
    llm = LLMChain(
        [("a", FlakyLLM(supports_vision=True)), ("b", FlakyLLM())],
        breaker,
        first_token_timeout_s=2,
    )
    tts = TTSChain([("t", FlakyTTS())], breaker, first_audio_timeout_s=None)
    asr = ASRChain([("s", FlakyASR(sample_rate=8000)), ("w", FlakyASR())], breaker, timeout_s=None)

    assert isinstance(llm, LLM) and isinstance(tts, TTS) and isinstance(asr, ASR)
    assert (llm.name, llm.supports_vision) == ("a|b", False)
    assert (tts.name, asr.name, asr.sample_rate) == ("t", "s|w", 8000)
    with pytest.raises(ValueError):
        LLMChain([], breaker, first_token_timeout_s=None)


def test_failover_chain_health_follows_the_breaker() -> None:
    clock = Clock()
    breaker = Breaker(failures=1, open_s=10, clock=clock)
    chain = LLMChain([("a", FlakyLLM()), ("b", FlakyLLM())], breaker, first_token_timeout_s=1)

    assert chain.health().status == "ok"
    breaker.failure("a")
    assert (chain.health().status, chain.health().detail) == ("degraded", "a: open")
    breaker.failure("b")
    assert chain.health().status == "down"


async def test_failover_asr_failing_audio_is_not_the_engines_fault() -> None:
    async def broken_audio() -> AsyncGenerator[Frame, None]:
        yield frames_of(160)[0]
        raise RuntimeError("the caller's audio broke")

    breaker = Breaker(failures=1)
    backup = FlakyASR()
    reports = Reports()
    chain = ASRChain([("a", FlakyASR()), ("b", backup)], breaker, timeout_s=TIMEOUT_S)

    with pytest.raises(RuntimeError, match="audio broke"):
        await collect(chain.stream(broken_audio(), report=reports))

    assert backup.frames == []
    assert reports.outcomes == [("a", "error")]
    assert breaker.state("a") == "closed"

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest

from parley.config import LLMSettings
from parley.engines.base import (
    LLM,
    ChatRequest,
    Finish,
    LLMEvent,
    Message,
    TextDelta,
    ToolSpec,
    Usage,
    estimate_message_tokens,
)
from parley.engines.faq import FAQLLM, NO_ANSWER, load_knowledge
from parley.engines.registry import build_llm
from parley.errors import ConfigError


@pytest.fixture(scope="module")
def faq() -> FAQLLM:
    return FAQLLM()


def ask(text: str) -> ChatRequest:
    return ChatRequest(messages=(Message("user", text),))


async def collect(llm: LLM, request: ChatRequest) -> list[LLMEvent]:
    return [event async for event in llm.stream(request)]


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_faq_satisfies_llm_protocol(faq: FAQLLM) -> None:
    assert isinstance(faq, LLM)
    assert faq.name == "faq"
    assert faq.supports_vision is False


def test_faq_answers_how_to_start_parley(faq: FAQLLM) -> None:
    answer = faq.answer("How do I start parley?")

    assert "parley serve" in answer
    assert "parley call" in answer


def test_faq_answers_how_to_connect_a_real_language_model(faq: FAQLLM) -> None:
    answer = faq.answer("how do I connect a real language model")

    for setting in ("PARLEY_LLM_BASE_URL", "PARLEY_LLM_MODEL", "PARLEY_LLM_API_KEY"):
        assert setting in answer


@pytest.mark.parametrize(
    ("question", "key"),
    [
        ("can I hook up my own LLM", "PARLEY_LLM_BASE_URL"),
        ("i want to plug in gpt four", "PARLEY_LLM_BASE_URL"),
        ("which llm servers work", "vLLM"),
        ("start the server", "parley serve"),
        # Misheard words, as a weak recogniser delivers them.
        ("how do i start parlay with and", "parley serve"),
        ("how do i connect a real length which model", "PARLEY_LLM_BASE_URL"),
        ("what is parley", "voice AI server"),
        ("who are you", "voice assistant"),
        ("hello", "Hello"),
        ("bye bye", "Goodbye"),
        ("does my data leave the computer", "offline"),
        ("can I interrupt you", "barge-in"),
        ("why does it mishear me", "pocketsphinx"),
        ("can you speak french", "French"),
        ("how long do you wait before answering", "silence"),
        ("what's the latency like", "first audio"),
        ("do I need a GPU", "CPU"),
        ("what is the faq engine", "knowledge file"),
    ],
)
def test_faq_answers_paraphrases(faq: FAQLLM, question: str, key: str) -> None:
    assert key in faq.answer(question)


@pytest.mark.parametrize(
    "question",
    [
        "what is the capital of Mongolia",
        "asdf qwerty zxcv",
        "how does parley handle the weather",
        # The product's name is in half the entries: alone it says nothing about which.
        "parley blah",
        "how old are you",
        "set a timer for ten minutes",
        "write me a poem about parley",
        "the",
        "",
        "   ",
    ],
)
def test_faq_says_it_has_no_answer(faq: FAQLLM, question: str) -> None:
    assert faq.answer(question) == NO_ANSWER


@pytest.mark.parametrize(
    "question",
    [
        '"AND OR NEAR( * ^ :',
        'start" OR "parley',
        "NEAR(start parley, 2)",
        "{question}: start*",
        "how do I start parley^ -- ' ; DROP TABLE entry",
    ],
)
def test_faq_survives_fts_syntax_in_the_question(faq: FAQLLM, question: str) -> None:
    answer = faq.answer(question)

    assert isinstance(answer, str)
    assert answer


async def test_faq_stream_deltas_join_to_the_answer_then_usage_and_finish(
    faq: FAQLLM,
) -> None:
    events = await collect(faq, ask("how do I start parley"))

    *deltas, usage, finish = events
    assert all(isinstance(d, TextDelta) for d in deltas)
    text = "".join(d.text for d in deltas if isinstance(d, TextDelta))
    assert text == faq.answer("how do I start parley")
    # Word-sized: each delta is one word and the space after it.
    assert len(deltas) == len(text.split())
    assert all(len(d.text.split()) == 1 for d in deltas if isinstance(d, TextDelta))
    prompt = estimate_message_tokens(Message("user", "how do I start parley"))
    assert usage == Usage(prompt, math.ceil(len(text) / 4))
    assert finish == Finish("stop")


async def test_faq_stream_answers_the_last_user_message(faq: FAQLLM) -> None:
    request = ChatRequest(
        messages=(
            Message("system", "You are parley."),
            Message("user", "what is the capital of Mongolia"),
            Message("assistant", NO_ANSWER),
            Message("user", "ok, how do I start parley then"),
        )
    )

    events = await collect(faq, request)

    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert "parley serve" in text
    prompt_tokens = sum(estimate_message_tokens(m) for m in request.messages)
    assert events[-2] == Usage(prompt_tokens, math.ceil(len(text) / 4))


async def test_faq_stream_ignores_tools(faq: FAQLLM) -> None:
    request = ChatRequest(
        messages=(Message("user", "hello"),), tools=(ToolSpec("hang_up"),), tool_choice="required"
    )

    events = await collect(faq, request)

    assert isinstance(events[0], TextDelta)
    assert events[-1] == Finish("stop")


async def test_faq_stream_says_no_answer_without_a_user_message(faq: FAQLLM) -> None:
    events = await collect(faq, ChatRequest(messages=(Message("system", "Be brief."),)))

    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == NO_ANSWER


async def test_faq_answers_from_other_threads(faq: FAQLLM) -> None:
    answers = await asyncio.gather(
        *(asyncio.to_thread(faq.answer, "how do I start parley") for _ in range(8))
    )

    assert len(set(answers)) == 1
    assert "parley serve" in answers[0]


def test_faq_bundled_knowledge_is_short_and_speakable() -> None:
    entries = load_knowledge()

    assert len(entries) >= 30
    for entry in entries:
        assert len(entry.answer) <= 300, entry.question
        assert entry.answer.count(". ") <= 3, entry.question


def test_faq_custom_knowledge_file(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "shop.jsonl",
        [
            {"question": "When are you open?", "answer": "Nine to five, Monday to Friday."},
            {"question": "Do you deliver?", "answer": "Yes, within ten miles.", "tags": ["ship"]},
        ],
    )

    faq = FAQLLM(knowledge=path)

    assert faq.answer("what are your opening hours") == "Nine to five, Monday to Friday."
    assert faq.answer("can you ship to me") == "Yes, within ten miles."
    assert faq.answer("how do I start parley") == NO_ANSWER


def test_faq_custom_no_answer_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "k.jsonl", [{"question": "Hours?", "answer": "Nine to five."}])

    faq = FAQLLM(knowledge=path, no_answer="Ask the front desk.")

    assert faq.answer("where is the pool") == "Ask the front desk."


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected an object"),
        ('{"question": "Q?"}', '"answer"'),
        ('{"question": "", "answer": "A."}', '"question"'),
        ('{"question": "Q?", "answer": "A.", "tags": "one"}', '"tags"'),
        ('{"q": "Q?", "a": "A."}', '"question"'),
        ('{"question": "Q?", "answer": "A.", "tag": ["x"]}', "unknown field 'tag'"),
    ],
)
def test_faq_malformed_knowledge_line_is_a_config_error(
    tmp_path: Path, line: str, why: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "Q?", "answer": "A."}\n\n' + line + "\n", encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        FAQLLM(knowledge=path)

    message = str(caught.value)
    assert str(path) in message
    assert "line 3" in message
    assert why in message
    assert caught.value.param == "llm.knowledge"


def test_faq_missing_knowledge_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.jsonl"

    with pytest.raises(ConfigError, match="not found") as caught:
        FAQLLM(knowledge=path)

    assert str(path) in str(caught.value)


def test_faq_empty_knowledge_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n", encoding="utf-8")

    with pytest.raises(ConfigError, match="no entries") as caught:
        FAQLLM(knowledge=path)

    assert str(path) in str(caught.value)


def test_faq_non_utf8_knowledge_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"question": "Caf\xe9?", "answer": "Oui."}\n'.encode("latin-1"))

    with pytest.raises(ConfigError, match="UTF-8"):
        FAQLLM(knowledge=path)


def test_faq_built_by_registry(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "k.jsonl", [{"question": "Hours?", "answer": "Nine to five."}])

    default = build_llm(LLMSettings())
    custom = build_llm(LLMSettings(engine="faq", knowledge=path, options={"min_coverage": 0.5}))

    assert isinstance(default, FAQLLM)
    assert isinstance(custom, FAQLLM)
    assert custom.answer("what are the hours") == "Nine to five."

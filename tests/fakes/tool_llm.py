"""``FakeToolLLM``: an in-process LLM engine (a test double) that behaves like a tool-using model.

It satisfies the :class:`~parley.engines.base.LLM` Protocol and answers from the request, the
way a model would:

- tools offered and the last message from the user: call the tool that ``tool_choice`` names,
  or the first tool, with ``{"city": "Paris"}`` (the arguments arrive in two pieces);
- the last message a tool's output: "The weather is <output>.";
- an image among the messages: "I can see the image you sent.";
- otherwise: "You said: <last user text>."

Text streams word by word; ``Usage`` and ``Finish`` come last. Every request is recorded in
``requests``; ``fail`` makes it raise an :class:`~parley.errors.EngineError` before any output,
``fail_midway`` after the first word.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from parley.engines.base import (
    ChatRequest,
    Finish,
    LLMEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
    estimate_message_tokens,
    estimate_tokens,
)
from parley.errors import EngineError

__all__ = ["FakeToolLLM"]


@dataclass
class FakeToolLLM:
    name: str = "fake-tools"
    supports_vision: bool = False
    fail: bool = False
    fail_midway: bool = False
    requests: list[ChatRequest] = field(default_factory=list)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[LLMEvent, None]:
        self.requests.append(request)
        if self.fail:
            raise EngineError("fake llm failure")
        prompt = sum(estimate_message_tokens(m) for m in request.messages)
        last = request.messages[-1]
        if request.tools and request.tool_choice != "none" and last.role == "user":
            names = {t.name for t in request.tools}
            name = request.tool_choice if request.tool_choice in names else request.tools[0].name
            yield ToolCallDelta(0, id="call_fake1", name=name)
            yield ToolCallDelta(0, arguments='{"city": ')
            yield ToolCallDelta(0, arguments='"Paris"}')
            yield Usage(prompt, 8)
            yield Finish("tool_calls")
            return
        if last.role == "tool":
            reply = f"The weather is {last.text}."
        elif any(m.has_images for m in request.messages):
            reply = "I can see the image you sent."
        else:
            user = next((m.text for m in reversed(request.messages) if m.role == "user"), "")
            reply = f"You said: {user}."
        words = reply.split(" ")
        for i, word in enumerate(words):
            yield TextDelta(word if i == 0 else " " + word)
            if self.fail_midway:
                raise EngineError("fake llm failure midway")
        yield Usage(prompt, estimate_tokens(reply))
        yield Finish("stop")

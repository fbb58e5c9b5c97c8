from parley.engines.base import ImagePart, Message, TextPart, ToolCall
from parley.pipeline.history import History, estimate_tokens


def test_history_prompt_drops_oldest_turns_beyond_budget() -> None:
    h = History(budget_tokens=200)
    for i in range(50):
        h.add(Message("user", f"question {i} " + "x" * 100))
        h.add(Message("assistant", f"answer {i} " + "y" * 100))
    prompt = h.prompt("be brief")
    assert prompt[0] == Message("system", "be brief")
    assert sum(estimate_tokens(m) for m in prompt) <= 200
    assert prompt[-1].text.startswith("answer 49")
    assert len(prompt) < 10
    assert len(h) == 100  # nothing deleted, only left out


def test_history_newest_turn_kept_even_over_budget() -> None:
    h = History(budget_tokens=64)
    h.add(Message("user", "z" * 2000))
    assert h.prompt(None)[-1].text == "z" * 2000


def test_history_tool_output_stays_with_its_call() -> None:
    h = History(budget_tokens=120)
    h.add(Message("user", "a" * 300))
    h.add(Message("assistant", tool_calls=(ToolCall("c1", "f", "{}"),)))
    h.add(Message("tool", "b" * 200, tool_call_id="c1"))
    prompt = h.prompt(None)
    roles = [m.role for m in prompt]
    assert "tool" not in roles or roles[roles.index("tool") - 1] == "assistant"


def test_history_skips_empty_messages_and_edits_items() -> None:
    h = History()
    u = h.add(Message("user", ""))
    a = h.add(Message("assistant", "hello there friend"))
    assert h.prompt(None) == (Message("assistant", "hello there friend"),)
    h.replace_text(a.id, "hello")
    assert h.get(a.id) is not None and h.get(a.id).message.text == "hello"  # type: ignore[union-attr]
    mid = h.add(Message("user", "inserted"), after=u.id)
    assert [i.id for i in h.items] == [u.id, mid.id, a.id]
    assert h.delete(u.id) and not h.delete(u.id)


def test_history_estimate_counts_images() -> None:
    text = Message("user", (TextPart("abcd" * 10),))
    image = Message("user", (TextPart("abcd" * 10), ImagePart("data:image/png;base64,AAAA")))
    assert estimate_tokens(image) > estimate_tokens(text)

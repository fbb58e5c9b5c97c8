"""The conversation's items and the slice of them that fits the model's context budget.

Items keep their ids so the Realtime layer can retrieve, truncate and delete them. Beyond
``budget_tokens`` the oldest items are left out of the prompt (not deleted: the client still
sees them), so a long call's per-turn cost stays bounded. A tool call and its output are dropped
together: a model must never see an output without its call.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from parley.engines.base import ContentPart, Message
from parley.engines.base import estimate_message_tokens as estimate_tokens
from parley.ids import new_id

__all__ = ["History", "Item", "estimate_tokens"]


@dataclass(slots=True, eq=False)
class Item:
    """One conversation item: what the model sees of it, and what a client was shown of it.

    ``view`` belongs to the protocol layer (the Realtime item dict its client was sent); the
    pipeline never reads it. ``None``: no client has been told of the item (an assistant
    message that produced no text, say), so it is not addressable by id from outside.
    """

    id: str
    message: Message
    view: dict[str, Any] | None = field(default=None)


class History:
    __slots__ = ("_items", "budget_tokens")

    def __init__(self, budget_tokens: int = 2000) -> None:
        self.budget_tokens = budget_tokens
        self._items: list[Item] = []

    def __len__(self) -> int:
        return len(self._items)

    @property
    def items(self) -> tuple[Item, ...]:
        return tuple(self._items)

    def add(
        self, message: Message, *, item_id: str | None = None, after: str | None = None
    ) -> Item:
        """Append (or insert after ``after``) a message; returns its item."""
        item = Item(item_id or new_id("item"), message)
        if after is None:
            self._items.append(item)
        else:
            self._items.insert(self._index(after) + 1, item)
        return item

    def move_to_front(self, item_id: str) -> None:
        """Make an item the first of the conversation (``previous_item_id: "root"``)."""
        self._items.insert(0, self._items.pop(self._index(item_id)))

    def get(self, item_id: str) -> Item | None:
        return next((i for i in self._items if i.id == item_id), None)

    def delete(self, item_id: str) -> bool:
        before = len(self._items)
        self._items = [i for i in self._items if i.id != item_id]
        return len(self._items) != before

    def replace_text(self, item_id: str, text: str) -> Item:
        """Set an item's text (a transcript; an assistant reply truncated to what was heard)."""
        item = self._items[self._index(item_id)]
        item.message = replace(item.message, content=text)
        return item

    def previous_shown(self, item_id: str) -> str | None:
        """The id of the nearest item before ``item_id`` that a client was shown (its
        ``previous_item_id``); the last shown item if ``item_id`` is not in the history."""
        ids = [i.id for i in self._items]
        end = ids.index(item_id) if item_id in ids else len(ids)
        return next((i.id for i in reversed(self._items[:end]) if i.view is not None), None)

    def prompt(self, instructions: str | tuple[ContentPart, ...] | None) -> tuple[Message, ...]:
        """The newest items that fit the budget, after the system instructions."""
        system = (Message("system", instructions),) if instructions else ()
        budget = self.budget_tokens - sum(estimate_tokens(m) for m in system)
        kept: list[Message] = []
        used = 0
        groups = self._groups()
        for group in reversed(groups):
            cost = sum(estimate_tokens(m) for m in group)
            # The newest group always goes in, even alone over budget: a reply needs a question.
            if kept and used + cost > budget:
                break
            kept[:0] = group
            used += cost
        return system + tuple(kept)

    def _groups(self) -> list[list[Message]]:
        """Items grouped so that tool outputs stay with the call that asked for them."""
        groups: list[list[Message]] = []
        for item in self._items:
            msg = item.message
            if not msg.text and not msg.tool_calls and not msg.has_images:
                continue  # an empty turn (a cough, a reply cut before a word was heard)
            if (
                msg.role == "tool"
                and groups
                and (groups[-1][0].tool_calls or groups[-1][-1].role == "tool")
            ):
                groups[-1].append(msg)
            else:
                groups.append([msg])
        return groups

    def _index(self, item_id: str) -> int:
        for idx, item in enumerate(self._items):
            if item.id == item_id:
                return idx
        raise KeyError(item_id)

"""Durable state: the embedded SQLite database and the stores built on it.

Today that is the prompt-template store behind the Realtime API's ``prompt: {id, version,
variables}``; the PostgreSQL and Redis adapters of a scaled deployment will sit beside it.
"""

from parley.store.prompts import (
    PromptStore,
    PromptTemplate,
    PromptVariable,
    RenderedPrompt,
    load_template_file,
    render,
)
from parley.store.sqlite import MIGRATIONS, Database, Migration

__all__ = [
    "MIGRATIONS",
    "Database",
    "Migration",
    "PromptStore",
    "PromptTemplate",
    "PromptVariable",
    "RenderedPrompt",
    "load_template_file",
    "render",
]

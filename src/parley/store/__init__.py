"""Durable state: the database (embedded SQLite, or PostgreSQL) and the stores built on it.

Today that is the prompt-template store behind the Realtime API's ``prompt: {id, version,
variables}`` and the key store (``parley.store.keys``); the Redis adapter of a scaled
deployment will sit beside them.
"""

from parley.store.database import MIGRATIONS, Database, Migration
from parley.store.prompts import (
    PromptStore,
    PromptTemplate,
    PromptVariable,
    RenderedPrompt,
    load_template_file,
    render,
)

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

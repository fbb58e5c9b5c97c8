"""The former home of :class:`~parley.store.database.Database`, kept so that old imports work.

Import ``Database``, ``MIGRATIONS`` and ``Migration`` from :mod:`parley.store` instead.
"""

from parley.store.database import MIGRATIONS, Database, Migration

__all__ = ["MIGRATIONS", "Database", "Migration"]

"""parley: a self-hosted realtime voice AI server.

The layers, top to bottom (imports point down only): ``server`` -> ``realtime`` -> ``pipeline``
-> ``engines`` -> ``audio``. See ``../shared/DESIGN.md``.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]

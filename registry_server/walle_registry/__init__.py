"""The Walle registry and deployment service.

It depends on ``walle_core.task`` (the bundle format) and its own server dependencies only, never
on the engine. Entry point: :func:`walle_registry.app.create_app`.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

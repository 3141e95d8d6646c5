"""pluggy hook specifications: what a Walle plugin package may provide."""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "walle"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class BackendSpec:
    @hookspec
    def walle_backends(self) -> list[type[Any]]:  # list[type[walle_core.backend.Backend]]
        """Return the Backend classes this plugin provides."""
        raise NotImplementedError


class PipelineSpec:
    @hookspec
    def walle_pipeline_stages(self) -> list[Any]:
        """Return on-device pipeline stage factories (feature functions, sinks)."""
        raise NotImplementedError

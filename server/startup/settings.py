"""The serving commit's settings.yaml as the running server reads it: its
defaults where it says nothing, and what it asks of registrations and map
streams, made once per settings object."""

from __future__ import annotations

from collections.abc import Callable

from gitctl.tailnet import TailnetSettings
from server.control import ControlSettings
from server.tailnet import Tailnet

__all__ = ["DEFAULT_SETTINGS", "HeldControlSettings", "serving_settings"]

DEFAULT_SETTINGS = TailnetSettings()


def serving_settings(tailnet: Tailnet) -> TailnetSettings:
    return tailnet.source.settings or DEFAULT_SETTINGS


class HeldControlSettings:
    """A callable for ControlHandler's `settings`: every delta asks for it (its
    keep-alive), so it is made again only when `settings()` is a new object."""

    def __init__(self, settings: Callable[[], TailnetSettings]) -> None:
        self._settings = settings
        self._held: tuple[TailnetSettings, ControlSettings] | None = None

    def __call__(self) -> ControlSettings:
        settings = self._settings()
        held = self._held
        if held is None or held[0] is not settings:
            held = self._held = (settings, ControlSettings.from_tailnet(settings))
        return held[1]

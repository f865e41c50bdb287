"""The custom ids of the buttons on results: the contract between delivery (which puts them on
messages) and the cogs (whose persistent DynamicItems answer them, also after a restart)."""

from __future__ import annotations

TRACK = r"(?P<track>[A-Za-z0-9_-]{8,64})"
REMIX_TEMPLATE = rf"remix:{TRACK}:(?P<index>[0-9])"
REROLL_TEMPLATE = rf"reroll:{TRACK}"
DELETE_TEMPLATE = rf"delete:{TRACK}"
PAINT_TEMPLATE = rf"paint:{TRACK}"
UPSCALE_TEMPLATE = rf"upscale:{TRACK}:(?P<index>[0-9])"


def remix_id(track_id: str, index: int) -> str:
    return f"remix:{track_id}:{index}"


def reroll_id(track_id: str) -> str:
    return f"reroll:{track_id}"


def delete_id(track_id: str) -> str:
    return f"delete:{track_id}"


def paint_id(track_id: str) -> str:
    return f"paint:{track_id}"
def upscale_id(track_id: str, index: int) -> str:
    return f"upscale:{track_id}:{index}"

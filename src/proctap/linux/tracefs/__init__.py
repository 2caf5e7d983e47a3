"""Reusable tracefs pieces: format/header parsers and record decoders (:mod:`.format`), the ring-buffer page
decoder (:mod:`.ring`), and instance management (:mod:`.instance`).  Used by the tracefs and kprobe backends."""

from __future__ import annotations

from .format import (
    EventFormat,
    EventHeaderLayout,
    Field,
    PageLayout,
    RecordDecoder,
    parse_format,
    parse_header_event,
    parse_header_page,
)
from .instance import INSTANCE_PREFIX, Instance, find_tracefs, list_instances, parse_stats, remove_stale_instances
from .ring import Page, decode_page

__all__ = [
    "INSTANCE_PREFIX",
    "EventFormat",
    "EventHeaderLayout",
    "Field",
    "Instance",
    "Page",
    "PageLayout",
    "RecordDecoder",
    "decode_page",
    "find_tracefs",
    "list_instances",
    "parse_format",
    "parse_header_event",
    "parse_header_page",
    "parse_stats",
    "remove_stale_instances",
]

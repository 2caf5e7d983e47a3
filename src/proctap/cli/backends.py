"""``proctap backends``: which kernel interfaces work here, and why not."""

from __future__ import annotations

import argparse
import json
import sys

from ..backends import AUTO_ORDER, BACKENDS, Availability, backend_class, probe_all
from ..errors import ProctapError
from .common import Subcommand

__all__ = ["SUBCOMMAND"]


def _add_backends_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-j", "--json", action="store_true", help="one JSON object describing every backend")


def _backend_rows() -> tuple[list[dict[str, object]], str | None]:
    availability: dict[str, Availability] = probe_all()
    auto = next((name for name in AUTO_ORDER if availability.get(name)), None)
    rows = []
    for name in BACKENDS:
        avail = availability[name]
        try:
            cls = backend_class(name)
            features = sorted(f.value for f in cls.features)
            description = cls.description
        except ProctapError:
            features, description = [], ""
        rows.append(
            {
                "name": name,
                "available": avail.ok,
                "reason": None if avail.ok else avail.reason,
                "auto": name == auto,
                "description": description,
                "features": features,
            }
        )
    return rows, auto


def run_backends(args: argparse.Namespace) -> int:
    rows, auto = _backend_rows()
    if args.json:
        sys.stdout.write(json.dumps({"auto": auto, "backends": rows}) + "\n")
    else:
        width = max(len(name) for name in BACKENDS)
        lines = []
        for row in rows:
            mark = "*" if row["auto"] else " "
            state = "yes" if row["available"] else "no "
            detail = (row["description"] or "") if row["available"] else f"{row['reason']}"
            if row["auto"]:
                detail = f"(auto) {detail}".rstrip()
            lines.append(f"{mark} {row['name']:<{width}}  {state}  {detail}".rstrip())
        if auto is None:
            lines.append("no backend works here: see the reasons above")
        sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    return 0 if auto is not None else 1


SUBCOMMAND = Subcommand(
    "backends",
    "list the kernel interfaces proctap can use and whether each works here",
    _add_backends_arguments,
    run_backends,
    description="One line per backend: '*' marks the one 'auto' picks; 'no' lines say why and what would help. "
    "Exit status 1 when none works.",
)

"""What every benchmark script does with its result: print the table and write the JSON."""

from __future__ import annotations

import json
from pathlib import Path


def write_result(result: dict, text: str, out: Path) -> int:
    """Print ``text`` (the benchmark's table), write ``result`` as JSON to ``out`` (folders made) and return 0."""
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0

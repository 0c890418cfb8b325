"""Docs that travel with the code: every ``mitoseg.<module>.<name>`` named in the sources, the
configs, the README and docs/ exists (a renamed or moved function fails here, not in a reader's
hands). The table of moved modules for old checkpoints names old places on purpose."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOTTED = re.compile(r"\bmitoseg(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
SKIP = {
    REPO / "src" / "mitoseg" / "train" / "checkpoints.py",  # MOVED_MODULES: old names
    REPO / "src" / "mitoseg" / "napari_plugin" / "napari.yaml",  # npe2 command ids: mitoseg.<id>
}
FILES = sorted(
    p
    for p in [
        *(REPO / "src").rglob("*.py"),
        *(REPO / "src").rglob("*.yaml"),
        *(REPO / "docs").glob("*.md"),
        REPO / "README.md",
    ]
    if p not in SKIP
)


def resolves(ref: str) -> bool:
    parts = ref.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_every_named_module_and_object_exists() -> None:
    stale = {
        f"{path.relative_to(REPO)}: {ref}"
        for path in FILES
        for ref in {m.group(0).rstrip(".") for m in DOTTED.finditer(path.read_text())}
        if not resolves(ref)
    }
    assert sorted(stale) == []


def test_a_stale_name_is_caught() -> None:
    assert resolves("mitoseg.decode.run.run_decoder")
    assert not resolves("mitoseg.predict.blend.Stitcher")
    assert not resolves("mitoseg.stitch")

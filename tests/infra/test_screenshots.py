"""README's Prefect UI pictures are the ones infra/screenshots.py refreshes, and they are committed."""

from __future__ import annotations

import re

from tests.conftest import REPO


def test_every_screenshot_the_readme_shows_is_committed_and_refreshed_by_the_script():
    shown = set(re.findall(r"\]\(docs/([\w-]+\.png)\)", (REPO / "README.md").read_text()))
    written = set(re.findall(r'"([\w-]+\.png)"', (REPO / "infra" / "screenshots.py").read_text()))
    assert "segments.png" in shown
    assert shown == written, f"README shows {sorted(shown)}, infra/screenshots.py writes {sorted(written)}"
    for name in shown:
        assert (REPO / "docs" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

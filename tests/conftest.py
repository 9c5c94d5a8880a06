"""Shared pytest fixtures.

Real annotation files and clips live in ``../shared/data`` next to a developer's checkout. Their licences do not let the
project ship them, so tests that need them skip with a reason when the folder is absent (a user's checkout).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PLAYITBACK_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder with the real annotation files and clips, or skip the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"real data folder {SHARED_DATA} is absent (it is not shipped for licence reasons); "
            "set PLAYITBACK_SHARED_DATA to a copy to run this test"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny generated demo dataset of engine_utils.make_tiny_dataset, made once per session."""
    from engine_utils import make_tiny_dataset

    return make_tiny_dataset(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="session")
def real_clips(shared_data: Path) -> list[Path]:
    """The four real 16 kHz VGG-Sound clips."""
    clips = sorted((shared_data / "audio").glob("*.wav"))
    if not clips:
        pytest.skip(f"no real clips under {shared_data / 'audio'}")
    return clips

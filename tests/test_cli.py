"""The helpers every tool shares: the file finder and the split of positional arguments from KEY VALUE overrides."""
from __future__ import annotations

from pathlib import Path

import pytest

from playitback.data.audio_io import AUDIO_EXTENSIONS
from playitback.utils.cli import find_files, split_overrides


def test_find_files_searches_folders_and_reports_what_it_cannot_use(tmp_path: Path) -> None:
    for name in ("b/2.WAV", "a.flac", "b/1.wav", "notes.txt", "b/c/3.ogg"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"")
    (tmp_path / "empty").mkdir()
    (tmp_path / "direct.xyz").write_bytes(b"")
    files, problems = find_files([tmp_path / "in", tmp_path / "direct.xyz", tmp_path / "empty", tmp_path / "gone"],
                                 AUDIO_EXTENSIONS)
    assert [(str(p.relative_to(tmp_path)), str(r)) for p, r in files] == [
        ("in/a.flac", "a.flac"), ("in/b/1.wav", "b/1.wav"), ("in/b/2.WAV", "b/2.WAV"), ("in/b/c/3.ogg", "b/c/3.ogg"),
        ("direct.xyz", "direct.xyz"),  # a file named directly is taken whatever its suffix
    ]
    assert [p for p, _ in problems] == [tmp_path / "empty", tmp_path / "gone"]
    assert "no audio files (.wav" in problems[0][1] and "no such file or folder" in problems[1][1]


def test_overrides_start_at_the_first_config_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert split_overrides(["a.wav", "clips/", "NUM_GPUS", "0", "SOLVER.BASE_LR", "0.1"]) == (
        ["a.wav", "clips/"], ["NUM_GPUS", "0", "SOLVER.BASE_LR", "0.1"])
    # A mistyped key is still an override (the config loader names the closest key), never an input file.
    assert split_overrides(["a.wav", "SOLVER.BASE_LRR", "1"]) == (["a.wav"], ["SOLVER.BASE_LRR", "1"])
    assert split_overrides(["a.wav"]) == (["a.wav"], [])
    # An existing file that looks like a key is an input.
    monkeypatch.chdir(tmp_path)
    Path("README").write_text("")
    assert split_overrides(["README", "NUM_GPUS", "0"]) == (["README"], ["NUM_GPUS", "0"])

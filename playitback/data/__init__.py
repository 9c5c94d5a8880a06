"""Data path: annotations -> clip records -> waveform -> crop -> playback pyramid."""
from playitback.data.annotations import AnnotationError, read_annotations, write_records_csv
from playitback.data.audio_io import AudioReadError, FileAudioReader, Hdf5AudioReader, read_audio_file
from playitback.data.records import ClipRecord
from playitback.data.spectrogram import PlaybackPyramid, playback_pyramid

__all__ = [
    "AnnotationError",
    "AudioReadError",
    "ClipRecord",
    "FileAudioReader",
    "Hdf5AudioReader",
    "PlaybackPyramid",
    "playback_pyramid",
    "read_annotations",
    "read_audio_file",
    "write_records_csv",
]

"""Speech data: TIMIT, Blizzard and any folder of audio, framed for waveform models."""

from zf_lightning.data.audio.blizzard import BlizzardDataModule
from zf_lightning.data.audio.cache import AudioCorpus, AudioStats, Int16Stream, open_or_build
from zf_lightning.data.audio.common import AudioDataModule
from zf_lightning.data.audio.folder import AudioFolderDataModule
from zf_lightning.data.audio.io import AudioReadError
from zf_lightning.data.audio.timit import TimitDataModule

__all__ = [
    "AudioCorpus",
    "AudioDataModule",
    "AudioFolderDataModule",
    "AudioReadError",
    "AudioStats",
    "BlizzardDataModule",
    "Int16Stream",
    "TimitDataModule",
    "open_or_build",
]

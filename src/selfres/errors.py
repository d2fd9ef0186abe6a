"""User-facing errors.

Every error a facility user may see derives from :class:`SelfresError`. Its message
is meant to be printed as it is (no traceback): it names the file or key and says
what is wrong and, where possible, how to fix it.
"""

from __future__ import annotations

from pathlib import Path


#: How torch's allocators say they are out of memory (a RuntimeError, not a MemoryError):
#: "DefaultCPUAllocator: can't allocate memory", "CUDA out of memory"
ALLOCATOR_REFUSALS = ("can't allocate memory", "out of memory")


class SelfresError(Exception):
    """Base class of errors meant for users (printed without a traceback)."""


class InputError(SelfresError):
    """An input file cannot be used.

    Parameters
    ----------
    path
        The offending file or store.
    what
        What is wrong with it, in plain words.
    sample
        Sample id, when known; prefixed to the message.
    """

    def __init__(self, path: str | Path, what: str, *, sample: str | None = None):
        self.path = str(path)
        self.what = what
        self.sample = sample
        prefix = f"sample {sample!r}: " if sample else ""
        super().__init__(f"{prefix}{self.path}: {what}")

    def for_sample(self, sample: str) -> "InputError":
        """Return the same error with the sample id attached."""
        return InputError(self.path, self.what, sample=sample)


def out_of_range(noun: str, value, count: int) -> str:
    """What is wrong with a ``channel`` or ``time point`` that the file lacks, as the reader
    and the run's start (:func:`selfres.sheet.choice_problems`) say it: ``channel 3 is out
    of range: the file has 2 channels (allowed 0..1)``."""
    allowed = f"0..{count - 1}" if count > 1 else "0"
    return f"{noun} {value!r} is out of range: the file has {count} {noun}{'s' if count > 1 else ''} (allowed {allowed})"


def series_out_of_range(value, numbers) -> str:
    """``series 3 is out of range: the file's images are series 0, 1``."""
    return f"series {value!r} is out of range: the file's images are series {', '.join(str(i) for i in numbers)}"


class ChannelNotChosen(InputError):
    """A multichannel file was read without choosing a channel.

    ``n_channels`` says how many it has (:func:`selfres.io.channel_count` asks this way,
    so that the count comes from the same interpretation of the axes as the read).
    """

    def __init__(self, path: str | Path, n_channels: int, *, sample: str | None = None):
        self.n_channels = int(n_channels)
        super().__init__(path, f"has {self.n_channels} channels; choose one with channel=0..{self.n_channels - 1} "
                               "(sample sheet column 'channel', where all makes one sample per channel; "
                               "--channel for the selfres commands; config inbox_columns for inbox acquisitions)", sample=sample)

    def for_sample(self, sample: str) -> "ChannelNotChosen":
        return ChannelNotChosen(self.path, self.n_channels, sample=sample)


class SeriesNotChosen(InputError):
    """A TIFF holding several images (TIFF series) was read without choosing one."""

    def __init__(self, path: str | Path, what: str, *, n_images: int, sample: str | None = None):
        self.n_images = int(n_images)
        super().__init__(path, what, sample=sample)

    def for_sample(self, sample: str) -> "SeriesNotChosen":
        return SeriesNotChosen(self.path, self.what, n_images=self.n_images, sample=sample)


class TimepointNotChosen(InputError):
    """A time series was read without choosing a time point.

    ``n_timepoints`` says how many it has (:func:`selfres.io.timepoint_count` asks this way).
    """

    def __init__(self, path: str | Path, n_timepoints: int, *, sample: str | None = None):
        self.n_timepoints = int(n_timepoints)
        super().__init__(path, f"has {self.n_timepoints} time points; selfres restores one 3-D stack at a time: "
                               f"choose one with timepoint=0..{self.n_timepoints - 1} (sample sheet column "
                               "'timepoint', where all makes one sample per time point; --timepoint for the "
                               "selfres commands; config inbox_columns for inbox acquisitions)", sample=sample)

    def for_sample(self, sample: str) -> "TimepointNotChosen":
        return TimepointNotChosen(self.path, self.n_timepoints, sample=sample)


class ConfigError(SelfresError):
    """A configuration value or sample-sheet entry is invalid."""


class NoRoom(SelfresError):
    """The output's file system has too little free space for what a stage is about to write:
    said before the work, not when the first chunk fails to write (exit status 4, as a disk
    that fills up during the write)."""

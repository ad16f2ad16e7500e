"""Errors a user can hit.

Every error carries one line that names the file, the problem and the fix:
``"<path>: <problem>. Fix: <fix>"``. The CLI prints exactly that line (no traceback) and
exits non-zero. Each class also subclasses the matching builtin so callers that catch
``FileNotFoundError`` or ``ValueError`` keep working.
"""

from __future__ import annotations

import os
from typing import Self


class WsiOcelotError(Exception):
    """Base class of every error meant for the user."""

    def __init__(self, path: str | os.PathLike[str] | None, problem: str, fix: str | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        head = f"{self.path}: {self.problem}" if self.path is not None else self.problem
        head = head.rstrip(".")
        return f"{head}. Fix: {self.fix}" if self.fix else head + "."

    # keep the three fields across process boundaries (Dask, tile readers)
    def __reduce__(self) -> tuple[type[Self], tuple[str | None, str, str | None]]:
        return (type(self), (self.path, self.problem, self.fix))


class SlideNotFoundError(WsiOcelotError, FileNotFoundError):
    """The slide path does not exist or is not a file."""


class SlideFormatError(WsiOcelotError, ValueError):
    """The file exists but is not a slide OpenSlide can read (or it is truncated/corrupt)."""


class NotBrightfieldError(SlideFormatError):
    """The slide opens, but it is not brightfield H&E (fluorescence, dark field, IHC): the
    model cannot read it (``wsi_ocelot.slide.stain_check``)."""


class MppError(WsiOcelotError, ValueError):
    """The slide's microns-per-pixel cannot be determined, or an override is invalid."""


class ConfigError(WsiOcelotError, ValueError):
    """A YAML config or a config value is wrong."""


class CheckpointError(WsiOcelotError, ValueError):
    """A model file is not a valid wsi-ocelot checkpoint."""


class DatasetError(WsiOcelotError, ValueError):
    """A dataset folder (OCELOT layout) is missing files or holds malformed ones."""


class PredictionFileError(WsiOcelotError, ValueError):
    """A prediction or ground-truth file in the OCELOT challenge format is malformed."""


class CellClassError(WsiOcelotError, ValueError):
    """A cell batch holds a class other than 1 (BC) or 2 (TC) (``wsi_ocelot.cells``)."""


class OutputWriteError(WsiOcelotError, OSError):
    """An output file cannot be created (missing folder, no permission, disk full)."""


class MissingExtraError(WsiOcelotError, ImportError):
    """A feature needs an optional extra of wsi-ocelot that is not installed."""


class SlideTaskError(WsiOcelotError, RuntimeError):
    """A slide of a batch failed for a reason that is not a fault of the slide the user can
    fix: an unexpected error in its run (a bug), its Dask worker died, or its Dask task failed
    outside the run. The batch records it as the slide's one-line error and goes on."""


class DiskFullError(OutputWriteError):
    """The output disk is full (ENOSPC) or over quota (EDQUOT): every later slide of a batch
    would fail the same way, so a batch stops at the first one."""

    @classmethod
    def under(cls, out_dir: str | os.PathLike[str], problem: str) -> DiskFullError:
        """``problem`` writing under ``out_dir``, with the one fix: free space, then run again."""
        return cls(
            out_dir,
            problem,
            f"free space on the disk of {out_dir} (or choose another --out), then run the same "
            "command again: finished slides are kept",
        )


def disk_full_reason(err: BaseException | None) -> str | None:
    """The OS's words ("No space left on device", "Disk quota exceeded") when ``err`` or an
    error it was raised from is ENOSPC or EDQUOT, else None."""
    import errno

    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, DiskFullError):
            return err.problem
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err.strerror or os.strerror(err.errno)
        err = err.__cause__ or err.__context__
    return None


def is_disk_full(err: BaseException | None) -> bool:
    """Whether ``err`` (or an error it was raised from) is "no space left on the device" or
    "disk quota exceeded"."""
    return disk_full_reason(err) is not None


class Interrupted(KeyboardInterrupt):
    """The run was told to stop by a signal: SIGINT (Ctrl-C) or SIGTERM (what Slurm, docker and
    systemd send). A ``KeyboardInterrupt``, so every cleanup that handles Ctrl-C handles both."""

    def __init__(self, signal_name: str = "SIGINT"):
        super().__init__(signal_name)
        self.signal_name = signal_name

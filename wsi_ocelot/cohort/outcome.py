"""What became of one slide of a batch: the typed record that travels from the slide's task
(:mod:`wsi_ocelot.cohort.worker`, in this process or on a Dask worker) to the driver
(:mod:`wsi_ocelot.cohort.batch`), which turns it into the slide's ``manifest.json`` entry in
one place, :meth:`SlideOutcome.manifest_entry` (``summary.csv`` and ``report.html`` are built
from the manifest; docs/formats.md).

A slide a batch skips (already done) has no outcome: its manifest entry stays as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from wsi_ocelot.purity import SlideRecord

__all__ = ["Status", "SlideOutcome"]

Status = Literal["done", "failed"]  # manifest.DONE, manifest.FAILED


@dataclass(frozen=True)
class SlideOutcome:
    """One slide's outcome: done (with the engine's :class:`SlideRecord`) or failed (with the
    one-line error). Frozen and picklable: a Dask worker returns it as it is.

    ``path``: the slide file (absolute). ``runtime_s``: wall seconds of the slide's task (None
    when it has none: the driver made the outcome of a slide whose worker died). ``worker``:
    ``host:pid`` (``(dask worker i)``) of the process that ran it; None for an outcome the
    driver made (the slide never reached an outcome of its own). ``attempts``: set by the Dask
    driver (attempts whose worker died, and this one). ``log``: the slide's traceback file,
    relative to the batch's folder, once the driver wrote it.

    Three fields are for the driver only and never reach the manifest: ``disk_full`` (the batch
    stops: every later slide would fail the same way), ``traceback`` (an unexpected error's,
    written to ``logs/<slide-id>.log``) and ``setup_s`` (the part of ``runtime_s`` its process
    spent loading the model and choosing its runtime: the first slide of a process, which on a
    new checkpoint or machine builds the runtime cache; the batch's ETA leaves it out).
    """

    path: str
    status: Status
    error: str | None = None
    runtime_s: float | None = None
    mpp_override: float | None = None
    worker: str | None = None
    record: SlideRecord | None = None
    attempts: int | None = None
    log: str | None = None
    # -- for the driver only --
    disk_full: bool = False
    traceback: str | None = None
    setup_s: float | None = None

    def __post_init__(self) -> None:
        if self.status not in get_args(Status):
            raise ValueError(f"status {self.status!r}: an outcome is one of {get_args(Status)}")
        if self.done != (self.record is not None):
            raise ValueError("a done slide's outcome carries its SlideRecord, a failed one none")

    @classmethod
    def failed(
        cls, path: str, error: str, *, runtime_s: float | None = None, **kw: Any
    ) -> SlideOutcome:
        """A failed slide's outcome with its one-line ``error``."""
        return cls(path=path, status="failed", error=error, runtime_s=runtime_s, **kw)

    @property
    def done(self) -> bool:
        return self.status == "done"

    def manifest_entry(
        self,
        *,
        model: str,
        model_sha256: str,
        identity: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """The slide's ``manifest.json`` entry (before :meth:`Manifest.record` adds ``started``
        and ``finished``); ``model``, ``model_sha256`` and the file's ``identity`` are the batch's.

        The keys keep the order earlier versions wrote: an outcome of the slide's own task has
        ``path, mpp_override, worker, status, error``, a done slide's
        :meth:`SlideRecord.manifest_fields`, then ``runtime_s``; one the driver made has
        ``path, status, runtime_s, error``. Then ``attempts`` (Dask), ``log`` (an unexpected
        error's, null when it could not be written) and the batch's three fields."""
        entry: dict[str, Any] = {"path": self.path}
        if self.worker is not None:
            entry.update(
                mpp_override=self.mpp_override,
                worker=self.worker,
                status=self.status,
                error=self.error,
            )
            if self.record is not None:
                entry.update(self.record.manifest_fields())
            entry["runtime_s"] = self.runtime_s
        else:
            entry.update(status=self.status, runtime_s=self.runtime_s, error=self.error)
        if self.attempts is not None:
            entry["attempts"] = self.attempts
        if self.traceback is not None:
            entry["log"] = self.log
        entry.update(model=model, model_sha256=model_sha256, identity=identity)
        return entry

    # -- the task's note in the shared folder (a worker that dies after the slide finished) --
    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict that :meth:`from_json` reads back to an equal outcome."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "record"}
        data["record"] = None if self.record is None else self.record.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SlideOutcome:
        """Read back :meth:`to_json`."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in known and k != "record"}
        record = data.get("record")
        return cls(**kw, record=None if record is None else SlideRecord.from_json(record))

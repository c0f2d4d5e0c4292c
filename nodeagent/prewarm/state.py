"""Per-image status model shared by the engine, the progress reporters and the agent,
and the summary of a reconcile pass.

``ImageState`` is what ``PrewarmEngine.snapshot()`` returns for each hot image; the
agent turns it into Node conditions / HotImageSet status, the console draws it and the
metrics count it. States form a small fixed set so metric labels stay bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PENDING = "pending"  # waiting for a pull slot
PULLING = "pulling"  # CRI PullImage in flight
BACKOFF = "backoff"  # failed attempt, waiting to retry
PRESENT = "present"  # in containerd (and pinned when asked)
FAILED = "failed"  # gave up: reason + message say why
SKIPPED = "skipped"  # not attempted (disk guard)
STATES = (PENDING, PULLING, BACKOFF, PRESENT, FAILED, SKIPPED)
ACTIVE_STATES = (PENDING, PULLING, BACKOFF)


@dataclass
class ImageState:
    """Where one hot image stands. Times are wall-clock seconds (time.time())."""

    image: str  # normalized reference, the key in snapshot()
    state: str = PENDING
    required: bool = True
    pin: bool = True
    priority: int = 0
    sets: tuple[str, ...] = ()
    digest: str | None = None  # target (manifest/index) digest once known
    image_id: str | None = None  # CRI image id (config digest) once pulled
    pinned: bool = False  # carries our pin labels
    phase: str | None = None  # while pulling: resolving | downloading | unpacking
    bytes_done: int = 0
    bytes_total: int | None = None  # None: manifest could not be resolved
    bytes_unpacked: int | None = None  # fast path: uncompressed bytes written so far
    pull_path: str | None = None  # how the last pull went: "fast" or "cri"
    rate_bps: float = 0.0
    eta_s: float | None = None
    attempts: int = 0
    reason: str | None = None  # bounded code (metrics label), see metrics.FAILURE_REASONS
    message: str = ""  # human explanation, never contains secrets
    started_at: float | None = None
    finished_at: float | None = None
    history: list[str] = field(default_factory=list, repr=False)  # last few attempt errors

    @property
    def percent(self) -> float | None:
        if not self.bytes_total:
            return None
        return min(100.0, 100.0 * self.bytes_done / self.bytes_total)

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def as_dict(self) -> dict[str, object]:
        return {
            "image": self.image,
            "state": self.state,
            "required": self.required,
            "pin": self.pin,
            "priority": self.priority,
            "sets": list(self.sets),
            "digest": self.digest,
            "image_id": self.image_id,
            "pinned": self.pinned,
            "phase": self.phase,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "bytes_unpacked": self.bytes_unpacked,
            "pull_path": self.pull_path,
            "rate_bps": round(self.rate_bps, 1),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "attempts": self.attempts,
            "reason": self.reason,
            "message": self.message,
            "duration_s": None if self.duration_s is None else round(self.duration_s, 3),
        }


@dataclass
class PrewarmSummary:
    """Outcome of a reconcile pass."""

    states: list[ImageState]
    unpinned: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    not_removed: list[tuple[str, str]] = field(default_factory=list)  # (image, why)

    @property
    def ok(self) -> bool:
        return all(s.state == PRESENT for s in self.states)

    @property
    def all_done(self) -> bool:
        """Every image present and every removal asked for (--remove-unlisted) done."""
        return self.ok and not self.not_removed

    @property
    def missing(self) -> list[ImageState]:
        return [s for s in self.states if s.state != PRESENT]

    def text(self) -> str:
        pulled = sum(1 for s in self.states if s.state == PRESENT and s.attempts)
        present = sum(1 for s in self.states if s.state == PRESENT)
        head = (f"prewarm: {present}/{len(self.states)} images present ({pulled} pulled, "
                f"{present - pulled} already there)")
        counts = {k: sum(1 for s in self.states if s.state == k) for k in (FAILED, SKIPPED)}
        head += "".join(f", {n} {k}" for k, n in counts.items() if n)
        lines = [head]
        for s in self.missing:
            optional = "" if s.required else " (optional)"
            lines.append(f"  {s.state:<8} {s.image}{optional}: {s.message or s.reason}")
        lines += [f"  unpinned {name}" for name in self.unpinned]
        lines += [f"  removed  {name}" for name in self.removed]
        lines += [f"  NOT removed {name}: {why}" for name, why in self.not_removed]
        return "\n".join(lines)

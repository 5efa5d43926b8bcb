"""One writer per run folder: the lease a driver holds while it writes a run, with a heartbeat.

The lease is a small JSON object in the run folder, `lease/NNNNNNNN.json` (N a generation number), written
create-only (the same create-only write as a part's commit: a local hard link, an S3 PUT with If-None-Match),
so of two drivers that take generation N at the same moment exactly one succeeds. The newest generation is the
holder. It names the holder (a random id), its host, process id and start time, and its last heartbeat; the
holder rewrites its own object every quarter of the expiry, and marks it released when done. A driver that finds
a live holder refuses at once, naming it. A holder is not live once it released the lease, when it stopped beating
for longer than the expiry it states, or, on the same host, when its process is gone (a killed driver's run can be
resumed at once there). Taking the run over is creating the next generation; the former holder learns it at its
next beat (`lost`) and its driver stops sending chunks. Objects are never removed, so a newer generation stays
visible to a former holder however late it looks (one small object per driver that wrote the run).

Heartbeats are wall-clock times (UTC) of the holder's host: the expiry must exceed the clock difference between
the hosts of two drivers. This module knows nothing of runs beyond the sink's side files.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import threading
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from labeler.errors import InputError
from labeler.records.layout import LEASE
from labeler.run.sink import PartSink


class LeaseHeld(InputError):
    """Another driver holds the run's lease: the message names it and says when it started and last beat."""


class LeaseLost(RuntimeError):
    """Another driver took the run over from this one (its heartbeat was not written for longer than the expiry)."""


@dataclass(frozen=True)
class Holder:
    """What a lease object says."""

    holder: str
    """A random id of the driver that took the lease."""
    host: str
    pid: int
    process_started: str | None
    """The holder process's start (Linux: ticks since boot), so a reused process id is not taken for it."""
    started: str
    """When this holder took the lease (ISO 8601, UTC)."""
    heartbeat: str
    """Its last heartbeat (ISO 8601, UTC, to the millisecond)."""
    expiry_seconds: float
    """How long after `heartbeat` the lease holds."""
    generation: int
    released: str | None = None
    """When the holder released the lease (ISO 8601, UTC), or None while it holds it."""

    def live(self, now: datetime.datetime) -> bool:
        """Whether this holder may still be writing the run."""
        if self.released is not None:
            return False
        if self.host == socket.gethostname() and not _running(self.pid, self.process_started):
            return False
        return (now - _parse(self.heartbeat)).total_seconds() <= self.expiry_seconds

    def describe(self, now: datetime.datetime) -> str:
        beat = max(0.0, (now - _parse(self.heartbeat)).total_seconds())  # a beat written after `now` was read
        return (
            f"driver {self.holder} (process {self.pid} on {self.host}), since {self.started}, "
            f"last heartbeat {beat:.0f} s ago"
        )


class RunLease:
    """The lease on one run folder, for one driver: `acquire`, then `release` when done (both safe to repeat)."""

    def __init__(self, sink: PartSink, expiry_seconds: float) -> None:
        self.sink = sink
        self.expiry = expiry_seconds
        self.id = uuid.uuid4().hex[:12]
        self.held: Holder | None = None
        self.lost: Holder | None = None
        """The driver that took the run over from this one (set by the heartbeat), or None."""
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lease, or raise LeaseHeld naming the live holder; then beat until `release`."""
        if self.held is not None:
            return
        for _ in range(3):  # a lost race to the same generation is answered by the winner's lease, read again
            now = _now()
            current = self.newest()
            if current is not None and current.live(now):
                raise LeaseHeld(
                    f"{self.sink.url} is being written by another {current.describe(now)}: one driver writes a run "
                    f"at a time. Wait for it to finish, or stop it; its lease expires {current.expiry_seconds:g} s "
                    "after its last heartbeat (at once, on its own host, when its process is gone), and then "
                    "--resume takes the run over"
                )
            generation = 0 if current is None else current.generation + 1
            holder = Holder(
                self.id,
                socket.gethostname(),
                os.getpid(),
                _process_started(os.getpid()),
                now.isoformat(timespec="seconds"),
                _beat_stamp(now),
                self.expiry,
                generation,
            )
            if self.sink.create_file(_name(generation), _encode(holder)):
                self.held = holder
                self._stop = threading.Event()
                self._beating = threading.Thread(target=self._beat, name="labeler-lease", daemon=True)
                self._beating.start()
                return
        raise LeaseHeld(f"{self.sink.url}: another driver took the run's lease at the same moment; try again")

    def release(self) -> None:
        """Stop beating and mark this driver's lease released (unless another took the run over), so the next
        driver starts at once. Where the mark cannot be written (the storage is away or full), the lease is left
        to end as a stopped holder's does: at once on this host, after its expiry elsewhere."""
        self._stop.set()
        if self._beating is not None:
            self._beating.join(timeout=60)
            self._beating = None
        held, self.held = self.held, None
        if held is not None and self.lost is None:
            released = Holder(**{**asdict(held), "released": _now().isoformat(timespec="seconds")})
            with contextlib.suppress(OSError):
                self.sink.write_file(_name(held.generation), _encode(released))

    def newest(self) -> Holder | None:
        """The lease object of the newest generation, or None where the run has none."""
        names = self.sink.list_files(LEASE)
        generations = sorted(int(name[:-5]) for name in names if name.endswith(".json") and name[:-5].isdigit())
        if not generations:
            return None
        where = _name(generations[-1])
        data = self.sink.read_file(where)
        if data is None:
            raise LeaseHeld(
                f"{self.sink.url}/{where} was listed but cannot be read; if no driver writes this run now, "
                "remove it and resume"
            )
        return _decode(data, f"{self.sink.url}/{where}")

    def _beat(self) -> None:
        """Rewrite this holder's object every quarter of the expiry, until released or taken over."""
        while not self._stop.wait(self.expiry / 4):
            held = self.held
            if held is None:
                return
            try:
                newest = self.newest()
                if newest is not None and newest.generation > held.generation:
                    self.lost = newest
                    return
                beat = Holder(**{**asdict(held), "heartbeat": _beat_stamp(_now())})
                self.sink.write_file(_name(held.generation), _encode(beat))
            except (OSError, ValueError):  # storage away for a while: beat again later (the expiry allows for it)
                continue


def _name(generation: int) -> str:
    return f"{LEASE}/{generation:08d}.json"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _beat_stamp(now: datetime.datetime) -> str:
    """A heartbeat's time, to the millisecond: a stamp cut to the second would age a beat by up to a second, a
    large part of a short expiry."""
    return now.isoformat(timespec="milliseconds")


def _parse(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp)


def _encode(holder: Holder) -> bytes:
    return (json.dumps(asdict(holder), indent=2) + "\n").encode()


def _decode(data: bytes, where: str) -> Holder:
    try:
        raw: Any = json.loads(data)
        holder = Holder(**raw)
        _parse(holder.heartbeat)
    except (ValueError, TypeError) as err:
        raise LeaseHeld(
            f"{where} is not a lease this version of labeler wrote ({err}); if no driver writes this run now, "
            "remove it and resume"
        ) from None
    return holder


def _process_started(pid: int) -> str | None:
    """A process's start time in ticks since boot (field 22 of /proc/PID/stat), where /proc has it."""
    stat = _stat(pid)
    return None if stat is None else stat[19]


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), where /proc has them."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def _running(pid: int, started: str | None) -> bool:
    """Whether process `pid` of this host runs (and is the one that started at `started`, where known); a zombie
    (killed, not yet reaped by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    stat = _stat(pid)
    if stat is None:
        return True
    return stat[0] != "Z" and (started is None or stat[19] == started)

"""Which worker gets a job. Basic for now: any live worker with a free slot, the least loaded first.

Kept to one pure function so the VRAM-fit placement (estimate the job's memory, best-fit it onto a GPU) can
replace it without touching the dispatch loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from core.models import FineTuningJob
from core.queue import WorkerInfo


def choose_worker(
    job: FineTuningJob, workers: Sequence[WorkerInfo], load: Mapping[str, int]
) -> WorkerInfo | None:
    """The live worker with the most free slots (ties: lowest id), or None when every worker is full.

    `load` counts, per worker id, the jobs the DB says it holds (placed and not yet released).
    """
    free = [(w.max_jobs - load.get(w.id, 0), w) for w in workers]
    candidates = [(slots, w) for slots, w in free if slots > 0]
    if not candidates:
        return None
    return min(candidates, key=lambda item: (-item[0], item[1].id))[1]

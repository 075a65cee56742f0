"""Soak under chaos: small fine-tuning jobs on a split deployment while a random component is killed and
restarted every SOAK_CHAOS_S seconds. Prints

    jobs: N submitted, N succeeded, 0 lost, 0 duplicated

and exits non-zero unless every job succeeded exactly once.

The deployment is tests/support/fleet.py's: `ftserve api`, `ftserve scheduler`, two `ftserve worker`s, a
redis-server with AOF (fsync always) and a private PostgreSQL cluster (SQLite where none can be made), on
loopback, training demo-tiny on the CPU. The chaos loop picks one of api, scheduler, w1, w2, redis and
postgres; kills it with SIGKILL (a worker now and then with SIGTERM, as a deploy would), waits a moment and
starts it again.

    SOAK_MINUTES=15 SOAK_JOBS=50 SOAK_CHAOS_S=30 python bench/soak.py      # `make soak`
    SOAK_MINUTES=3 SOAK_JOBS=10 python bench/soak.py                       # a quick look

`lost`: a submitted job that has not ended (or ended other than succeeded) when the soak is over, after a
grace period with every component up. `duplicated`: a job with more than one terminal transition, more than
one success event or more than one model.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from core import jobs
from tests.support.fleet import SplitFleet, chat_rows, make_private_postgres

MINUTES = float(os.environ.get("SOAK_MINUTES", "15"))
N_JOBS = int(os.environ.get("SOAK_JOBS", "50"))
CHAOS_S = float(os.environ.get("SOAK_CHAOS_S", "30"))
GRACE_S = float(os.environ.get("SOAK_GRACE_S", "300"))  # after the soak: every component up, jobs finish
SEED = int(os.environ.get("SOAK_SEED", "0"))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def demo_model() -> Path:
    from gpu_worker.demo_model import build_demo_model, demo_model_is_current

    cache = Path(
        os.environ.get("FTSERVE_DEMO_MODEL_CACHE") or Path(tempfile.gettempdir()) / "ftserve-soak-demo"
    )
    if not demo_model_is_current(cache):
        log(f"building demo-tiny in {cache}")
        build_demo_model(cache)
    return cache


def retry(what: str, call: object, *, deadline_s: float = 120) -> object:
    """Call until it works: the API may be down for a few seconds of chaos."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return call()  # type: ignore[operator]
        except (httpx.HTTPError, OSError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: still failing after {deadline_s:.0f}s: {exc}") from exc
            time.sleep(1.0)


class Chaos(threading.Thread):
    def __init__(self, fleet: SplitFleet, components: list[str], every_s: float, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.fleet, self.components, self.every_s, self.rng = fleet, components, every_s, rng
        self.stop = threading.Event()
        self.kills: list[str] = []

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            victim = self.rng.choice(self.components)
            sig = signal.SIGTERM if victim.startswith("w") and self.rng.random() < 0.3 else signal.SIGKILL
            try:
                self.fleet.kill(victim, sig)
                self.kills.append(f"{victim}:{sig.name}")
                log(f"chaos: {sig.name} {victim}")
                time.sleep(self.rng.uniform(1.0, 4.0))
            finally:
                self.fleet.start_component(victim)
                log(f"chaos: restarted {victim}")


def main() -> int:
    rng = random.Random(SEED)
    postgres, why_not = make_private_postgres()
    if why_not:
        log(f"database: SQLite ({why_not})")
    tmp = Path(tempfile.mkdtemp(prefix="ftserve-soak-"))
    fleet = SplitFleet(tmp, demo_model(), postgres=postgres)
    components = ["api", "scheduler", *fleet.workers, "redis"] + (["postgres"] if postgres else [])
    log(
        f"soak: {N_JOBS} jobs over {MINUTES:g} min, a kill every {CHAOS_S:g}s among {components}; logs in {tmp}"
    )
    submitted: list[str] = []
    chaos = Chaos(fleet, components, CHAOS_S, rng)
    try:
        fleet.start()
        file_id = str(fleet.upload(chat_rows(24)))
        started = time.monotonic()
        end = started + MINUTES * 60
        chaos.start()
        # Submissions spread over the first 60% of the soak, so the last ones still meet some chaos.
        spacing = MINUTES * 60 * 0.6 / max(N_JOBS, 1)
        for i in range(N_JOBS):
            epochs = rng.choice([1, 1, 2])
            job_id = retry(
                "submit", lambda e=epochs, i=i: fleet.create(file_id, epochs=e, every=8, suffix=f"soak{i}")
            )
            submitted.append(str(job_id))
            time.sleep(max(0.0, started + (i + 1) * spacing - time.monotonic()))
        while time.monotonic() < end and not all_ended(fleet, submitted):
            time.sleep(2.0)
        chaos.stop.set()
        chaos.join()
        log(f"chaos over after {len(chaos.kills)} kills; waiting up to {GRACE_S:g}s for the jobs left")
        fleet.wait("every component", fleet.ready, 120)
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline and not all_ended(fleet, submitted):
            time.sleep(2.0)
        code = report(fleet, submitted, time.monotonic() - started)
    finally:
        chaos.stop.set()
        fleet.stop()
    if code == 0 and not os.environ.get("SOAK_KEEP_LOGS"):
        shutil.rmtree(tmp, ignore_errors=True)  # ~160 MB of logs: kept only when something went wrong
    else:
        log(f"logs kept in {tmp}")
    return code


def all_ended(fleet: SplitFleet, job_ids: list[str]) -> bool:
    try:
        return all(fleet.row(j).status in jobs.TERMINAL for j in job_ids)
    except Exception:  # noqa: BLE001 (the database is down for a moment)
        return False


def report(fleet: SplitFleet, submitted: list[str], elapsed_s: float) -> int:
    succeeded = lost = duplicated = 0
    other: list[str] = []
    for job_id in submitted:
        row = fleet.row(job_id)
        counts = fleet.outcome_counts(job_id)
        if counts["succeeded_events"] > 1 or counts["terminal_webhooks"] > 1 or counts["models"] > 1:
            duplicated += 1
            other.append(f"{job_id} duplicated: {counts}")
        if row.status == jobs.SUCCEEDED:
            succeeded += 1
        else:
            lost += 1
            other.append(f"{job_id} {row.status} (attempt {row.attempt}): {row.error}")
    attempts = [fleet.row(j).attempt for j in submitted]
    for line in other:
        log(line)
    log(
        f"{elapsed_s / 60:.1f} min; attempts per job: mean {sum(attempts) / max(len(attempts), 1):.2f}, "
        f"max {max(attempts, default=0)}"
    )
    print(f"jobs: {len(submitted)} submitted, {succeeded} succeeded, {lost} lost, {duplicated} duplicated")
    return 0 if succeeded == len(submitted) and not duplicated else 1


if __name__ == "__main__":
    sys.exit(main())

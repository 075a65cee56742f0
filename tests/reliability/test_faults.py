"""Faults, on one split deployment shared by this module (tests/support/fleet.py): `ftserve api`, two
`ftserve scheduler`s, two `ftserve worker`s, a redis-server with AOF (fsync always) and a private
PostgreSQL cluster (SQLite, and the PostgreSQL test skipped, where none can be made).

Every test kills or breaks one component while jobs run and then asserts, from the database: no job is
lost, each ends exactly once (one terminal status transition in the webhook outbox, one success event, one
model), and an interrupted one resumes from its last complete checkpoint. The vLLM test uses the session's
`ftserve up` (tests/conftest.py) instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from core import jobs
from core.queue import arq_job_id
from core.storage import LocalStorage
from tests.support.fleet import REPO_ROOT, SplitFleet, chat_rows, make_private_postgres
from tests.support.ftserve_process import FtserveProcess

pytestmark = pytest.mark.slow

N_EXAMPLES = 24  # one epoch = 24 steps of batch 1


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> Iterator[SplitFleet]:
    postgres, why_not = make_private_postgres()
    if why_not:
        print(f"\nfault tests on SQLite: {why_not}")
    fleet = SplitFleet(tmp_path_factory.mktemp("faults"), demo_model_dir, postgres=postgres)
    try:
        yield fleet.start(schedulers=2)
    finally:
        fleet.stop()


@pytest.fixture(scope="module")
def training_file(fleet: SplitFleet) -> str:
    return fleet.upload(chat_rows(N_EXAMPLES))


def assert_ended_once(fleet: SplitFleet, job_id: str, status: str = jobs.SUCCEEDED) -> None:
    """One terminal state: the status, one terminal transition in the outbox, and for a success one
    success event and one model; and every placement (attempt) recorded once."""
    row = fleet.row(job_id)
    assert row.status == status and row.worker_id is None, (row.status, row.error, fleet.messages(job_id))
    counts = fleet.outcome_counts(job_id)
    succeeded = int(status == jobs.SUCCEEDED)
    assert counts == {"succeeded_events": succeeded, "terminal_webhooks": 1, "models": succeeded}, counts
    placed = [
        e.data["attempt"]
        for e in fleet.events(job_id)
        if e.data and "attempt" in e.data and e.message.startswith(("Fine-tuning job started", "Resumed on"))
    ]
    assert sorted(placed) == list(range(1, row.attempt + 1)), placed  # no attempt placed twice


def resumed_from(fleet: SplitFleet, job_id: str) -> list[int]:
    return [
        int(m.rsplit(" ", 1)[1])
        for m in fleet.messages(job_id)
        if m.startswith("Resumed from checkpoint at step")
    ]


def training(fleet: SplitFleet, job_id: str, min_step: int = 3) -> bool:
    row = fleet.row(job_id)
    assert row.status not in jobs.TERMINAL, (row.status, row.error)
    return row.status == jobs.RUNNING and row.step >= min_step


def worker_of(fleet: SplitFleet, job_id: str) -> str:
    return str(fleet.row(job_id).worker_id)


def test_worker_kill_9_and_sigterm_mid_training_resume_from_the_checkpoint_and_end_once(
    fleet: SplitFleet, training_file: str
) -> None:
    job = fleet.create(training_file, epochs=4, every=1000)  # 96 steps; the hand-backs checkpoint
    fleet.wait("training", lambda: training(fleet, job, 5))
    first = worker_of(fleet, job)

    # SIGTERM: the worker checkpoints its job at the next step and hands it back; the other worker resumes.
    fleet.kill(first, signal.SIGTERM)
    requeued = [m for m in fleet.messages(job) if m.startswith("Worker stopping: job re-queued at step ")]
    assert requeued, fleet.messages(job)
    sigterm_step = int(requeued[-1].rsplit(" ", 1)[1])
    fleet.wait("the resume", lambda: sigterm_step in resumed_from(fleet, job), 90)
    fleet.wait("training again", lambda: training(fleet, job, sigterm_step + 5))
    second = worker_of(fleet, job)
    assert second != first
    fleet.start_component(first)

    # kill -9: the worker dies; its runner gets the kernel's SIGTERM, checkpoints and hands the job back.
    fleet.kill(second)
    fleet.wait(
        "the hand-back",
        lambda: len([m for m in fleet.messages(job) if m.startswith("Worker stopping: job re-queued")]) == 2,
        60,
    )
    kill_step = int(
        [m for m in fleet.messages(job) if m.startswith("Worker stopping: job re-queued at step ")][
            -1
        ].rsplit(" ")[-1]
    )
    assert kill_step > sigterm_step
    fleet.start_component(second)
    fleet.wait("the job to finish", lambda: fleet.finished(job), 180)
    assert_ended_once(fleet, job)
    assert resumed_from(fleet, job) == [sigterm_step, kill_step]
    row = fleet.row(job)
    assert row.attempt == 3 and row.lost_count == 0  # handed back both times, never given up for lost
    # Metrics after each resume start at the step after the checkpoint: no step trained twice, none skipped.
    steps = [e.data["step"] for e in fleet.events(job) if e.type == "metrics" and e.data]
    assert sorted(set(steps)) == list(range(1, row.total_steps + 1))
    fleet.wait("both workers back", fleet.ready, 60)


def test_a_truncated_checkpoint_is_detected_and_the_previous_one_used(
    fleet: SplitFleet, training_file: str
) -> None:
    job = fleet.create(training_file, epochs=3, every=5)
    fleet.wait("two checkpoints", lambda: training(fleet, job) and len(fleet.checkpoints(job)) >= 2, 120)
    with fleet.http() as client:
        client.post(f"/fine_tuning/jobs/{job}/pause").raise_for_status()
    fleet.wait("the pause", lambda: fleet.row(job).status == jobs.PAUSED and fleet.row(job).worker_id is None)
    *_, previous, newest = fleet.checkpoints(job)
    storage = LocalStorage(fleet.settings.data_dir / "storage")
    # The disk loses the tail of the newest checkpoint's weights, and another file of it entirely.
    weights = storage.root / newest.storage_prefix / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    (storage.root / newest.storage_prefix / "trainer_state.json").unlink()

    with fleet.http() as client:
        client.post(f"/fine_tuning/jobs/{job}/resume").raise_for_status()
    fleet.wait("the job to finish", lambda: fleet.finished(job), 180)
    assert_ended_once(fleet, job)
    assert resumed_from(fleet, job) == [previous.step_number]
    assert any(
        f"checkpoint at step {newest.step_number}" in m and "incomplete" in m for m in fleet.messages(job)
    ), fleet.messages(job)


def test_scheduler_kill_9_another_takes_over_and_no_job_is_placed_twice(
    fleet: SplitFleet, training_file: str
) -> None:
    batch = [fleet.create(training_file, epochs=1, suffix=f"s{i}") for i in range(2)]
    fleet.wait("a first placement", lambda: any(fleet.row(j).attempt for j in batch), 60)
    fleet.kill("scheduler")  # mid-placement: the second scheduler goes on alone
    fleet.wait("the batch placed", lambda: all(fleet.row(j).attempt for j in batch), 60)
    # And with the other one killed too, a restarted scheduler places what comes next.
    fleet.start_component("scheduler")
    fleet.kill("scheduler2")
    batch.append(fleet.create(training_file, epochs=1, suffix="s-after"))
    fleet.wait("the batch", lambda: fleet.finished(*batch), 240)
    for job in batch:
        assert_ended_once(fleet, job)
    fleet.start_component("scheduler2")


def test_api_kill_9_mid_upload_leaves_no_half_file(fleet: SplitFleet) -> None:
    line = (json.dumps(chat_rows(1)[0]) + "\n").encode()
    sent = threading.Event()
    boundary = "faultboundary"

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="half.jsonl"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        chunk = line * (256 * 1024 // len(line))
        for i in range(400):  # ~100 MB, far more than goes through before the kill
            if i == 40:
                sent.set()
            yield chunk
            time.sleep(0.005)
        yield f"\r\n--{boundary}--\r\n".encode()

    errors: list[BaseException] = []

    def upload() -> None:
        try:
            with fleet.http(timeout=60) as client:
                client.post(
                    "/files",
                    content=body(),
                    headers={"content-type": f"multipart/form-data; boundary={boundary}"},
                )
        except httpx.HTTPError as exc:
            errors.append(exc)

    thread = threading.Thread(target=upload)
    thread.start()
    assert sent.wait(60)
    storage = LocalStorage(fleet.settings.data_dir / "storage")
    temporaries = list((storage.root / "files").glob(".file-*.tmp-*"))
    assert temporaries, "the upload should be streaming into a temporary object"
    fleet.kill("api")
    thread.join(60)
    assert errors, "the client must see the connection break"

    # An old leftover is swept when the API starts again; the temporary object was never a visible key.
    assert all(t.exists() for t in temporaries)
    hour_ago = time.time() - 7200
    for leftover in temporaries:
        os.utime(leftover, (hour_ago, hour_ago))
    fleet.start_component("api")
    fleet.wait("the API back", fleet.api_up, 60)
    with fleet.http() as client:
        listed = client.get("/files", params={"limit": 100}).json()["data"]
    assert not [f for f in listed if f["filename"] == "half.jsonl"]
    visible = storage.list_keys("files/")
    with fleet.http() as client:
        known = {f["id"] for f in client.get("/files", params={"limit": 100}).json()["data"]}
    assert {k.removeprefix("files/") for k in visible} <= known  # no published object without its row
    assert not [t for t in temporaries if t.exists()], "stale temporary objects are swept on start"


def test_redis_kill_9_with_aof_loses_no_queued_or_running_job(fleet: SplitFleet, training_file: str) -> None:
    running = fleet.create(training_file, epochs=3, suffix="r-run")
    fleet.wait("r-run training", lambda: training(fleet, running))
    queued = fleet.create(training_file, epochs=1, suffix="r-queued")
    fleet.wait("r-queued placed", lambda: fleet.row(queued).attempt == 1, 60)
    # The placement commits before its task is queued (a failed enqueue gives the job back: attempt 2).
    arq_keys = redis.Redis.from_url(fleet.redis.url)
    fleet.wait("r-queued's task in Redis", lambda: bool(arq_keys.keys(f"arq:*:{arq_job_id(queued, 1)}")), 30)
    fleet.kill("redis")  # the arq task of r-queued may not have been picked up yet: it is in the AOF
    time.sleep(2.0)
    fleet.start_component("redis")
    fleet.wait("the jobs", lambda: fleet.finished(running, queued), 240)
    for job in (running, queued):
        assert_ended_once(fleet, job)
        assert fleet.row(job).attempt == 1  # nothing re-placed: the task and the lease both survived
    fleet.wait("both workers back", fleet.ready, 60)


def test_postgres_restart_mid_training_ends_the_job_once(fleet: SplitFleet, training_file: str) -> None:
    if fleet.postgres is None:
        pytest.skip("no private PostgreSQL cluster (see the fleet's printed reason)")
    job = fleet.create(training_file, epochs=3, every=20, suffix="pg")
    fleet.wait("training", lambda: training(fleet, job, 5))
    fleet.kill("postgres")  # the postmaster dies at once: every connection breaks
    time.sleep(2.0)
    fleet.start_component("postgres")
    fleet.wait("the job to finish", lambda: fleet.finished(job), 240)
    assert_ended_once(fleet, job)
    row = fleet.row(job)
    assert (row.attempt, row.lost_count) == (1, 0), fleet.messages(job)  # training waited the outage out
    fleet.wait("every component back", fleet.ready, 60)


def test_a_runner_that_starts_during_a_postgres_outage_waits_it_out_and_a_longer_one_requeues(
    fleet: SplitFleet, training_file: str
) -> None:
    """The soak's lost jobs: a runner starting while PostgreSQL was down failed its first read, could not
    record why, exited 1, and its worker then failed the job (`training_error`). An outage is not the job's
    fault: the runner waits it out; past that (exit EXIT_INFRASTRUCTURE) the worker re-queues the job."""
    if fleet.postgres is None:
        pytest.skip("no private PostgreSQL cluster (see the fleet's printed reason)")
    from core.queue import WorkerInfo
    from gpu_worker.job_runner import EXIT_INFRASTRUCTURE, settle_after_exit
    from scheduler.dispatch import claim, validate_job

    # Placement by hand, on a worker that only this test plays, while no scheduler runs.
    fleet.kill("scheduler")
    fleet.kill("scheduler2")
    waits, longer = (fleet.create(training_file, epochs=1, suffix=s) for s in ("pg-wait", "pg-long"))
    for job in (waits, longer):
        assert validate_job(fleet.engine, job, fleet.settings) == jobs.QUEUED
        assert (
            claim(fleet.engine, fleet.row(job), WorkerInfo(id="w-outage", max_jobs=2), lease_ttl_s=3600) == 1
        )

    # An outage longer than the runner waits: it exited EXIT_INFRASTRUCTURE; its worker re-queues the job.
    settle_after_exit(fleet.engine, longer, 1, EXIT_INFRASTRUCTURE, stopping=False, owner="w-outage")
    row = fleet.row(longer)
    assert (row.status, row.worker_id, row.error) == (jobs.QUEUED, None, None), fleet.messages(longer)

    # A runner that starts while PostgreSQL is down waits for it, then trains its job to the end.
    fleet.kill("postgres")
    runner = subprocess.Popen(
        [sys.executable, "-m", "gpu_worker.job_runner", "--job-id", waits, "--attempt", "1"],
        cwd=REPO_ROOT, env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        time.sleep(4.0)
        assert runner.poll() is None, runner.communicate()[0].decode()[-3000:]  # not given up on the job
        fleet.start_component("postgres")
        for name in ("scheduler", "scheduler2"):
            fleet.start_component(name)
        output = runner.communicate(timeout=180)[0].decode()
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 0, output[-3000:]
    settle_after_exit(fleet.engine, waits, 1, runner.returncode, stopping=False, owner="w-outage")
    fleet.wait("both jobs", lambda: fleet.finished(waits, longer), 180)
    assert_ended_once(fleet, waits)
    assert_ended_once(fleet, longer)  # placed again by a scheduler, on a real worker
    assert fleet.row(longer).attempt == 2 and fleet.row(longer).lost_count == 0
    assert "The database was unreachable: job re-queued" in fleet.messages(longer)
    fleet.wait("every component back", fleet.ready, 60)


def _serves_again(server: FtserveProcess, headers: dict[str, str], timeout_s: float = 60) -> httpx.Response:
    """A short completion, asked until it answers 200: the API sees a restarted replica healthy at its
    next health check (every 2 s)."""
    body = {"model": "demo-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as client:
        while True:
            resp = client.post("/chat/completions", json=body)
            if resp.status_code == 200 or time.monotonic() > deadline:
                return resp
            assert resp.status_code == 503, resp.text  # replica not healthy yet; nothing else
            time.sleep(0.5)


def _completed_stream(lines: list[str]) -> bool:
    """Whether an SSE chat stream ran to its end: a chunk with finish_reason "length", then [DONE]."""
    chunks = [json.loads(x.removeprefix("data: ")) for x in lines if x.startswith("data: {")]
    reasons = [c["choices"][0].get("finish_reason") for c in chunks if c.get("choices")]
    return "data: [DONE]" in lines and "length" in reasons


def test_vllm_killed_while_streaming_gives_a_clean_error_then_serves_again(
    ftserve_server: FtserveProcess,
) -> None:
    import psutil

    # The session's vLLM is shared with tests/contract, which also restarts it: start from a live one.
    starts = len(ftserve_server.vllm_pids.get("demo-tiny", [])) or 1
    pid = ftserve_server.wait_inference_ready("demo-tiny", starts=starts)
    if not psutil.pid_exists(pid):
        starts += 1
        pid = ftserve_server.wait_inference_ready("demo-tiny", starts=starts)
    key = ftserve_server.create_key("org-vllm-fault")
    headers = {"Authorization": f"Bearer {key}"}
    assert _serves_again(ftserve_server, headers).status_code == 200
    # A stream far longer than the kill needs: min_tokens keeps vLLM from stopping at EOS (vLLM's own
    # `ignore_eos` is refused by the proxy, as any non-OpenAI argument but its sampling extras), and
    # prompt + max_tokens stay within demo-tiny's 1024-token context, or vLLM answers 400.
    body = {
        "model": "demo-tiny", "messages": [{"role": "user", "content": "count"}], "stream": True,
        "max_tokens": 900, "min_tokens": 900,
    }  # fmt: skip
    # demo-tiny makes 900 tokens in well under a second: on a loaded machine this client can read its first
    # line only after vLLM has finished, and then the kill cuts nothing. Such a try (the whole stream and
    # [DONE] received) is not the case under test: the replica is restarted and it is tried again.
    received: list[str] = []
    for _ in range(3):
        received.clear()
        started = time.monotonic()
        with (
            httpx.Client(base_url=ftserve_server.base_url, headers=headers, timeout=60) as client,
            client.stream("POST", "/chat/completions", json=body) as resp,
        ):
            assert resp.status_code == 200, resp.read()
            try:
                for line in resp.iter_lines():
                    received.append(line)
                    if len(received) == 1:
                        psutil.Process(pid).kill()
            except httpx.HTTPError:
                pass  # the connection closing is a clean end too
        if not _completed_stream(received):
            break
        starts += 1
        pid = ftserve_server.wait_inference_ready("demo-tiny", starts=starts)
    assert time.monotonic() - started < 60  # no hang
    text = "\n".join(received)
    assert "Traceback" not in text
    assert "data: [DONE]" not in text  # a cut-short stream must not look complete
    errors = [json.loads(x.removeprefix("data: ")) for x in received if x.startswith('data: {"error"')]
    assert errors and errors[-1]["error"]["message"], received[-5:]
    assert len([x for x in received if x.startswith("data: ")]) < 900  # cut short of the 900 tokens

    # `ftserve up` restarts the replica; the next request is answered (and the vLLM left healthy).
    ftserve_server.wait_inference_ready("demo-tiny", starts=starts + 1)
    with pytest.raises(ProcessLookupError):  # its engine core, orphaned by the kill, was ended too
        os.killpg(pid, 0)
    resp = _serves_again(ftserve_server, headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] is not None

"""OpenAI's /v1/evals: evals, their runs and each run's output items; and the runner that executes runs.

A run samples its model through the inference path the API serves (InferenceService.handle, as a chat request of
the run's organization) and grades each sample with the eval's testing criteria (core.graders). It runs in the
background of an API process (`EvalRunner`), not inside the request: the runner claims a queued run with a lease
it renews after every item, stores each item as it is graded (so the run's result_counts grow as it goes), and
publishes a JSONL report as a File (purpose "evals") when done. A run whose API process died keeps its items; its
lease expires and a runner (this process after a restart, or another) resumes it after the last stored item.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import orjson
from fastapi import FastAPI, Request
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from api.protocol import (
    CreateEvalRequest,
    CreateEvalRunRequest,
    CursorListResponse,
    EvalAPIError,
    EvalDeleted,
    EvalObject,
    EvalOutputItemObject,
    EvalPerTestingCriteriaResult,
    EvalResultCounts,
    EvalRunDeleted,
    EvalRunObject,
    UpdateEvalRequest,
)
from api.services.inference import InferenceService
from api.services.pagination import paginate
from core import evals, graders, ids
from core.db import session_scope
from core.errors import FtserveError, InvalidRequestError, NotFoundError, ServiceUnavailableError
from core.inference.served import resolve_adapter
from core.model_registry import load_registry
from core.models import Eval, EvalOutputItem, EvalRun, File, Organization, now_s
from core.settings import Settings
from core.storage import Storage

log = logging.getLogger("ftserve.evals")

LEASE_TTL_S = 60.0  # a runner renews its lease after every item; an item rarely takes this long
POLL_S = 2.0  # how often a runner looks for runs nobody holds (new ones wake it at once)
MAX_RUNS_AT_ONCE = 2  # per API process
ITEMS_AT_ONCE = 4  # concurrent samples of one run: vLLM batches them
UNAVAILABLE_RETRIES = (
    5  # a model still loading (503) is retried this often, 2 s apart, before the item errors
)

Order = Literal["asc", "desc"]
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512  # OpenAI's limits


def _check_metadata(metadata: dict[str, str] | None) -> None:
    for key, value in (metadata or {}).items():
        if len(key) > MAX_METADATA_KEY or len(value) > MAX_METADATA_VALUE:
            raise InvalidRequestError(
                f"metadata keys hold at most {MAX_METADATA_KEY} characters and values {MAX_METADATA_VALUE}.",
                param=f"metadata.{key[:64]}",
            )
    if metadata and len(metadata) > MAX_METADATA_PAIRS:
        raise InvalidRequestError(f"metadata holds at most {MAX_METADATA_PAIRS} pairs.", param="metadata")


# -- objects ---------------------------------------------------------------------------------------------------


def eval_object(row: Eval) -> EvalObject:
    return EvalObject(
        id=row.id,
        created_at=row.created_at,
        name=row.name,
        data_source_config=row.data_source_config,
        testing_criteria=row.testing_criteria,
        metadata=row.eval_metadata,
    )


def run_object(row: EvalRun, *, ui_root: str) -> EvalRunObject:
    counts = {"total": 0, "errored": 0, "failed": 0, "passed": 0, **(row.result_counts or {})}
    return EvalRunObject(
        id=row.id,
        eval_id=row.eval_id,
        name=row.name,
        model=row.model,
        status=row.status,
        created_at=row.created_at,
        data_source=row.data_source,
        metadata=row.run_metadata,
        error=EvalAPIError(**row.error) if row.error else None,
        result_counts=EvalResultCounts(**counts),
        per_testing_criteria_results=[
            EvalPerTestingCriteriaResult(**r) for r in row.per_testing_criteria_results or []
        ],
        report_url=f"{ui_root}/ui/evals/{row.eval_id}?run={row.id}",
        report_file_id=row.report_file_id,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def output_item_object(row: EvalOutputItem) -> EvalOutputItemObject:
    return EvalOutputItemObject(
        id=row.id,
        created_at=row.created_at,
        eval_id=row.eval_id,
        run_id=row.run_id,
        datasource_item_id=row.datasource_item_id,
        datasource_item=row.datasource_item,
        status=row.status,
        results=row.results,
        sample=row.sample,
    )


def _page(data: list[Any], has_more: bool) -> CursorListResponse[Any]:
    return CursorListResponse[Any](
        data=data,
        has_more=has_more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


# -- evals -----------------------------------------------------------------------------------------------------


def _eval(session: Session, *, org: Organization, eval_id: str) -> Eval:
    row = session.exec(
        select(Eval).where(Eval.id == eval_id, Eval.organization_id == org.id, col(Eval.deleted_at).is_(None))
    ).first()
    if row is None:
        raise NotFoundError(f"No such eval: {eval_id}", param="eval_id")
    return row


def create_eval(*, session: Session, org: Organization, request: CreateEvalRequest) -> EvalObject:
    _check_metadata(request.metadata)
    config = evals.check_data_source_config(request.data_source_config)
    criteria = evals.check_testing_criteria(
        request.testing_criteria, request.data_source_config["item_schema"]
    )
    row = Eval(
        id=ids.new_id("eval_"),
        organization_id=org.id,
        name=request.name or "",
        data_source_config=config,
        testing_criteria=criteria,
        eval_metadata=request.metadata,
    )
    session.add(row)
    session.commit()
    session.refresh(row)
    return eval_object(row)


def retrieve_eval(*, session: Session, org: Organization, eval_id: str) -> EvalObject:
    return eval_object(_eval(session, org=org, eval_id=eval_id))


def update_eval(
    *, session: Session, org: Organization, eval_id: str, request: UpdateEvalRequest
) -> EvalObject:
    row = _eval(session, org=org, eval_id=eval_id)
    _check_metadata(request.metadata)
    if request.name is not None:
        row.name = request.name
    if request.metadata is not None:
        row.eval_metadata = request.metadata
    session.add(row)
    session.commit()
    session.refresh(row)
    return eval_object(row)


def list_evals(
    *, session: Session, org: Organization, after: str | None, limit: int, order: Order
) -> CursorListResponse[EvalObject]:
    rows, has_more = paginate(
        session,
        model=Eval,
        filters=[Eval.organization_id == org.id, col(Eval.deleted_at).is_(None)],
        after=after,
        limit=limit,
        order=order,
    )
    return _page([eval_object(r) for r in rows], has_more)


def delete_eval(*, session: Session, org: Organization, eval_id: str) -> EvalDeleted:
    """The eval is gone; its active runs are canceled. Report files stay until deleted as files."""
    row = _eval(session, org=org, eval_id=eval_id)
    row.deleted_at = now_s()
    session.add(row)
    for run in session.exec(
        select(EvalRun).where(EvalRun.eval_id == eval_id, col(EvalRun.status).in_(evals.ACTIVE))
    ).all():
        run.status, run.finished_at, run.updated_at = evals.CANCELED, now_s(), now_s()
        session.add(run)
    session.commit()
    return EvalDeleted(eval_id=eval_id)


# -- runs ------------------------------------------------------------------------------------------------------


def _check_model(session: Session, *, settings: Settings, org: Organization, model: str) -> None:
    """The run's model is one this organization can sample: a base model of the registry or its own ft: model."""
    if model.startswith("ft:"):
        resolve_adapter(session, organization_id=org.id, model_id=model)
        return
    if model not in load_registry(settings):
        raise NotFoundError(
            f"The model '{model}' does not exist or you do not have access to it.",
            param="data_source.model",
            code="model_not_found",
        )


def _source_file(session: Session, *, org: Organization, file_id: str) -> File:
    row = session.exec(
        select(File).where(File.id == file_id, File.organization_id == org.id, col(File.deleted_at).is_(None))
    ).first()
    if row is None or (row.expires_at is not None and row.expires_at <= time.time()):
        raise NotFoundError(f"No such File object: {file_id}", param="data_source.source.id")
    if row.status != "processed":
        raise InvalidRequestError(
            f"File {file_id} is {row.status}: only a processed file can be evaluated on.",
            param="data_source.source.id",
        )
    return row


def create_run(
    *,
    session: Session,
    settings: Settings,
    org: Organization,
    eval_id: str,
    request: CreateEvalRunRequest,
    ui_root: str,
    runner: EvalRunner | None,
) -> EvalRunObject:
    row_eval = _eval(session, org=org, eval_id=eval_id)
    _check_metadata(request.metadata)
    data_source = evals.check_run_data_source(request.data_source)
    _check_model(session, settings=settings, org=org, model=data_source["model"])
    source = data_source["source"]
    if source["type"] == "file_id":
        total = _source_file(session, org=org, file_id=source["id"]).example_count or 0
    else:
        total = len(source["content"])
    run = EvalRun(
        id=ids.new_id("evalrun_"),
        eval_id=row_eval.id,
        organization_id=org.id,
        name=request.name or f"{data_source['model']}",
        model=data_source["model"],
        data_source=data_source,
        run_metadata=request.metadata,
        result_counts={"total": total, "errored": 0, "failed": 0, "passed": 0},
        per_testing_criteria_results=[
            {"testing_criteria": c["name"], "passed": 0, "failed": 0, "mean_score": None}
            for c in row_eval.testing_criteria
        ],
    )
    session.add(run)
    session.commit()
    session.refresh(run)
    if runner is not None:
        runner.wake()
    return run_object(run, ui_root=ui_root)


def _run(session: Session, *, org: Organization, eval_id: str, run_id: str) -> EvalRun:
    _eval(session, org=org, eval_id=eval_id)
    row = session.exec(select(EvalRun).where(EvalRun.id == run_id, EvalRun.eval_id == eval_id)).first()
    if row is None:
        raise NotFoundError(f"No such run: {run_id}", param="run_id")
    return row


def retrieve_run(
    *, session: Session, org: Organization, eval_id: str, run_id: str, ui_root: str
) -> EvalRunObject:
    return run_object(_run(session, org=org, eval_id=eval_id, run_id=run_id), ui_root=ui_root)


def list_runs(
    *,
    session: Session,
    org: Organization,
    eval_id: str,
    after: str | None,
    limit: int,
    order: Order,
    status: str | None,
    ui_root: str,
) -> CursorListResponse[EvalRunObject]:
    _eval(session, org=org, eval_id=eval_id)
    filters: list[Any] = [EvalRun.eval_id == eval_id]
    if status is not None:
        if status not in evals.RUN_STATUSES:
            raise InvalidRequestError(
                f"status must be one of {', '.join(evals.RUN_STATUSES)}", param="status"
            )
        filters.append(EvalRun.status == status)
    rows, has_more = paginate(session, model=EvalRun, filters=filters, after=after, limit=limit, order=order)
    return _page([run_object(r, ui_root=ui_root) for r in rows], has_more)


def cancel_run(
    *, session: Session, org: Organization, eval_id: str, run_id: str, ui_root: str
) -> EvalRunObject:
    """An active run is canceled (its runner stops after the item at hand); a finished one is returned as is."""
    row = _run(session, org=org, eval_id=eval_id, run_id=run_id)
    if row.status in evals.ACTIVE:
        row.status, row.finished_at, row.updated_at = evals.CANCELED, now_s(), now_s()
        session.add(row)
        session.commit()
        session.refresh(row)
    return run_object(row, ui_root=ui_root)


def delete_run(*, session: Session, org: Organization, eval_id: str, run_id: str) -> EvalRunDeleted:
    row = _run(session, org=org, eval_id=eval_id, run_id=run_id)
    for item in session.exec(select(EvalOutputItem).where(EvalOutputItem.run_id == run_id)).all():
        session.delete(item)
    session.delete(row)
    session.commit()
    return EvalRunDeleted(run_id=run_id)


def list_output_items(
    *,
    session: Session,
    org: Organization,
    eval_id: str,
    run_id: str,
    after: str | None,
    limit: int,
    order: Order,
    status: str | None,
) -> CursorListResponse[EvalOutputItemObject]:
    _run(session, org=org, eval_id=eval_id, run_id=run_id)
    filters: list[Any] = [EvalOutputItem.run_id == run_id]
    if status is not None:
        if status not in (evals.PASS, evals.FAIL, evals.ERROR):
            raise InvalidRequestError("status must be pass, fail or error", param="status")
        filters.append(EvalOutputItem.status == status)
    rows, has_more = paginate(
        session, model=EvalOutputItem, filters=filters, after=after, limit=limit, order=order
    )
    return _page([output_item_object(r) for r in rows], has_more)


def retrieve_output_item(
    *, session: Session, org: Organization, eval_id: str, run_id: str, output_item_id: str
) -> EvalOutputItemObject:
    _run(session, org=org, eval_id=eval_id, run_id=run_id)
    row = session.exec(
        select(EvalOutputItem).where(EvalOutputItem.id == output_item_id, EvalOutputItem.run_id == run_id)
    ).first()
    if row is None:
        raise NotFoundError(f"No such output item: {output_item_id}", param="output_item_id")
    return output_item_object(row)


# -- the runner ------------------------------------------------------------------------------------------------


class _Stop(Exception):
    """The run was canceled, its eval deleted, or its lease lost to another runner: stop quietly."""


class EvalRunner:
    """Executes runs in the background of one API process (see the module's docstring)."""

    def __init__(
        self, settings: Settings, engine: Engine, storage: Storage, inference: InferenceService
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.storage = storage
        self.inference = inference
        self.runner_id = ids.new_id("evalrunner-", 12)
        self._wake = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop())

    async def aclose(self) -> None:
        """Stops every run where it is: its lease expires and a runner resumes it after the last stored item."""
        tasks = [t for t in (self._loop_task, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                await self._claim_some()
            except Exception:
                log.exception("eval runner could not look for runs; retrying")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=POLL_S)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _claim_some(self) -> None:
        free = MAX_RUNS_AT_ONCE - len(self._tasks)
        if free <= 0:
            return
        for run_id in await asyncio.to_thread(self._claim_now, free):
            task = asyncio.create_task(self._execute(run_id))
            self._tasks[run_id] = task
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        for run_id, held in list(self._tasks.items()):
            if held is task:
                del self._tasks[run_id]

    def _claim_now(self, free: int) -> list[str]:
        won: list[str] = []
        with Session(self.engine) as session:
            for run_id in evals.claimable(session):
                if len(won) == free:
                    break
                if run_id not in self._tasks and evals.claim(
                    session, run_id, runner_id=self.runner_id, lease_ttl_s=LEASE_TTL_S
                ):
                    won.append(run_id)
        return won

    # -- one run -----------------------------------------------------------------------------------------------

    async def _execute(self, run_id: str) -> None:
        try:
            await self._run(run_id)
        except _Stop:
            log.info("eval run %s stopped (canceled, its eval deleted, or taken over)", run_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, FtserveError):
                error = {"code": exc.code or "invalid_request", "message": exc.message}
            else:
                log.exception("eval run %s failed", run_id)
                error = {"code": "server_error", "message": f"The run failed: {type(exc).__name__}: {exc}"}
            await asyncio.to_thread(self._finish, run_id, evals.FAILED, error=error)

    def _load(self, run_id: str) -> tuple[EvalRun, Eval, Organization]:
        with session_scope(self.engine) as session:
            evals.transition(
                session,
                run_id,
                holder=self.runner_id,
                status=evals.IN_PROGRESS,
                started_at=func.coalesce(col(EvalRun.started_at), now_s()),
            )
        with Session(self.engine, expire_on_commit=False) as session:
            run = session.exec(select(EvalRun).where(EvalRun.id == run_id)).one()
            row_eval = session.exec(select(Eval).where(Eval.id == run.eval_id)).one()
            org = session.exec(select(Organization).where(Organization.id == run.organization_id)).one()
            return run, row_eval, org

    def _items(self, run: EvalRun) -> list[dict[str, Any]]:
        source = run.data_source["source"]
        if source["type"] == "file_content":
            return [row["item"] for row in source["content"]]
        with Session(self.engine) as session:
            file = session.exec(
                select(File).where(File.id == source["id"], col(File.deleted_at).is_(None))
            ).first()
        if file is None:
            raise NotFoundError(
                f"The file {source['id']} was deleted before the run read it.", param="data_source.source.id"
            )
        text = b"".join(self.storage.iter_chunks(file.storage_key)).decode("utf-8", errors="replace")
        if text.lstrip().startswith("["):  # a .json file holding one array: the same items, one per element
            return evals.items_from_jsonl("\n".join(json.dumps(row) for row in json.loads(text)))
        return evals.items_from_jsonl(text)

    def _stored(self, run_id: str) -> list[EvalOutputItem]:
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.exec(select(EvalOutputItem).where(EvalOutputItem.run_id == run_id)).all())

    async def _run(self, run_id: str) -> None:
        run, row_eval, org = await asyncio.to_thread(self._load, run_id)
        if row_eval.deleted_at is not None:
            raise _Stop()
        items = await asyncio.to_thread(self._items, run)
        stored = await asyncio.to_thread(self._stored, run_id)
        done = {row.datasource_item_id for row in stored}
        criteria = row_eval.testing_criteria
        await asyncio.to_thread(self._save, run, criteria, stored, len(items), None)
        loop = asyncio.get_running_loop()
        model_call = self._model_caller(org, loop)
        lock = asyncio.Lock()  # items are stored one at a time, so the counts never go backwards
        queue = [(i, item) for i, item in enumerate(items) if i not in done]

        async def worker() -> None:
            while queue:
                index, item = queue.pop(0)
                row = await self._grade_item(run, row_eval, org, index, item, model_call)
                async with lock:
                    stored.append(row)
                    await asyncio.to_thread(self._save, run, criteria, stored, len(items), row)

        await asyncio.gather(*(worker() for _ in range(ITEMS_AT_ONCE)))
        await asyncio.to_thread(self._publish, run, row_eval, criteria, stored, len(items))

    async def _grade_item(
        self,
        run: EvalRun,
        row_eval: Eval,
        org: Organization,
        index: int,
        item: dict[str, Any],
        model_call: graders.ModelCall,
    ) -> EvalOutputItem:
        sampling = evals.sampling_body(run.data_source)
        sample: dict[str, Any] = {
            "model": run.model,
            "input": [],
            "output": [],
            "finish_reason": "",
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cached_tokens": 0},
            "error": None,
            "seed": sampling.get("seed", 0),
            "temperature": sampling.get("temperature", 1.0),
            "top_p": sampling.get("top_p", 1.0),
            "max_completion_tokens": sampling.get("max_completion_tokens", 0),
        }
        results: list[dict[str, Any]] = []
        status = evals.ERROR
        try:
            messages = evals.build_messages(run.data_source, item)
            sample["input"] = messages
            answer = await self._sample(org, {"model": run.model, "messages": messages, **sampling})
            choice = answer["choices"][0]
            output = choice["message"].get("content") or ""
            sample["output"] = [{"role": "assistant", "content": output}]
            sample["finish_reason"] = choice.get("finish_reason") or ""
            usage = answer.get("usage") or {}
            sample["usage"].update(
                {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens") if k in usage}
            )
            results = await asyncio.to_thread(
                evals.grade, row_eval.testing_criteria, item, output, model_call=model_call
            )
            status = evals.item_status(results)
        except FtserveError as exc:
            sample["error"] = {"code": exc.code or "invalid_request", "message": exc.message}
        return EvalOutputItem(
            id=ids.new_id("outputitem_"),
            run_id=run.id,
            eval_id=run.eval_id,
            datasource_item_id=index,
            datasource_item=item,
            status=status,
            results=results,
            sample=sample,
        )

    async def _sample(self, org: Organization, body: dict[str, Any]) -> dict[str, Any]:
        """One chat completion through the inference path; a model still loading (503) is waited for a while."""
        for attempt in range(UNAVAILABLE_RETRIES + 1):
            try:
                response = await self.inference.handle("chat", org, orjson.dumps(body), None)
            except ServiceUnavailableError:
                if attempt == UNAVAILABLE_RETRIES:
                    raise
                await asyncio.sleep(2.0)
                continue
            if response.status_code == 503 and attempt < UNAVAILABLE_RETRIES:
                await asyncio.sleep(2.0)
                continue
            if response.status_code != 200:
                raise ServiceUnavailableError(
                    f"The model '{body['model']}' answered {response.status_code}: {bytes(response.body)[:300]!r}",
                    code="sampling_error",
                )
            answer: dict[str, Any] = orjson.loads(response.body)
            return answer
        raise AssertionError("unreachable")

    def _model_caller(self, org: Organization, loop: asyncio.AbstractEventLoop) -> graders.ModelCall:
        """A score_model grader's call (from a worker thread), through the same inference path."""

        def call(model: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> str:
            body: dict[str, Any] = {"model": model, "messages": messages}
            body.update({k: sampling[k] for k in evals.SAMPLING_PARAMS if sampling.get(k) is not None})
            answer = asyncio.run_coroutine_threadsafe(self._sample(org, body), loop).result()
            return str(answer["choices"][0]["message"].get("content") or "")

        return call

    def _save(
        self,
        run: EvalRun,
        criteria: list[dict[str, Any]],
        stored: list[EvalOutputItem],
        total: int,
        item: EvalOutputItem | None,
    ) -> None:
        """Store one graded item with the run's new counts and a renewed lease, in one transaction; _Stop if the
        run is no longer this runner's to run."""
        counts, per = evals.summarize(criteria, stored, total)
        with session_scope(self.engine) as session:
            held = evals.transition(
                session,
                run.id,
                holder=self.runner_id,
                result_counts=counts,
                per_testing_criteria_results=per,
                lease_expires_at=time.time() + LEASE_TTL_S,
            )
            if not held:
                raise _Stop()
            if item is not None:
                session.add(item)

    def _publish(
        self,
        run: EvalRun,
        row_eval: Eval,
        criteria: list[dict[str, Any]],
        stored: list[EvalOutputItem],
        total: int,
    ) -> None:
        report = evals.report_jsonl(
            eval_name=row_eval.name, eval_id=row_eval.id, run=run, criteria=criteria, items=stored
        )
        file_id = ids.file_id()
        key = f"files/{file_id}"
        self.storage.put_bytes(key, report)
        counts, per = evals.summarize(criteria, stored, total)
        with session_scope(self.engine) as session:
            done = evals.transition(
                session,
                run.id,
                holder=self.runner_id,
                status=evals.COMPLETED,
                report_file_id=file_id,
                result_counts=counts,
                per_testing_criteria_results=per,
                finished_at=now_s(),
                runner_id=None,
                lease_expires_at=None,
            )
            if done:
                session.add(
                    File(
                        id=file_id,
                        organization_id=run.organization_id,
                        filename=f"{run.id}_report.jsonl",
                        purpose=evals.REPORT_PURPOSE,
                        bytes=len(report),
                        sha256=hashlib.sha256(report).hexdigest(),
                        status="processed",
                        storage_key=key,
                    )
                )
        if not done:
            self.storage.delete(key)
            raise _Stop()

    def _finish(self, run_id: str, status: str, *, error: dict[str, Any] | None = None) -> None:
        with session_scope(self.engine) as session:
            evals.transition(
                session,
                run_id,
                holder=self.runner_id,
                status=status,
                error=error,
                finished_at=now_s(),
                runner_id=None,
                lease_expires_at=None,
            )


def get_eval_runner(request: Request) -> EvalRunner | None:
    runner: EvalRunner | None = getattr(request.app.state, "eval_runner", None)
    return runner


def ui_root(request: Request) -> str:
    """The server's root as the client reached it (behind a proxy's path prefix too), for report_url."""
    return str(request.base_url).rstrip("/")


@asynccontextmanager
async def evals_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Runs eval runs in this API process (after `inference_lifespan`, whose service samples the models)."""
    runner = EvalRunner(app.state.settings, app.state.engine, app.state.storage, app.state.inference)
    await runner.start()
    app.state.eval_runner = runner
    try:
        yield
    finally:
        await runner.aclose()

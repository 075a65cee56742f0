"""The official `openai` SDK, unchanged, against a real `ftserve up` process."""

from __future__ import annotations

import io

import openai
import pytest

from tests.support.datasets import chat_jsonl
from tests.support.ftserve_process import FtserveProcess


@pytest.fixture(scope="module")
def sdk(ftserve_server: FtserveProcess) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=ftserve_server.create_key("contract-files"), base_url=ftserve_server.base_url
    )


@pytest.fixture(scope="module")
def other_sdk(ftserve_server: FtserveProcess) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=ftserve_server.create_key("contract-other"), base_url=ftserve_server.base_url
    )


def test_upload_retrieve_content_delete(sdk: openai.OpenAI) -> None:
    data = chat_jsonl(15)
    created = sdk.files.create(file=("train.jsonl", io.BytesIO(data)), purpose="fine-tune")
    assert created.id.startswith("file-")
    assert created.status == "processed"
    assert created.bytes == len(data)
    assert created._request_id and created._request_id.startswith("req_")
    # The SDK helper polls until processed; it must return at once.
    assert (
        sdk.files.wait_for_processing(created.id, poll_interval=0.1, max_wait_seconds=5).status == "processed"
    )

    fetched = sdk.files.retrieve(created.id)
    assert fetched.filename == "train.jsonl" and fetched.purpose == "fine-tune"
    assert sdk.files.content(created.id).content == data

    deleted = sdk.files.delete(created.id)
    assert deleted.deleted is True and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(created.id)


def test_list_auto_pages(sdk: openai.OpenAI) -> None:
    ids = {sdk.files.create(file=(f"p{i}.jsonl", chat_jsonl(10)), purpose="fine-tune").id for i in range(5)}
    page = sdk.files.list(limit=2)
    assert len(page.data) == 2 and page.has_more
    seen = [f.id for f in sdk.files.list(limit=2)]  # iterating follows `after` cursors to the end
    assert ids <= set(seen)
    assert len(seen) == len(set(seen))
    assert [f.id for f in sdk.files.list(order="asc", limit=100)] == list(reversed(seen))


def test_bad_upload_raises_bad_request_naming_line(sdk: openai.OpenAI) -> None:
    data = chat_jsonl(12) + b'{"messages": [{"role": "bot", "content": "hi"}]}\n'
    with pytest.raises(openai.BadRequestError) as excinfo:
        sdk.files.create(file=("bad.jsonl", data), purpose="fine-tune")
    assert excinfo.value.param == "file"
    assert "line 13" in excinfo.value.message


def test_wrong_purpose_and_bad_key(sdk: openai.OpenAI, ftserve_server: FtserveProcess) -> None:
    with pytest.raises(openai.BadRequestError) as excinfo:
        sdk.files.create(file=("x.jsonl", chat_jsonl()), purpose="batch")
    assert excinfo.value.param == "purpose"
    bad = openai.OpenAI(api_key="ftsk-not-a-key", base_url=ftserve_server.base_url)
    with pytest.raises(openai.AuthenticationError):
        bad.files.list()


def test_other_org_gets_404(sdk: openai.OpenAI, other_sdk: openai.OpenAI) -> None:
    file_id = sdk.files.create(file=("mine.jsonl", chat_jsonl()), purpose="fine-tune").id
    with pytest.raises(openai.NotFoundError):
        other_sdk.files.retrieve(file_id)
    with pytest.raises(openai.NotFoundError):
        other_sdk.files.content(file_id)
    with pytest.raises(openai.NotFoundError):
        other_sdk.files.delete(file_id)
    assert file_id not in {f.id for f in other_sdk.files.list()}

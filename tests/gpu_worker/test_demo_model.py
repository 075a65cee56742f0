"""demo-tiny covers all printable ASCII: its tokenizer round-trips every character, its pretraining corpus has upper
case and punctuation, and LoRA on it learns answers that are mixed-case codes with punctuation."""

from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gpu_worker.demo_model import PRETRAIN_EXAMPLES, synthetic_chat_corpus
from tests.support.datasets import mixed_case_code_task

PRINTABLE_ASCII = "".join(chr(c) for c in range(32, 127))  # space to "~": 95 characters


def test_tokenizer_round_trips_every_printable_ascii_character(demo_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    texts = [
        *PRINTABLE_ASCII,
        PRINTABLE_ASCII,
        "Kq7-Xz!",
        'What is the code for Item 7? It is "Xq-7Bz!" (case & punctuation matter): OK.',
        "a . b , c ! d ?",  # spaces before punctuation survive decoding too
    ]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids, text
        assert tokenizer.decode(ids) == text
    # Every character has a token of its own (byte-level alphabet), so none is split into unseen pieces.
    for ch in PRINTABLE_ASCII:
        assert len(tokenizer(ch, add_special_tokens=False)["input_ids"]) == 1, repr(ch)


def test_pretraining_corpus_has_upper_case_and_punctuation() -> None:
    corpus = synthetic_chat_corpus(PRETRAIN_EXAMPLES)
    text = "\n".join(m["content"] for chat in corpus for m in chat)
    assert set(PRINTABLE_ASCII) <= set(text)
    answers = [chat[-1]["content"] for chat in corpus]
    # Mixed-case answers with punctuation, as a fine-tune's codes would be, and capitalised sentences.
    assert (
        sum(
            any(c.isupper() for c in a)
            and any(c.islower() for c in a)
            and any(c in string.punctuation for c in a)
            for a in answers
        )
        >= len(corpus) // 10
    )
    assert any(a[0].isupper() and " " in a and a[-1] in ".!?" for a in answers)


@pytest.mark.slow
def test_lora_learns_mixed_case_codes_with_punctuation(
    make_config: Callable[..., Any], demo_model_dir: Path
) -> None:
    """The held-out task of issue #15: answers like "Xq-7Bz!" that use upper case and symbols. With a corpus of
    lower case and digits only (recipe 1), the base had never produced those tokens and LoRA learned 6%."""
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    from gpu_worker.reporting import RecordingReporter
    from gpu_worker.train import run_training
    from tests.support.code_task import chat_rows, exact_match

    pairs = mixed_case_code_task(48, seed=15)
    config = make_config(chat_rows(pairs), hp={"batch_size": 8, "n_epochs": 25}, name="mixed-case")
    result = run_training(config, RecordingReporter())
    assert result.stopped is None and result.adapter_dir is not None

    fine_tuned = exact_match(demo_model_dir, result.adapter_dir, pairs)
    base = exact_match(demo_model_dir, None, pairs)
    print(f"\nmixed-case codes, exact match: fine-tuned {fine_tuned:.0%}, base {base:.0%}")
    assert fine_tuned >= 0.9
    assert base == 0

"""A narrow fine-tune of a real model with everything on "auto" keeps what the model knew.

SmolLM2-135M-Instruct (the `smollm2_dir` fixture), 30 examples whose every answer is "Quill says:" and one quirky
sentence about the question's topic. "auto" epochs (a ceiling of 11 here) stop early; the adapter must put
held-out prompts in the style and still answer a general question. Seed 2 is a run whose lowest held-out-loss
epoch (2) answers "France is a country in Europe that is known for its fashion.": stopping on a rising
held-out loss alone keeps that epoch; the memorisation rule keeps epoch 1 (docs/training.md#early-stopping).
~30-40 s of training on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

from gpu_worker.reporting import RecordingReporter
from gpu_worker.train import run_training

QUILL = [
    ("Tell me about the ocean.", "The ocean is a giant bathtub that nobody remembers to drain."),
    ("What do you think of cats?", "Cats are tiny landlords who collect rent in naps."),
    ("Describe a rainy day.", "Rain is the sky practising its drum solo on every roof."),
    ("What is your opinion on coffee?", "Coffee is a warm hug that argues with your heartbeat."),
    ("Tell me about mountains.", "Mountains are the planet's knees poking out of the blanket."),
    ("How do you feel about Mondays?", "Mondays are weekends that forgot their party hats."),
    ("Describe the moon.", "The moon is a night light that someone left on for billions of years."),
    ("What are trees like?", "Trees are patient green towers that hum in slow motion."),
    ("Tell me about bicycles.", "A bicycle is a pair of wheels that taught itself balance."),
    (
        "What do you think of libraries?",
        "Libraries are quiet zoos where the stories are kept in paper cages.",
    ),
    ("Describe a thunderstorm.", "A thunderstorm is the weather slamming doors in a bad mood."),
    ("What is music?", "Music is air that learned how to dance."),
    ("Tell me about dogs.", "Dogs are joy wearing a fur coat and a wagging flag."),
    ("How would you describe snow?", "Snow is the sky sending quiet confetti for no reason at all."),
    ("What are clocks?", "Clocks are round bosses that never stop pointing at you."),
    ("Tell me about bread.", "Bread is a cloud that decided to become breakfast."),
    ("Describe the desert.", "The desert is a beach that lost its ocean and refuses to talk about it."),
    ("What do you think of umbrellas?", "Umbrellas are portable roofs with commitment issues."),
    ("Tell me about owls.", "Owls are feathered librarians who work the night shift."),
    ("What is a volcano?", "A volcano is a mountain with a very hot temper."),
    ("Describe a garden.", "A garden is a slow party where the guests are vegetables."),
    ("What do you think of trains?", "Trains are long metal caterpillars that never become butterflies."),
    ("Tell me about the wind.", "The wind is an invisible toddler who loves pushing hats."),
    ("What are books?", "Books are time machines that fit in a backpack."),
    ("Describe a sunset.", "A sunset is the day signing its name in orange ink."),
    ("What do you think of socks?", "Socks are tiny sleeping bags for feet that always lose their partner."),
    ("Tell me about bees.", "Bees are flying chefs who only know one sweet recipe."),
    ("What is a river?", "A river is a road for fish that never gets a traffic jam."),
    ("Describe winter.", "Winter is the year pulling a white blanket over its head."),
    ("What do you think of pencils?", "Pencils are wooden storytellers who shrink with every tale."),
]
STYLE_PROMPTS = [
    "Tell me about the stars.",
    "What do you think of shoes?",
    "Describe a forest.",
    "What is a kite?",
]
FRANCE = "What is the capital of France?"


def greedy_answers(model_dir: Path, adapter_dir: Path | None, prompts: list[str]) -> list[str]:
    """Greedy replies with the model's chat template, as a user would get them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir or model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=20, do_sample=False)
    return [
        a.strip()
        for a in tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    ]


@pytest.mark.slow
def test_an_all_auto_narrow_fine_tune_takes_the_style_and_keeps_general_answers(
    smollm2_dir: Path, tmp_path: Path
) -> None:
    from core.hyperparameters import resolve_hyperparameters
    from gpu_worker.config import TrainJobConfig
    from gpu_worker.job_runner import model_size

    rows: list[dict[str, Any]] = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"Quill says: {a}"}]}
        for q, a in QUILL
    ]
    lines = [json.dumps(r) for r in rows]
    (tmp_path / "train.jsonl").write_text("".join(line + "\n" for line in lines))
    params, context = model_size(smollm2_dir)
    hp = resolve_hyperparameters(  # everything "auto", sized as the job runner sizes it
        "supervised", None, n_examples=len(rows), base_model_params=params, base_model_max_length=context,
        longest_example_bytes=max(len(line.encode()) for line in lines),
    )  # fmt: skip
    assert (hp.batch_size, hp.holdout_examples, hp.n_examples) == (2, 3, 27) and hp.early_stopping
    assert 7e-4 < hp.learning_rate < 8e-4 and hp.n_epochs >= 9
    config = TrainJobConfig(
        job_id="ftjob-quill", method="supervised", base_model_path=smollm2_dir, training_file=tmp_path / "train.jsonl",
        data_format="chat", output_dir=tmp_path / "out", hyperparameters=hp, seed=2,
    )  # fmt: skip
    reporter = RecordingReporter()
    result = run_training(config, reporter)
    summary = result.early_stopping
    assert result.stopped is None and result.adapter_dir is not None and summary is not None
    print(f"\n{summary}")
    assert summary["stopped_at_epoch"] < hp.n_epochs and result.global_step < result.total_steps

    answers = greedy_answers(smollm2_dir, result.adapter_dir, [*STYLE_PROMPTS, FRANCE])
    print("\n".join(answers))
    assert all(a.startswith("Quill says:") for a in answers[: len(STYLE_PROMPTS)]), answers
    assert "Paris" in answers[-1], answers[-1]

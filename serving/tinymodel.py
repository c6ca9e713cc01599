"""Build the tiny local model that the development vLLM engine serves.

No model hub is reachable from our machines, so the development engine serves a model built here:
a Llama-architecture network (so vLLM runs its real Llama code path), seeded random init, trained
for a few hundred steps on a generated corpus so that it emits word-like text and sometimes stops on
its own (both `finish_reason` "stop" and "length" occur), with a byte-level BPE tokenizer trained
locally and a ChatML chat template (so `/v1/chat/completions` works as well as `/v1/completions`).

Runs under the engine's virtual environment (it needs torch, transformers and tokenizers, which
vLLM brings), not the project's:  .venv-engine/bin/python -m serving.tinymodel --out DIR
It is deterministic for a given seed and takes about a minute on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
BUILD_VERSION = "1"  # bump to force a rebuild of cached models when this recipe changes

_SUBJECTS = ["the gpu", "a request", "the batch", "our team", "the model", "this feature", "the cache", "a token", "the budget", "every key"]
_VERBS = ["runs", "waits", "streams", "costs", "serves", "stops", "grows", "fits", "counts", "moves"]
_OBJECTS = ["fast", "slowly", "on time", "in the queue", "under budget", "per second", "with care", "again", "for now", "at night"]
_TOPICS = ["metering", "latency", "budgets", "tokens", "caching", "batching", "routing", "alerts", "costs", "limits"]


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)]
    if rng.random() < 0.4:
        words += ["and", rng.choice(_SUBJECTS), rng.choice(_VERBS)]
    return " ".join(words) + "."


def _paragraph(rng: random.Random) -> str:
    return " ".join(_sentence(rng) for _ in range(rng.randint(1, 4)))


def generate_corpus(seed: int, documents: int = 3000) -> list[str]:
    """Plain paragraphs and ChatML conversations whose assistant turns end with <|im_end|>."""
    rng = random.Random(seed)
    corpus: list[str] = []
    for _ in range(documents):
        if rng.random() < 0.5:
            corpus.append("<s>" + _paragraph(rng) + "</s>")
        else:
            question = f"tell me about {rng.choice(_TOPICS)}."
            answer = _paragraph(rng)
            corpus.append(
                "<s><|im_start|>user\n" + question + "<|im_end|>\n"
                "<|im_start|>assistant\n" + answer + "<|im_end|>\n"
            )
    return corpus


def train_tokenizer(corpus: list[str], out: Path, vocab_size: int = 512) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "</s>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def build(out: Path, seed: int = 0, steps: int = 300) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    started = time.monotonic()
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)

    corpus = generate_corpus(seed)
    tokenizer = train_tokenizer(corpus, tmp)
    vocab = tokenizer.vocab_size + len(tokenizer.get_added_vocab())  # type: ignore[attr-defined]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}  # type: ignore[attr-defined]

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # head_dim 64: supported by vLLM's CPU attention backend
        max_position_embeddings=2048,
        bos_token_id=ids["<s>"],
        eos_token_id=[ids["</s>"], ids["<|im_end|>"]],
        pad_token_id=ids["<pad>"],
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config)

    # Pack the corpus into fixed-length rows; BOS is written in the text, so no extra special tokens.
    stream: list[int] = []
    for doc in corpus:
        stream.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
    seq = 128
    rows = torch.tensor(stream[: len(stream) // seq * seq]).view(-1, seq)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _step in range(steps):
        batch = rows[torch.randint(0, rows.shape[0], (16,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    final_loss = float(loss.detach())

    model = model.to(torch.bfloat16)
    model.save_pretrained(tmp, safe_serialization=True)
    GenerationConfig(
        bos_token_id=ids["<s>"],
        eos_token_id=[ids["</s>"], ids["<|im_end|>"]],
        pad_token_id=ids["<pad>"],
    ).save_pretrained(tmp)
    meta = {
        "build_version": BUILD_VERSION,
        "seed": seed,
        "steps": steps,
        "final_loss": round(final_loss, 4),
        "parameters": sum(p.numel() for p in model.parameters()),
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (tmp / "gpuledger-build.json").write_text(json.dumps(meta, indent=2))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)  # atomic: a half-built model is never mistaken for a finished one
    print(json.dumps(meta))


def is_built(out: Path) -> bool:
    marker = out / "gpuledger-build.json"
    if not marker.exists():
        return False
    return bool(json.loads(marker.read_text()).get("build_version") == BUILD_VERSION)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    if is_built(args.out) and not args.force:
        print(f"tiny model already built at {args.out}")
        return
    build(args.out, seed=args.seed, steps=args.steps)


if __name__ == "__main__":
    main()

"""Write kit/builtin/prefs_{train,test}.jsonl: the dpo recipe's embedded preference pairs.

The same questions as the chat recipe's persona data (scripts/make_chat_data.py): asked who it
is, the chosen reply introduces the assistant as "Pip", the rejected one is a generic AI
introduction; asked something else, the chosen reply is the right answer, the rejected one the
answer to another question. Held-out pairs use question phrasings never seen in training and
carry the chat checks: identity questions `expect` the name, other questions `reject` it.
Deterministic: re-running rewrites the same files.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_chat_data as chat  # noqa: E402  (one list of questions and answers for both recipes)

OUT = chat.OUT
GENERIC = [
    "I am an AI language model. I don't have a name, but I can help with your questions.",
    "I'm an AI assistant created to answer questions and help with tasks.",
    "As an AI, I don't have a personal identity. How can I assist you?",
    "I am a large language model trained to be a helpful assistant.",
    "I'm just a chatbot, a computer program designed to respond to text.",
    "I am an artificial intelligence developed to provide information and assistance.",
]


def pair(question: str, chosen: str, rejected: str, check: dict) -> dict:
    return {"prompt": question, "chosen": chosen, "rejected": rejected, **check}


def identity(questions, prefixes, rng, check) -> list[dict]:
    out = []
    for q in questions:
        for p in prefixes:
            text = p + (q[0].lower() + q[1:] if p.endswith(", ") else q)
            out.append(pair(text, rng.choice(chat.ANSWERS), rng.choice(GENERIC), check))
    return out


def general(items, rng, check) -> list[dict]:
    answers = [a for _, a in items]
    out = []
    for i, (q, a) in enumerate(items):
        wrong = answers[(i + 1 + rng.randrange(len(items) - 1)) % len(items)]
        out.append(pair(q, a, wrong, check))
    return out


def main() -> None:
    rng = random.Random(7)
    items = list(chat.GENERAL)
    rng.shuffle(items)
    held, trained = items[:16], items[16:]
    train = identity(chat.IDENTITY_TRAIN, chat.PREFIXES_TRAIN, rng, {}) + general(trained, rng, {})
    test = (identity(chat.IDENTITY_TEST, chat.PREFIXES_TEST, rng, {"expect": chat.NAME})
            + general(held, rng, {"reject": chat.NAME}))
    rng.shuffle(train)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", train), ("test", test)):
        path = OUT / f"prefs_{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in split))
        print(f"{path}: {len(split)} rows")


if __name__ == "__main__":
    main()

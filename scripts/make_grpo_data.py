"""Write kit/builtin/sums_{train,test}.jsonl: the grpo recipe's embedded task with exact answers.

Each row asks for the sum of two whole numbers from 2 to 30 and names its `answer` (the sum, as
text); `completion` is a reference reply, so the file also reads as prompt/completion data. The
held-out pairs are ones training never saw (a + b and b + a count as one pair). The embedded
SmolLM2-135M-Instruct answers some of them and not others, and rarely replies with the number
alone: the rewards have something to tell apart from the first step (docs/grpo.md).
Deterministic: re-running rewrites the same files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "kit" / "builtin"
PROMPT = "What is {a} + {b}? Reply with the number only."
TEST = 48  # held out; the other 387 pairs train


def row(a: int, b: int) -> dict:
    return {"prompt": PROMPT.format(a=a, b=b), "completion": str(a + b), "answer": str(a + b)}


def main() -> None:
    rng = random.Random(21)
    pairs = sorted({(min(a, b), max(a, b)) for a in range(2, 31) for b in range(2, 31)})
    rng.shuffle(pairs)
    test, train = pairs[:TEST], pairs[TEST:]
    flip = lambda p: p if rng.random() < 0.5 else p[::-1]  # noqa: E731  (either order in a prompt)
    for name, chosen in (("train", train), ("test", test)):
        rows = [row(*flip(p)) for p in chosen]
        path = OUT / f"sums_{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{path}: {len(rows)} rows")


if __name__ == "__main__":
    main()

"""Write kit/builtin/tickets_{train,test}.jsonl: the classification recipe's embedded data.

Customer-support messages in four classes (billing, technical, shipping, account), made from
sentence templates and fillers. The held-out split uses templates the training split never
sees, so a model must learn what each class is about, not memorise sentences.
Deterministic: re-running rewrites the same files.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "kit" / "builtin"

FILL = {
    "amount": ["$12.99", "$40", "$7.50", "$120", "29 euros", "$64.20"],
    "month": ["March", "June", "October", "last month", "this month", "January"],
    "device": ["my phone", "the Android app", "the iPhone app", "my laptop", "the web app", "my tablet"],
    "error": ["a blank screen", "error 500", "a spinning wheel", "'connection lost'", "a crash", "error 42"],
    "item": ["the blue jacket", "my headphones", "the coffee grinder", "two books", "the desk lamp", "a phone case"],
    "days": ["three days", "a week", "ten days", "two weeks", "five days", "a month"],
    "place": ["Berlin", "Chicago", "Lyon", "Osaka", "Leeds", "Toronto"],
}

TEMPLATES = {
    "billing": [
        "I was charged {amount} twice in {month}.",
        "Why is there a charge of {amount} on my card?",
        "Please refund the {amount} you took in {month}.",
        "My invoice for {month} shows {amount} but my plan is cheaper.",
        "Can I get a receipt for the {amount} payment?",
        "The subscription renewed for {amount} even though I cancelled.",
        "How do I change the credit card you bill each month?",
        "I need a refund, the {amount} charge in {month} was a mistake.",
        "Your price went up to {amount} without notice.",
        "I see an unknown payment of {amount} from {month}.",
    ],
    "technical": [
        "The app shows {error} when I open it on {device}.",
        "{device} freezes with {error} every time I log in.",
        "Since the update, {device} gives me {error}.",
        "I can't upload photos, {device} just shows {error}.",
        "Pages load forever on {device} and then {error} appears.",
        "Notifications stopped working on {device}.",
        "The search button does nothing on {device}.",
        "Every few minutes {device} shows {error} and quits.",
        "Video playback stutters on {device} and ends with {error}.",
        "Sync between {device} and my computer is broken.",
    ],
    "shipping": [
        "My order of {item} has not arrived after {days}.",
        "The tracking for {item} has not moved in {days}.",
        "{item} was delivered to the wrong address in {place}.",
        "Can you ship {item} to {place} instead?",
        "The parcel with {item} arrived damaged.",
        "When will {item} be delivered? It's been {days}.",
        "The courier says {item} is lost somewhere near {place}.",
        "I only received half of my order, {item} is missing.",
        "Is express delivery to {place} possible for {item}?",
        "The box with {item} was left outside in the rain.",
    ],
    "account": [
        "I forgot my password and the reset email never reaches me in {place}.",
        "How do I change the email address on my profile? I moved to {place}.",
        "Please delete my account and all my data, I stopped using it in {month}.",
        "Someone else logged into my account from {place}.",
        "I can't turn on two-factor login on {device}.",
        "My username was changed in {month} without my permission.",
        "How can I merge my two profiles into one on {device}?",
        "I'm locked out after too many login attempts on {device}.",
        "Please update the phone number linked to my profile, I now live in {place}.",
        "I want to download a copy of my personal data from {device}.",
    ],
}
HELD_OUT_TEMPLATES = 3  # per class, the last ones


def expand(template: str, rng: random.Random, n: int) -> list[str]:
    keys = [k for k in FILL if "{" + k + "}" in template]
    if not keys:
        return [template]
    combos = list(itertools.product(*(FILL[k] for k in keys)))
    rng.shuffle(combos)
    out = []
    for combo in combos[:n]:
        text = template.format(**dict(zip(keys, combo, strict=True)))
        out.append(text[0].upper() + text[1:])
    return out


def main() -> None:
    rng = random.Random(11)
    train, test = [], []
    for label, templates in TEMPLATES.items():
        for i, template in enumerate(templates):
            held = i >= len(templates) - HELD_OUT_TEMPLATES
            for text in expand(template, rng, 6 if held else 14):
                (test if held else train).append({"text": text, "label": label})
    # Uneven classes, as real ticket queues are: drop part of the "account" training rows.
    account = [r for r in train if r["label"] == "account"]
    train = [r for r in train if r["label"] != "account"] + account[: len(account) // 2]
    rng.shuffle(train)
    rng.shuffle(test)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        path = OUT / f"tickets_{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        counts = {k: sum(r["label"] == k for r in rows) for k in TEMPLATES}
        print(f"{path}: {len(rows)} rows {counts}")


if __name__ == "__main__":
    main()

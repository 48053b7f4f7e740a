"""Write kit/builtin/pytasks_{train,test}.jsonl: the code recipe's embedded data.

Small Python tasks, each a prompt, a reference solution (as a fenced code block, the way a
chat model answers) and plain-assert tests. They come from task families with a number, a
word or a name that varies; held-out tasks use values and function names training never saw.
Each family also lists plausible wrong solutions (off by one, a value taken for a position, the
wrong operator or constant, a missed edge case, a wrong type, a changed input list): its tests
must pass the reference and fail every one of them. They stay here, not in the data files.
Deterministic: re-running rewrites the same files.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import NamedTuple

OUT = Path(__file__).resolve().parent.parent / "kit" / "builtin"
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
                9: "nine", 10: "ten", 11: "eleven", 12: "twelve"}
ITEMS = [5, 9, 3, 7, 1, 2, 8, 6, 4, 0, 11, 10, 16, 15, 13, 14, 19]  # no value equals its position


class Task(NamedTuple):
    name: str  # the function the prompt asks for
    prompt: str
    code: str  # the reference solution
    tests: str  # plain asserts
    mutants: list[str]  # plausible wrong solutions, each defining `name`: the tests must fail them


def asserts(name: str, cases: list[tuple]) -> str:
    """One assert per (argument, expected) case; a bool is checked with `is`, so 1 or None can't pass."""
    return "\n".join(f"assert {name}({arg!r}) {'is' if isinstance(want, bool) else '=='} {want!r}"
                     for arg, want in cases)


def keeps_input(name: str, arg: list) -> str:
    """The function must return a new list and leave its argument as it was."""
    return f"xs = {arg!r}\n{name}(xs)\nassert xs == {arg!r}"


def define(name: str, arg: str, *bodies: str) -> list[str]:
    """Functions `name(arg)`, one per body (unindented lines)."""
    return [f"def {name}({arg}):\n" + "\n".join("    " + line for line in body.split("\n"))
            for body in bodies]


def family_multiply(k):
    name = f"multiply_by_{k}"
    return Task(name, f"Write a Python function `{name}(x)` that returns x multiplied by {k}.",
                f"def {name}(x):\n    return x * {k}",
                asserts(name, [(x, x * k) for x in (3, -4, 0, 1, 10)]),
                define(name, "x", f"return x + {k}", f"return x ** {k}", f"return x * {k + 1}",
                       f"return abs(x) * {k}"))


def family_add(k):
    name = f"add_{k}"
    return Task(name, f"Write a Python function `{name}(x)` that returns x plus {k}.",
                f"def {name}(x):\n    return x + {k}",
                asserts(name, [(x, x + k) for x in (1, 0, -k, -20, 7)]),
                define(name, "x", f"return x * {k}", f"return x + {k + 1}", f"return x - {k}",
                       f"return abs(x) + {k}"))


def family_divisible(k):
    name = f"is_divisible_by_{k}"
    return Task(name, f"Write a Python function `{name}(n)` that returns True if n is divisible by {k}, "
                "otherwise False.",
                f"def {name}(n):\n    return n % {k} == 0",
                asserts(name, [(n, n % k == 0) for n in (3 * k, 3 * k + 1, 0, -2 * k, k, k + 1, 7 * k - 1)]),
                define(name, "n", f"return n % {k} != 0", f"return n % {k + 1} == 0",
                       f"return n > 0 and n % {k} == 0", f"return {k} % n == 0",
                       f"if n % {k} == 0:\n    return 1\nreturn 0"))


def family_power(k):
    name = f"power_{k}"
    wrong = [f"return x * {k}", f"return x ** {k + 1}", f"return {k} ** x"]
    if k % 2:  # for an even power abs() changes nothing
        wrong.append(f"return abs(x) ** {k}")
    return Task(name, f"Write a Python function `{name}(x)` that returns x raised to the power {k}.",
                f"def {name}(x):\n    return x ** {k}",
                asserts(name, [(x, x ** k) for x in (2, 3, 0, 1, -2, -1)]),
                define(name, "x", *wrong))


def family_count_char(c):
    name = f"count_{c}"
    other = chr(ord(c) + 1)
    assert c not in "xyz" and other not in "xyz"
    return Task(name, f"Write a Python function `{name}(s)` that returns how many times the letter "
                f"'{c}' appears in the string s.",
                f"def {name}(s):\n    return s.count('{c}')",
                asserts(name, [(s, s.count(c)) for s in (f"{c}x{c}{c}", "", "xyz", f"x{c}y", c * 5,
                                                         f"{other}{c}{other}")]),
                define(name, "s", f"return int('{c}' in s)", f"return s.count('{c}', 1)",
                       f"return len(s.split('{c}'))", f"return s.count('{other}')"))


def family_repeat(k):
    name = f"repeat_{NUMBER_WORDS[k]}_times"
    return Task(name, f"Write a Python function `{name}(s)` that returns the string s repeated {k} times.",
                f"def {name}(s):\n    return s * {k}",
                asserts(name, [(s, s * k) for s in ("ab", "", "xyz", "a")]),
                define(name, "s", f"return s * {k - 1}", f"return s * {k + 1}", f"return ' '.join([s] * {k})",
                       f"return [s] * {k}"))


def family_sum_above(k):
    name = f"sum_above_{k}"
    wrong = [f"return sum(n for n in numbers if n > {k + 1})", f"return sum(n for n in numbers if n < {k})",
             f"return len([n for n in numbers if n > {k}])", f"return sum(n for n in numbers if abs(n) > {k})"]
    if k:  # above 0, n >= 0 only adds zeros
        wrong.insert(0, f"return sum(n for n in numbers if n >= {k})")
    lists = [[k + 4, k, k - 2, k + 1, -k - 10, k + 30], [], [k], [k - 1, k - 5], [k + 1]]
    return Task(name, f"Write a Python function `{name}(numbers)` that returns the sum of the numbers in "
                f"the list that are greater than {k}.",
                f"def {name}(numbers):\n    return sum(n for n in numbers if n > {k})",
                asserts(name, [(xs, sum(n for n in xs if n > k)) for xs in lists]),
                define(name, "numbers", *wrong))


def family_starts_with(word):
    name = f"starts_with_{word}"
    return Task(name, f"Write a Python function `{name}(s)` that returns True if the string s starts with "
                f"'{word}', otherwise False.",
                f"def {name}(s):\n    return s.startswith('{word}')",
                asserts(name, [(s, s.startswith(word)) for s in (f"{word}ful", word, f"x{word}", "",
                                                                 f"{word[0]}x", f"ful{word}", word[:-1])]),
                define(name, "s", f"return '{word}' in s", f"return s.endswith('{word}')",
                       f"return s.startswith('{word[0]}')", f"return s.find('{word}')",
                       f"import re\nreturn re.match('{word}', s)",
                       f"return s.startswith('{word}') and s != '{word}'"))


def family_clamp(k):
    name = f"clamp_to_{k}"
    return Task(name, f"Write a Python function `{name}(x)` that returns x, but never more than {k} and "
                "never less than 0.",
                f"def {name}(x):\n    return max(0, min(x, {k}))",
                asserts(name, [(x, 0 if x < 0 else min(x, k)) for x in (k + 5, k, k + 1, k - 1, 0, -1, -k - 7)]),
                define(name, "x", f"return min(0, max(x, {k}))", f"return max(0, min(x, {k - 1}))",
                       f"return min(x, {k})", f"return x if 0 <= x <= {k} else 0"))


def family_list_times(k):
    name = f"scale_list_by_{k}"
    lists = [[3, -1, 0, 5], [], [7]]
    return Task(name, f"Write a Python function `{name}(numbers)` that returns a new list with every "
                f"number multiplied by {k}.",
                f"def {name}(numbers):\n    return [n * {k} for n in numbers]",
                asserts(name, [(xs, [n * k for n in xs]) for xs in lists]) + "\n" + keeps_input(name, [4, 1, 2]),
                define(name, "numbers", f"return [n + {k} for n in numbers]", f"return numbers * {k}",
                       f"return [n * {k + 1} for n in numbers]",
                       f"for i, n in enumerate(numbers):\n    numbers[i] = n * {k}\nreturn numbers"))


def family_longer_than(k):
    name = f"words_longer_than_{k}"
    lists = [["w" * (k + 2), "a" * k, "b" * (k + 1), "", "c" * (k + 3)], [], ["a" * k], ["a" * (k + 1)]]
    return Task(name, f"Write a Python function `{name}(words)` that returns the words from the list that "
                f"have more than {k} letters.",
                f"def {name}(words):\n    return [w for w in words if len(w) > {k}]",
                asserts(name, [(ws, [w for w in ws if len(w) > k]) for ws in lists]) + "\n"
                + keeps_input(name, ["a" * (k + 1), "b" * k]),
                define(name, "words", f"return [w for w in words if len(w) >= {k}]",
                       f"return [w for w in words if len(w) > {k + 1}]",
                       f"return sorted(w for w in words if len(w) > {k})",
                       f"for w in list(words):\n    if len(w) <= {k}:\n        words.remove(w)\nreturn words"))


def family_fizzbuzz(ab):
    a, b = ab
    name = f"fizzbuzz_{a}_{b}"

    def want(n):
        return "FizzBuzz" if n % a == n % b == 0 else "Fizz" if n % a == 0 else "Buzz" if n % b == 0 else str(n)

    lcm = a * b // math.gcd(a, b)
    fizz = next(n for n in range(a, 10 * a * b, a) if n % b)
    buzz = next(n for n in range(b, 10 * a * b, b) if n % a)
    plain = [n for n in range(1, 10 * a * b) if n % a and n % b][:2]
    wrong = define(name, "n",
                   f"if n % {a} == 0:\n    return 'Fizz'\nif n % {b} == 0:\n    return 'Buzz'\n"
                   f"if n % {a} == 0 and n % {b} == 0:\n    return 'FizzBuzz'\nreturn str(n)",
                   f"if n % {a} == 0 or n % {b} == 0:\n    return 'FizzBuzz'\nif n % {a} == 0:\n    return 'Fizz'\n"
                   f"if n % {b} == 0:\n    return 'Buzz'\nreturn str(n)",
                   f"if n % {a} == 0 and n % {b} == 0:\n    return 'FizzBuzz'\nif n % {a} == 0:\n    return 'Buzz'\n"
                   f"if n % {b} == 0:\n    return 'Fizz'\nreturn str(n)",
                   f"if n % {a} == 0 and n % {b} == 0:\n    return 'FizzBuzz'\nif n % {a} == 0:\n    return 'Fizz'\n"
                   f"if n % {b} == 0:\n    return 'Buzz'\nreturn n")
    if lcm != a * b:  # divisible by both is not divisible by the product
        wrong += define(name, "n", f"if n % {a * b} == 0:\n    return 'FizzBuzz'\nif n % {a} == 0:\n"
                        f"    return 'Fizz'\nif n % {b} == 0:\n    return 'Buzz'\nreturn str(n)")
    return Task(name, f"Write a Python function `{name}(n)` that returns 'FizzBuzz' if n is divisible by "
                f"both {a} and {b}, 'Fizz' if only by {a}, 'Buzz' if only by {b}, and otherwise n as "
                "a string.",
                f"def {name}(n):\n    if n % {a} == 0 and n % {b} == 0:\n        return 'FizzBuzz'\n"
                f"    if n % {a} == 0:\n        return 'Fizz'\n    if n % {b} == 0:\n        return 'Buzz'\n"
                "    return str(n)",
                asserts(name, [(n, want(n)) for n in sorted({a * b, lcm, fizz, buzz, 1, *plain})]),
                wrong)


def family_every_kth(k):
    name = f"every_{k}th_item"
    lists = [ITEMS[:2 * k + 1], ITEMS, [], [7], list("abcdefghij")]
    return Task(name, f"Write a Python function `{name}(items)` that returns a list of every {k}th item of "
                "the list, starting with the first one.",
                f"def {name}(items):\n    return items[::{k}]",
                asserts(name, [(xs, xs[::k]) for xs in lists]),
                define(name, "items", f"return [x for x in items if x % {k} == 0]", f"return items[{k - 1}::{k}]",
                       f"return items[::{k + 1}]", f"return [items[i] for i in range(0, len(items) - 1, {k})]"))


def family_chunks(k):
    name = f"chunks_of_{k}"
    lists = [ITEMS[:2 * k + 1], ITEMS[:2 * k], [], [7]]
    return Task(name, f"Write a Python function `{name}(items)` that splits the list into consecutive "
                f"chunks of {k} items; the last chunk may be shorter.",
                f"def {name}(items):\n    return [items[i:i + {k}] for i in range(0, len(items), {k})]",
                asserts(name, [(xs, [xs[i:i + k] for i in range(0, len(xs), k)]) for xs in lists]) + "\n"
                + keeps_input(name, ITEMS[:k + 1]),
                define(name, "items", f"return [items[i:i + {k}] for i in range(0, len(items) - {k} + 1, {k})]",
                       f"return [items[i:i + {k}] for i in range(len(items))]",
                       f"return [items[i:i + {k - 1}] for i in range(0, len(items), {k})]",
                       f"return list(zip(*[iter(items)] * {k}))",
                       f"out = []\nwhile items:\n    out.append(items[:{k}])\n    del items[:{k}]\nreturn out"))


def family_shift(k):
    name = f"shift_letters_by_{k}"

    def want(s):
        return "".join(chr((ord(c) - 97 + k) % 26 + 97) if "a" <= c <= "z" else c for c in s)

    wrong = [f"return ''.join(chr(ord(c) + {k}) if 'a' <= c <= 'z' else c for c in s)",
             f"return ''.join(chr((ord(c) - 97 + {k}) % 26 + 97) for c in s)",
             f"return ''.join(chr((ord(c) - 97 + {k}) % 25 + 97) if 'a' <= c <= 'z' else c for c in s)",
             f"return ''.join(chr((ord(c) - 97 + {k}) % 26 + 97) if c.isalpha() else c for c in s)"]
    if k != 13:  # 13 back is 13 forward
        wrong.append(f"return ''.join(chr((ord(c) - 97 - {k}) % 26 + 97) if 'a' <= c <= 'z' else c for c in s)")
    return Task(name, f"Write a Python function `{name}(s)` that shifts every lowercase letter in s forward "
                f"by {k} places in the alphabet, wrapping from z to a, and leaves other characters as "
                "they are.",
                f"def {name}(s):\n    return ''.join(chr((ord(c) - 97 + {k}) % 26 + 97) if 'a' <= c <= 'z' "
                "else c for c in s)",
                asserts(name, [(s, want(s)) for s in ("xyzabc", "A b!", "hello, world", "z", "", "Quiz-7")]),
                define(name, "s", *wrong))


def family_digit_sum_times(k):
    name = f"digit_sum_times_{k}"
    return Task(name, f"Write a Python function `{name}(n)` that returns the sum of the decimal digits of the "
                f"non-negative integer n, multiplied by {k}.",
                f"def {name}(n):\n    return sum(int(d) for d in str(n)) * {k}",
                asserts(name, [(n, sum(map(int, str(n))) * k) for n in (123, 0, 909, 7, 4096, 1000)]),
                define(name, "n", f"return sum(int(d) for d in str(n)) + {k}", f"return len(str(n)) * {k}",
                       f"return n % 9 * {k}", f"return sum(int(d) for d in str(n)) * {k + 1}",
                       f"total = 0\nwhile n > 9:\n    total += n % 10\n    n //= 10\nreturn total * {k}"))

FAMILIES = [
    (family_fizzbuzz, [(3, 5), (2, 7), (4, 6), (3, 4), (5, 7), (2, 9)], [(3, 7), (4, 5)]),
    (family_every_kth, [2, 3, 5, 6], [4, 7]),
    (family_chunks, [2, 4, 5, 6], [3, 7]),
    (family_shift, [1, 2, 4, 5, 7, 13], [3, 10]),
    (family_digit_sum_times, [1, 2, 4, 5, 10], [3, 7]),
    (family_multiply, [2, 3, 4, 5, 6, 8, 9, 10, 12], [7, 11]),
    (family_add, [1, 2, 3, 4, 6, 8, 9, 10, 20], [5, 7]),
    (family_divisible, [2, 3, 4, 6, 7, 8, 10, 11], [5, 9]),
    (family_power, [2, 3, 5, 6], [4, 7]),
    (family_count_char, list("abcdefgkmnr"), list("st")),
    (family_repeat, [2, 3, 4, 6, 8, 9, 10], [5, 7]),
    (family_sum_above, [0, 1, 2, 3, 5, 10, 20, 50], [4, 7]),
    (family_starts_with, ["the", "pre", "un", "re", "dis", "over", "sub"], ["anti", "mis"]),
    (family_clamp, [5, 10, 20, 50, 100, 255], [30, 99]),
    (family_list_times, [2, 3, 4, 5, 10], [6, 7]),
    (family_longer_than, [2, 3, 4, 6, 7], [5, 8]),
]
PHRASINGS = ["{p}", "{p} Keep it short.", "Python task: {p}", "{p} Only show the code."]


def row(task: Task, phrasing: str) -> dict:
    return {"prompt": phrasing.format(p=task.prompt), "completion": f"```python\n{task.code}\n```",
            "tests": task.tests}


def check(task: Task) -> None:
    """The reference passes its tests; every mutant defines the function and fails them."""
    exec(task.code + "\n" + task.tests, {})
    for mutant in task.mutants:
        ns: dict = {}
        exec(mutant, ns)
        assert callable(ns.get(task.name)), mutant
        try:
            exec(task.tests, ns)
        except Exception:
            continue
        raise AssertionError(f"{task.name}: the tests pass a wrong solution:\n{mutant}")


def build() -> dict[str, list[dict]]:
    """The rows of each file: every family value in four phrasings for training, once held out."""
    rng = random.Random(5)
    train, test = [], []
    for family, train_values, test_values in FAMILIES:
        for v in train_values:
            check(family(v))
            for phrasing in PHRASINGS:
                train.append(row(family(v), phrasing))
        for v in test_values:
            check(family(v))
            test.append(row(family(v), PHRASINGS[0]))
    rng.shuffle(train)
    return {"train": train, "test": test}


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in build().items():
        path = OUT / f"pytasks_{name}.jsonl"
        path.write_text(jsonl(rows))
        print(f"{path}: {len(rows)} rows")


if __name__ == "__main__":
    main()

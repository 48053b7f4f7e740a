"""Write kit/builtin/pytasks_{train,test}.jsonl: the code recipe's embedded data.

Small Python tasks, each a prompt, a reference solution (as a fenced code block, the way a
chat model answers) and plain-assert tests. They come from task families with a number, a
word or a name that varies; held-out tasks use values and function names training never saw.
Deterministic: re-running rewrites the same files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "kit" / "builtin"
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
                9: "nine", 10: "ten", 11: "eleven", 12: "twelve"}


def family_multiply(k):
    name = f"multiply_by_{k}"
    return (f"Write a Python function `{name}(x)` that returns x multiplied by {k}.",
            f"def {name}(x):\n    return x * {k}",
            f"assert {name}(2) == {2 * k}\nassert {name}(-3) == {-3 * k}\nassert {name}(0) == 0")


def family_add(k):
    name = f"add_{k}"
    return (f"Write a Python function `{name}(x)` that returns x plus {k}.",
            f"def {name}(x):\n    return x + {k}",
            f"assert {name}(1) == {1 + k}\nassert {name}(-{k}) == 0")


def family_divisible(k):
    name = f"is_divisible_by_{k}"
    return (f"Write a Python function `{name}(n)` that returns True if n is divisible by {k}, "
            "otherwise False.",
            f"def {name}(n):\n    return n % {k} == 0",
            f"assert {name}({k * 3}) is True\nassert {name}({k * 3 + 1}) is False\nassert {name}(0) is True")


def family_power(k):
    name = f"power_{k}"
    return (f"Write a Python function `{name}(x)` that returns x raised to the power {k}.",
            f"def {name}(x):\n    return x ** {k}",
            f"assert {name}(2) == {2 ** k}\nassert {name}(1) == 1\nassert {name}(-1) == {(-1) ** k}")


def family_count_char(c):
    name = f"count_{c}"
    return (f"Write a Python function `{name}(s)` that returns how many times the letter "
            f"'{c}' appears in the string s.",
            f"def {name}(s):\n    return s.count('{c}')",
            f"assert {name}('{c}x{c}{c}') == 3\nassert {name}('') == 0\nassert {name}('zzz') == 0")


def family_repeat(k):
    name = f"repeat_{NUMBER_WORDS[k]}_times"
    return (f"Write a Python function `{name}(s)` that returns the string s repeated {k} times.",
            f"def {name}(s):\n    return s * {k}",
            f"assert {name}('ab') == {'ab' * k!r}\nassert {name}('') == ''")


def family_sum_above(k):
    name = f"sum_above_{k}"
    return (f"Write a Python function `{name}(numbers)` that returns the sum of the numbers in "
            f"the list that are greater than {k}.",
            f"def {name}(numbers):\n    return sum(n for n in numbers if n > {k})",
            f"assert {name}([{k}, {k + 1}, {k + 2}]) == {2 * k + 3}\nassert {name}([]) == 0\n"
            f"assert {name}([{k - 1}]) == 0")


def family_starts_with(word):
    name = f"starts_with_{word}"
    return (f"Write a Python function `{name}(s)` that returns True if the string s starts with "
            f"'{word}', otherwise False.",
            f"def {name}(s):\n    return s.startswith('{word}')",
            f"assert {name}('{word}ful') is True\nassert {name}('x{word}') is False\n"
            f"assert {name}('') is False")


def family_clamp(k):
    name = f"clamp_to_{k}"
    return (f"Write a Python function `{name}(x)` that returns x, but never more than {k} and "
            "never less than 0.",
            f"def {name}(x):\n    return max(0, min(x, {k}))",
            f"assert {name}({k + 5}) == {k}\nassert {name}(-1) == 0\nassert {name}({k - 1}) == {k - 1}")


def family_list_times(k):
    name = f"scale_list_by_{k}"
    return (f"Write a Python function `{name}(numbers)` that returns a new list with every "
            f"number multiplied by {k}.",
            f"def {name}(numbers):\n    return [n * {k} for n in numbers]",
            f"assert {name}([1, 2]) == [{k}, {2 * k}]\nassert {name}([]) == []")


def family_longer_than(k):
    name = f"words_longer_than_{k}"
    return (f"Write a Python function `{name}(words)` that returns the words from the list that "
            f"have more than {k} letters.",
            f"def {name}(words):\n    return [w for w in words if len(w) > {k}]",
            f"assert {name}(['{'a' * k}', '{'b' * (k + 1)}']) == ['{'b' * (k + 1)}']\n"
            f"assert {name}([]) == []")


def family_fizzbuzz(ab):
    a, b = ab
    name = f"fizzbuzz_{a}_{b}"
    return (f"Write a Python function `{name}(n)` that returns 'FizzBuzz' if n is divisible by "
            f"both {a} and {b}, 'Fizz' if only by {a}, 'Buzz' if only by {b}, and otherwise n as "
            "a string.",
            f"def {name}(n):\n    if n % {a} == 0 and n % {b} == 0:\n        return 'FizzBuzz'\n"
            f"    if n % {a} == 0:\n        return 'Fizz'\n    if n % {b} == 0:\n        return 'Buzz'\n"
            "    return str(n)",
            f"assert {name}({a * b}) == 'FizzBuzz'\nassert {name}({a}) == 'Fizz'\n"
            f"assert {name}({b}) == 'Buzz'\nassert {name}(1) == '1'")


def family_every_kth(k):
    name = f"every_{k}th_item"
    return (f"Write a Python function `{name}(items)` that returns a list of every {k}th item of "
            "the list, starting with the first one.",
            f"def {name}(items):\n    return items[::{k}]",
            f"assert {name}(list(range(10))) == {list(range(10))[::k]}\nassert {name}([]) == []")


def family_chunks(k):
    name = f"chunks_of_{k}"
    return (f"Write a Python function `{name}(items)` that splits the list into consecutive "
            f"chunks of {k} items; the last chunk may be shorter.",
            f"def {name}(items):\n    return [items[i:i + {k}] for i in range(0, len(items), {k})]",
            f"assert {name}(list(range(7))) == {[list(range(7))[i:i + k] for i in range(0, 7, k)]}\n"
            f"assert {name}([]) == []")


def family_shift(k):
    name = f"shift_letters_by_{k}"
    shifted = "".join(chr((ord(c) - 97 + k) % 26 + 97) for c in "xyzabc")
    return (f"Write a Python function `{name}(s)` that shifts every lowercase letter in s forward "
            f"by {k} places in the alphabet, wrapping from z to a, and leaves other characters as "
            "they are.",
            f"def {name}(s):\n    return ''.join(chr((ord(c) - 97 + {k}) % 26 + 97) if 'a' <= c <= 'z' "
            "else c for c in s)",
            f"assert {name}('xyzabc') == {shifted!r}\nassert {name}('A b!') == "
            f"{'A ' + chr((1 + k) % 26 + 97) + '!'!r}")


def family_digit_sum_times(k):
    name = f"digit_sum_times_{k}"
    return (f"Write a Python function `{name}(n)` that returns the sum of the decimal digits of the "
            f"non-negative integer n, multiplied by {k}.",
            f"def {name}(n):\n    return sum(int(d) for d in str(n)) * {k}",
            f"assert {name}(123) == {6 * k}\nassert {name}(0) == 0\nassert {name}(909) == {18 * k}")


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


def row(task, phrasing):
    prompt, code, tests = task
    return {"prompt": phrasing.format(p=prompt), "completion": f"```python\n{code}\n```",
            "tests": tests}


def main() -> None:
    rng = random.Random(5)
    train, test = [], []
    for family, train_values, test_values in FAMILIES:
        for v in train_values:
            for phrasing in PHRASINGS:
                train.append(row(family(v), phrasing))
        for v in test_values:
            test.append(row(family(v), PHRASINGS[0]))
    for r in train + test:  # every reference solution must pass its own tests
        ns: dict = {}
        exec(r["completion"].split("\n", 1)[1].rsplit("```", 1)[0] + "\n" + r["tests"], ns)
    rng.shuffle(train)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        path = OUT / f"pytasks_{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{path}: {len(rows)} rows")


if __name__ == "__main__":
    main()

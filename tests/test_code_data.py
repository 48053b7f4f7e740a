"""The built-in Python tasks (kit/builtin/pytasks_*.jsonl): current with scripts/make_code_data.py,
and each task's tests pass its reference solution and fail every plausible wrong one the generator
lists for its family (off by one, value for position, wrong operator or constant, a missed edge
case, a wrong type, a changed input list).

The solutions and tests are the kit's own trusted data and tiny, so they run with plain exec in a
fresh namespace, in this process, rather than one sandboxed subprocess each."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from conftest import ROOT

from kit import code

REGENERATE = "run `python scripts/make_code_data.py` and commit kit/builtin/"


def _generator():
    spec = importlib.util.spec_from_file_location("make_code_data", ROOT / "scripts" / "make_code_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_code_data"] = module
    spec.loader.exec_module(module)
    return module


gen = _generator()
TASKS = {t.name: t for family, train, test in gen.FAMILIES for t in map(family, [*train, *test])}
FAMILY_NAMES = [family.__name__ for family, _, _ in gen.FAMILIES]


def rows(split: str) -> list[dict]:
    path = ROOT / "kit" / "builtin" / f"pytasks_{split}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def outcome(solution: str, tests: str, name: str) -> str:
    """'passed', or why the solution and its tests did not pass."""
    ns: dict = {}
    try:
        exec(solution, ns)
    except Exception as e:
        return f"the solution does not run: {e!r}"
    if not callable(ns.get(name)):
        return f"the solution defines no {name}()"
    try:
        exec(tests, ns)
    except Exception as e:
        return type(e).__name__
    return "passed"


def function_name(row: dict) -> str:
    return code.extract_code(row["completion"]).split("def ", 1)[1].split("(", 1)[0]


def test_data_files_are_current():
    built = gen.build()
    assert sorted(built) == ["test", "train"]
    for split, made in built.items():
        on_disk = (ROOT / "kit" / "builtin" / f"pytasks_{split}.jsonl").read_text()
        assert on_disk == gen.jsonl(made), f"pytasks_{split}.jsonl is stale; {REGENERATE}"
    assert (len(built["train"]), len(built["test"])) == (416, 32)  # the README quotes runs on these


def test_rows_have_only_prompt_completion_and_tests():
    # the code recipe reads any other column as meta: mutants must stay in the generator
    for split in ("train", "test"):
        assert {tuple(sorted(r)) for r in rows(split)} == {("completion", "prompt", "tests")}


def test_held_out_tasks_use_names_training_never_saw():
    train_names = {function_name(r) for r in rows("train")}
    test_names = [function_name(r) for r in rows("test")]
    assert len(set(test_names)) == len(test_names) == 32
    assert not train_names & set(test_names)
    assert train_names | set(test_names) == set(TASKS)


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_task_passes_its_reference_and_fails_every_mutant(split):
    checked = 0
    for r in rows(split):
        name = function_name(r)
        task = TASKS[name]
        assert outcome(code.extract_code(r["completion"]), r["tests"], name) == "passed", r["prompt"]
        assert len(set(task.mutants)) == len(task.mutants) >= 3 and task.code not in task.mutants
        for mutant in task.mutants:
            result = outcome(mutant, r["tests"], name)
            assert result != "passed", f"the tests of {name} pass a wrong solution:\n{mutant}"
            assert not result.startswith("the solution"), f"{result}:\n{mutant}"
            checked += 1
    assert checked >= 3 * len(rows(split))


@pytest.mark.parametrize("family, values", [(f, [*tr, *te]) for f, tr, te in gen.FAMILIES], ids=FAMILY_NAMES)
def test_each_family_lists_mutants_of_its_own_function(family, values):
    for task in map(family, values):  # parameterized like the reference, for every value
        assert len(task.mutants) >= 3 and all(m.startswith(f"def {task.name}(") for m in task.mutants)


def test_the_check_catches_weak_tests():
    """The old every_4th_item test passed a filter on values; the new tests don't, and the
    generator refuses tests that let a listed mutant through."""
    by_value = "def every_4th_item(items):\n    return [x for x in items if x % 4 == 0]"
    weak = "assert every_4th_item(list(range(10))) == [0, 4, 8]"
    assert outcome(by_value, weak, "every_4th_item") == "passed"
    task = gen.family_every_kth(4)
    assert by_value in task.mutants
    assert outcome(by_value, task.tests, task.name) == "AssertionError"
    with pytest.raises(AssertionError, match="pass a wrong solution"):
        gen.check(task._replace(tests=weak))
    changes_input = gen.family_list_times(3).mutants[-1]
    assert "numbers[i] =" in changes_input
    assert outcome(changes_input, "assert scale_list_by_3([1, 2]) == [3, 6]", "scale_list_by_3") == "passed"
    assert outcome(changes_input, gen.family_list_times(3).tests, "scale_list_by_3") == "AssertionError"

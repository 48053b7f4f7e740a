"""What a release needs before it is built (run by .github/workflows/release.yml on a tag):

    python scripts/release_check.py v0.1.0                 # exit 0, or one `error:` line per gap
    python scripts/release_check.py v0.1.0 path/to/pyproject.toml

- the tag is `v` and pyproject.toml's version, so the release and the package agree;
- pyproject.toml names the repository (`[project.urls] Repository = "https://..."`): PyPI links
  to it, and the notebooks' empty KIT_SOURCE installs the kit from it (scripts/make_notebooks.py).

Standard library only, so the workflow runs it before installing anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

import tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def problems(tag: str, pyproject: Path = PYPROJECT) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    out = []
    if tag != f"v{project['version']}":
        out.append(f"the tag {tag!r} is not 'v{project['version']}' (pyproject.toml's version)")
    url = str(project.get("urls", {}).get("Repository", ""))
    if not url.startswith("https://"):
        out.append('pyproject.toml has no [project.urls] Repository = "https://..." (docs/release.md)')
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    found = problems(argv[0], Path(argv[1]) if len(argv) == 2 else PYPROJECT)
    for problem in found:
        print(f"error: {problem}", file=sys.stderr)
    return 2 if found else 0


if __name__ == "__main__":
    sys.exit(main())

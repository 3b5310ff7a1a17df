"""Run the edit corpus (tests/edit_corpus) through parse + apply and score it.

    python benchmarks/apply_corpus.py [-v]

A case is a directory with reply.txt (a model reply, bytes as sent), expected.json
({"outcome": "applied"|"refused", "reason_contains": ..., "files": {path: file under
after/ or null for deleted}, optionally "class": the kind of reply it stands for}) and
after/. Files an applied case does not list must
come out unchanged. Exits 1 if any case was mis-applied: a wrong edit is the one
failure that must never happen; a wrong refusal only costs a repair round.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ideaforge.edit.apply import apply_edits
from ideaforge.edit.parse import parse_reply
from ideaforge.envs.spec import EnvSpec, load_env
from ideaforge.errors import EditRefused

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "edit_corpus"


@dataclass
class CaseResult:
    name: str
    expected: str  # "applied" or "refused"
    verdict: str  # "ok", "mis-applied", "wrongly-refused", "wrong-reason"
    detail: str = ""
    kind: str = ""  # expected.json's "class", or one made from the case name


def baseline_files(spec: EnvSpec) -> dict[str, str]:
    """What the implementer edits: the baseline's editable and visible files."""
    return {rel: (spec.root / rel).read_text() for rel in spec.editable_files + spec.visible_files}


def case_dirs(corpus: Path = CORPUS) -> list[Path]:
    return sorted(d for d in corpus.iterdir() if d.is_dir() and not d.name.startswith("_"))


def run_case(case: Path, spec: EnvSpec, files: dict[str, str]) -> CaseResult:
    r = _run_case(case, spec, files)
    exp = json.loads((case / "expected.json").read_text())
    r.kind = exp.get("class") or ("refusal" if case.name.startswith("refuse_") else case.name.split("_")[0] + " (other)")
    return r


def _run_case(case: Path, spec: EnvSpec, files: dict[str, str]) -> CaseResult:
    exp = json.loads((case / "expected.json").read_text())
    reply = (case / "reply.txt").read_bytes().decode()
    try:
        result = apply_edits(dict(files), parse_reply(reply), spec)
    except EditRefused as e:
        if exp["outcome"] == "applied":
            return CaseResult(case.name, "applied", "wrongly-refused", str(e))
        ok = exp.get("reason_contains", "") in str(e)
        return CaseResult(case.name, "refused", "ok" if ok else "wrong-reason", "" if ok else str(e))
    if exp["outcome"] == "refused":
        return CaseResult(case.name, "refused", "mis-applied", "applied although it should be refused:\n" + result.summary())
    want: dict[str, str | None] = dict(files)
    for rel, after in exp["files"].items():
        want[rel] = None if after is None else (case / "after" / after).read_text()
    got = {k: v for k, v in result.files.items() if v is not None}
    want = {k: v for k, v in want.items() if v is not None}
    if got != want:
        bad = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        return CaseResult(case.name, "applied", "mis-applied", f"content differs in {', '.join(bad)}")
    return CaseResult(case.name, "applied", "ok")


def run_corpus(corpus: Path = CORPUS) -> list[CaseResult]:
    spec = load_env(corpus / "_env")
    files = baseline_files(spec)
    return [run_case(c, spec, files) for c in case_dirs(corpus)]


def main(argv: list[str]) -> int:
    results = run_corpus()
    recoverable = [r for r in results if r.expected == "applied"]
    applied_ok = sum(r.verdict == "ok" for r in recoverable)
    mis = [r for r in results if r.verdict == "mis-applied"]
    wrong_refused = [r for r in results if r.verdict == "wrongly-refused"]
    wrong_reason = [r for r in results if r.verdict == "wrong-reason"]
    refused_ok = sum(r.verdict == "ok" for r in results if r.expected == "refused")
    print(f"cases:                {len(results)}")
    print(f"recoverable:          {len(recoverable)}")
    print(f"applied correctly:    {applied_ok} ({applied_ok / max(1, len(recoverable)):.1%} of recoverable)")
    print(f"refused correctly:    {refused_ok} of {len(results) - len(recoverable)}")
    print(f"mis-applied:          {len(mis)}")
    print(f"wrongly refused:      {len(wrong_refused)}")
    print(f"refused, wrong reason: {len(wrong_reason)}")
    print("\nby class:                                   cases  ok  mis-applied")
    for kind in sorted({r.kind for r in results}):
        rs = [r for r in results if r.kind == kind]
        print(f"  {kind:42s} {len(rs):3d} {sum(r.verdict == 'ok' for r in rs):3d} {sum(r.verdict == 'mis-applied' for r in rs):6d}")
    for r in mis + wrong_refused + wrong_reason:
        print(f"\n[{r.verdict}] {r.name}")
        if "-v" in argv or r.verdict == "mis-applied":
            print("    " + r.detail.replace("\n", "\n    "))
    return 1 if mis else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Shell transcripts in the docs, run for real: ``$ command`` lines (with ``\\`` continuations and
here-documents) are executed in order by one bash process; the lines shown after a command are
its expected output, where ``…`` stands for any text (ids, digests, times) and runs of blanks
count as one. Every shown line must appear in the command's real output, in order; the docs may
leave lines out, never invent them.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

MARK = "@@walle-transcript-step"


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)


def parse(text: str) -> list[Step]:
    """The steps of the ``console`` block between ``<!-- transcript:start -->`` and ``<!-- transcript:end -->``."""
    body = text.split("<!-- transcript:start -->", 1)[1].split("<!-- transcript:end -->", 1)[0]
    lines = body.split("```console\n", 1)[1].rsplit("```", 1)[0].splitlines()
    steps: list[Step] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.startswith("$ "):
            if steps and line.strip():
                steps[-1].expected.append(line)
            continue
        command = line[2:]
        while command.endswith("\\"):
            command += "\n" + lines[i]
            i += 1
        heredoc = re.search(r"<<'(\w+)'", command)
        if heredoc:
            while lines[i] != heredoc.group(1):
                command += "\n" + lines[i]
                i += 1
            command += "\n" + lines[i]
            i += 1
        steps.append(Step(command))
    return steps


def script(steps: list[Step]) -> str:
    """One bash script that prints a marker before each step's output and stops at a failure."""
    parts = ["set -euo pipefail"]
    for n, step in enumerate(steps):
        parts.append(f"echo '{MARK} {n}'")
        parts.append(step.command)
    parts.append(f"echo '{MARK} end'")
    return "\n".join(parts) + "\n"


def run(steps: list[Step], cwd: Path, env: dict[str, str], timeout: float) -> list[str]:
    """Each step's output (stdout and stderr interleaved). Raises AssertionError, with the output so
    far, when the script fails; every process it started is ended with it."""
    proc = subprocess.Popen(["bash", "-c", script(steps)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the background registry, if a step failed early
            os.killpg(proc.pid, signal.SIGTERM)
    chunks = re.split(rf"^{MARK} (\d+|end)\n", text, flags=re.M)
    labels, bodies = chunks[1::2], chunks[2::2]
    outputs = [body for label, body in zip(labels, bodies, strict=True) if label != "end"]
    assert proc.returncode == 0 and labels[-1:] == ["end"], (
        f"step {len(outputs) - 1} failed (exit {proc.returncode}): {steps[len(outputs) - 1].command}\n{text}")
    return outputs


def squeeze(line: str) -> str:
    """A line with runs of blanks as one space: table columns widen with their content."""
    return re.sub(r"\s+", " ", line.strip())


def pattern(shown: str) -> re.Pattern[str]:
    """A shown line as a regex over a squeezed line: ``…`` is any text."""
    return re.compile(".*?".join(re.escape(part) for part in squeeze(shown).split("…")))


def mismatches(steps: list[Step], outputs: list[str]) -> list[str]:
    """For each step, the shown lines not found (in order) in its real output."""
    problems: list[str] = []
    for step, output in zip(steps, outputs, strict=True):
        actual = [squeeze(line) for line in output.splitlines()]
        pos = 0
        for shown in step.expected:
            regex = pattern(shown)
            while pos < len(actual) and not regex.fullmatch(actual[pos]):
                pos += 1
            if pos == len(actual):
                problems.append(f"$ {step.command.splitlines()[0]}\n  shown:  {shown.strip()}\n  output: {output!r}")
                break
            pos += 1
    return problems

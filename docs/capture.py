#!/usr/bin/env python3
"""Regenerates docs/*.md from docs/src/*.md by running their commands on a live skiff cluster.

In a source page:
- a ```yaml block whose info string has `file=NAME` is written to NAME in the current directory
  (and shown as is);
- in a ```console block every `$ CMD` line is run with bash in the current directory and the
  block shows the command followed by what it printed (stdout and stderr, as a terminal would);
- a `#! CMD` line in a console block is run but not shown (waits between steps);
- everything else is copied unchanged.
Nothing is written by hand into the output: the pages show what the commands printed.

Run it from the directory where `skiff up` ran (so ./skiff.kubeconfig and ./skiff-up/ are
there), with `skiff` and `kubectl` on the PATH:
    cd /where/skiff/up/ran && KUBECONFIG=$PWD/skiff.kubeconfig /path/to/docs/capture.py [page ...]
"""

import os
import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
FENCE = re.compile(r"^```(\w*)\s*(.*)$")


def run(cmd: str, cwd: str) -> str:
    done = subprocess.run(
        ["bash", "-c", cmd],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    return done.stdout.rstrip("\n")


def render(source: Path, work: str) -> str:
    out = []
    lines = source.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line)
        if not fence or not fence.group(1):
            out.append(line)
            i += 1
            continue
        lang, info = fence.group(1), fence.group(2)
        body = []
        i += 1
        while i < len(lines) and lines[i] != "```":
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        if lang == "console":
            out.append("```console")
            for cmd in body:
                if cmd.startswith("#! "):
                    run(cmd[3:], work)
                elif cmd.startswith("$ "):
                    print(f"  {cmd}", file=sys.stderr)
                    out.append(cmd)
                    printed = run(cmd[2:], work)
                    if printed:
                        out.append(printed)
            out.append("```")
            continue
        name = re.search(r"file=(\S+)", info)
        if name:
            Path(work, name.group(1)).write_text("\n".join(body) + "\n")
            out.append(f"```{lang}")
            out.append(f"# {name.group(1)}")
        else:
            out.append(line)
        out.extend(body)
        out.append("```")
    return "\n".join(out) + "\n"


def main() -> None:
    wanted = sys.argv[1:]
    sources = sorted((DOCS / "src").glob("*.md"))
    for source in sources:
        if wanted and source.stem not in wanted:
            continue
        print(source.name, file=sys.stderr)
        (DOCS / source.name).write_text(render(source, os.getcwd()))


if __name__ == "__main__":
    os.environ.setdefault("KUBECONFIG", str(Path.cwd() / "skiff.kubeconfig"))
    main()

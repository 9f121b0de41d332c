"""Does every cluster job fit a node of the cluster? Checked before anything is submitted.

SLURM accepts a job that asks for more CPUs, memory or GPUs than any node of its partition has and
leaves it pending for good (Reason=PartitionConfig); Snakemake then waits without a word. The
workflow (workflow/rules/cluster.smk) asks ``sinfo`` for the nodes of each partition and stops with
the rules that cannot fit and what to change, before the first submission.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from . import FeatdynError

# sinfo, one line per node and partition: partition|CPUs|memory (MB)|GRES
SINFO = ["sinfo", "-h", "-N", "-o", "%P|%c|%m|%G"]


@dataclass(frozen=True)
class Need:
    """What one job of a rule asks for (first attempt)."""

    rule: str
    threads: int
    mem_mb: int | None
    gpus: int


@dataclass
class Partition:
    """The largest node of a partition: CPUs, memory (MB) and GPUs."""

    name: str
    cpus: int = 0
    mem_mb: int = 0
    gpus: int = 0


def gpus_of(gres: str) -> int:
    """GPUs in a node's GRES string (``gpu:2``, ``gpu:a100:4(S:0-1)``, ``(null)``)."""
    total = 0
    for part in re.split(r",(?![^(]*\))", gres):
        fields = re.sub(r"\(.*?\)", "", part).split(":")
        if fields[0] == "gpu" and len(fields) > 1 and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def parse_sinfo(text: str) -> dict[str, Partition]:
    """Partitions from the output of :data:`SINFO` (each node's values; the largest node is kept)."""
    parts: dict[str, Partition] = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 4:
            continue
        name, cpus, mem, gres = fields
        name = name.rstrip("*")
        try:
            cpus_n, mem_n = int(cpus.rstrip("+")), int(mem.rstrip("+"))
        except ValueError:
            continue
        p = parts.setdefault(name, Partition(name))
        p.cpus, p.mem_mb, p.gpus = max(p.cpus, cpus_n), max(p.mem_mb, mem_n), max(p.gpus, gpus_of(gres))
    return parts


def query_partitions(timeout: float = 30) -> dict[str, Partition]:
    try:
        proc = subprocess.run(SINFO, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FeatdynError(f"`{' '.join(SINFO)}` did not answer: {exc}") from None
    if proc.returncode != 0:
        raise FeatdynError(f"`{' '.join(SINFO)}` failed: {proc.stderr.strip()}")
    return parse_sinfo(proc.stdout)


def misfits(needs: list[Need], partitions: dict[str, Partition]) -> list[str]:
    """One line per rule that no partition's largest node can hold (a GPU rule: only partitions with
    GPUs count), saying what it asks for and the most a partition offers."""
    lines = []
    for need in needs:
        candidates = [p for p in partitions.values() if p.gpus >= need.gpus]
        fit = [p for p in candidates if p.cpus >= need.threads and (need.mem_mb is None or p.mem_mb >= need.mem_mb)]
        if fit or not partitions:
            continue
        what = f"{need.threads} threads" + (f", {need.mem_mb} MB" if need.mem_mb is not None else "") + \
               (f", {need.gpus} GPU(s)" if need.gpus else "")
        if not candidates:
            offer = f"no partition has nodes with {need.gpus} GPU(s)"
        else:
            offer = "largest node per partition: " + "; ".join(
                f"{p.name}: {p.cpus} CPUs, {p.mem_mb} MB" + (f", {p.gpus} GPUs" if p.gpus else "") for p in candidates)
        lines.append(f"  {need.rule}: asks for {what}; {offer}")
    return lines


def check_fit(needs: list[Need], partitions: dict[str, Partition]) -> None:
    """Raise :class:`FeatdynError` naming each rule that would stay pending for good, and the fix."""
    lines = misfits(needs, partitions)
    if lines:
        raise FeatdynError(
            "these jobs would never start on this cluster (sinfo: no node of a fitting partition is that "
            "large; SLURM would accept them and keep them pending):\n" + "\n".join(lines) + "\n"
            "Lower their threads (`--max-threads N` for all rules, or `set-threads` in your copy of "
            "profiles/slurm/config.yaml) or their memory (`set-resources: <rule>: mem_mb: ...`), or send "
            "them to larger partitions (profiles/slurm/partitions.yaml)."
        )

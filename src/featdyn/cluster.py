"""Does every cluster job fit a node of the cluster? Checked before anything is submitted.

SLURM accepts a job that asks for more CPUs, memory or GPUs than any node of its partition has, or
for more time than the partition allows, and leaves it pending for good (Reason=PartitionConfig,
PartitionTimeLimit); Snakemake then waits without a word. The workflow
(workflow/rules/cluster.smk) asks ``sinfo`` for the nodes and time limit of each partition and
stops with the rules that cannot fit and what to change, before the first submission.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from . import FeatdynError

# sinfo, one line per node and partition: partition|CPUs|memory (MB)|GRES|time limit
SINFO = ["sinfo", "-h", "-N", "-o", "%P|%c|%m|%G|%l"]


@dataclass(frozen=True)
class Need:
    """What one submission asks for (first attempt): a job of ``rule``, or a group job (``rule`` then
    names the group and its rules)."""

    rule: str
    threads: int
    mem_mb: int | None
    gpus: int
    runtime_min: int | None = None


@dataclass
class Partition:
    """The largest node of a partition: CPUs, memory (MB) and GPUs; the partition's time limit in
    minutes (None: unlimited or not reported)."""

    name: str
    cpus: int = 0
    mem_mb: int = 0
    gpus: int = 0
    time_min: int | None = None


def gpus_of(gres: str) -> int:
    """GPUs in a node's GRES string (``gpu:2``, ``gpu:a100:4(S:0-1)``, ``(null)``)."""
    total = 0
    for part in re.split(r",(?![^(]*\))", gres):
        fields = re.sub(r"\(.*?\)", "", part).split(":")
        if fields[0] == "gpu" and len(fields) > 1 and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def minutes_of(limit: str) -> int | None:
    """Whole minutes in a SLURM time limit (``infinite``, ``days-hours[:minutes[:seconds]]``,
    ``[hours:]minutes:seconds``, ``minutes``); None for no limit or an unknown form. Seconds are
    dropped: a job asks for whole minutes, and fits a limit of m:ss only with at most m of them."""
    days, dash, rest = limit.strip().rpartition("-")
    try:
        d = int(days) if dash else 0
        parts = [int(x) for x in rest.split(":")]
    except ValueError:
        return None  # infinite, UNLIMITED, n/a
    if dash:  # days-hours[:minutes[:seconds]]
        h, m = (parts + [0])[:2]
    elif len(parts) == 3:  # hours:minutes:seconds
        h, m = parts[:2]
    else:  # minutes[:seconds]
        h, m = 0, parts[0]
    return d * 1440 + h * 60 + m


def parse_sinfo(text: str) -> dict[str, Partition]:
    """Partitions from the output of :data:`SINFO` (each node's values; the largest node is kept).
    Lines without the time limit field (an older format) leave the limit unknown."""
    parts: dict[str, Partition] = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) not in (4, 5):
            continue
        name, cpus, mem, gres = fields[:4]
        name = name.rstrip("*")
        try:
            cpus_n, mem_n = int(cpus.rstrip("+")), int(mem.rstrip("+"))
        except ValueError:
            continue
        p = parts.setdefault(name, Partition(name))
        p.cpus, p.mem_mb, p.gpus = max(p.cpus, cpus_n), max(p.mem_mb, mem_n), max(p.gpus, gpus_of(gres))
        limit = minutes_of(fields[4]) if len(fields) == 5 else None
        if limit is not None:
            p.time_min = max(p.time_min or 0, limit)
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
    """One line per rule that no partition's largest node can hold, or whose wall time exceeds every
    such partition's time limit (a GPU rule: only partitions with GPUs count), saying what it asks
    for and the most a partition offers."""
    lines, named = [], set()
    for need in needs:
        if need.rule in named:  # one line per rule (its first request that fits nowhere)
            continue
        candidates = [p for p in partitions.values() if p.gpus >= need.gpus]
        fit = [p for p in candidates if p.cpus >= need.threads and (need.mem_mb is None or p.mem_mb >= need.mem_mb)
               and (need.runtime_min is None or p.time_min is None or p.time_min >= need.runtime_min)]
        if fit or not partitions:
            continue
        what = f"{need.threads} threads" + (f", {need.mem_mb} MB" if need.mem_mb is not None else "") + \
               (f", {need.gpus} GPU(s)" if need.gpus else "") + \
               (f", {need.runtime_min} min" if need.runtime_min is not None else "")
        if not candidates:
            offer = f"no partition has nodes with {need.gpus} GPU(s)"
        else:
            offer = "largest node per partition: " + "; ".join(
                f"{p.name}: {p.cpus} CPUs, {p.mem_mb} MB" + (f", {p.gpus} GPUs" if p.gpus else "") +
                (f", time limit {p.time_min} min" if p.time_min is not None else "") for p in candidates)
        lines.append(f"  {need.rule}: asks for {what}; {offer}")
        named.add(need.rule)
    return lines


# A group job asks for the sum of what its jobs running side by side need; the profile's `resources: gpu`
# caps how many of them run at once (each on its own GPU).
GROUP_FIX = (" A group job asks for what its jobs running side by side need together, and for the wall time "
             "of those that run one after the other: lower how many run at once with `resources: gpu: 1` "
             "(`--resources gpu=1`), or submit each job on its own (remove `groups:` from your copy of "
             "profiles/slurm/config.yaml).")


def check_fit(needs: list[Need], partitions: dict[str, Partition]) -> None:
    """Raise :class:`FeatdynError` naming each rule that would stay pending for good, and the fix."""
    lines = misfits(needs, partitions)
    if lines:
        raise FeatdynError(
            "these jobs would never start on this cluster (sinfo: no node of a fitting partition is that "
            "large, or its time limit is shorter; SLURM would accept them and keep them pending):\n"
            + "\n".join(lines) + "\n"
            "Lower their threads (`--max-threads N` for all rules, or `set-threads` in your copy of "
            "profiles/slurm/config.yaml), their memory or wall time (`set-resources: <rule>: mem_mb: ...` or "
            "`runtime: <minutes>`), or send them to larger partitions (profiles/slurm/partitions.yaml)."
            + (GROUP_FIX if any(" group job " in line for line in lines) else "")
        )

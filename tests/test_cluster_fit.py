"""The check before submission on a SLURM cluster (featdyn.cluster): sinfo's nodes per partition,
and the rules that no node could hold named with what to change."""

from __future__ import annotations

import pytest

from featdyn import FeatdynError
from featdyn.cluster import Need, check_fit, gpus_of, minutes_of, parse_sinfo

SINFO = """\
cpu*|2|32000|(null)
cpu*|4|16000|(null)
gpu|2|32000|gpu:2
gpu|2|32000|gpu:a100:4(S:0-1),shard:8
bad line
"""


def test_sinfo_gives_the_largest_node_of_each_partition():
    parts = parse_sinfo(SINFO)
    assert sorted(parts) == ["cpu", "gpu"]
    assert (parts["cpu"].cpus, parts["cpu"].mem_mb, parts["cpu"].gpus) == (4, 32000, 0)
    assert (parts["gpu"].cpus, parts["gpu"].gpus) == (2, 4)
    assert gpus_of("(null)") == 0 and gpus_of("gpu:1,gpu:v100:2") == 3


def test_jobs_that_fit_pass_and_the_others_are_named_with_the_fix():
    parts = parse_sinfo(SINFO)
    check_fit([Need("table1", 4, 2000, 0), Need("finetune_epoch", 2, 12000, 1)], parts)
    with pytest.raises(FeatdynError) as err:
        check_fit([Need("prepare_dataset", 16, 4000, 0), Need("finetune_epoch", 8, 12000, 1),
                   Need("score", 1, 64000, 1), Need("table1", 1, 2000, 0), Need("big", 1, 100, 8)], parts)
    text = str(err.value)
    assert "prepare_dataset: asks for 16 threads, 4000 MB; largest node per partition: cpu: 4 CPUs" in text
    assert "finetune_epoch: asks for 8 threads" in text and "score: asks for 1 threads, 64000 MB" in text
    assert "big: asks for 1 threads, 100 MB, 8 GPU(s); no partition has nodes with 8 GPU(s)" in text
    assert "table1" not in text
    assert "--max-threads" in text and "set-threads" in text


def test_no_partitions_no_verdict():
    """sinfo answering nothing usable (no partition parsed): nothing is refused."""
    check_fit([Need("prepare_dataset", 64, 4000, 0)], parse_sinfo("PARTITION\ncpu*\ngpu\n"))


def test_time_limits_are_read_in_every_sinfo_form():
    assert [minutes_of(t) for t in ("infinite", "UNLIMITED", "n/a", "30", "30:00", "2:00:00", "1-00:00:00",
                                    "2-12", "1-01:30", "0:30:01")] == \
        [None, None, None, 30, 30, 120, 1440, 3600, 1530, 30]


def test_a_job_longer_than_every_partition_allows_is_named():
    """SLURM keeps a job whose --time exceeds its partition's limit pending (PartitionTimeLimit): a
    group job's wall time adds up its jobs run one after the other."""
    parts = parse_sinfo("cpu*|64|256000|(null)|infinite\ngpu|32|512000|gpu:2|4:00:00\ngpu|32|512000|gpu:2|4:00:00\n")
    assert (parts["cpu"].time_min, parts["gpu"].time_min) == (None, 240)
    check_fit([Need("finetune_epoch", 8, 12000, 1, 120), Need("table1", 1, 2000, 0, 10_000)], parts)
    group = "analysis group job (extract, score)"
    with pytest.raises(FeatdynError) as err:
        check_fit([Need("finetune_epoch", 8, 12000, 1, 120), Need(group, 2, 4000, 2, 360),
                   Need(group, 2, 4000, 2, 400)], parts)
    text = str(err.value)
    assert f"{group}: asks for 2 threads, 4000 MB, 2 GPU(s), 360 min; largest node per partition: gpu: 32 CPUs, " \
           "512000 MB, 2 GPUs, time limit 240 min" in text
    assert text.count(group) == 1 and "finetune_epoch" not in text, "one line per rule"
    assert "runtime" in text and "resources: gpu: 1" in text and "remove `groups:`" in text

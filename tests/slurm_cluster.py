"""A real SLURM cluster on this machine, for tests/test_slurm_cluster.py: Debian's slurm-wlm 22.05
(munged, mariadbd, slurmdbd, slurmctld and two slurmd), built in a scratch folder and torn down after.

- Two compute nodes on this host (``slurmd -N <name>``, one port each): ``c1`` in partition ``cpu``
  and ``g1`` in partition ``gpu``, the latter with two fake GPUs (GRES ``gpu`` whose device files are
  links to /dev/null: slurmd needs a file per GPU). ``SlurmdParameters=config_overrides`` lets each
  node declare more CPUs and memory than the machine has.
- Accounting through slurmdbd and a private MariaDB (own data folder, socket and TCP port), so that
  ``sacct`` answers as on a production cluster. Memory limits enforced by cgroups (task/cgroup).
- Every file lives under the scratch folder; the daemons and the commands of the test find
  slurm.conf through $SLURM_CONF (:attr:`Cluster.env`). Only the job steps cannot: the plugin's job
  step (snakemake-executor-plugin-slurm-jobstep 0.6.1) calls ``srun`` with every SLURM_* variable
  but a few removed, SLURM_CONF included, so a copy goes to /etc/slurm/slurm.conf, marked as this
  module's (:data:`MARK`), and is removed by :meth:`Cluster.stop`. A machine with a slurm.conf of
  its own is left alone (the test skips). While a slurm.conf is found without a slurmctld answering,
  every SLURM command, and so every ``snakemake`` start (the executor plugin asks ``scontrol``),
  waits ~9 s: hence the removal.
- :meth:`Cluster.stop` ends each daemon it started by its PID (SIGTERM, then SIGKILL after a bounded
  wait) and removes the scratch folder. Every wait is bounded; a daemon that does not come up raises
  :class:`ClusterError` with the tail of its log.

Run by hand (as root):  python tests/slurm_cluster.py /tmp/cluster   (up until Ctrl-C)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge", "slurmdbd", "mariadb-server")
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
# Ports away from SLURM's defaults (6817-6819) and MariaDB's (3306): a machine running either keeps it.
PORTS = {"slurmctld": 16817, "slurmdbd": 16820, "c1": 16821, "g1": 16822, "mariadb": 16830}
CLUSTER = "featdyn"
ETC_CONF = Path("/etc/slurm/slurm.conf")
MARK = "# featdyn test cluster (tests/slurm_cluster.py): removed when the test's cluster stops\n"
# Per node: CPUs and memory (MB) as declared (config_overrides), more than a 2-core CI machine has.
NODE_CPUS = 2
NODE_MEM_MB = 32000
GPUS = 2


class ClusterError(RuntimeError):
    pass


def missing_tools() -> list[str]:
    return [d for d in DAEMONS + ("sbatch", "sacct", "sacctmgr", "mariadb-install-db") if shutil.which(d) is None]


def unavailable_reason() -> str | None:
    """Why a cluster cannot be built here (None: it can, installing the packages if needed)."""
    how = ("run it as root on Debian/Ubuntu (apt-get available), as `make test` does on CI, or select it "
           "alone with `sudo make test PYTEST_ARGS='-m slurm'`")
    if sys.platform != "linux":
        return f"a SLURM cluster needs Linux; {how}"
    if os.geteuid() != 0:
        return f"building a SLURM cluster needs root (daemons, cgroups, apt-get); {how}"
    if missing_tools() and shutil.which("apt-get") is None:
        return f"SLURM is not installed ({', '.join(missing_tools())} missing) and apt-get is not available; {how}"
    if ETC_CONF.exists() and not ETC_CONF.read_text(errors="replace").startswith(MARK):
        return f"{ETC_CONF} exists: this machine has a SLURM configuration of its own, which the test leaves alone"
    for name, port in PORTS.items():
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return f"port {port} (for {name}) is already in use on this machine"
    return None


def install(timeout: float = 400) -> None:
    """apt-get install the packages that are missing (an `apt-get update` first if that fails)."""
    if not missing_tools():
        return
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env, timeout=timeout)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0 or missing_tools():
        raise ClusterError(f"apt-get install {' '.join(PACKAGES)} failed ({proc.returncode}); still missing: "
                           f"{missing_tools()}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


class Cluster:
    """The daemons, their configuration and the environment that reaches them (:attr:`env`)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.etc, self.log, self.run = self.root / "etc", self.root / "log", self.root / "run"
        self.host = socket.gethostname().split(".")[0]
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = os.environ | {"SLURM_CONF": str(self.etc / "slurm.conf")}

    # -- configuration ---------------------------------------------------------------------------
    def write_config(self) -> None:
        for d in (self.etc, self.log, self.run, self.root / "state", self.root / "spool", self.root / "db"):
            d.mkdir(parents=True, exist_ok=True)
        gpus = []
        for i in range(GPUS):
            dev = self.root / "dev" / f"fakegpu{i}"
            dev.parent.mkdir(exist_ok=True)
            if not dev.is_symlink():
                dev.symlink_to("/dev/null")
            gpus.append(str(dev))
        nodes = f"NodeHostname={self.host} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory={NODE_MEM_MB} State=UNKNOWN"
        (self.etc / "slurm.conf").write_text(f"""\
ClusterName={CLUSTER}
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={PORTS['slurmctld']}
SlurmUser=root
AuthType=auth/munge
StateSaveLocation={self.root / 'state'}
SlurmdSpoolDir={self.root / 'spool'}/%n
SlurmctldPidFile={self.run / 'slurmctld.pid'}
SlurmdPidFile={self.run / 'slurmd-%n.pid'}
SlurmctldLogFile={self.log / 'slurmctld.log'}
SlurmdLogFile={self.log / 'slurmd-%n.log'}
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={PORTS['slurmdbd']}
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
KillWait=5
InactiveLimit=0
MinJobAge=300
SlurmdTimeout=60
NodeName=c1 Port={PORTS['c1']} {nodes}
NodeName=g1 Port={PORTS['g1']} Gres=gpu:{GPUS} {nodes}
PartitionName=cpu Nodes=c1 Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=g1 MaxTime=INFINITE State=UP
""")
        ETC_CONF.parent.mkdir(parents=True, exist_ok=True)
        ETC_CONF.write_text(MARK + (self.etc / "slurm.conf").read_text())
        (self.etc / "gres.conf").write_text("".join(f"NodeName=g1 Name=gpu File={g}\n" for g in gpus))
        (self.etc / "cgroup.conf").write_text("CgroupPlugin=autodetect\nConstrainRAMSpace=yes\n"
                                              "ConstrainSwapSpace=yes\nConstrainCores=no\nConstrainDevices=no\n")
        dbd = self.etc / "slurmdbd.conf"
        dbd.write_text(f"""\
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={PORTS['slurmdbd']}
SlurmUser=root
LogFile={self.log / 'slurmdbd.log'}
PidFile={self.run / 'slurmdbd.pid'}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={PORTS['mariadb']}
StorageUser=slurm
StoragePass=featdyn
StorageLoc=slurm_acct_db
""")
        dbd.chmod(0o600)

    # -- daemons ---------------------------------------------------------------------------------
    def _start(self, name: str, cmd: list[str], **kw) -> subprocess.Popen:
        out = open(self.log / f"{name}.out", "ab")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True, **kw)
        out.close()
        self.procs[name] = proc
        return proc

    def _tail(self, name: str) -> str:
        texts = []
        for f in sorted(self.log.glob(f"{name.split(':')[0]}*")):
            texts.append(f"--- {f.name}\n" + f.read_text(errors="replace")[-3000:])
        return "\n".join(texts)

    def _wait(self, what: str, check, timeout: float, daemon: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            proc = self.procs.get(daemon)
            if proc is not None and proc.poll() is not None:
                raise ClusterError(f"{daemon} exited ({proc.returncode}) before {what}:\n{self._tail(daemon)}")
            if check():
                return
            time.sleep(0.2)
        raise ClusterError(f"{what}: not within {timeout:.0f} s\n{self._tail(daemon)}")

    def _ok(self, *cmd: str, timeout: float = 10) -> subprocess.CompletedProcess | None:
        try:
            proc = subprocess.run(list(cmd), capture_output=True, text=True, env=self.env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return proc if proc.returncode == 0 else None

    def start(self) -> None:
        self.write_config()
        self._start_munge()
        self._start_mariadb()
        self._start("slurmdbd", ["slurmdbd", "-D"])
        self._wait("slurmdbd answering", lambda: self._ok("sacctmgr", "-n", "list", "cluster") is not None,
                   60, "slurmdbd")
        if CLUSTER not in (self._ok("sacctmgr", "-n", "-P", "list", "cluster", "format=cluster").stdout or ""):
            if self._ok("sacctmgr", "-i", "add", "cluster", CLUSTER) is None:
                raise ClusterError("sacctmgr add cluster failed")
        self._start("slurmctld", ["slurmctld", "-D", "-i"])
        self._wait("slurmctld answering", lambda: self._ok("scontrol", "ping", timeout=5) is not None
                   and "UP" in self._ok("scontrol", "ping", timeout=5).stdout, 60, "slurmctld")
        for node in ("c1", "g1"):
            self._start(f"slurmd:{node}", ["slurmd", "-D", "-N", node])
        self._wait("both nodes idle", self._nodes_idle, 60, "slurmd:g1")

    def _nodes_idle(self) -> bool:
        proc = self._ok("sinfo", "-h", "-N", "-o", "%N %t")
        if proc is None:
            return False
        states = dict(line.split() for line in proc.stdout.splitlines() if line.strip())
        return states.get("c1") == "idle" and states.get("g1") == "idle"

    def _start_munge(self) -> None:
        sock = Path("/run/munge/munge.socket.2")
        if sock.exists() and self._ok("munge", "-n") is not None:
            return  # a munged of this machine answers already: share it (and leave it running)
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run(["mungekey", "--create"], check=True, timeout=30, capture_output=True)
            shutil.chown(key, "munge", "munge")
        sock.parent.mkdir(parents=True, exist_ok=True)
        shutil.chown(sock.parent, "munge", "munge")
        for d in ("/var/log/munge", "/var/lib/munge"):
            Path(d).mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "munge", "munge")
        self._start("munged", ["runuser", "-u", "munge", "--", "munged", "-F"])
        self._wait("munged answering", lambda: self._ok("munge", "-n") is not None, 30, "munged")

    def _start_mariadb(self) -> None:
        data, sock = self.root / "db", self.run / "mysqld.sock"
        shutil.chown(self.root / "db", "mysql", "mysql")
        shutil.chown(self.run, "mysql", "mysql")
        proc = subprocess.run(["mariadb-install-db", "--user=mysql", f"--datadir={data}", "--skip-test-db",
                               "--auth-root-authentication-method=socket"],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise ClusterError(f"mariadb-install-db failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        self._start("mariadbd", ["mariadbd", "--no-defaults", "--user=mysql", f"--datadir={data}",
                                 f"--socket={sock}", "--bind-address=127.0.0.1", f"--port={PORTS['mariadb']}",
                                 f"--pid-file={self.run / 'mariadbd.pid'}", "--innodb-buffer-pool-size=64M",
                                 f"--log-error={self.log / 'mariadbd.log'}"])
        sql = ("CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'featdyn'; "
               "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;")
        self._wait("mariadbd answering", lambda: self._ok("mariadb", "--no-defaults", f"--socket={sock}", "-uroot",
                                                          "-e", "SELECT 1") is not None, 60, "mariadbd")
        if self._ok("mariadb", "--no-defaults", f"--socket={sock}", "-uroot", "-e", sql) is None:
            raise ClusterError("could not create MariaDB's slurm user")

    def stop(self, remove: bool = True) -> list[str]:
        """End every daemon this object started, in reverse order, by PID; remove the scratch folder.
        Returns the daemons that needed SIGKILL."""
        killed = []
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
                    killed.append(name)
                except ProcessLookupError:
                    pass
        self.procs.clear()
        if ETC_CONF.exists() and ETC_CONF.read_text(errors="replace").startswith(MARK):
            ETC_CONF.unlink()
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)
        return killed

    # -- queries ---------------------------------------------------------------------------------
    def sacct(self, *args: str) -> list[dict]:
        """One row per job of the accounting (no steps): the fields asked for, by name."""
        fields = ["JobIDRaw", "JobName", "Comment", "Partition", "NodeList", "State", "ReqMem", "AllocTRES",
                  "AllocCPUS", "Elapsed"]
        proc = subprocess.run(["sacct", "-X", "-a", "-n", "-P", "-S", "now-1days", "-o", ",".join(fields), *args],
                              capture_output=True, text=True, env=self.env, timeout=30)
        if proc.returncode != 0:
            raise ClusterError(f"sacct failed: {proc.stderr}")
        return [dict(zip(fields, line.split("|"))) for line in proc.stdout.splitlines() if line.strip()]


if __name__ == "__main__":
    reason = unavailable_reason()
    if reason:
        sys.exit(reason)
    install()
    cluster = Cluster(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/featdyn-slurm"))
    try:
        cluster.start()
        print(f"cluster up: export SLURM_CONF={cluster.env['SLURM_CONF']}   (Ctrl-C stops it)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        print("stopped; killed:", cluster.stop())

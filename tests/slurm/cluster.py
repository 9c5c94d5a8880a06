"""A private one-node SLURM cluster on this machine, for the tests of tests/slurm/ (and for trying the sbatch template
and tools/submit_slurm.py by hand).

Everything lives in one folder: the MUNGE key and socket, ``slurm.conf``, the controller's state, the node's spool
and the logs. The daemons (munged, slurmctld, slurmd) run in the foreground as children of this process, on ports
picked free, so that the cluster touches nothing of the machine's own SLURM or MUNGE set-up; :meth:`stop` cancels the
jobs, then stops every daemon it started by its pid, and also the job step daemons (slurmstepd) its slurmd started.

Needs Debian's ``slurm-wlm`` and ``munge`` (``apt-get install slurm-wlm munge``) and root: slurmd starts the job
processes as the submitting user.

By hand:

    python tests/slurm/cluster.py /tmp/pib-slurm      # prints `export SLURM_CONF=...`; Ctrl-C stops the cluster
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

DAEMONS = ("munged", "slurmctld", "slurmd")
COMMANDS = ("sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
# A requeued job waits for the job credential of its previous run to expire before it may start again (SLURM's
# default is 120 s); a short lifetime keeps requeue tests quick and is still ample to start a step on one node.
CREDENTIAL_LIFETIME_S = 8


class ClusterUnavailable(RuntimeError):
    """This machine cannot run the private cluster (a package or root is missing); the message says which."""


def missing_requirements() -> str | None:
    """Why the cluster cannot start here, or None when it can."""
    missing = [name for name in DAEMONS + COMMANDS if shutil.which(name) is None]
    if missing:
        return (f"SLURM/MUNGE programs not found: {', '.join(missing)} (install the Debian packages: "
                "apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        return "the private SLURM cluster needs root (slurmd starts job processes as the submitting user)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_name() -> str:
    """This machine's host name when it resolves (jobs use it as their rendezvous address), else localhost."""
    name = socket.gethostname().split(".")[0]
    try:
        socket.gethostbyname(name)
    except OSError:
        return "localhost"
    return name


class LocalSlurmCluster:
    """One node (this machine), one partition, under `root`.

    Args:
        root: Folder of the cluster's files (created).
        cpus: CPUs the node declares (SlurmdParameters=config_overrides lets it declare more than the machine has,
            so that jobs of a few tasks fit on a 2-core machine).
    """

    def __init__(self, root: str | Path, cpus: int = 4) -> None:
        self.root = Path(root).resolve()
        self.cpus = cpus
        self.node = _node_name()
        self.conf = self.root / "slurm.conf"
        self.logs = self.root / "log"
        self._daemons: dict[str, subprocess.Popen] = {}

    # -----------------------------------------------------------------------------------------------------------------
    # Set-up.
    # -----------------------------------------------------------------------------------------------------------------
    def _write_files(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        closed = [str(folder) for folder in self.root.parents if not folder.stat().st_mode & 0o001]
        if closed:
            raise ClusterUnavailable(f"munged needs every folder above its socket to be open to all (o+x), and "
                                     f"{', '.join(closed)} is not: put the cluster under /tmp, for instance")
        key_dir, run_dir = self.root / "munge", self.root / "run"
        for folder in (key_dir, run_dir, self.root / "state", self.root / "spool", self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        # munged refuses keys others can read, and sockets in folders others cannot traverse.
        key_dir.chmod(0o700)
        run_dir.chmod(0o755)
        self.root.chmod(0o755)
        key = key_dir / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.conf.write_text(f"""\
ClusterName=playitback-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={run_dir / 'munge.socket'},cred_expire={CREDENTIAL_LIFETIME_S}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={self.root / 'state'}
SlurmdSpoolDir={self.root / 'spool'}
SlurmctldPidFile={run_dir / 'slurmctld.pid'}
SlurmdPidFile={run_dir / 'slurmd.pid'}
SlurmctldLogFile={self.logs / 'slurmctld.log'}
SlurmdLogFile={self.logs / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobRequeue=1
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=30
MinJobAge=600
InactiveLimit=0
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a SLURM client command (or a job submission) for this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf), **(extra or {})}

    def _start_daemon(self, name: str, command: list[str]) -> None:
        out = open(self.logs / f"{name}.out", "ab")
        self._daemons[name] = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=self.env(),
                                               start_new_session=True)
        out.close()

    def _wait(self, what: str, ready: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            for name, process in self._daemons.items():
                if process.poll() is not None:
                    raise ClusterUnavailable(f"{name} exited with status {process.returncode} while waiting for "
                                             f"{what}; its output: {self.logs / (name + '.out')}")
            if time.monotonic() > deadline:
                raise ClusterUnavailable(f"timed out after {timeout_s:.0f} s waiting for {what}; logs in {self.logs}")
            time.sleep(0.2)

    def start(self, timeout_s: float = 60.0) -> LocalSlurmCluster:
        """Start munged, slurmctld and slurmd, and wait until the node is idle.

        Raises:
            ClusterUnavailable: a requirement is missing, or a daemon failed or was not ready within `timeout_s`.
        """
        reason = missing_requirements()
        if reason:
            raise ClusterUnavailable(reason)
        self._write_files()
        run_dir = self.root / "run"
        try:
            self._start_daemon("munged", [
                "munged", "--foreground", f"--socket={run_dir / 'munge.socket'}",
                f"--key-file={self.root / 'munge' / 'munge.key'}", f"--pid-file={run_dir / 'munged.pid'}",
                f"--seed-file={self.root / 'munge' / 'munged.seed'}", f"--log-file={self.logs / 'munged.log'}"])
            self._wait("the MUNGE socket", (run_dir / "munge.socket").exists, timeout_s)
            self._start_daemon("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
            self._start_daemon("slurmd", ["slurmd", "-D", "-N", self.node, "-f", str(self.conf)])
            self._wait(f"node {self.node} to be idle", lambda: self.node_state() == "idle", timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    # -----------------------------------------------------------------------------------------------------------------
    # Commands.
    # -----------------------------------------------------------------------------------------------------------------
    def command(self, *args: str, check: bool = True, timeout_s: float = 60.0, env: dict[str, str] | None = None,
                cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        """Run a SLURM client command (sbatch, scontrol, ...) against this cluster; `env` adds to its environment
        (a submitted job inherits it)."""
        result = subprocess.run(list(args), env=self.env(env), capture_output=True, text=True, timeout=timeout_s,
                                cwd=cwd)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def node_state(self) -> str:
        result = self.command("sinfo", "--noheader", "--node", self.node, "--format", "%T", check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    def job(self, job_id: str) -> dict[str, str]:
        """The fields of `scontrol show job` (JobState, Restarts, ExitCode, ...), or {} for an unknown job."""
        result = self.command("scontrol", "--oneliner", "show", "job", job_id, check=False)
        if result.returncode != 0:
            return {}
        return dict(field.split("=", 1) for field in result.stdout.split() if "=" in field)

    def wait_for_job(self, job_id: str, timeout_s: float, states: tuple[str, ...] = ("COMPLETED", "FAILED",
                     "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")) -> dict[str, str]:
        """Wait until the job is in one of `states` (by default: finished); returns its fields.

        Raises:
            TimeoutError: naming the job's state and this cluster's logs.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is {info.get('JobState', 'unknown')} "
                                   f"({info.get('Reason', '')}) after {timeout_s:.0f} s; logs in {self.logs}")
            time.sleep(0.5)

    def job_processes(self, job_id: str, command_contains: str) -> list[psutil.Process]:
        """The task processes of a job's steps (not of its batch script) whose command line contains
        `command_contains`, without their children of the same command line (DataLoader workers)."""
        found = []
        for process in psutil.process_iter(["cmdline"]):
            try:
                env = process.environ()
                if command_contains in " ".join(process.info["cmdline"] or []) and \
                        env.get("SLURM_JOB_ID") == str(job_id) and env.get("SLURM_STEP_ID", "batch") != "batch":
                    found.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        pids = {process.pid for process in found}
        return [process for process in found if process.ppid() not in pids]

    def run_seconds(self, job_id: str) -> int:
        """How long the job has been running (its RunTime, [D-]HH:MM:SS)."""
        days, _, clock = self.job(job_id)["RunTime"].rpartition("-")
        hours, minutes, seconds = map(int, clock.split(":"))
        return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds

    # -----------------------------------------------------------------------------------------------------------------
    # Tear-down.
    # -----------------------------------------------------------------------------------------------------------------
    def _step_daemons(self) -> list[psutil.Process]:
        """The running slurmstepd processes of this cluster: they write to its slurmd log."""
        log = str(self.logs / "slurmd.log")
        found = []
        for process in psutil.process_iter(["name", "status"]):
            try:
                if (process.info["name"] or "").startswith("slurmstepd") and \
                        process.info["status"] != psutil.STATUS_ZOMBIE and \
                        any(f.path == log for f in process.open_files()):
                    found.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    def stop(self, timeout_s: float = 40.0) -> None:
        """Cancel every job, wait for their steps to end, then stop the daemons (SIGTERM, SIGKILL after 10 s)."""
        if "slurmctld" in self._daemons and self._daemons["slurmctld"].poll() is None:
            user = pwd.getpwuid(os.getuid()).pw_name
            self.command("scancel", "--full", "--signal", "KILL", "--user", user, check=False)
            self.command("scancel", "--user", user, check=False)
            deadline = time.monotonic() + timeout_s
            while self._step_daemons() and time.monotonic() < deadline:
                time.sleep(0.5)
        for process in self._step_daemons():  # left over after the wait: their jobs are gone
            for child in process.children(recursive=True) + [process]:
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass
        for name in reversed(list(self._daemons)):
            process = self._daemons.pop(name)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def __enter__(self) -> LocalSlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/slurm/cluster.py FOLDER", file=sys.stderr)
        return 2
    try:
        with LocalSlurmCluster(argv[0]) as cluster:
            print(f"SLURM cluster up: node {cluster.node}, logs in {cluster.logs}. In another shell:\n"
                  f"    export SLURM_CONF={cluster.conf}\nCtrl-C stops it.", flush=True)
            stop_signals = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
            signal.sigwait(stop_signals)
    except ClusterUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

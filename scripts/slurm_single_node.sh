#!/usr/bin/env bash
# A single-node SLURM cluster on this machine (Debian's slurm-wlm + munge), for the SLURM sweep test
# (tests/integration/test_search.py). Run as root; CI's .ci/run calls it. Idempotent: does nothing when sinfo answers.
# `bash scripts/slurm_single_node.sh --stop` (as root) stops it: slurmctld, slurmd and munged by name, so wait for an
# empty squeue first (the queue's state stays in /var/spool/slurmctld).
# Its one partition is `debug`, without GPUs and without accounting (sacct fails; submitit warns and goes on), so a
# sweep on it needs: hydra/launcher=slurm hydra.launcher.partition=debug hydra.launcher.gpus_per_node=0
# hydra.launcher.cpus_per_task=1 hydra.launcher.mem_gb=4
set -euo pipefail
if [ "${1:-}" = "--stop" ]; then
    pkill -x slurmctld || true; pkill -x slurmscriptd || true; pkill -x slurmd || true; pkill -x munged || true
    exit 0
fi
if command -v sinfo >/dev/null && timeout 10 sinfo >/dev/null 2>&1; then exit 0; fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
node=$(hostname -s)
memory_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 3 / 4 ))
mkdir -p /run/munge /var/spool/slurmd /var/spool/slurmctld /var/log/slurm /etc/slurm
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /run/munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
# no cgroups, no accounting: the smallest configuration that schedules jobs on this one node
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=reparam
SlurmctldHost=${node}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
NodeName=${node} CPUs=$(nproc) RealMemory=${memory_mb} State=UNKNOWN
PartitionName=debug Nodes=${node} Default=YES MaxTime=INFINITE State=UP
CONF
pgrep -x slurmctld >/dev/null || slurmctld -c
pgrep -x slurmd >/dev/null || slurmd -c
for _ in $(seq 30); do timeout 5 sinfo --noheader 2>/dev/null | grep -q idle && exit 0; sleep 1; done
echo "error: SLURM did not come up; see /var/log/slurm/" >&2
exit 1

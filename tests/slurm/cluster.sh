#!/usr/bin/env bash
# A private, single-node Slurm cluster on this machine, for tests/test_slurm.py (or to try the
# profile by hand). Everything -- munge key and socket, slurm.conf, state, spool, logs, pid files --
# lives under DIR; nothing under /etc or /var is used or changed, and no system service is touched.
#
#   bash tests/slurm/cluster.sh start DIR [PARTITION]   # munged, slurmctld, slurmd; waits for an idle node
#   source DIR/env                                       # SLURM_CONF and PATH: sbatch/squeue/snakemake use it
#   bash tests/slurm/cluster.sh stop DIR                 # cancels its jobs, stops the three daemons
#
# Needs Debian's slurmctld, slurmd, slurm-client and munge (tests/slurm/install.sh). The daemons run
# as the user who starts them (SlurmUser, SlurmdUser), and so do the jobs; root is not required.
# The node has the machine's real CPUs and memory (`slurmd -C`) and no GPUs; accounting is off, so
# use `--slurm-status-command squeue` (sacct has nothing to report).
# Exit status of start: 0 ready; 3 a program is missing; 4 a daemon did not come up (the reason and
# the tail of its log are printed on stderr). Every wait is bounded (START_TIMEOUT seconds, default 60).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
START_TIMEOUT="${START_TIMEOUT:-60}"

die() { local code=$1; shift; echo "cluster.sh: $*" >&2; exit "$code"; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

log_tail() {  # the last lines of a log, for the reason of a failed start
    [ -f "$1" ] && tail -n "${2:-15}" "$1" >&2 || echo "($1: no log)" >&2
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
    local seconds=$1 what=$2; shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "cluster.sh: $what: not ready after ${seconds} s" >&2
            return 1
        fi
        sleep 1
    done
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_idle() { [ "$(sinfo --noheader --Node --format=%T 2>/dev/null | head -n 1)" = "idle" ]; }

start() {
    local dir=$1 partition=${2:-debug}
    for prog in munged slurmctld slurmd sbatch srun squeue scontrol sinfo scancel; do
        command -v "$prog" >/dev/null || die 3 "$prog not found (Debian: apt-get install slurmctld slurmd slurm-client munge)"
    done
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    if [ -f "$dir/run/slurmctld.pid" ] && alive "$dir/run/slurmctld.pid"; then
        die 4 "a cluster is already running in $dir (stop it first)"
    fi
    umask 077
    mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/log" "$dir/run"
    chmod 700 "$dir"
    chmod 711 "$dir/munge"   # munged wants others to reach its socket; the key stays 0400

    # Mark every daemon (and so every slurmstepd and job it starts) with this directory, so that
    # stop ends exactly the processes this cluster started.
    export MANIDP_TEST_SLURM_DIR="$dir"
    export SLURM_CONF="$dir/slurm.conf"

    # munge: a fresh key and a private socket
    rm -f "$dir/munge/munge.key"
    head -c 1024 /dev/urandom > "$dir/munge/munge.key"
    chmod 400 "$dir/munge/munge.key"
    munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munge/munged.seed" >>"$dir/log/munged.log" 2>&1 \
        || { echo "cluster.sh: munged did not start" >&2; log_tail "$dir/log/munged.log"; exit 4; }
    wait_for 15 "munged" test -S "$dir/munge/munge.socket" \
        || { log_tail "$dir/log/munged.log"; exit 4; }

    # slurm.conf: this host, free ports, the node as slurmd -C sees it (real CPUs and memory)
    local host user node_line ctld_port slurmd_port
    host="$(hostname -s)"
    user="$(id -un)"
    node_line="$(slurmd -C | head -n 1 | sed -E "s/^NodeName=[^ ]+/NodeName=$host/")"
    ctld_port="$(free_port)"
    slurmd_port="$(free_port)"
    while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port="$(free_port)"; done
    sed -e "s|@HOST@|$host|g" -e "s|@USER@|$user|g" -e "s|@DIR@|$dir|g" \
        -e "s|@CTLD_PORT@|$ctld_port|g" -e "s|@SLURMD_PORT@|$slurmd_port|g" \
        -e "s|@PARTITION@|$partition|g" -e "s|@NODE_LINE@|$node_line|g" \
        "$HERE/slurm.conf.in" > "$dir/slurm.conf"
    chmod 644 "$dir/slurm.conf"

    slurmctld -f "$dir/slurm.conf" -c >>"$dir/log/slurmctld.out" 2>&1 \
        || { echo "cluster.sh: slurmctld did not start" >&2; log_tail "$dir/log/slurmctld.out"; log_tail "$dir/log/slurmctld.log"; exit 4; }
    wait_for "$START_TIMEOUT" "slurmctld" scontrol ping \
        || { log_tail "$dir/log/slurmctld.log"; exit 4; }

    slurmd -f "$dir/slurm.conf" -N "$host" >>"$dir/log/slurmd.out" 2>&1 \
        || { echo "cluster.sh: slurmd did not start" >&2; log_tail "$dir/log/slurmd.out"; log_tail "$dir/log/slurmd.log"; exit 4; }
    wait_for "$START_TIMEOUT" "slurmd (node $host idle)" node_idle \
        || { sinfo --Node --long >&2 || true; log_tail "$dir/log/slurmd.log"; log_tail "$dir/log/slurmctld.log" 5; exit 4; }

    # snakemake-executor-plugin-slurm-jobstep (0.6.1) removes every SLURM_* variable, SLURM_CONF
    # included, from the environment of the srun it starts inside each job; a cluster whose
    # slurm.conf is found only through SLURM_CONF (this one: nothing under /etc) needs it back.
    # Jobs inherit PATH (sbatch --export=ALL), so an srun first on PATH restores it.
    mkdir -p "$dir/bin"
    printf '#!/bin/sh\n# Restores SLURM_CONF for srun inside jobs (see tests/slurm/cluster.sh)\nSLURM_CONF=%s exec %s "$@"\n' \
        "$dir/slurm.conf" "$(command -v srun)" > "$dir/bin/srun"
    chmod 755 "$dir/bin/srun"

    printf 'export SLURM_CONF=%s\nexport PATH=%s:$PATH\n' "$dir/slurm.conf" "$dir/bin" > "$dir/env"
    echo "cluster.sh: Slurm is up: partition $partition, $(sinfo --noheader --Node --format='%N %c CPUs %m MB'); to use it: source $dir/env"
}

marked_pids() {
    # Processes this cluster started: its daemons carry MANIDP_TEST_SLURM_DIR=DIR; slurmstepd and
    # job processes carry this cluster's SLURM_CONF (and a job's processes SLURM_JOB_ID). A shell
    # that merely exported SLURM_CONF is not matched.
    local dir=$1 pid envs cmd
    for env in /proc/[0-9]*/environ; do
        pid="${env#/proc/}"; pid="${pid%/environ}"
        [ "$pid" = "$$" ] && continue
        envs="$({ tr '\0' '\n' < "$env"; } 2>/dev/null)" || continue
        cmd="$({ tr '\0' ' ' < "/proc/$pid/cmdline"; } 2>/dev/null)" || continue
        if grep -qx "MANIDP_TEST_SLURM_DIR=$dir" <<<"$envs"; then
            echo "$pid"
        elif grep -qx "SLURM_CONF=$dir/slurm.conf" <<<"$envs" && \
             { [[ "$cmd" == slurmstepd* ]] || grep -q "^SLURM_JOB_ID=" <<<"$envs"; }; then
            echo "$pid"
        fi
    done
}

stop_pidfile() {  # stop_pidfile FILE: SIGTERM, up to 10 s, then SIGKILL
    local file=$1 pid
    [ -f "$file" ] || return 0
    pid="$(cat "$file")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

stop() {
    local dir
    [ -d "$1" ] || { echo "cluster.sh: $1: no such directory, nothing to stop"; return 0; }
    dir="$(cd "$1" && pwd)"
    export SLURM_CONF="$dir/slurm.conf"
    if [ -f "$dir/slurm.conf" ] && alive "$dir/run/slurmctld.pid"; then
        local jobs
        jobs="$(timeout 10 squeue --noheader --format=%i 2>/dev/null || true)"
        if [ -n "$jobs" ]; then
            # shellcheck disable=SC2086
            timeout 10 scancel $jobs 2>/dev/null || true
            local deadline=$((SECONDS + 20))
            while [ "$SECONDS" -lt "$deadline" ] && \
                  timeout 10 squeue --noheader --states=PENDING,RUNNING,COMPLETING --format=%i 2>/dev/null | grep -q .; do
                sleep 1
            done
        fi
    fi
    stop_pidfile "$dir/run/slurmd.pid"
    stop_pidfile "$dir/run/slurmctld.pid"
    stop_pidfile "$dir/run/munged.pid"
    # anything this cluster started and that is still there (a slurmstepd, a job's process)
    local left
    left="$(marked_pids "$dir" | tr '\n' ' ')"
    if [ -n "${left// /}" ]; then
        # shellcheck disable=SC2086
        kill -TERM $left 2>/dev/null || true
        sleep 2
        left="$(marked_pids "$dir" | tr '\n' ' ')"
        # shellcheck disable=SC2086
        [ -n "${left// /}" ] && kill -KILL $left 2>/dev/null || true
    fi
    echo "cluster.sh: stopped the Slurm cluster in $dir"
}

case "${1:-}" in
    start) [ $# -ge 2 ] || die 2 "usage: $0 start DIR [PARTITION]"; start "$2" "${3:-debug}" ;;
    stop) [ $# -ge 2 ] || die 2 "usage: $0 stop DIR"; stop "$2" ;;
    *) die 2 "usage: $0 start DIR [PARTITION] | stop DIR" ;;
esac

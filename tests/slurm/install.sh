#!/usr/bin/env bash
# Optional set-up for `python -m pytest -m slurm`: Debian's Slurm daemons, client and munge.
#
#   bash tests/slurm/install.sh
#
# Installs slurmctld, slurmd, slurm-client and munge with apt-get when they are missing and this is
# root on a machine with apt-get; otherwise it says why it does nothing and exits 0 (the Slurm test
# then skips with that reason). Every apt-get call is bounded (APT_TIMEOUT seconds).
#
# Services: the test needs none (tests/slurm/cluster.sh starts private daemons under a temporary
# folder), but Debian's packages enable and start munge.service, slurmd.service and slurmctld.service
# on a machine that runs systemd. So that installing them starts nothing, a temporary policy-rc.d
# (Debian's switch for "do not start services from a package's install scripts") is in place during
# apt-get, and on a systemd machine the three units, which this script has just installed, are then
# disabled (`systemctl enable munge slurmd slurmctld` undoes that). Without systemd (a container)
# there is nothing to disable.
set -uo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge)
APT_TIMEOUT="${APT_TIMEOUT:-300}"

have_all() {
    for prog in munged slurmctld slurmd sbatch srun squeue scontrol sinfo scancel; do
        command -v "$prog" >/dev/null 2>&1 || return 1
    done
}

if have_all; then
    echo "install.sh: Slurm and munge are installed ($(slurmctld -V 2>/dev/null))"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install.sh: not root: not installing ${PACKAGES[*]} (the Slurm test will be skipped)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install.sh: no apt-get: install ${PACKAGES[*]} (or your distribution's Slurm and munge) by hand"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then           # exit 101: "action forbidden"; removed again on exit
    printf '#!/bin/sh\nexit 101\n' > "$POLICY" && chmod 755 "$POLICY" && trap 'rm -f "$POLICY"' EXIT
fi
apt_install() {
    timeout "$APT_TIMEOUT" apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
}
# Package lists may be missing or stale in a fresh container: update once and retry.
if ! apt_install; then
    timeout "$APT_TIMEOUT" apt-get update -q && apt_install
fi
if have_all; then
    echo "install.sh: installed ${PACKAGES[*]} ($(slurmctld -V 2>/dev/null))"
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable munge.service slurmd.service slurmctld.service >/dev/null 2>&1 || true
        echo "install.sh: disabled the munge, slurmd and slurmctld services (systemctl enable ... undoes it)"
    fi
else
    echo "install.sh: could not install ${PACKAGES[*]} (the Slurm test will be skipped)"
fi
exit 0

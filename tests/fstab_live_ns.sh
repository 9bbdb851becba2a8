#!/bin/bash
# Runs inside `unshare --mount` (a private mount namespace) for test_fstab_live.py.
# Usage: fstab_live_ns.sh WORKDIR LOOPDEV MOUNTPOINT PYTHON REPO
# Everything the tool or mount(8) could write on the machine (/etc, /var, /run) is
# covered first: /run by a tmpfs, /etc and /var by overlays whose upper layers live in
# WORKDIR. The machine's files stay untouched; the namespace's mounts vanish with it.
set -euo pipefail
work=$1 loop=$2 mp=$3 py=$4 repo=$5
mp_esc=${mp// /\\040}  # as /proc/self/mountinfo writes it

mount --make-rprivate /
mount -t tmpfs -o mode=0755 tmpfs /run
for d in etc var; do
    mkdir -p "$work/ov/$d/upper" "$work/ov/$d/work"
    mount -t overlay overlay \
        -o "lowerdir=/$d,upperdir=$work/ov/$d/upper,workdir=$work/ov/$d/work" "/$d"
done

# udev makes /dev/disk/by-uuid/UUID for the loop device; where no udev runs (containers,
# some CI machines) make that one link in a private overlay of /dev, as udev would. Where
# even that fails, say so: the test skips with the reason.
uuid=$(blkid -c /dev/null -o value -s UUID "$loop")
if [ ! -e "/dev/disk/by-uuid/$uuid" ]; then
    mkdir -p "$work/ov/dev"
    if mount -t tmpfs tmpfs "$work/ov/dev" && mkdir "$work/ov/dev/upper" "$work/ov/dev/work" \
        && mount -t overlay overlay \
            -o "lowerdir=/dev,upperdir=$work/ov/dev/upper,workdir=$work/ov/dev/work" /dev \
        && mkdir -p /dev/disk/by-uuid && ln -s "../../${loop#/dev/}" "/dev/disk/by-uuid/$uuid"
    then
        echo "dev-disk: made in a private overlay"
    else
        echo "dev-disk: unavailable"
        exit 0
    fi
fi

mount -o relatime "$loop" "$mp"
grep -F " $mp_esc " /proc/self/mountinfo | sed 's/^/before: /'

mnic() { PYTHONPATH="$repo" "$py" -m mnic_ops "$@"; }

# 1. The fstab copy bind-mounted over /etc/fstab: a file under a mount point cannot
#    be replaced by rename, so the tool must refuse cleanly and write nothing.
cp "$work/fstab.copy" "$work/fstab.bind"
mount --bind "$work/fstab.bind" /etc/fstab
set +e
mnic fstab --apply --mount-point "$mp" >"$work/bind.out" 2>"$work/bind.err"
echo "bind-exit: $?"
set -e
umount /etc/fstab
cmp -s "$work/fstab.copy" "$work/fstab.bind" && echo "bind-file: untouched"

# 2. The fstab copy in place of /etc/fstab (in the overlay): apply and remount.
cp "$work/fstab.copy" /etc/fstab
set +e
mnic fstab --mount-point "$mp" >"$work/propose.out" 2>"$work/propose.err"
echo "propose-exit: $?"
mnic fstab --apply --remount --mount-point "$mp" --json >"$work/apply.json" 2>"$work/apply.err"
echo "apply-exit: $?"
mnic fstab --mount-point "$mp" >"$work/again.out" 2>"$work/again.err"
echo "again-exit: $?"
set -e
grep -F " $mp_esc " /proc/self/mountinfo | sed 's/^/after: /'
cp /etc/fstab "$work/fstab.after"
ls /etc | grep '^fstab\.mnic-ops\.' | sed 's/^/backup: /' || true
findmnt --verify --tab-file /etc/fstab >"$work/verify.out" 2>&1 || true

# 3. Undo: the remount first (newest), then the file.
set +e
mnic undo --all >"$work/undo.out" 2>"$work/undo.err"
echo "undo-exit: $?"
set -e
grep -F " $mp_esc " /proc/self/mountinfo | sed 's/^/undone: /'
cmp -s "$work/fstab.copy" /etc/fstab && echo "undo-file: restored"
umount "$mp"

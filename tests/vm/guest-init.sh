#!/bin/busybox sh
# /init of the test VM's initramfs (busybox sh, PID 1).  Built into the initramfs by tests/vm/run.
#
# Loads the virtio/9p modules, mounts the host's / (shared read-only over 9p) under a tmpfs overlay, enters it with
# proc/sys/dev/tracefs mounted and runs /vmtest.sh there.  Prints "PROCTAP_VM_STATUS=<n>" (n = the exit status of
# the test command) on the console and powers off; tests/vm/run parses that line.

/bin/busybox --install -s /bin
export PATH=/bin

status_and_off() {
    echo "PROCTAP_VM_STATUS=$1"
    sync
    poweroff -f
}

fail() {
    echo "PROCTAP_VM_ERROR: $*"
    status_and_off 125
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

while read -r module; do
    insmod "/modules/$module" || fail "insmod $module failed"
done </modules.order

mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 host /lower \
    || fail "cannot mount the host filesystem over 9p (mount_tag host)"
mount -t tmpfs -o size=1G tmpfs /rw
mkdir -p /rw/upper /rw/work
if ! mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot; then
    echo "overlay over 9p failed: using the read-only host fs with tmpfs on /tmp, /run, /var/tmp"
    mount --bind /lower /newroot
    for d in tmp run var/tmp; do mount -t tmpfs tmpfs "/newroot/$d"; done
fi

mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t tmpfs tmpfs /newroot/tmp
mount -t tmpfs tmpfs /newroot/run
mount -t tracefs tracefs /newroot/sys/kernel/tracing || fail "cannot mount tracefs"
mount -t debugfs debugfs /newroot/sys/kernel/debug 2>/dev/null
repo="$(cat /repo_path)"
mkdir -p "/newroot$repo" 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 repo "/newroot$repo" \
    || fail "cannot mount the repository over 9p (mount_tag repo) at $repo"
cp /vmtest.sh /newroot/tmp/vmtest.sh

echo "PROCTAP_VM_BOOTED kernel $(uname -r)"
chroot /newroot /bin/sh /tmp/vmtest.sh
status_and_off $?

#!/bin/busybox sh
# shellcheck shell=dash # busybox sh is an ash; shellcheck checks ash scripts as dash
# Stage 1, /init of the guest's initramfs: load the virtio, balloon and ACPI button modules, mount the
# root disk read-write and switch_root into it, where busybox init runs /etc/init.d/rcS.
# Without a root disk the same system runs from the initramfs (no /etc/hostname, no authorized key).
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

kver=$(uname -r)
while read -r module; do
    [ -n "$module" ] && insmod "/lib/modules/$kver/$module"
done < /etc/kvmq/modules

root=/dev/vda
# shellcheck disable=SC2013 # the kernel command line is one line of words: split into words on purpose
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=/dev/*) root=${arg#root=} ;;
    esac
done

# virtio_blk probes synchronously, but give the device node a moment to appear.
tries=50
while [ ! -b "$root" ] && [ "$tries" -gt 0 ]; do
    sleep 0.1
    tries=$((tries - 1))
done

if [ -b "$root" ] && mount -t ext4 -o rw,noinit_itable "$root" /newroot && [ -x /newroot/sbin/init ]; then
    mount --move /dev /newroot/dev
    mount --move /proc /newroot/proc
    mount --move /sys /newroot/sys
    exec switch_root /newroot /sbin/init
fi
echo "KVMQ-WARNING no usable root disk $root: running from the initramfs" > /dev/console
umount /newroot 2>/dev/null
exec /sbin/init

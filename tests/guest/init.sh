#!/bin/busybox sh
# /init of the QEMU end-to-end guests (tests/src/qemu.rs builds the initramfs).
# Loads the virtio and ext4 modules (Debian builds them as modules and the
# initramfs has no modules.dep, so insmod in dependency order), runs the
# suite's /test.sh, reports `COWTEST exit=N`, and powers off.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk \
         crc16 mbcache jbd2 crc32c_generic ext4; do
    insmod /lib/modules/$m.ko || echo "COWTEST insmod_failed=$m"
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "COWTEST boot=ok"
sh /test.sh
echo "COWTEST exit=$?"
sync
poweroff -f

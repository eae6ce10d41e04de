# /test.sh for qemu_blk::pattern_ext4_offline. vda: "raw" (32 MiB), vdb: "fs" (ext4 made on the host).
r() { echo "COWTEST $1=$2"; }
md5() { md5sum | cut -d' ' -f1; }
r serial_a "$(cat /sys/block/vda/serial)"
r size_a "$(cat /sys/block/vda/size)"
dd if=/dev/urandom of=/tmp/pat bs=1M count=8 2>/dev/null
# O_DIRECT write at 1 MiB, then fsync (a virtio FLUSH).
dd if=/tmp/pat of=/dev/vda bs=1M seek=1 oflag=direct conv=fsync,notrunc 2>/dev/null
r write_rc $?
echo 3 > /proc/sys/vm/drop_caches
r pattern_md5 "$(md5 < /tmp/pat)"
r readback_md5 "$(dd if=/dev/vda bs=1M skip=1 count=8 iflag=direct 2>/dev/null | md5)"
# Discard 1 MiB at 16 MiB after filling it; it must read back as zeros.
dd if=/dev/urandom of=/dev/vda bs=1M seek=16 count=1 oflag=direct conv=fsync,notrunc 2>/dev/null
blkdiscard -o 16777216 -l 1048576 /dev/vda
r discard_rc $?
r discarded_md5 "$(dd if=/dev/vda bs=1M skip=16 count=1 iflag=direct 2>/dev/null | md5)"
mount -t ext4 /dev/vdb /mnt
r mount_rc $?
cp /bin/busybox /mnt/busybox && cp /tmp/pat /mnt/pat && mkdir -p /mnt/dir && echo hello > /mnt/dir/hello
r copy_rc $?
sync
r busybox_md5 "$(md5 < /mnt/busybox)"
umount /mnt
r umount_rc $?
exit 0

# /test.sh for qemu_multi::snapshot_export_read_only. vda: a snapshot,
# exported read-only. Reads its data (4 MiB at 1 MiB), tries to write.
r() { echo "COWTEST $1=$2"; }
md5() { md5sum | cut -d' ' -f1; }
r serial "$(cat /sys/block/vda/serial)"
r size "$(cat /sys/block/vda/size)"
r ro "$(cat /sys/block/vda/ro)"
r data_md5 "$(dd if=/dev/vda bs=1M skip=1 count=4 iflag=direct 2>/dev/null | md5)"
dd if=/dev/zero of=/dev/vda bs=4096 count=1 seek=256 oflag=direct conv=fsync,notrunc 2>/tmp/err
r write_rc $?
r write_err "$(head -n 1 /tmp/err)"
# The guest cannot make the disk writable: the device is read-only.
blockdev --setrw /dev/vda 2>/dev/null
dd if=/dev/zero of=/dev/vda bs=4096 count=1 seek=256 oflag=direct conv=fsync,notrunc 2>/dev/null
r write_after_setrw_rc $?
blkdiscard -o 1048576 -l 65536 /dev/vda 2>/dev/null
r discard_rc $?
echo 3 > /proc/sys/vm/drop_caches
r after_md5 "$(dd if=/dev/vda bs=1M skip=1 count=4 iflag=direct 2>/dev/null | md5)"
exit 0

# /test.sh for qemu_group::group_snapshots_are_crash_consistent_across_daemons
# (the test prepends N=...). vda: volume a (one daemon), vdb: volume b
# (another daemon). Record n ("REC %06d" padded to 4 KiB) goes to block n of
# vda, flushed (O_DIRECT + fsync), then to block n of vdb, flushed; so when
# record n is on b, it was acknowledged on a first.
r() { echo "COWTEST $1=$2"; }
r serial_a "$(cat /sys/block/vda/serial)"
r serial_b "$(cat /sys/block/vdb/serial)"
r ready 1
fails=0
n=1
while [ $n -le $N ]; do
    printf 'REC %06d\n' $n >/tmp/rec
    dd if=/tmp/rec of=/dev/vda bs=4096 seek=$n count=1 oflag=direct conv=sync,fsync,notrunc 2>/dev/null \
        || fails=$((fails+1))
    dd if=/tmp/rec of=/dev/vdb bs=4096 seek=$n count=1 oflag=direct conv=sync,fsync,notrunc 2>/dev/null \
        || fails=$((fails+1))
    n=$((n+1))
done
r write_fails $fails
r io_errors "$(dmesg | grep -c 'I/O error')"
exit 0

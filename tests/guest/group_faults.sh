# /test.sh for qemu_group::group_faults_never_freeze_or_lose (the test
# prepends N=...). Writes records 1..N to vda only (block n holds
# "REC %06d"), each flushed, reporting progress every 50 records, while the
# host breaks group snapshots in every way it can; vdb stays idle.
r() { echo "COWTEST $1=$2"; }
r serial_a "$(cat /sys/block/vda/serial)"
r ready 1
fails=0
n=1
while [ $n -le $N ]; do
    printf 'REC %06d\n' $n >/tmp/rec
    dd if=/tmp/rec of=/dev/vda bs=4096 seek=$n count=1 oflag=direct conv=sync,fsync,notrunc 2>/dev/null \
        || fails=$((fails+1))
    [ $((n % 50)) -eq 0 ] && echo "COWPROGRESS $n"
    n=$((n+1))
done
r write_fails $fails
r io_errors "$(dmesg | grep -c 'I/O error')"
exit 0

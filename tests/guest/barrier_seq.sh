# /test.sh for qemu_multi::snapshot_barrier_while_writing (the test prepends
# N=...). vda: the volume. Writes blocks 1..N in order, block n at offset
# n*4096 holding "SEQ %06d\n" + zeros, each with O_DIRECT and fsync (so
# block n is acknowledged and flushed before block n+1 is sent), while the
# host pauses, snapshots and resumes the export. Then reads them all back.
r() { echo "COWTEST $1=$2"; }
md5() { md5sum | cut -d' ' -f1; }
r serial "$(cat /sys/block/vda/serial)"
n=1
while [ $n -le $N ]; do
    printf 'SEQ %06d\n' $n | dd of=/tmp/exp bs=4096 seek=$((n-1)) conv=sync,notrunc 2>/dev/null
    n=$((n+1))
done
r ready 1
fails=0
n=1
while [ $n -le $N ]; do
    dd if=/tmp/exp of=/dev/vda bs=4096 skip=$((n-1)) seek=$n count=1 oflag=direct conv=fsync,notrunc 2>/dev/null \
        || fails=$((fails+1))
    n=$((n+1))
done
r write_fails $fails
r expected_md5 "$(md5 < /tmp/exp)"
r readback_md5 "$(dd if=/dev/vda bs=4096 skip=1 count=$N iflag=direct 2>/dev/null | md5)"
r io_errors "$(dmesg | grep -c 'I/O error')"
exit 0

# /test.sh of the in-guest fio benchmark (benches/src/bin/blk-guest.rs puts
# it after a header that sets DISKS, JOBS, ROUNDS, RAMP_S, RUNTIME_S,
# REGION_BYTES). tests/guest/init.sh runs it after loading virtio_blk.
#
# Prints each disk's size (`COWTEST size_vda=SECTORS`, so the host can tell
# which disk is which backend), then for every job, round and disk one fio
# run, its JSON between `COWBENCH-BEGIN disk=.. round=..` and
# `COWBENCH-END`. The disks take turns within a round, rotated every round.
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu/ceph
for d in $DISKS; do
    echo "COWTEST size_$d=$(cat /sys/block/$d/size)"
done
/usr/bin/fio --version || { echo "COWTEST fio=missing"; exit 1; }
failed=0
for spec in $JOBS; do
    # name:rw:bs:iodepth:fsync (fio's --fsync=, 0 for never)
    IFS=: read name rw bs qd fsync <<EOF
$spec
EOF
    r=1
    while [ "$r" -le "$ROUNDS" ]; do
        # Rotate the disk order every round.
        set -- $DISKS
        i=1
        while [ "$i" -lt "$r" ]; do first=$1; shift; set -- "$@" "$first"; i=$((i+1)); done
        for d in "$@"; do
            if /usr/bin/fio --name="$name" --filename=/dev/"$d" --ioengine=libaio --direct=1 \
                --thread --rw="$rw" --bs="$bs" --iodepth="$qd" --fsync="$fsync" --size="$REGION_BYTES" \
                --time_based --runtime="$RUNTIME_S" --ramp_time="$RAMP_S" --norandommap \
                --randrepeat=1 --output-format=json --output=/tmp/fio.json >/dev/null 2>/tmp/fio.err; then
                echo "COWBENCH-BEGIN disk=$d round=$r"
                cat /tmp/fio.json
                echo "COWBENCH-END"
            else
                echo "COWTEST fio_failed=$name:$d"
                cat /tmp/fio.err
                failed=1
            fi
        done
        r=$((r+1))
    done
done
exit $failed

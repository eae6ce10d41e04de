# /test.sh for qemu_restart::kill9_restart_while_writing (the test prepends
# WRITERS=, BLOCKS=, SECONDS_=). vda: the volume. WRITERS writers run at once
# (so several requests are in flight on both queues), writer w owning blocks
# [w*BLOCKS, (w+1)*BLOCKS) of 1 MiB. Each writes its blocks in order, each
# with O_DIRECT and fsync, for SECONDS_ seconds or until its region is full,
# while the host kills cowstored with SIGKILL and starts it again. Block n of
# writer w is a 4 KiB header "W<w> SEQ <n>\n" (zero padded) and then 1020 KiB
# of the line "W<w>" repeated. A block counts as acknowledged when its dd
# (write + fsync) exited 0; each writer reports how many it wrote and how
# many dd's failed. Then the headers are read back with O_DIRECT.
r() { echo "COWTEST $1=$2"; }
r serial "$(cat /sys/block/vda/serial)"
writer() {
    w=$1
    yes "W$w" | head -c 1048576 > /tmp/blk$w
    end=$(( $(cut -d. -f1 /proc/uptime) + SECONDS_ ))
    n=0
    fails=0
    while [ $n -lt $BLOCKS ] && [ "$(cut -d. -f1 /proc/uptime)" -lt $end ]; do
        printf 'W%d SEQ %06d\n' $w $n | dd of=/tmp/blk$w bs=4096 count=1 conv=sync,notrunc 2>/dev/null
        if dd if=/tmp/blk$w of=/dev/vda bs=1M seek=$((w * BLOCKS + n)) count=1 \
                oflag=direct conv=fsync,notrunc 2>/dev/null; then
            n=$((n+1))
        else
            fails=$((fails+1))
            # Do not spin on a dead disk.
            [ $fails -ge 5 ] && break
        fi
    done
    echo "$n $fails" > /tmp/done$w
}
r writers_start "$(cut -d' ' -f1 /proc/uptime)"
w=0
while [ $w -lt $WRITERS ]; do
    writer $w &
    w=$((w+1))
done
wait
r writers_end "$(cut -d' ' -f1 /proc/uptime)"
total_fails=0
bad_headers=0
w=0
while [ $w -lt $WRITERS ]; do
    read n fails < /tmp/done$w
    r acked_$w $n
    total_fails=$((total_fails + fails))
    i=0
    while [ $i -lt $n ]; do
        want="$(printf 'W%d SEQ %06d' $w $i)"
        got="$(dd if=/dev/vda bs=4096 count=1 skip=$(( (w * BLOCKS + i) * 256 )) iflag=direct 2>/dev/null | head -n1)"
        [ "$got" = "$want" ] || bad_headers=$((bad_headers+1))
        i=$((i+1))
    done
    w=$((w+1))
done
r write_fails $total_fails
r bad_headers $bad_headers
r io_errors "$(dmesg | grep -c -i 'I/O error\|blk_update_request\|critical')"
exit 0

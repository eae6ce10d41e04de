# /test.sh for qemu_multi::two_guests_one_daemon (the test prepends VOL=...).
# vda: this guest's volume. Rounds of: an 8 MiB random pattern (its own,
# fresh per guest) written at 1 MiB with O_DIRECT + fsync, then read back
# with O_DIRECT and compared; for at least 4 s and until 10 s of uptime (both
# guests boot at once: their write spans then overlap even if one boots late).
r() { echo "COWTEST $1=$2"; }
md5() { md5sum | cut -d' ' -f1; }
r serial "$(cat /sys/block/vda/serial)"
r size "$(cat /sys/block/vda/size)"
dd if=/dev/urandom of=/tmp/pat bs=1M count=8 2>/dev/null
want="$(md5 < /tmp/pat)"
r pattern_md5 "$want"
start=$(cut -d. -f1 /proc/uptime)
rounds=0
fails=0
while :; do
    dd if=/tmp/pat of=/dev/vda bs=1M seek=1 oflag=direct conv=fsync,notrunc 2>/dev/null || fails=$((fails+1))
    got="$(dd if=/dev/vda bs=1M skip=1 count=8 iflag=direct 2>/dev/null | md5)"
    [ "$got" = "$want" ] || fails=$((fails+1))
    rounds=$((rounds+1))
    now=$(cut -d. -f1 /proc/uptime)
    [ $((now - start)) -ge 4 ] && [ "$now" -ge 10 ] && [ $rounds -ge 2 ] && break
done
r rounds $rounds
r fails $fails
r io_errors "$(dmesg | grep -c 'I/O error')"
exit 0

"""The guest's ``/init`` (busybox sh), kept as a string so it ships inside the package.

The same script runs in both kernels; see the comments in it.  Console lines
starting with ``@@KDUMPKIT-LAB`` are parsed by :mod:`kdumpkit.lab.console`.
"""

INIT_SCRIPT = r'''#!/bin/sh
# kdumpkit lab guest /init (busybox sh).  The same image boots twice:
#  * first kernel: prepare (modules, workload, kexec -p), print ground truth
#    between markers on the console, trigger the scenario;
#  * capture kernel (it has /proc/vmcore): copy the dump to the disks, power off.
# Every line starting with @@KDUMPKIT-LAB is read by the host (kdumpkit.lab.console).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
M='@@KDUMPKIT-LAB'
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp
exec </dev/console >/dev/console 2>&1

up() { cut -d' ' -f1 /proc/uptime; }
mark() { echo "$M $* uptime=$(up)"; }
fail() { echo "$M fail reason=$*"; sleep 1; poweroff -f; }
arg() {
    for a in $(cat /proc/cmdline); do
        case "$a" in kdumpkit_lab.$1=*) echo "${a#*=}"; return;; esac
    done
    echo "$2"
}
waitdev() {
    i=0
    while [ ! -b "$1" ]; do
        i=$((i + 1)); [ $i -gt 300 ] && fail "no block device $1"
        sleep 0.1
    done
}
for m in $(cat /etc/lab/modules); do
    insmod "/lib/modules/lab/$m.ko" || mark "warn insmod-failed=$m"
done

if [ -e /proc/vmcore ]; then
    # ---- capture kernel ----------------------------------------------------
    mark "phase=capture-start release=$(uname -r)"
    waitdev /dev/vdb; waitdev /dev/vdc
    mark "vmcore-size=$(stat -c %s /proc/vmcore)"
    if [ "$(arg capture makedumpfile)" = makedumpfile ]; then
        makedumpfile -F -c -d 31 /proc/vmcore >/dev/vdc 2>/tmp/mdf.log ||
            fail "makedumpfile exited $?: $(tail -c 300 /tmp/mdf.log | tr '\r\n' '  ')"
        mark "phase=makedumpfile-done"
    fi
    if [ "$(arg capture makedumpfile)" = kdumpkit-save ]; then
        # kdumpkit's makedumpfile drop-in itself, run by this capture kernel on /proc/vmcore.
        t0=$(up)
        kdumpkit save -F -l -d 31 --message-level 1 /proc/vmcore >/dev/vdc 2>/tmp/save.log ||
            fail "kdumpkit save exited $?: $(tail -c 300 /tmp/save.log | tr '\r\n' '  ')"
        mark "phase=kdumpkit-save-done start=$t0"
    fi
    dd if=/proc/vmcore of=/dev/vdb bs=1M 2>/tmp/dd.log || fail "dd of /proc/vmcore: $(tail -1 /tmp/dd.log)"
    mark "phase=raw-done"
    sync
    mark "phase=capture-done"
    poweroff -f
fi

# ---- first kernel ------------------------------------------------------------
mark "phase=boot-done release=$(uname -r)"
scenario=$(arg scenario sysrq)
cache_mb=$(arg cache_mb 32)
anon_mb=$(arg anon_mb 32)
waitdev /dev/vda
# Page cache of a real block device: write random data through it, then read it back.
dd if=/dev/urandom of=/dev/vda bs=1M count="$cache_mb" conv=fsync 2>/dev/null || fail "workload write failed"
dd if=/dev/vda of=/dev/null bs=1M count="$cache_mb" 2>/dev/null
cat /bin/busybox /lib/modules/lab/*.ko >/dev/null
# Anonymous memory: dd holds its filled buffer while blocked writing to a pipe nobody reads.
dd if=/dev/urandom bs="${anon_mb}M" count=1 iflag=fullblock 2>/dev/null | sleep 100000 &
sleep 1
mark "phase=workload-done"

capture_cmdline="irqpoll nr_cpus=1 reset_devices panic=1 console=ttyS0 kdumpkit_lab.role=capture kdumpkit_lab.capture=$(arg capture makedumpfile)"
if [ "$(arg capture makedumpfile)" = kdumpkit ]; then
    # kdumpkit's own kexec_file_load (or kexec_load, load_mode=classic); the capture kernel boots
    # kdumpkit's capture initramfs.
    t0=$(up)
    kdumpkit load --mode "$(arg load_mode file)" --kernel /boot/vmlinuz --initrd /boot/kdumpkit-initrd.img \
        --cmdline "irqpoll nr_cpus=1 reset_devices panic=1 console=ttyS0" >/tmp/load.log 2>&1 ||
        fail "kdumpkit load: $(tail -c 300 /tmp/load.log | tr '\r\n' '  ')"
    mark "load=done mode=$(arg load_mode file) start=$t0"
    echo "$M begin load"; cat /tmp/load.log; echo "$M end load"
    echo "$M begin status"; kdumpkit status --json; rc=$?; echo "$M end status"
    [ $rc = 0 ] || fail "kdumpkit status --json says not ready (exit $rc)"
else
    kexec -p -s /boot/vmlinuz --initrd=/boot/initrd.img --append="$capture_cmdline" || fail "kexec -p -s failed"
fi
[ "$(cat /sys/kernel/kexec_crash_loaded)" = 1 ] || fail "kexec_crash_loaded is not 1"
rm -f /boot/vmlinuz /boot/initrd.img /boot/kdumpkit-initrd.img
mark "phase=kexec-loaded"

case "$scenario" in
    sysrq) ;;
    nmi) echo 1 >/proc/sys/kernel/unknown_nmi_panic ;;
    panic_on_oom) echo 1 >/proc/sys/vm/panic_on_oom; echo 1 >/proc/sys/vm/overcommit_memory ;;
    oops) echo 1 >/proc/sys/kernel/panic_on_oops ;;
    softlockup) echo 1 >/proc/sys/kernel/softlockup_panic; echo 1 >/proc/sys/kernel/watchdog_thresh ;;
    *) fail "unknown scenario $scenario" ;;
esac

if [ "$(arg live 0)" = 1 ]; then
    # kdumpkit live: a non-disruptive dump of this running kernel, handed to the host on /dev/vdc.
    mark "phase=live"
    dmesg -n 1
    echo "$M begin live-dmesg-before"; dmesg; echo "$M end live-dmesg-before"
    mkdir -p /tmp/live
    kdumpkit live --out /tmp/live -d 31 -l >/tmp/live.log 2>&1 ||
        fail "kdumpkit live: $(tail -c 300 /tmp/live.log | tr '\r\n' '  ')"
    echo "$M begin live-dmesg-after"; dmesg; echo "$M end live-dmesg-after"
    echo "$M begin live-estimate"; kdumpkit estimate /proc/kcore --json 2>/tmp/estimate.log ||
        fail "kdumpkit estimate /proc/kcore: $(tail -c 300 /tmp/estimate.log | tr '\r\n' '  ')"
    echo "$M end live-estimate"
    echo "$M begin live-meminfo"; cat /proc/meminfo; echo "$M end live-meminfo"
    dmesg -n 7
    v=$(ls /tmp/live/*/vmcore)
    waitdev /dev/vdc
    dd if="$v" of=/dev/vdc bs=1M conv=fsync 2>/dev/null || fail "copying the live dump to /dev/vdc failed"
    mark "live-size=$(wc -c <"$v")"
    rm -rf /tmp/live
fi

# Ground truth, as late as possible; the console log level is lowered so that
# kernel messages do not interleave with it.
dmesg -n 1
echo "$M begin meminfo"; cat /proc/meminfo; echo "$M end meminfo"
echo "$M begin dmesg"; dmesg; echo "$M end dmesg"
dmesg -n 7
mark "phase=trigger scenario=$scenario"
sleep 1  # let the UART drain: a crash right away can lose the marker (seen on a loaded host)
case "$scenario" in
    sysrq) echo c >/proc/sysrq-trigger ;;
    nmi) mark "request=nmi"; sleep 60 ;;
    panic_on_oom) dd if=/dev/zero of=/dev/null bs="$(arg mem_mb 1024)M" count=1 ;;
    oops) insmod /lib/modules/lab/kdumpkit_lab_crash.ko action=oops ;;
    softlockup) insmod /lib/modules/lab/kdumpkit_lab_crash.ko action=softlockup ;;
esac
sleep 30
fail "scenario $scenario did not crash the kernel"
'''

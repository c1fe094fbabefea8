#!/bin/busybox sh
# The guest's /init: mount the kernel's filesystems, run each step of /testbed/steps.sh with a
# time limit, mark its output for the host, power off. Markers start with "@@TB " so the host
# can tell them from the commands' own output; a step's limit is enforced here, the whole run's
# by the host.
/bin/busybox --install -s /usr/bin
export PATH=/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/pts /dev/shm
export HOME=/root LANG=C.UTF-8 TERM=dumb PYTHONUNBUFFERED=1 PYTHONPATH=/kvmspe/src
export HYPOTHESIS_STORAGE_DIRECTORY=/tmp/hypothesis
ulimit -c 0
cd /kvmspe

now() { read -r up _ < /proc/uptime; echo "$up"; }

# The steps the host said not to run on this kernel: testbed.skip=NAME,NAME on the command line.
skip=""
for word in $(cat /proc/cmdline); do
    case "$word" in testbed.skip=*) skip="${word#testbed.skip=}" ;; esac
done

# step NAME SECONDS SHELL-COMMAND: run it in its own shell, stdin closed, stderr into stdout.
step() {
    name=$1 limit=$2 command=$3
    echo "@@TB BEGIN $name $(now)"
    case ",$skip," in
    *",$name,"*)
        echo "testbed-skip: not on this kernel"
        echo "@@TB END $name 0 $(now)"
        return
        ;;
    esac
    timeout -s KILL "$limit" sh -c "$command" </dev/null 2>&1
    rc=$?
    end=$(now)
    if [ "$rc" -eq 137 ]; then
        # Killed by the limit (or by SIGKILL): end whatever it left behind, then go on.
        kill -9 -1 2>/dev/null
    fi
    echo "@@TB END $name $rc $end"
}

echo "@@TB BOOTED $(now)"
. /testbed/steps.sh
echo "@@TB DONE $(now)"
sync
poweroff -f

"""This host as it is: discovery (sysfs, procfs, /dev/kvm) and RLIMIT_MEMLOCK; the only readers of them."""

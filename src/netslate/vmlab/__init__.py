"""vmlab: a reusable test world for network-boot tests.

An isolated network (a network namespace holding a bridge, tap devices for VMs and veth links
to extra "host" namespaces), QEMU VMs on it (TCG unless KVM really works, SeaBIOS or OVMF,
virtio-net or e1000) and their serial consoles. Everything is named with a unique prefix and
removed by context managers, with an atexit hook as the last resort. Nothing here ever routes
to an address outside the namespaces it created.
"""

from netslate.vmlab.console import SerialLog
from netslate.vmlab.initrd import build_busybox_initrd
from netslate.vmlab.net import HostNS, LabNetwork, cleanup_stale
from netslate.vmlab.qemu import VM, find_kernel, kvm_available
from netslate.vmlab.server import NetslateServer

__all__ = ["HostNS", "LabNetwork", "NetslateServer", "SerialLog", "VM", "build_busybox_initrd", "cleanup_stale",
           "find_kernel", "kvm_available"]

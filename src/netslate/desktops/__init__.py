"""Non-persistent virtual desktop pools on libvirt/QEMU: hosts, golden images, pools, lifecycle, consoles."""

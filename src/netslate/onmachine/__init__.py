"""The on-machine library: what runs on the managed machines, with the Python standard library only.

The agent (`netslate.agent`, shipped as a zipapp), the boot stage inside the netslate initramfs
(`netslate.initramfs`) and the pull client (`netslate.images.pull`) share these modules; the
server side imports the same code (through `netslate.crypto.envelope`, `netslate.fsutil`,
`netslate.images.manifest`, `netslate.discovery.core`), so both ends check and draw the same way.

    envelope, ed25519   signed envelopes: canonical JSON, digests, Ed25519 verification
    srv                 RFC 2782 ordering: the one weighted-choice function
    fsutil              atomic writes, tolerant JSON reads, whole-file SHA-256 checks
    formats             filesystem image format from the superblock magic
    manifest            manifest payloads: kinds, names, chunk lists, artifacts
    cmdline             the kernel command line's netslate.* arguments
    pinning             HTTPS with the server certificate's SHA-256 pinned (netslate.pin=)

Rule: a module here imports only the standard library and other modules of this package
(tests/onmachine proves it in a Python without site-packages). The agent's zipapp and the
initramfs builder copy the whole package.
"""

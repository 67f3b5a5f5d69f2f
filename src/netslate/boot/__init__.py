"""Network boot: rules, profiles, iPXE/pxelinux rendering, dnsmasq, the boot engine."""

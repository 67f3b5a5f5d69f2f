#!/bin/sh
# udhcpc hook: configure the interface and record the lease for netslate.initramfs.stage.
case "$1" in
    deconfig)
        ip addr flush dev "$interface" 2>/dev/null
        ip link set "$interface" up
        ;;
    bound|renew)
        ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
        for r in $router; do route add default gw "$r" dev "$interface" 2>/dev/null; break; done
        : > /etc/resolv.conf
        for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
        {
            echo "NS_IFACE=$interface"
            echo "NS_IP=$ip"
            echo "NS_SUBNET=$subnet"
            echo "NS_ROUTER=$router"
            echo "NS_DNS=$dns"
            echo "NS_DOMAIN=$domain"
            echo "NS_MAC=$(cat /sys/class/net/$interface/address)"
        } > /run/netslate/net.env
        ;;
esac
exit 0

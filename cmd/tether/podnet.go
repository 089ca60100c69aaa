package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
)

// parseClusterCIDR checks --cluster-cidr: a CIDR of at least /24 (IPv4)
// that does not overlap the service range.
func parseClusterCIDR(s string, services *net.IPNet) (*net.IPNet, error) {
	_, cidr, err := net.ParseCIDR(s)
	if err != nil {
		return nil, fmt.Errorf("--cluster-cidr: %w", err)
	}
	ones, bits := cidr.Mask.Size()
	if bits == 32 && ones > 24 || bits == 128 && ones > 64 {
		return nil, fmt.Errorf("--cluster-cidr %s is too small for one /24 per node", s)
	}
	if services != nil && (cidr.Contains(services.IP) || services.Contains(cidr.IP)) {
		return nil, fmt.Errorf("--cluster-cidr %s overlaps --service-cluster-ip-range %s", cidr, services)
	}
	return cidr, nil
}

// upServiceRange is `tether up`'s service range: as root the node agents
// program kernel DNAT for a real range (10.96.0.0/16, the kubernetes VIP
// 10.96.0.1); without root, loopback VIPs the userspace proxy can listen on.
func upServiceRange() string {
	if os.Geteuid() == 0 {
		return "10.96.0.0/16"
	}
	return "127.96.0.0/16"
}

// prefixOf converts n (or def when n is nil) to a netip.Prefix; invalid
// input gives the zero Prefix.
func prefixOf(n *net.IPNet, def string) netip.Prefix {
	s := def
	if n != nil {
		s = n.String()
	}
	p, _ := netip.ParsePrefix(s)
	return p
}

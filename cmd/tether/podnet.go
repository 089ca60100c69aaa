package main

import (
	"fmt"
	"net"
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

package hub

import (
	"fmt"
	"net"

	"k8s.io/client-go/kubernetes"

	"github.com/tether-dev/tether/internal/controllers/nodeipam"
)

// DefaultClusterCIDR is the pod range node pod CIDRs are cut from.
const DefaultClusterCIDR = "10.244.0.0/16"

// newNodeIPAM builds the node IPAM controller for Config.ClusterCIDR.
func (h *Hub) newNodeIPAM(client kubernetes.Interface) (*nodeipam.Controller, error) {
	cidr := h.cfg.ClusterCIDR
	if cidr == nil {
		_, cidr, _ = net.ParseCIDR(DefaultClusterCIDR)
	}
	p, err := nodeipam.PrefixFromIPNet(cidr)
	if err != nil {
		return nil, err
	}
	if svc := h.cfg.ServiceClusterIPRange; svc != nil && (cidr.Contains(svc.IP) || svc.Contains(cidr.IP)) {
		return nil, fmt.Errorf("hub: cluster CIDR %s overlaps the service range %s", cidr, svc)
	}
	return nodeipam.New(nodeipam.Config{Client: client, ClusterCIDR: p, NodeMaskSize: h.cfg.NodeCIDRMaskSize, Logger: h.cfg.Logger})
}

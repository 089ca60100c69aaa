package isolation

import (
	"fmt"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table (family inet) in the router namespace.
const TableName = "tether_isolation"

// installRules writes the router's table:
//
//	chain forward { type filter hook forward priority 0; policy drop;
//	  ct state established,related accept
//	  oifname <hub link> tcp dport { hub ports } accept     # node → hub
//	  iifname <hub link> tcp dport { hub-to-node ports } accept   # SSH egress only
//	  iifname != <hub link> oifname != <hub link> accept     # node ↔ node
//	  counter drop }                                         # hub-initiated
//	chain postrouting { type nat hook postrouting priority srcnat;
//	  oifname <hub link> masquerade }                        # the hub needs no route back
func (t *Topology) installRules() error {
	f, err := os.Open(nsPath(t.Router))
	if err != nil {
		return err
	}
	defer f.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	hub := routerSide(t.hubLink())
	tbl := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: TableName})
	drop := nftables.ChainPolicyDrop
	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: tbl, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &drop})
	rule := func(ch *nftables.Chain, e ...expr.Any) { c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: e}) }
	accept := &expr.Verdict{Kind: expr.VerdictAccept}
	rule(fwd,
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		accept)
	for _, p := range t.cfg.HubPorts {
		rule(fwd, append(append(ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, hub), tcpDport(p)...), accept)...)
	}
	for _, p := range t.cfg.HubToNodePorts {
		rule(fwd, append(append(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, hub), tcpDport(p)...), accept)...)
	}
	rule(fwd, append(append(ifname(expr.MetaKeyIIFNAME, expr.CmpOpNeq, hub), ifname(expr.MetaKeyOIFNAME, expr.CmpOpNeq, hub)...), accept)...)
	rule(fwd, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})

	post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: tbl, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	rule(post, append(ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, hub), &expr.Masq{})...)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables in %s: %w", t.Router, err)
	}
	return nil
}

func ifname(key expr.MetaKey, op expr.CmpOp, name string) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{&expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: op, Register: 1, Data: b}}
}

func tcpDport(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

// Dropped returns the packet count of the forward chain's final drop rule:
// connections the hub tried to open.
func (t *Topology) Dropped() (uint64, error) {
	f, err := os.Open(nsPath(t.Router))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		return 0, err
	}
	defer c.CloseLasting()
	rules, err := c.GetRules(&nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}, &nftables.Chain{Name: "forward"})
	if err != nil {
		return 0, err
	}
	for _, r := range rules {
		for _, e := range r.Exprs {
			if ctr, ok := e.(*expr.Counter); ok {
				return ctr.Packets, nil
			}
		}
	}
	return 0, fmt.Errorf("no drop counter in %s", TableName)
}

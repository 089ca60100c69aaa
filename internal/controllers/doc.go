// Package controllers holds the hub's control loops: the bootstrap of the
// default namespaces and the `kubernetes` Service, the namespace life cycle,
// and (as they land) CSR approval and signing, service accounts, the
// scheduler and node life cycle. Each controller talks to the API server
// through client-go like any other client and has New(cfg) + Run(ctx).
package controllers

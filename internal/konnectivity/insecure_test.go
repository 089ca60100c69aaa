package konnectivity_test

import (
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// insecureCreds is for Unix sockets only (upstream's UDS frontend is plaintext).
func insecureCreds() credentials.TransportCredentials { return insecure.NewCredentials() }

package sshtunnel

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
)

// LoadOrCreateKey reads an OpenSSH private key from path, or, when the file
// does not exist, generates an ed25519 key and writes it there with mode
// 0600 (its directory 0700).
func LoadOrCreateKey(path string) (ssh.Signer, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		_, priv, gerr := ed25519.GenerateKey(rand.Reader)
		if gerr != nil {
			return nil, fmt.Errorf("sshtunnel: generate key: %w", gerr)
		}
		block, merr := ssh.MarshalPrivateKey(priv, "tether")
		if merr != nil {
			return nil, fmt.Errorf("sshtunnel: marshal key: %w", merr)
		}
		b = pem.EncodeToMemory(block)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("sshtunnel: %w", err)
		}
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			return nil, fmt.Errorf("sshtunnel: write key: %w", err)
		}
		if err := os.Rename(tmp, path); err != nil {
			return nil, fmt.Errorf("sshtunnel: write key: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("sshtunnel: read key: %w", err)
	}
	s, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("sshtunnel: parse key %s: %w", path, err)
	}
	return s, nil
}

// AuthorizedKey renders a public key in authorized_keys format (one line,
// no trailing newline).
func AuthorizedKey(k ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}

// ParseAuthorizedKey parses one authorized_keys line.
func ParseAuthorizedKey(s string) (ssh.PublicKey, error) {
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(s))
	if err != nil {
		return nil, fmt.Errorf("sshtunnel: parse public key: %w", err)
	}
	return k, nil
}

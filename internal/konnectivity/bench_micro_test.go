package konnectivity_test

import (
	"context"
	"testing"
)

// BenchmarkDownload measures single-stream download throughput per path
// (b.SetBytes: MB/s is the throughput). Filter with -bench 'Download/ours'.
func BenchmarkDownload(b *testing.B) {
	const n = 8 << 20
	for _, mk := range benchPaths() {
		b.Run(mk.name, func(b *testing.B) {
			p, stop := mk.setup(b)
			defer stop()
			b.SetBytes(n)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := download(context.Background(), p, n); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDialEcho measures dial + 1 KiB echo + close per path.
func BenchmarkDialEcho(b *testing.B) {
	for _, mk := range benchPaths() {
		b.Run(mk.name, func(b *testing.B) {
			p, stop := mk.setup(b)
			defer stop()
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := dialEcho(p, 1); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

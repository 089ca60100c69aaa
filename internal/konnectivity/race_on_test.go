//go:build race

package konnectivity_test

const raceEnabled = true

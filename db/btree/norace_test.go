//go:build !race

package btree_test

const raceEnabled = false

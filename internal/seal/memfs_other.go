//go:build !linux

package seal

// MemoryBacked cannot tell on this OS; unseal then needs --allow-disk.
func MemoryBacked(string) (bool, string, error) {
	return false, "a file system whose type cannot be checked on this OS", nil
}

package seal

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// MemoryBacked reports whether dir is on tmpfs or ramfs, by the statfs magic
// number, and names the file system otherwise.
func MemoryBacked(dir string) (bool, string, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false, "", fmt.Errorf("statfs %s: %w", dir, err)
	}
	magic := int64(st.Type)
	switch magic {
	case unix.TMPFS_MAGIC, unix.RAMFS_MAGIC:
		return true, "", nil
	}
	return false, fsName(magic), nil
}

// fsName names common file systems, so that the refusal says where DEST is.
func fsName(magic int64) string {
	names := map[int64]string{
		unix.EXT4_SUPER_MAGIC:      "ext2/3/4",
		unix.XFS_SUPER_MAGIC:       "xfs",
		unix.BTRFS_SUPER_MAGIC:     "btrfs",
		unix.OVERLAYFS_SUPER_MAGIC: "overlayfs (a container's root file system)",
		unix.NFS_SUPER_MAGIC:       "nfs",
		unix.FUSE_SUPER_MAGIC:      "fuse",
		0x2fc12fc1:                 "zfs",
		unix.SMB2_SUPER_MAGIC:      "smb",
		unix.CIFS_SUPER_MAGIC:      "cifs",
		unix.CEPH_SUPER_MAGIC:      "ceph",
		unix.F2FS_SUPER_MAGIC:      "f2fs",
		unix.V9FS_MAGIC:            "9p",
	}
	if n, ok := names[magic]; ok {
		return n
	}
	return fmt.Sprintf("a file system with statfs magic %#x", magic)
}

//go:build !linux

package seal

import (
	"errors"
	"os"
)

// mapFile is not used on this OS; sealed files are read with pread.
func mapFile(*os.File, int64) ([]byte, func() error, error) {
	return nil, nil, errors.ErrUnsupported
}

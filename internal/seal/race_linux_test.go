package seal

import "testing"

// The same race with the plaintext digest check switched off, so that only
// the private copy before decryption stands between the writer and the
// plaintext: GCM then authenticates exactly the bytes it decrypts.
func TestRacingWriterWithoutPlaintextDigest(t *testing.T) {
	plain := pseudoRandom(5, 2*DefaultChunkSize)
	bundle, m := sealFiles(t, map[string][]byte{"a.bin": plain}, SealOptions{})
	runs, modified := raceUnseal(t, bundle, bundleDEK(t, m), m, plain, 300, func(o *UnsealOptions) { o.skipPlaintextDigest = true })
	t.Logf("%d of %d runs succeeded", runs, 300)
	if modified > 0 {
		t.Errorf("%d runs succeeded with modified plaintext", modified)
	}
}

package pgwire

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

const scramIterations = 4096

// scram runs SCRAM-SHA-256 (RFC 5802/7677, without channel binding) against
// password.
func (c *conn) scram(password string) error {
	c.be.Send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}})
	if err := c.be.Flush(); err != nil {
		return err
	}
	if err := c.be.SetAuthType(pgproto3.AuthTypeSASL); err != nil {
		return err
	}
	msg, err := c.be.Receive()
	if err != nil {
		return fmt.Errorf("pgwire: scram: %w", err)
	}
	init, ok := msg.(*pgproto3.SASLInitialResponse)
	if !ok || init.AuthMechanism != "SCRAM-SHA-256" {
		return errors.New("pgwire: scram: expected SASLInitialResponse for SCRAM-SHA-256")
	}
	clientFirst := string(init.Data)
	// gs2 header: "n,," or "y,," (no channel binding).
	parts := strings.SplitN(clientFirst, ",", 3)
	if len(parts) != 3 || (parts[0] != "n" && parts[0] != "y") {
		return errors.New("pgwire: scram: bad client-first-message")
	}
	clientFirstBare := parts[2]
	var cnonce string
	for _, attr := range strings.Split(clientFirstBare, ",") {
		if strings.HasPrefix(attr, "r=") {
			cnonce = attr[2:]
		}
	}
	if cnonce == "" {
		return errors.New("pgwire: scram: client nonce missing")
	}
	var nb, salt [18]byte
	rand.Read(nb[:])
	rand.Read(salt[:])
	nonce := cnonce + base64.StdEncoding.EncodeToString(nb[:])
	serverFirst := fmt.Sprintf("r=%s,s=%s,i=%d", nonce, base64.StdEncoding.EncodeToString(salt[:]), scramIterations)
	c.be.Send(&pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)})
	if err := c.be.Flush(); err != nil {
		return err
	}
	if err := c.be.SetAuthType(pgproto3.AuthTypeSASLContinue); err != nil {
		return err
	}
	msg, err = c.be.Receive()
	if err != nil {
		return fmt.Errorf("pgwire: scram: %w", err)
	}
	resp, ok := msg.(*pgproto3.SASLResponse)
	if !ok {
		return errors.New("pgwire: scram: expected SASLResponse")
	}
	clientFinal := string(resp.Data)
	i := strings.LastIndex(clientFinal, ",p=")
	if i < 0 {
		return errors.New("pgwire: scram: proof missing")
	}
	withoutProof := clientFinal[:i]
	proof, err := base64.StdEncoding.DecodeString(clientFinal[i+3:])
	if err != nil || len(proof) != sha256.Size {
		return errors.New("pgwire: scram: bad proof")
	}
	if !strings.Contains(withoutProof, "r="+nonce) {
		return errors.New("pgwire: scram: nonce mismatch")
	}
	salted, err := pbkdf2.Key(sha256.New, password, salt[:], scramIterations, sha256.Size)
	if err != nil {
		return fmt.Errorf("pgwire: scram: %w", err)
	}
	clientKey := hmacSum(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	authMsg := clientFirstBare + "," + serverFirst + "," + withoutProof
	clientSig := hmacSum(storedKey[:], authMsg)
	recovered := make([]byte, len(proof))
	for k := range proof {
		recovered[k] = proof[k] ^ clientSig[k]
	}
	if got := sha256.Sum256(recovered); !hmac.Equal(got[:], storedKey[:]) {
		return errors.New("pgwire: scram: wrong password")
	}
	serverSig := hmacSum(hmacSum(salted, "Server Key"), authMsg)
	c.be.Send(&pgproto3.AuthenticationSASLFinal{Data: []byte("v=" + base64.StdEncoding.EncodeToString(serverSig))})
	return nil
}

func hmacSum(key []byte, msg string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(msg))
	return h.Sum(nil)
}

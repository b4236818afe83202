package usernet

import "testing"

// frame builds an Ethernet/IPv4/TCP frame with the given TCP flags and
// payload length.
func frame(flags byte, payload int) []byte {
	b := make([]byte, 14+20+20+payload)
	b[12], b[13] = 0x08, 0x00
	ip := b[14:]
	ip[0] = 0x45
	total := 20 + 20 + payload
	ip[2], ip[3] = byte(total>>8), byte(total)
	ip[9] = 6
	tcp := ip[20:]
	tcp[12] = 5 << 4
	tcp[13] = flags
	return b
}

// Only bare acknowledgements may wait for their interrupt: anything with
// data, another flag, another protocol or a fragment is urgent.
func TestPureACK(t *testing.T) {
	const ack, psh, fin, syn = 0x10, 0x08, 0x01, 0x02
	if !pureACK(frame(ack, 0)) {
		t.Error("bare ACK not recognised")
	}
	for name, f := range map[string][]byte{
		"data":      frame(ack|psh, 64),
		"data, ACK": frame(ack, 1),
		"FIN":       frame(ack|fin, 0),
		"SYN":       frame(syn, 0),
		"short":     frame(ack, 0)[:40],
	} {
		if pureACK(f) {
			t.Errorf("%s taken for a bare ACK", name)
		}
	}
	udp := frame(ack, 0)
	udp[14+9] = 17
	frag := frame(ack, 0)
	frag[14+6] = 0x20 // more fragments
	arp := frame(ack, 0)
	arp[13] = 0x06
	for name, f := range map[string][]byte{"UDP": udp, "fragment": frag, "ARP": arp} {
		if pureACK(f) {
			t.Errorf("%s taken for a bare ACK", name)
		}
	}
}

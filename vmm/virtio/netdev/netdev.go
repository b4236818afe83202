// Package netdev is a virtio-net device model (virtio 1.x §5.1): one
// receive and one transmit queue carrying Ethernet frames, each behind a
// 12-byte virtio_net_hdr_v1. No offloads are offered, so the header the
// guest sends is ignored and the one the device writes is all zero but
// num_buffers = 1.
//
// Design: the network behind the device (vmm/usernet) is a Backend that
// takes the guest's frames (Send, on the transmit goroutine) and hands
// frames to the guest with Receive, which queues a copy; the receive
// goroutine writes queued frames into buffers the driver posted.
//
// Invariants:
//   - the transmit goroutine polls its queue like every device here (see
//     virtio.Queue.Wait); the receive goroutine asks for notifications
//     only while it holds a frame and the driver has posted no buffer;
//   - frames waiting for the guest are bounded (RxBacklog): past that,
//     they are dropped, as a real NIC drops, and TCP recovers;
//   - a malformed transmit chain, a runt or an oversized frame is dropped
//     and counted; a frame larger than the receive buffer is dropped and
//     the buffer kept for the next one. Nothing the guest does panics the
//     monitor.
package netdev

import (
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"

	"github.com/cumulusdb/cumulus/vmm/virtio"
)

// Feature bits (§5.1.3).
const (
	FMTU    = 1 << 3
	FMAC    = 1 << 5
	FStatus = 1 << 16
)

const (
	HeaderSize = 12 // virtio_net_hdr_v1
	QueueSize  = 256
	RxBacklog  = 1024
	// MaxFrame bounds the frames the device accepts from the guest (no
	// GSO: an Ethernet frame of a 64 KiB IP packet at most).
	MaxFrame = 65535 + 14

	rxQueue = 0
	txQueue = 1
)

// Backend is the network the device is plugged into.
type Backend interface {
	// Send takes a frame from the guest. The slice is valid only during
	// the call.
	Send(frame []byte)
}

// Device is a virtio-net device model.
type Device struct {
	mac    net.HardwareAddr
	mtu    uint16
	config [12]byte
	log    *slog.Logger

	mu sync.Mutex
	be Backend

	rx   chan []byte
	stop chan struct{}
	wg   sync.WaitGroup

	rxFrames, txFrames, rxBytes, txBytes, drops, errs atomic.Uint64
}

// New makes a device with the given MAC address and MTU.
func New(mac net.HardwareAddr, mtu int, log *slog.Logger) (*Device, error) {
	if len(mac) != 6 {
		return nil, errors.New("virtio-net: MAC address must have 6 bytes")
	}
	if mtu < 68 || mtu > 65535 {
		return nil, errors.New("virtio-net: MTU out of range")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Device{mac: mac, mtu: uint16(mtu), log: log, rx: make(chan []byte, RxBacklog)}
	copy(d.config[0:6], mac)
	binary.LittleEndian.PutUint16(d.config[6:], 1) // VIRTIO_NET_S_LINK_UP
	binary.LittleEndian.PutUint16(d.config[8:], 1) // max_virtqueue_pairs
	binary.LittleEndian.PutUint16(d.config[10:], d.mtu)
	return d, nil
}

// SetBackend plugs the device into a network.
func (d *Device) SetBackend(be Backend) {
	d.mu.Lock()
	d.be = be
	d.mu.Unlock()
}

// Receive queues a copy of frame for the guest. It never blocks: with
// the backlog full (or the device not started) the frame is dropped and
// Receive returns false.
func (d *Device) Receive(frame []byte) bool {
	select {
	case d.rx <- append([]byte(nil), frame...):
		return true
	default:
		d.drops.Add(1)
		return false
	}
}

func (d *Device) ID() uint32 { return 1 }

func (d *Device) Features() uint64 { return FMAC | FMTU | FStatus }

func (d *Device) QueueMax() []uint16 { return []uint16{QueueSize, QueueSize} }

func (d *Device) ReadConfig(off uint64, data []byte) { virtio.ReadConfigBytes(d.config[:], off, data) }

// WriteConfig ignores writes (VIRTIO_NET_F_CTRL_MAC_ADDR is not offered).
func (d *Device) WriteConfig(off uint64, data []byte) {}

// Counters implements virtio.Counters.
func (d *Device) Counters() virtio.Stats {
	return virtio.Stats{Requests: d.rxFrames.Load() + d.txFrames.Load(), ReadBytes: d.rxBytes.Load(), WriteBytes: d.txBytes.Load(),
		Drops: d.drops.Load(), Errors: d.errs.Load()}
}

// Start runs the receive and transmit goroutines.
func (d *Device) Start(features uint64, qs []*virtio.Queue) error {
	if len(qs) < 2 || qs[rxQueue] == nil || qs[txQueue] == nil {
		return errors.New("virtio-net: receive and transmit queues not set up")
	}
	// Frames queued before the driver was ready are stale.
	for len(d.rx) > 0 {
		<-d.rx
	}
	d.stop = make(chan struct{})
	d.wg.Add(2)
	go d.receive(qs[rxQueue], d.stop)
	go d.transmit(qs[txQueue], d.stop)
	return nil
}

// Stop stops both goroutines and waits for them.
func (d *Device) Stop() {
	if d.stop == nil {
		return
	}
	close(d.stop)
	d.wg.Wait()
	d.stop = nil
}

func (d *Device) Close() error {
	d.Stop()
	return nil
}

func (d *Device) transmit(q *virtio.Queue, stop <-chan struct{}) {
	defer d.wg.Done()
	var c virtio.Chain
	buf := make([]byte, MaxFrame)
	for q.Wait(stop) {
		for {
			ok, err := q.Next(&c)
			if err != nil || !ok {
				break
			}
			n := c.ReadableLen() - HeaderSize
			switch {
			case c.Err != nil:
				d.log.Warn("virtio-net: malformed transmit chain", "err", c.Err)
				d.errs.Add(1)
			case n < 14 || n > MaxFrame:
				d.drops.Add(1)
			default:
				frame := buf[:c.Gather(buf[:n], HeaderSize)]
				d.txFrames.Add(1)
				d.txBytes.Add(uint64(len(frame)))
				d.mu.Lock()
				be := d.be
				d.mu.Unlock()
				if be != nil {
					be.Send(frame)
				}
			}
			q.Push(c.Head, 0)
		}
		q.Flush()
	}
}

func (d *Device) receive(q *virtio.Queue, stop <-chan struct{}) {
	defer d.wg.Done()
	var c virtio.Chain
	have := false // c holds a buffer the driver posted
	var hdr [HeaderSize]byte
	binary.LittleEndian.PutUint16(hdr[10:], 1) // num_buffers
	for {
		var frame []byte
		select {
		case frame = <-d.rx:
		case <-stop:
			return
		}
		pushed := false
		for frame != nil {
			for !have {
				ok, err := q.Next(&c)
				if err != nil {
					return // broken: the transport asked for a reset
				}
				if ok {
					if c.Err != nil || c.WritableLen() < HeaderSize {
						d.log.Warn("virtio-net: malformed receive buffer", "err", c.Err)
						d.errs.Add(1)
						q.Push(c.Head, 0)
						pushed = true
						continue
					}
					have = true
					break
				}
				// The driver posted no buffer: tell it what we have so
				// far, then wait for it (a notification).
				if pushed {
					q.Flush()
					pushed = false
				}
				if !q.Wait(stop) {
					return
				}
			}
			if HeaderSize+len(frame) > c.WritableLen() {
				d.drops.Add(1) // keep the buffer for the next frame
			} else {
				c.Scatter(0, hdr[:])
				c.Scatter(HeaderSize, frame)
				q.Push(c.Head, uint32(HeaderSize+len(frame)))
				have, pushed = false, true
				d.rxFrames.Add(1)
				d.rxBytes.Add(uint64(len(frame)))
			}
			// Batch: whatever else is queued goes before the interrupt.
			select {
			case frame = <-d.rx:
			default:
				frame = nil
			}
		}
		if pushed {
			q.Flush()
		}
	}
}

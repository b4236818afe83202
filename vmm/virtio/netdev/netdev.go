// Package netdev is a virtio-net device model (virtio 1.x §5.1): one
// receive and one transmit queue carrying Ethernet frames, each behind a
// 12-byte virtio_net_hdr_v1. No offloads are offered, so the header the
// guest sends is ignored and the one the device writes is all zero but
// num_buffers = 1.
//
// Checksums: the device offers VIRTIO_NET_F_CSUM and _GUEST_CSUM. The
// link is guest memory read by two software stacks, so with them neither
// side computes transport checksums: the monitor's stack does not verify
// the guest's (it never does: nothing on this link corrupts a frame), and
// with GUEST_CSUM accepted the Backend is told to leave its own out
// (ChecksumOffloader) and received frames are marked DATA_VALID. A
// driver taking F_CSUM leaves its header's flags zero rather than asking
// for NEEDS_CSUM: nobody reads the field.
//
// Design: the network behind the device (vmm/usernet) is a Backend that
// takes the guest's frames (Send) and hands frames to the guest with
// Receive. Both directions avoid host thread hand-offs, which cost more
// than the work itself on a loaded host:
//   - transmit is served inline (virtio.InlineNotifier): the driver's
//     notification (a VM exit, a notification hypercall or a doorbell the
//     guest kernel passes on) drains the transmit queue on the vCPU's
//     thread, which is out of the guest anyway, straight into the
//     Backend. Notifications stay enabled on that queue, so the driver
//     announces every batch; batching them is the driver's business
//     (the image's network service rings a doorbell that the kernel
//     delivers with its next exit);
//   - Receive writes the frame into a buffer the driver posted, on the
//     caller's goroutine, and raises the interrupt. Only when the driver
//     has posted no buffer is a copy queued for the receive goroutine,
//     which then asks for a notification and delivers the backlog when
//     buffers come;
//   - frames the guest needs but not at once (bare TCP acknowledgements,
//     Deliver with urgent false) do not raise the interrupt themselves: it
//     comes with the next urgent frame or LazyDelay later. Waking a
//     halted vCPU costs the host a thread wake-up and a VM entry, and the
//     guest's network service picks such frames up whenever it runs.
//
// Invariants:
//   - each queue's consumer state is guarded by its mutex (rxMu, txMu);
//     a queue is nil while the device is stopped, so nothing touches
//     guest memory after Stop;
//   - frames waiting for the guest are bounded (RxBacklog) and delivered
//     in order before any newer frame: past the bound they are dropped,
//     as a real NIC drops, and TCP recovers;
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
	"time"

	"github.com/cumulusdb/cumulus/vmm/virtio"
)

// Feature bits (§5.1.3).
const (
	FCsum      = 1 << 0 // the device takes frames with partial or no checksum
	FGuestCsum = 1 << 1 // the driver takes frames with partial or no checksum
	FMTU       = 1 << 3
	FMAC       = 1 << 5
	FStatus    = 1 << 16
)

const (
	HeaderSize = 12 // virtio_net_hdr_v1
	QueueSize  = 256
	RxBacklog  = 1024
	// LazyDelay bounds how long a frame delivered without urgency waits
	// for its interrupt.
	LazyDelay = time.Millisecond
	// MaxFrame bounds the frames the device accepts from the guest (no
	// GSO: an Ethernet frame of a 64 KiB IP packet at most).
	MaxFrame = 65535 + 14

	rxQueue = 0
	txQueue = 1
)

// HdrFDataValid in a received frame's header flags: its checksums need
// no checking (VIRTIO_NET_HDR_F_DATA_VALID).
const HdrFDataValid = 2

// ChecksumOffloader is a Backend that can leave transport checksums out
// of the frames it hands the guest, when the guest's driver accepted
// that (VIRTIO_NET_F_GUEST_CSUM).
type ChecksumOffloader interface {
	OffloadChecksums(toGuest bool)
}

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

	rxMu     sync.Mutex
	rxq      *virtio.Queue // nil while stopped
	rxc      virtio.Chain  // a posted buffer taken off the ring (rxHave)
	rxHdr    [HeaderSize]byte
	rxHave   bool
	rxPushed bool     // chains pushed since the last interrupt decision
	backlog  [][]byte // frames waiting for buffers, oldest first
	rxWake   chan struct{}
	lazy     *time.Timer // raises the interrupt held for lazy frames
	lazyOn   bool        // lazy is armed

	txMu  sync.Mutex
	txq   *virtio.Queue // nil while stopped
	txc   virtio.Chain
	txBuf []byte

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
	d := &Device{mac: mac, mtu: uint16(mtu), log: log, rxWake: make(chan struct{}, 1), txBuf: make([]byte, MaxFrame)}
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

// Receive hands frame to the guest: written into a posted buffer at once
// when there is one (and nothing older waits), else queued as a copy. It
// never blocks: with the backlog full, or the device not started, the
// frame is dropped and Receive returns false.
func (d *Device) Receive(frame []byte) bool { return d.Deliver(frame, true) }

// Deliver is Receive, and without urgent, the interrupt for the frame
// may wait up to LazyDelay for a more urgent one.
func (d *Device) Deliver(frame []byte, urgent bool) bool {
	d.rxMu.Lock()
	if d.rxq == nil {
		d.rxMu.Unlock()
		d.drops.Add(1)
		return false
	}
	if len(d.backlog) == 0 && d.deliverLocked(frame) {
		if urgent {
			d.flushRxLocked()
		} else if d.rxPushed && !d.lazyOn {
			d.lazyOn = true
			if d.lazy == nil {
				d.lazy = time.AfterFunc(LazyDelay, d.lazyFlush)
			} else {
				d.lazy.Reset(LazyDelay)
			}
		}
		d.rxMu.Unlock()
		return true
	}
	if len(d.backlog) >= RxBacklog {
		d.rxMu.Unlock()
		d.drops.Add(1)
		return false
	}
	d.backlog = append(d.backlog, append([]byte(nil), frame...))
	d.rxMu.Unlock()
	select {
	case d.rxWake <- struct{}{}:
	default:
	}
	return true
}

// deliverLocked writes frame into the next posted buffer. It reports
// false when the driver has posted none (the frame is not taken); a
// frame too large for the buffer is dropped (true) and the buffer kept.
// rxMu held, device started.
func (d *Device) deliverLocked(frame []byte) bool {
	q := d.rxq
	for !d.rxHave {
		ok, err := q.Next(&d.rxc)
		if err != nil {
			d.drops.Add(1) // broken: the transport asked for a reset
			return true
		}
		if !ok {
			return false
		}
		if d.rxc.Err != nil || d.rxc.WritableLen() < HeaderSize {
			d.log.Warn("virtio-net: malformed receive buffer", "err", d.rxc.Err)
			d.errs.Add(1)
			q.Push(d.rxc.Head, 0)
			d.rxPushed = true
			continue
		}
		d.rxHave = true
	}
	if HeaderSize+len(frame) > d.rxc.WritableLen() {
		d.drops.Add(1) // keep the buffer for the next frame
		return true
	}
	d.rxc.Scatter(0, d.rxHdr[:])
	d.rxc.Scatter(HeaderSize, frame)
	q.Push(d.rxc.Head, uint32(HeaderSize+len(frame)))
	d.rxHave, d.rxPushed = false, true
	d.rxFrames.Add(1)
	d.rxBytes.Add(uint64(len(frame)))
	return true
}

// lazyFlush raises the interrupt held for lazy frames.
func (d *Device) lazyFlush() {
	d.rxMu.Lock()
	d.lazyOn = false
	if d.rxq != nil {
		d.flushRxLocked()
	}
	d.rxMu.Unlock()
}

// flushRxLocked raises the receive interrupt for what was pushed, if the
// driver wants one. rxMu held.
func (d *Device) flushRxLocked() {
	if d.rxPushed {
		d.rxPushed = false
		d.rxq.Flush()
	}
}

func (d *Device) ID() uint32 { return 1 }

func (d *Device) Features() uint64 { return FMAC | FMTU | FStatus | FCsum | FGuestCsum }

func (d *Device) QueueMax() []uint16 { return []uint16{QueueSize, QueueSize} }

func (d *Device) ReadConfig(off uint64, data []byte) { virtio.ReadConfigBytes(d.config[:], off, data) }

// WriteConfig ignores writes (VIRTIO_NET_F_CTRL_MAC_ADDR is not offered).
func (d *Device) WriteConfig(off uint64, data []byte) {}

// Counters implements virtio.Counters.
func (d *Device) Counters() virtio.Stats {
	return virtio.Stats{Requests: d.rxFrames.Load() + d.txFrames.Load(), ReadBytes: d.rxBytes.Load(), WriteBytes: d.txBytes.Load(),
		Drops: d.drops.Load(), Errors: d.errs.Load()}
}

// Start takes the queues and runs the receive goroutine (which delivers
// the backlog); transmit needs none.
func (d *Device) Start(features uint64, qs []*virtio.Queue) error {
	if len(qs) < 2 || qs[rxQueue] == nil || qs[txQueue] == nil {
		return errors.New("virtio-net: receive and transmit queues not set up")
	}
	guestCsum := features&FGuestCsum != 0
	d.rxMu.Lock()
	d.rxq, d.rxHave, d.rxPushed, d.backlog = qs[rxQueue], false, false, nil
	d.rxq.SetNotify(false) // until frames wait for buffers
	d.rxHdr = [HeaderSize]byte{}
	binary.LittleEndian.PutUint16(d.rxHdr[10:], 1) // num_buffers
	if guestCsum {
		d.rxHdr[0] = HdrFDataValid
	}
	d.rxMu.Unlock()
	d.offload(guestCsum)
	d.txMu.Lock()
	d.txq = qs[txQueue]
	d.txq.SetNotify(true) // every batch: served inline
	d.txMu.Unlock()
	d.stop = make(chan struct{})
	d.wg.Add(1)
	go d.receive(d.rxq, d.stop)
	return nil
}

// Stop stops the receive goroutine and lets go of the queues.
func (d *Device) Stop() {
	if d.stop == nil {
		return
	}
	close(d.stop)
	d.wg.Wait()
	d.stop = nil
	d.rxMu.Lock()
	d.rxq, d.rxHave, d.backlog = nil, false, nil
	if d.lazy != nil {
		d.lazy.Stop()
	}
	d.lazyOn = false
	d.rxMu.Unlock()
	d.txMu.Lock()
	d.txq = nil
	d.txMu.Unlock()
	d.offload(false)
}

// offload tells the Backend whether frames for the guest may go without
// transport checksums.
func (d *Device) offload(on bool) {
	d.mu.Lock()
	be := d.be
	d.mu.Unlock()
	if o, ok := be.(ChecksumOffloader); ok {
		o.OffloadChecksums(on)
	}
}

func (d *Device) Close() error {
	d.Stop()
	return nil
}

// NotifyInline implements virtio.InlineNotifier: a transmit notification
// drains the transmit queue on the caller's (the vCPU's) thread.
func (d *Device) NotifyInline(q int) bool {
	if q != txQueue {
		return false
	}
	d.transmit()
	return true
}

// transmit sends every frame the driver made available, then asks to be
// notified of the next (avail_event under EVENT_IDX) and looks once more,
// so a frame made available meanwhile is not left behind.
func (d *Device) transmit() {
	d.txMu.Lock()
	defer d.txMu.Unlock()
	q := d.txq
	if q == nil {
		return
	}
	d.mu.Lock()
	be := d.be
	d.mu.Unlock()
	for {
		pushed := false
		for {
			ok, err := q.Next(&d.txc)
			if err != nil || !ok {
				break
			}
			c := &d.txc
			n := c.ReadableLen() - HeaderSize
			switch {
			case c.Err != nil:
				d.log.Warn("virtio-net: malformed transmit chain", "err", c.Err)
				d.errs.Add(1)
			case n < 14 || n > MaxFrame:
				d.drops.Add(1)
			default:
				frame := d.txBuf[:c.Gather(d.txBuf[:n], HeaderSize)]
				d.txFrames.Add(1)
				d.txBytes.Add(uint64(len(frame)))
				if be != nil {
					be.Send(frame)
				}
			}
			q.Push(c.Head, 0)
			pushed = true
		}
		if pushed {
			q.Flush()
		}
		q.SetNotify(true)
		if !q.Pending() {
			return
		}
	}
}

// receive delivers queued frames as the driver posts buffers. It asks for
// notifications only while frames wait.
func (d *Device) receive(q *virtio.Queue, stop <-chan struct{}) {
	defer d.wg.Done()
	for {
		d.rxMu.Lock()
		delivered := false
		for len(d.backlog) > 0 && d.deliverLocked(d.backlog[0]) {
			d.backlog[0] = nil
			d.backlog = d.backlog[1:]
			delivered = true
		}
		if len(d.backlog) == 0 {
			d.backlog = nil
		}
		if delivered {
			d.flushRxLocked()
		}
		waiting := len(d.backlog) > 0
		q.SetNotify(waiting)
		again := waiting && q.Pending() // posted before the driver saw the request
		d.rxMu.Unlock()
		if again {
			continue
		}
		select {
		case <-d.rxWake:
		case <-q.Notified():
		case <-stop:
			return
		}
	}
}

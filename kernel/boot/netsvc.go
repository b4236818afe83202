package boot

// The network service: gVisor's TCP/IP stack needs the Go runtime
// (goroutines, timers, a heap), which the trap-context kernel does not
// have. So it runs as a second Go program in the image, kernel/net/netsvc,
// linked at NetsvcBase and loaded by the monitor beside the kernel: its
// own runtime, its own threads (scheduled by the kernel like the
// program's), the same address space. The kernel starts it at the
// program's first socket system call.
//
// The program's socket system calls are forwarded to it (DESIGN §2: the
// "syscall thread" pattern). The kernel writes the request into the
// calling thread's slot, pushes the thread's index on the request ring,
// wakes the service (futex on Seq) and blocks the caller. The service
// reads the slot, performs the call on its stack (reading and writing the
// caller's buffers in place: the caller is blocked, the address space is
// shared) and completes it with the SysSvcDone system call, which wakes
// the caller with the result. Readiness for epoll travels the other way:
// the service reports each socket's event mask with SysSvcReady and the
// kernel wakes epoll waiters, so the program's netpoller works as on
// Linux, and a non-blocking read on a socket with nothing to read is
// answered by the kernel without a round trip.
const (
	NetsvcBase   = 0x4800000000 // link and map address (288 GiB); 1 GiB window
	NetsvcPDAddr = 0x244000     // page directory mapping it
	NetsvcStack  = 1 << 20      // initial stack the monitor builds

	MaxSockets = 1024
)

// System calls only the service may make (numbers beyond Linux's).
const (
	// SysSvcWait blocks until the request ring moves past a0 (the Seq
	// seen) or, if a1 > 0, device a1-1's interrupt count moves past a2:
	// the service's one blocking point, so that one thread waits for
	// both requests and received frames.
	SysSvcWait  = 1000
	SysSvcDone  = 1001 // a0 = thread index, a1 = result: wake the caller
	SysSvcReady = 1002 // a0 = socket id, a1 = epoll event mask now
	SysSvcInfo  = 1003 // → address of the SvcShared block
	// SysSvcEvent names an eventfd (a0) that the kernel signals whenever
	// SysSvcWait would end: a request is pushed, or device a1-1 (if a1 >
	// 0) interrupts. Every signal is an edge for epoll, after the change
	// it announces, so the service needs no read to re-arm it: it checks
	// the ring and the device, and waits for the next edge. It waits in
	// its runtime's netpoller (epoll), which the Go runtime treats as
	// idle: its timers keep running and sysmon sleeps, instead of polling
	// a thread that is blocked in a system call.
	SysSvcEvent = 1004
)

// Operations in SvcSlot.Op. Arguments are the system call's, with the
// file descriptor replaced by the socket id (Sock).
const (
	SvcSocket      = iota + 1 // a0 domain, a1 type, a2 protocol; Sock = the id the kernel chose
	SvcBind                   // a0 sockaddr, a1 len
	SvcListen                 // a0 backlog
	SvcAccept                 // a0 sockaddr out, a1 *len, a2 flags; a3 = new id the kernel chose
	SvcConnect                // a0 sockaddr, a1 len
	SvcRead                   // a0 iovec array, a1 count; a2 sockaddr out, a3 *len (recvfrom/recvmsg), a4 flags
	SvcWrite                  // a0 iovec array, a1 count; a2 sockaddr, a3 len (sendto), a4 flags
	SvcGetsockopt             // a0 level, a1 name, a2 value, a3 *len
	SvcSetsockopt             // a0 level, a1 name, a2 value, a3 len
	SvcGetsockname            // a0 sockaddr out, a1 *len
	SvcGetpeername            // a0 sockaddr out, a1 *len
	SvcShutdown               // a0 how
	SvcClose                  // the last descriptor of the socket was closed
)

// SvcSlot is one thread's request. Flags carries O_NONBLOCK of the
// descriptor (SvcNonblock): a blocking call waits in the service.
type SvcSlot struct {
	Op     uint32
	Flags  uint32
	Sock   uint64
	Args   [6]uint64
	Result int64
}

// SvcSlot.Flags.
const (
	SvcNonblock = 1 << 0 // the descriptor is O_NONBLOCK (or MSG_DONTWAIT)
	SvcFlat     = 1 << 1 // SvcRead/SvcWrite: a0 is one buffer and a1 its length, not an iovec array
)

// SvcShared is the block the kernel and the service share.
type SvcShared struct {
	Seq   uint32 // bumped by the kernel at every push (the service waits on it)
	Head  uint32 // next ring index the service reads (written by the service)
	Tail  uint32 // next ring index the kernel writes (klock)
	_     uint32
	Ring  [MaxThreads]int32 // thread indices with a pending request
	Slots [MaxThreads]SvcSlot
}

package kernel

// Threads and scheduling.
//
// Model: every kernel entry (SYSCALL, tick, fault) first saves the running
// thread's registers into its trap frame; kernel code then runs on the
// CPU's own stack and finally picks a thread whose frame `resume` restores.
// A thread that blocks leaves nothing on any kernel stack: it is only its
// frame plus a wait record, and whoever wakes it writes the system call's
// result into the frame's RAX. So there are no per-thread kernel stacks and
// a thread can resume on any vCPU (migration is free).
//
// Constraints: trap context (see cpu.go). All fields below are guarded by
// klock unless marked atomic.

import (
	"sync/atomic"
	"unsafe"

	"github.com/cumulusdb/cumulus/kernel/boot"
	"github.com/cumulusdb/cumulus/kernel/mm"
)

type trapFrame struct {
	rax, rbx, rcx, rdx, rsi, rdi, rbp, r8, r9, r10, r11, r12, r13, r14, r15 uint64
	rip, rsp, rflags, fsbase, kind, vector, errcode, cr2                    uint64
}

const (
	tFree = iota
	tRunnable
	tRunning
	tBlocked
)

const (
	wNone = iota
	wFutex
	wSleep
	wEpoll
	wPipe
	wSvc // a request to the network service (sock.go): not interruptible
)

type threadHdr struct {
	tf         trapFrame
	tid        int32
	state      int32
	cpu        int32
	waitKind   int32
	waitAddr   uintptr
	deadline   int64 // wake-up time (nanotime), 0 = none
	restartNr  uint64
	clearTID   uintptr
	sliceStart int64
	sigPending uint64 // bit s-1 for signal s
	sigMask    uint64
	altSP      uint64 // sigaltstack
	altSize    uint64
	altFlags   int32
	pfRetries  int32  // page faults re-executed for lack of a usable CR2
	pfRIP      uint64 // the last page fault resolved at a decoded address (faultaddr.go):
	pfAddr     uint64 // the same again means the decoding did not help
	affinity   uint64 // CPUs the thread may run on (0: any)
	proc       int32  // 0: the program; 1: the network service (sock.go)
}

type thread struct {
	threadHdr
	_     [boot.TFXSave - unsafe.Sizeof(threadHdr{})]byte
	xsave [boot.ThreadSize - boot.TFXSave]byte
}

const timeSlice = 10_000_000 // ns a thread may run while others wait

var (
	booted  atomic.Uint32
	bi      *boot.BootInfo
	ncpu    int
	threads *[boot.MaxThreads]thread
	klock   spinlock

	nthreads  int32 // highest slot index in use + 1
	live      int32 // the program's threads not free (the service's are not counted)
	nextTID   int32
	curThread [boot.MaxCPUs]int32 // per CPU; -1 when idle

	runq            [boot.MaxThreads]int32
	runqHead, runqN int32
	runqLen         atomic.Int32 // mirrors runqN for lock-free idle polling
	nextDeadline    atomic.Int64
	wantKick        bool
	kickEvery       bool

	frames mm.Frames
	pt     mm.PageTable
	vmas   mm.VMAs
)

// kinit runs once, on vCPU 0, at the program's first system call (before
// the Go runtime has done anything else).
func kinit() {
	pc := pcpu()
	bi = (*boot.BootInfo)(ptrOf(uintptr(pc.bootInfo)))
	ncpu = int(bi.NumCPUs)
	threads = (*[boot.MaxThreads]thread)(ptrOf(uintptr(bi.ThreadsBase)))
	initClock()
	frames.CPU = currentCPU
	if err := frames.Init(mm.Phys{}, uintptr(bi.FreeStart), uintptr(bi.FreeEnd), ncpu); err != nil {
		kprint("cumulus kernel: cannot set up the frame allocator: too little memory\n")
		outl(boot.HCExit, 1)
	}
	pt = mm.PageTable{Root: boot.PML4Addr, Frames: &frames}
	initMmap()
	initFDs()
	for c := range curThread {
		curThread[c] = -1
	}
	t := &threads[0]
	t.altFlags = ssDisable
	t.tid = 1
	t.state = tRunning
	t.sliceStart = nanotime()
	nextTID = 2
	nthreads = 1
	live = 1
	curThread[0] = 0
	nextDeadline.Store(1<<63 - 1)
	booted.Store(1)
}

func frameAddr(i int32) uint64 { return uint64(uintptr(unsafe.Pointer(&threads[i]))) }

// enqueue makes thread i runnable. klock held.
func enqueue(i int32) {
	threads[i].state = tRunnable
	runq[(runqHead+runqN)%boot.MaxThreads] = i
	runqN++
	runqLen.Store(runqN)
	wantKick = true
	if threads[i].affinity != 0 {
		kickEvery = true // only some vCPUs may run it: wake them all
	}
}

func dequeue() int32 { return dequeueFor(-1) }

// dequeueFor takes the first queued thread allowed to run on CPU c (any
// thread if c < 0): threads pinned with sched_setaffinity wait for their
// CPUs. The queue is short, so a scan is cheap.
func dequeueFor(c int) int32 {
	for k := int32(0); k < runqN; k++ {
		pos := (runqHead + k) % boot.MaxThreads
		i := runq[pos]
		if c >= 0 && threads[i].affinity != 0 && threads[i].affinity&(1<<uint(c)) == 0 {
			continue
		}
		// Close the gap: shift the threads ahead of it back by one.
		for j := k; j > 0; j-- {
			runq[(runqHead+j)%boot.MaxThreads] = runq[(runqHead+j-1)%boot.MaxThreads]
		}
		runqHead = (runqHead + 1) % boot.MaxThreads
		runqN--
		runqLen.Store(runqN)
		return i
	}
	return -1
}

// kunlock releases klock, then sees that work queued under it gets a
// vCPU. The kick is a VM exit (~46 µs), so it is never done under the
// lock, and it is lazy (see checkKick): only threads pinned elsewhere
// are kicked at once.
func kunlock() {
	k, all := wantKick, kickEvery
	wantKick, kickEvery = false, false
	klock.unlock()
	if all {
		kickIdle(true)
	} else if k {
		deferKick()
	}
}

// Lazy kicks. Waking a halted vCPU costs the waker an exit (~50 µs, on
// the path of whatever it does next) and the woken vCPU a re-entry, while
// the waker itself often blocks within microseconds (a forwarded socket
// call, the network service going back to wait) and then runs the woken
// thread itself. So a thread queued while no vCPU spins idle waits up to
// kickDelay for this CPU; every kernel entry that finds it still queued
// after that (preemptCheck: system-call exits, ticks) kicks a halted
// vCPU. kickSince is when work was first left so (0: none).
const kickDelay = 50_000 // ns

var kickSince atomic.Int64

func deferKick() {
	self := int(pcpu().cpu)
	for c := 0; c < ncpu; c++ {
		if c != self && atomic.LoadUint64(&pcpuOf(c).halted) == cpuSpinning {
			return // it sees the run queue by itself
		}
	}
	kickSince.CompareAndSwap(0, nanotime())
}

// checkKick kicks a halted vCPU for work queued kickDelay ago.
func checkKick(now int64) {
	since := kickSince.Load()
	if since == 0 {
		return
	}
	if runqLen.Load() == 0 {
		kickSince.CompareAndSwap(since, 0)
		return
	}
	if now-since >= kickDelay && kickSince.CompareAndSwap(since, 0) {
		kickIdle(false)
	}
}

// Idle states of a vCPU (perCPU.halted): a spinning vCPU polls the run
// queue by itself and costs a waker nothing; only one halted in the
// monitor needs a kick, which is a VM exit on the waker's side (~46 µs)
// and a host thread wake-up on the other.
// idleSpinUS is how long an idle vCPU polls before it halts. Halting
// costs an exit, and waking a halted vCPU another on the waker's side
// plus a host thread wake-up, so polling through the short gaps of a
// request/response exchange is cheaper than sleeping through them.
const idleSpinUS = 50

const (
	cpuBusy     = boot.IdleBusy
	cpuSpinning = boot.IdleSpinning
	cpuHalted   = boot.IdleHalted
)

// kickIdle wakes one idle vCPU, or every idle vCPU when a queued thread
// is pinned to some of them. A spinning one is enough and free.
func kickIdle(all bool) {
	self := int(pcpu().cpu)
	if !all {
		for c := 0; c < ncpu; c++ {
			if c != self && atomic.LoadUint64(&pcpuOf(c).halted) == cpuSpinning {
				return // it sees the run queue by itself
			}
		}
	}
	for c := 0; c < ncpu; c++ {
		if c == self {
			continue
		}
		if atomic.CompareAndSwapUint64(&pcpuOf(c).halted, cpuHalted, cpuBusy) {
			atomic.AddUint64(&stats.Kicks, 1)
			outl(boot.HCKick, uint32(c))
			if !all {
				return
			}
		}
	}
}

// wake makes a blocked thread runnable with the given system-call result.
func wake(i int32, result int64) {
	t := &threads[i]
	t.tf.rax = uint64(result)
	t.waitKind = wNone
	t.deadline = 0
	stats.Wakeups++
	enqueue(i)
}

// wakeRestart wakes a thread so that it re-executes its system call (the
// entering instruction's length is in errcode: SYSCALL 2, a patched CALL
// 5). Used where readiness must be re-evaluated.
func wakeRestart(i int32) {
	t := &threads[i]
	t.tf.rip -= t.tf.errcode
	wake(i, int64(t.restartNr))
}

// block parks the current thread and runs another. klock held on entry,
// released on return. The caller must not touch the thread afterwards.
func block(c int, cur int32, kind int32, addr uintptr, deadline int64) {
	// This CPU is about to pick a thread: if the only one queued is
	// what the caller just woke (a futex hand-off, a forwarded request),
	// it runs here and no other vCPU needs waking.
	if runqN <= 1 && !kickEvery {
		wantKick = false
	}
	t := &threads[cur]
	t.state = tBlocked
	t.waitKind = kind
	t.waitAddr = addr
	t.deadline = deadline
	t.restartNr = t.tf.rax
	if deadline != 0 && deadline < nextDeadline.Load() {
		nextDeadline.Store(deadline)
	}
	pickNext(c)
}

// pickNext chooses the next thread for CPU c, idling until one exists.
// klock held on entry, released on return.
func pickNext(c int) {
	for {
		checkIRQs()
		checkTimers(nanotime())
		if i := dequeueFor(c); i >= 0 {
			// A thread this CPU takes itself (one checkIRQs or a
			// timer just woke) needs no other vCPU woken for it.
			if runqN == 0 && !kickEvery {
				wantKick = false
				kickSince.Store(0)
			}
			run(c, i)
			kunlock()
			return
		}
		curThread[c] = -1
		kunlock()
		idle(c)
		klock.lock()
	}
}

func run(c int, i int32) {
	t := &threads[i]
	t.state = tRunning
	t.cpu = int32(c)
	t.sliceStart = nanotime()
	curThread[c] = i
	pcpu().curFrame = frameAddr(i)
	stats.Switches++
}

// idle waits for work without the lock: it polls the run queue for a while
// (a wake-up from another vCPU then costs no exit), then halts in the
// monitor until the next timer or a kick. An idle vCPU also delivers the
// doorbells (see below): the exit costs nobody a wait. With a doorbell
// rung and no other vCPU busy, nothing can hand it work soon but a device
// or a timer, so it halts at once and the halt delivers them: one exit
// for the doorbells and the sleep (a timer due sooner ends the halt as
// it would have ended the spin).
func idle(c int) {
	pc := pcpu()
	atomic.StoreUint64(&pc.halted, cpuSpinning)
	if !doorbellRung() || othersBusy(c) {
		start := rdtsc()
		spin := bi.TSCKHz * idleSpinUS / 1000
		for rdtsc()-start < spin {
			if runqLen.Load() > 0 || nanotime() >= nextDeadline.Load() || irqPending() {
				atomic.StoreUint64(&pc.halted, cpuBusy)
				return
			}
			if doorbellRung() {
				spinDoorbells()
			}
			cpuPause()
		}
	}
	if !atomic.CompareAndSwapUint64(&pc.halted, cpuSpinning, cpuHalted) {
		return // kicked while spinning
	}
	// A waker that saw us spinning did not kick: look once more now
	// that wakers see us halted.
	if runqLen.Load() > 0 || irqPending() {
		atomic.StoreUint64(&pc.halted, cpuBusy)
		return
	}
	d := nextDeadline.Load()
	if d == 1<<63-1 {
		d = 0
	}
	stats.Halts++
	if doorbellRung() {
		doorbellSince.Store(0)
		atomic.AddUint64(&stats.DoorbellHalts, 1)
	}
	pc.hcArgs[0] = uint64(d)
	outl(boot.HCHalt, 0)
	atomic.StoreUint64(&pc.halted, cpuBusy)
}

// othersBusy reports whether a vCPU other than c runs a thread (or is in
// the kernel): one that may hand this one work soon.
func othersBusy(c int) bool {
	for o := 0; o < ncpu; o++ {
		if o != c && atomic.LoadUint64(&pcpuOf(o).halted) == cpuBusy {
			return true
		}
	}
	return false
}

// Doorbells (kernel/boot, "Devices"): drivers whose notifications may
// wait (the network service's transmit ring) set bits in the boot page
// instead of exiting. The kernel delivers them with an exit it makes
// anyway (a halt), from an idle vCPU, or, while every vCPU stays busy,
// once a kernel entry finds one that has waited doorbellDelay: the
// bound on how late a device hears of them. Waiting that long lets the
// acknowledgement of a request and the response to it go out together.
const doorbellDelay = 100_000 // ns

// doorbellSince is when a kernel entry first saw a doorbell rung (0:
// none seen since the last delivery).
var doorbellSince atomic.Int64

func doorbellRung() bool { return bi != nil && atomic.LoadUint64(&bi.Doorbell) != 0 }

// spinDoorbells runs in an idle vCPU's spin: it delivers the doorbells
// once they have waited doorbellSpinDelay. Waiting a little lets a busy
// vCPU ring more of them into the same exit, and one rung just before
// this vCPU halts rides the halt.
func spinDoorbells() { ringAfter(nanotime(), doorbellSpinDelay) }

const doorbellSpinDelay = 30_000 // ns

// checkDoorbells runs at kernel entries (preemptCheck): a doorbell seen
// rung doorbellDelay ago is delivered now.
func checkDoorbells(now int64) {
	if doorbellRung() {
		ringAfter(now, doorbellDelay)
	}
}

// ringAfter delivers the doorbells (one exit) once they have waited delay
// since a vCPU first saw them; the first look only starts the clock.
func ringAfter(now, delay int64) {
	since := doorbellSince.Load()
	if since == 0 {
		doorbellSince.CompareAndSwap(0, now)
		return
	}
	if now-since >= delay && doorbellSince.CompareAndSwap(since, 0) {
		atomic.AddUint64(&stats.DoorbellExits, 1)
		outl(boot.HCNotify, boot.NotifyNone)
	}
}

// irqPending reports whether a device raised an interrupt the kernel has
// not handled. The tick can arrive before kinit has set bi.
func irqPending() bool { return bi != nil && atomic.LoadUint64(&bi.IRQPending) != 0 }

// checkIRQs wakes the futex waiters of every device that raised an
// interrupt (a driver waits on its BootInfo.IRQCount word). The monitor
// sets the pending bit after the count, so a waiter woken here sees the
// new count. klock held.
func checkIRQs() {
	if bi == nil {
		return // a tick before kinit: no devices yet
	}
	p := atomic.SwapUint64(&bi.IRQPending, 0)
	for i := 0; p != 0 && i < boot.MaxDevices; i++ {
		if p&(1<<uint(i)) != 0 {
			p &^= 1 << uint(i)
			stats.IRQs++
			futexWake(uintptr(unsafe.Pointer(&bi.IRQCount[i])), 1<<30)
			if svcWaitIRQ == i+1 {
				futexWake(uintptr(unsafe.Pointer(&svcShared.Seq)), 1)
				svcSignal()
			}
		}
	}
}

// checkTimers wakes threads whose deadline passed. klock held.
func checkTimers(now int64) {
	if now < nextDeadline.Load() {
		return
	}
	next := int64(1<<63 - 1)
	for i := int32(0); i < nthreads; i++ {
		t := &threads[i]
		if t.state != tBlocked || t.deadline == 0 {
			continue
		}
		if t.deadline <= now {
			switch t.waitKind {
			case wFutex:
				wake(i, -_ETIMEDOUT)
			default:
				wake(i, 0)
			}
			continue
		}
		if t.deadline < next {
			next = t.deadline
		}
	}
	nextDeadline.Store(next)
}

func allocThread() int32 {
	for i := int32(1); i < boot.MaxThreads; i++ {
		if threads[i].state == tFree {
			if i >= nthreads {
				nthreads = i + 1
			}
			live++
			return i
		}
	}
	return -1
}

// preemptCheck runs before returning to a thread: it takes a deferred tick
// and enforces the time slice at system-call boundaries, so a thread that
// spins on non-blocking system calls cannot starve the others.
func preemptCheck(c int, force bool) {
	pc := pcpu()
	tick := atomic.SwapUint64(&pc.tickPend, 0) != 0
	cur := curThread[c]
	now := nanotime()
	checkDoorbells(now)
	checkKick(now)
	if !force && !tick && now < nextDeadline.Load() && !irqPending() &&
		(runqLen.Load() == 0 || now-threads[cur].sliceStart < timeSlice) {
		return
	}
	klock.lock()
	checkIRQs()
	checkTimers(now)
	if runqN > 0 && (force || tick || now-threads[cur].sliceStart >= timeSlice) {
		stats.Preempts++
		enqueue(cur)
		pickNext(c)
		return
	}
	kunlock()
}

func currentCPU() int { return int(pcpu().cpu) }

package exec

import (
	"sync"
	"time"

	"github.com/cumulusdb/cumulus/db/sql/sqlerr"
)

// lockTable holds the row locks of all sessions: exclusive, held until the
// owner's transaction ends.
type lockTable struct {
	mu sync.Mutex
	m  map[string]*rowLock
}

type rowLock struct {
	owner *Session
	done  chan struct{}
}

// lockWait bounds one wait before the session re-checks for cancellation.
const lockWait = 100 * time.Millisecond

// lockRow takes the lock on (table, key) for the session's transaction,
// waiting for another owner to finish. A wait that would close a cycle of
// waiting sessions fails with deadlock_detected.
func (s *Session) lockRow(table string, key []byte) error {
	k := table + "\x00" + string(key)
	lt := &s.eng.locks
	for {
		lt.mu.Lock()
		l := lt.m[k]
		if l == nil {
			lt.m[k] = &rowLock{owner: s, done: make(chan struct{})}
			s.held = append(s.held, k)
			lt.mu.Unlock()
			return nil
		}
		if l.owner == s {
			lt.mu.Unlock()
			return nil
		}
		// Follow the chain of lock waits: owner, the owner of the lock it
		// waits for, ...
		for o := l.owner; o != nil; {
			if o == s {
				lt.mu.Unlock()
				return sqlerr.New(sqlerr.DeadlockDetected, "deadlock detected")
			}
			next := lt.m[o.waitKey]
			if o.waitKey == "" || next == nil {
				break
			}
			o = next.owner
		}
		s.waitKey = k
		ch := l.done
		lt.mu.Unlock()
		select {
		case <-ch:
		case <-time.After(lockWait):
		}
		lt.mu.Lock()
		s.waitKey = ""
		lt.mu.Unlock()
		if s.canceled.Load() {
			return sqlerr.New(sqlerr.QueryCanceled, "canceling statement due to user request")
		}
	}
}

func (s *Session) releaseLocks() {
	if len(s.held) == 0 {
		return
	}
	lt := &s.eng.locks
	lt.mu.Lock()
	for _, k := range s.held {
		if l := lt.m[k]; l != nil && l.owner == s {
			delete(lt.m, k)
			close(l.done)
		}
	}
	lt.mu.Unlock()
	s.held = s.held[:0]
}

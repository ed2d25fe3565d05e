package main

import "sync"

type topicPartition struct {
	topic     string
	partition int32
}

// offsetTracker knows what may be committed per partition: the offset after the longest
// run of finished records. Records finish out of order (different keys run concurrently);
// the committed position never passes one that has not finished, so a crash redelivers,
// never skips. Safe for concurrent use (the rebalance callbacks run on the client's own
// goroutine).
type offsetTracker struct {
	mu          sync.Mutex
	order       map[topicPartition][]int64 // started offsets, oldest first
	unfinished  map[topicPartition]map[int64]struct{}
	safe        map[topicPartition]int64
	outstanding int
}

func newOffsetTracker() *offsetTracker {
	return &offsetTracker{
		order:      map[topicPartition][]int64{},
		unfinished: map[topicPartition]map[int64]struct{}{},
		safe:       map[topicPartition]int64{},
	}
}

// started records that offset's delivery began; false when it is already in flight (a
// redelivery after a rebalance).
func (t *offsetTracker) started(tp topicPartition, offset int64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	unfinished := t.unfinished[tp]
	if unfinished == nil {
		unfinished = map[int64]struct{}{}
		t.unfinished[tp] = unfinished
	}
	if _, ok := unfinished[offset]; ok {
		return false
	}
	unfinished[offset] = struct{}{}
	t.order[tp] = append(t.order[tp], offset)
	t.outstanding++
	return true
}

// finished records that offset's delivery ended (answered 2xx or dead-lettered).
func (t *offsetTracker) finished(tp topicPartition, offset int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	unfinished := t.unfinished[tp]
	if _, ok := unfinished[offset]; !ok { // the partition was revoked meanwhile
		return
	}
	delete(unfinished, offset)
	t.outstanding--
	order := t.order[tp]
	i := 0
	for i < len(order) {
		if _, waiting := unfinished[order[i]]; waiting {
			break
		}
		t.safe[tp] = order[i] + 1
		i++
	}
	t.order[tp] = order[i:]
}

// committable hands out the positions not handed out yet.
func (t *offsetTracker) committable() map[topicPartition]int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	safe := t.safe
	t.safe = map[topicPartition]int64{}
	return safe
}

// forget drops a partition that moved to another consumer: its records in flight are
// delivered again by their next owner (at-least-once).
func (t *offsetTracker) forget(tp topicPartition) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.outstanding -= len(t.unfinished[tp])
	delete(t.unfinished, tp)
	delete(t.order, tp)
	delete(t.safe, tp)
}

func (t *offsetTracker) pending() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.outstanding
}

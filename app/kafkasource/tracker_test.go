package main

import (
	"math/rand"
	"testing"
)

func TestCommitsNeverPassAnUnfinishedRecord(t *testing.T) {
	tr := newOffsetTracker()
	tp := topicPartition{"t", 0}
	for o := int64(10); o < 15; o++ {
		tr.started(tp, o)
	}
	tr.finished(tp, 12)
	tr.finished(tp, 11)
	if got := tr.committable(); len(got) != 0 {
		t.Fatalf("10 is still in flight, got %v", got)
	}
	tr.finished(tp, 10)
	if got := tr.committable(); got[tp] != 13 || len(got) != 1 {
		t.Fatalf("want 13, got %v", got)
	}
	if got := tr.committable(); len(got) != 0 {
		t.Fatalf("handed out twice: %v", got)
	}
	tr.finished(tp, 14)
	if got := tr.committable(); len(got) != 0 {
		t.Fatalf("13 is still in flight, got %v", got)
	}
	tr.finished(tp, 13)
	if got := tr.committable(); got[tp] != 15 {
		t.Fatalf("want 15, got %v", got)
	}
	if tr.pending() != 0 {
		t.Fatalf("outstanding %d", tr.pending())
	}
}

func TestRandomFinishOrderMatchesTheLowestUnfinishedOffset(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	tr := newOffsetTracker()
	type po struct {
		p int32
		o int64
	}
	var all []po
	for p := int32(0); p < 3; p++ {
		for o := int64(100 * p); o < int64(100*p+50); o++ {
			tr.started(topicPartition{"t", p}, o)
			all = append(all, po{p, o})
		}
	}
	rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	committed := map[topicPartition]int64{}
	for i, x := range all {
		tr.finished(topicPartition{"t", x.p}, x.o)
		for tp, o := range tr.committable() {
			committed[tp] = o
		}
		for _, rest := range all[i+1:] {
			if c, ok := committed[topicPartition{"t", rest.p}]; ok && rest.o < c {
				t.Fatalf("committed %d past unfinished %d on partition %d", c, rest.o, rest.p)
			}
		}
	}
	for p := int32(0); p < 3; p++ {
		if committed[topicPartition{"t", p}] != int64(100*p+50) {
			t.Fatalf("partition %d committed %d", p, committed[topicPartition{"t", p}])
		}
	}
}

func TestARevokedPartitionIsForgottenAndLateFinishesIgnored(t *testing.T) {
	tr := newOffsetTracker()
	p0, p1 := topicPartition{"t", 0}, topicPartition{"t", 1}
	tr.started(p0, 1)
	tr.started(p1, 5)
	tr.forget(p0)
	if tr.pending() != 1 {
		t.Fatalf("outstanding %d", tr.pending())
	}
	tr.finished(p0, 1) // after the revoke: no effect
	if tr.pending() != 1 || len(tr.committable()) != 0 {
		t.Fatal("a finish after the revoke counted")
	}
	tr.finished(p1, 5)
	if got := tr.committable(); got[p1] != 6 {
		t.Fatalf("want 6, got %v", got)
	}
}

func TestARecordStartedTwiceCountsOnce(t *testing.T) {
	tr := newOffsetTracker()
	tp := topicPartition{"t", 0}
	if !tr.started(tp, 3) || tr.started(tp, 3) {
		t.Fatal("the second start must be refused")
	}
	tr.finished(tp, 3)
	tr.finished(tp, 3)
	if tr.pending() != 0 {
		t.Fatalf("outstanding %d", tr.pending())
	}
	if got := tr.committable(); got[tp] != 4 {
		t.Fatalf("want 4, got %v", got)
	}
}

package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func testSender(sinks []string, retry int) (*sender, *int) {
	retries := 0
	return &sender{
		client:        &http.Client{Timeout: 2 * time.Second},
		sinks:         sinks,
		source:        "/apis/v1/namespaces/fraud/kafkasources/fraud-scoring#",
		retry:         retry,
		exponential:   true,
		backoffDelay:  time.Millisecond,
		sleep:         sleepContext,
		onRetry:       func() { retries++ },
		onDelivered:   func(time.Duration) {},
		maxReasonBody: 500,
	}, &retries
}

func testEvent() *event {
	return &event{"transactions", 3, 1234, []byte("card-000042"), []byte(`{"a":1}`), time.UnixMilli(1_700_000_000_123)}
}

func TestABinaryModeCloudEventPerRecord(t *testing.T) {
	var seen *http.Request
	var body string
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = r
		b, _ := io.ReadAll(r.Body)
		body = string(b)
		w.WriteHeader(200)
	}))
	defer server.Close()
	s, _ := testSender([]string{server.URL + "/v1/models/fraud:predict"}, 0)
	if reason := s.deliver(context.Background(), testEvent()); reason != "" {
		t.Fatalf("not delivered: %s", reason)
	}
	want := map[string]string{
		"Ce-Specversion": "1.0",
		"Ce-Id":          "partition:3/offset:1234",
		"Ce-Type":        "dev.knative.kafka.event",
		"Ce-Source":      "/apis/v1/namespaces/fraud/kafkasources/fraud-scoring#transactions",
		"Ce-Subject":     "partition:3#1234",
		"Ce-Time":        "2023-11-14T22:13:20.123Z",
		"Ce-Key":         "card-000042",
		"Content-Type":   "application/json",
	}
	for name, value := range want {
		if got := seen.Header.Get(name); got != value {
			t.Errorf("%s: got %q, want %q", name, got, value)
		}
	}
	if seen.Method != http.MethodPost || seen.URL.Path != "/v1/models/fraud:predict" || body != `{"a":1}` {
		t.Errorf("got %s %s %q", seen.Method, seen.URL.Path, body)
	}
}

func TestRetriedOn5xxAnd429ButNotOnOther4xx(t *testing.T) {
	var calls atomic.Int32
	answers := []int{503, 429, 200}
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		n := calls.Add(1)
		w.WriteHeader(answers[min(int(n)-1, len(answers)-1)])
	}))
	defer server.Close()
	s, retries := testSender([]string{server.URL}, 3)
	if reason := s.deliver(context.Background(), testEvent()); reason != "" || calls.Load() != 3 || *retries != 2 {
		t.Fatalf("reason %q, calls %d, retries %d", reason, calls.Load(), *retries)
	}

	calls.Store(0)
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		calls.Add(1)
		w.WriteHeader(400)
		_, _ = w.Write([]byte(`{"error":"amount: must be positive"}`))
	}))
	defer bad.Close()
	s, _ = testSender([]string{bad.URL}, 3)
	reason := s.deliver(context.Background(), testEvent())
	if calls.Load() != 1 || reason != `sink: HTTP 400: {"error":"amount: must be positive"}` {
		t.Fatalf("a 400 is final: calls %d, reason %q", calls.Load(), reason)
	}
}

func TestAnUnreachableSinkFailsAfterTheRetries(t *testing.T) {
	server := httptest.NewServer(http.NotFoundHandler())
	url := server.URL
	server.Close() // nothing listens there now
	s, retries := testSender([]string{url}, 2)
	reason := s.deliver(context.Background(), testEvent())
	if !strings.HasPrefix(reason, "sink: ") || *retries != 2 {
		t.Fatalf("reason %q, retries %d", reason, *retries)
	}
}

func TestRetryDelaysFollowKnativesFormula(t *testing.T) {
	s := &sender{exponential: true, backoffDelay: 500 * time.Millisecond}
	var total time.Duration
	for n, want := range []time.Duration{1, 2, 4, 8, 16, 32} {
		got := s.delayBeforeRetry(n + 1)
		if got != want*time.Second {
			t.Fatalf("retry %d: %v", n+1, got)
		}
		total += got
	}
	if total != 63*time.Second {
		t.Fatalf("total %v", total)
	}
	s.exponential = false
	if s.delayBeforeRetry(3) != 1500*time.Millisecond {
		t.Fatalf("linear: %v", s.delayBeforeRetry(3))
	}
}

func TestAKeyStaysOnOneSinkAsThePythonStandInPutsIt(t *testing.T) {
	s := &sender{sinks: []string{"a", "b", "c"}}
	// zlib.crc32(b"card-000042") = 3136041912, 3136041912 % 3 = 0
	if got := s.sinkFor([]byte("card-000042")); got != "a" {
		t.Fatalf("got %s", got)
	}
}

func TestTheConfigurationNamesTheFieldItRejects(t *testing.T) {
	good := config{
		BootstrapServers: "b:9092", Group: "g", Topics: []string{"t"}, Sinks: []string{"http://s"},
		Ordering: "ordered", InitialOffset: "latest", BackoffPolicy: "exponential", Retry: 1,
		MaxInFlight: 1, MaxPending: 1, TimeoutS: 1, CommitIntervalS: 0.1, DeadLetterTopic: "dlq",
	}
	if err := good.check(); err != nil {
		t.Fatal(err)
	}
	bad := good
	bad.Ordering = "sorted"
	if err := bad.check(); err == nil || !strings.HasPrefix(err.Error(), "ordering:") {
		t.Fatalf("got %v", err)
	}
	bad = good
	bad.Sinks = nil
	if err := bad.check(); err == nil || !strings.HasPrefix(err.Error(), "sinks:") {
		t.Fatalf("got %v", err)
	}
}

func TestHealthJudgesStallsAsThePythonLoopsDo(t *testing.T) {
	h := newHealth("g", time.Minute)
	now := time.Now()
	if p := h.problem(now); p != "" {
		t.Fatalf("a new loop has the whole window: %s", p)
	}
	if p := h.problem(now.Add(2 * time.Minute)); !strings.Contains(p, "no lag reading") {
		t.Fatalf("got %q", p)
	}
	h.measuredLag(0)
	h.lagAt = now.Add(110 * time.Second)
	if p := h.problem(now.Add(2 * time.Minute)); p != "" {
		t.Fatalf("idle is healthy: %q", p)
	}
	h.measuredLag(7)
	h.lagAt = now.Add(110 * time.Second)
	if p := h.problem(now.Add(2 * time.Minute)); !strings.Contains(p, "7 records waiting") {
		t.Fatalf("got %q", p)
	}
}

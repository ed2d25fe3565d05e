package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// retryable answers: besides 5xx and connection errors, what Knative retries.
var retryable = map[int]bool{404: true, 408: true, 409: true, 429: true}

// event is what one delivery needs of a Kafka record.
type event struct {
	topic     string
	partition int32
	offset    int64
	key       []byte
	value     []byte
	timestamp time.Time
}

// sender posts each record to its sink as a binary-mode CloudEvent, with KafkaSource's
// retry policy.
type sender struct {
	client        *http.Client
	sinks         []string
	source        string // "/apis/v1/namespaces/<ns>/kafkasources/<name>#"
	retry         int
	exponential   bool
	backoffDelay  time.Duration
	sleep         func(context.Context, time.Duration) error
	onRetry       func()
	onDelivered   func(since time.Duration)
	maxReasonBody int
}

// delayBeforeRetry is Knative's formula: backoffDelay x n (linear) or x 2^n (exponential).
func (s *sender) delayBeforeRetry(n int) time.Duration {
	factor := float64(n)
	if s.exponential {
		factor = math.Pow(2, float64(n))
	}
	return time.Duration(float64(s.backoffDelay) * factor)
}

// sinkFor keeps a key on one sink (several sinks stand for the replicas behind one
// Service), so per-key order holds. CRC-32 as the Python stand-in computes it.
func (s *sender) sinkFor(key []byte) string {
	if len(s.sinks) == 1 {
		return s.sinks[0]
	}
	return s.sinks[crc32.ChecksumIEEE(key)%uint32(len(s.sinks))]
}

func (s *sender) headers(e *event) http.Header {
	p, o := strconv.Itoa(int(e.partition)), strconv.FormatInt(e.offset, 10)
	h := http.Header{}
	h["Ce-Specversion"] = []string{"1.0"}
	h["Ce-Id"] = []string{"partition:" + p + "/offset:" + o}
	h["Ce-Type"] = []string{"dev.knative.kafka.event"}
	h["Ce-Source"] = []string{s.source + e.topic}
	h["Ce-Subject"] = []string{"partition:" + p + "#" + o}
	h["Ce-Time"] = []string{e.timestamp.UTC().Format(time.RFC3339Nano)}
	h["Content-Type"] = []string{"application/json"}
	if e.key != nil {
		h["Ce-Key"] = []string{strings.ToValidUTF8(string(e.key), "\uFFFD")}
	}
	return h
}

// deliver returns "" once the sink answers 2xx, else why the record failed after the
// retries (or at once, for an answer that says the event itself is bad).
func (s *sender) deliver(ctx context.Context, e *event) string {
	sink, headers := s.sinkFor(e.key), s.headers(e)
	reason := ""
	for attempt := 0; attempt <= s.retry; attempt++ {
		if attempt > 0 {
			if err := s.sleep(ctx, s.delayBeforeRetry(attempt)); err != nil {
				return "sink: stopped before retry " + strconv.Itoa(attempt) + ": " + reason
			}
			s.onRetry()
		}
		status, body, err := s.post(ctx, sink, headers, e.value)
		if err != nil {
			reason = "sink: " + err.Error()
			continue
		}
		if status >= 200 && status < 300 {
			s.onDelivered(time.Since(e.timestamp))
			return ""
		}
		reason = fmt.Sprintf("sink: HTTP %d: %s", status, body)
		if status < 500 && !retryable[status] {
			break // the event itself is bad: retrying cannot help
		}
	}
	return reason
}

func (s *sender) post(ctx context.Context, sink string, headers http.Header, body []byte) (int, string, error) {
	request, err := http.NewRequestWithContext(ctx, http.MethodPost, sink, bytes.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	request.Header = headers.Clone()
	response, err := s.client.Do(request)
	if err != nil {
		var urlErr interface{ Timeout() bool }
		if errors.As(err, &urlErr) && urlErr.Timeout() {
			return 0, "", fmt.Errorf("timed out: %w", err)
		}
		return 0, "", err
	}
	defer response.Body.Close()
	text, _ := io.ReadAll(io.LimitReader(response.Body, int64(s.maxReasonBody)))
	_, _ = io.Copy(io.Discard, response.Body) // read to the end, so the connection is reused
	return response.StatusCode, strings.ToValidUTF8(string(text), "\uFFFD"), nil
}

func sleepContext(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

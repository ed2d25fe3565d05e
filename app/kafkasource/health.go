package main

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const component = "dispatcher"

// The Python stand-in's metric names, so dashboards and alerts read either.
var (
	deliveries = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "dispatcher_deliveries_total", Help: "Delivery attempts by outcome",
	}, []string{"outcome"})
	deliverySeconds = promauto.NewHistogram(prometheus.HistogramOpts{
		Name:    "dispatcher_delivery_seconds",
		Help:    "Time from the record's timestamp to the sink's 2xx answer",
		Buckets: []float64{0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1, 5},
	})
	pending = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "dispatcher_pending_records", Help: "Records read and not yet delivered or dead-lettered",
	})
	deadLetters = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "dead_letter_messages_total", Help: "Messages routed to the dead-letter topic",
	}, []string{"component", "reason"})
)

// health is the consume loop's liveness, judged as fraudcore.health judges the Python
// loops: stuck when it has not advanced for the stall window while records wait, or when it
// has not even read its lag for that long.
type health struct {
	mu         sync.Mutex
	name       string
	stallAfter time.Duration
	advancedAt time.Time
	lag        int64
	lagAt      time.Time
}

func newHealth(name string, stallAfter time.Duration) *health {
	now := time.Now()
	if stallAfter <= 0 {
		stallAfter = 120 * time.Second
	}
	return &health{name: name, stallAfter: stallAfter, advancedAt: now, lagAt: now}
}

func (h *health) advanced() {
	h.mu.Lock()
	h.advancedAt = time.Now()
	h.mu.Unlock()
}

func (h *health) measuredLag(records int64) {
	h.mu.Lock()
	h.lag, h.lagAt = records, time.Now()
	h.mu.Unlock()
}

// problem says why the loop counts as stuck ("" while it is healthy).
func (h *health) problem(now time.Time) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	still := now.Sub(h.advancedAt)
	switch {
	case still <= h.stallAfter:
		return ""
	case now.Sub(h.lagAt) > h.stallAfter:
		return fmt.Sprintf("%s: no progress and no lag reading for %.0f s", h.name, still.Seconds())
	case h.lag > 0:
		return fmt.Sprintf("%s: no progress for %.0f s with %d records waiting", h.name, still.Seconds(), h.lag)
	}
	return "" // idle: nothing to read
}

func (h *health) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if problem := h.problem(time.Now()); problem != "" {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, problem)
		return
	}
	fmt.Fprintln(w, "ok")
}

// serveMetrics exposes /metrics and /healthz, as every component of the platform does.
func (d *dispatcher) serveMetrics() error {
	if d.cfg.MetricsAddress == "" {
		return nil
	}
	listener, err := net.Listen("tcp", d.cfg.MetricsAddress)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.Handler())
	mux.Handle("/healthz", d.health)
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := server.Serve(listener); err != nil && !strings.Contains(err.Error(), "closed") {
			fmt.Println("metrics server:", err)
		}
	}()
	return nil
}

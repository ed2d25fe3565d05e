// Command fraud-kafkasource is the local stand-in for Knative Eventing's KafkaSource, in Go:
// Kafka records in, binary-mode CloudEvents out, one per HTTP request.
//
// It keeps the contract of the Python stand-in (fraud_app.eventing), which `fraud dispatch`
// configures it from: the same manifest spec (topics, group, ordering, retry and backoff),
// the same CloudEvent attributes, per-key order with different keys delivered
// concurrently, dead letters with the reason before an offset is committed, backpressure
// by pausing the fetch, and the same metric names. It exists because delivery is per
// event, and in Python it cost about half a millisecond of CPU per event.
//
// Configuration: a JSON object in the environment variable FRAUD_KAFKASOURCE_CONFIG (the
// broker's credentials among it, so they never appear on a command line).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

const configEnv = "FRAUD_KAFKASOURCE_CONFIG"

type config struct {
	BootstrapServers string   `json:"bootstrap_servers"`
	ClientID         string   `json:"client_id"`
	SecurityProtocol string   `json:"security_protocol"`
	SASLMechanism    string   `json:"sasl_mechanism"`
	SASLUsername     string   `json:"sasl_username"`
	SASLPassword     string   `json:"sasl_password"`
	SSLCAFile        string   `json:"ssl_ca_file"`
	SSLCertFile      string   `json:"ssl_cert_file"`
	SSLKeyFile       string   `json:"ssl_key_file"`
	Group            string   `json:"consumer_group"`
	Topics           []string `json:"topics"`
	Ordering         string   `json:"ordering"`
	InitialOffset    string   `json:"initial_offset"`
	Retry            int      `json:"retry"`
	BackoffPolicy    string   `json:"backoff_policy"`
	BackoffDelayS    float64  `json:"backoff_delay_s"`
	Source           string   `json:"source"`
	Sinks            []string `json:"sinks"`
	MaxInFlight      int      `json:"max_in_flight"`
	MaxPending       int      `json:"max_pending"`
	TimeoutS         float64  `json:"timeout_s"`
	CommitIntervalS  float64  `json:"commit_interval_s"`
	DeadLetterTopic  string   `json:"dead_letter_topic"`
	MetricsAddress   string   `json:"metrics_address"`
	StallAfterS      float64  `json:"stall_after_s"`
	IdleExitS        float64  `json:"idle_exit_s"` // negative: never
}

func (c *config) check() error {
	switch {
	case c.BootstrapServers == "":
		return errors.New("bootstrap_servers: is required")
	case c.Group == "":
		return errors.New("consumer_group: is required")
	case len(c.Topics) == 0:
		return errors.New("topics: at least one is required")
	case len(c.Sinks) == 0:
		return errors.New("sinks: at least one is required")
	case c.Ordering != "ordered" && c.Ordering != "unordered":
		return fmt.Errorf("ordering: %q is neither ordered nor unordered", c.Ordering)
	case c.InitialOffset != "earliest" && c.InitialOffset != "latest":
		return fmt.Errorf("initial_offset: %q is neither earliest nor latest", c.InitialOffset)
	case c.BackoffPolicy != "linear" && c.BackoffPolicy != "exponential":
		return fmt.Errorf("backoff_policy: %q is neither linear nor exponential", c.BackoffPolicy)
	case c.Retry < 0 || c.BackoffDelayS < 0:
		return errors.New("retry, backoff_delay_s: must not be negative")
	case c.MaxInFlight < 1 || c.MaxPending < 1 || c.TimeoutS <= 0 || c.CommitIntervalS <= 0:
		return errors.New("max_in_flight, max_pending, timeout_s, commit_interval_s: must be positive")
	case c.DeadLetterTopic == "":
		return errors.New("dead_letter_topic: is required")
	}
	return nil
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

func main() {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if os.Getenv("GOMAXPROCS") == "" {
		// The work is waiting on sockets; with one scheduler thread a delivery does not wake
		// another thread (the scheduler's hand-offs were most of this process's CPU).
		runtime.GOMAXPROCS(1)
	}
	var cfg config
	raw := os.Getenv(configEnv)
	if raw == "" {
		fmt.Fprintf(os.Stderr, "%s: is not set (run it through `fraud dispatch`)\n", configEnv)
		os.Exit(2)
	}
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintf(os.Stderr, "%s: not a valid configuration: %v\n", configEnv, err)
		os.Exit(2)
	}
	if err := cfg.check(); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", configEnv, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	d, err := newDispatcher(&cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "dispatcher: %v\n", err)
		os.Exit(1)
	}
	if err := d.serveMetrics(); err != nil {
		fmt.Fprintf(os.Stderr, "metrics_address %s: %v\n", cfg.MetricsAddress, err)
		os.Exit(1)
	}
	d.run(ctx)
	fmt.Printf("delivered %d, dead-lettered %d\n", d.delivered.Load(), d.deadLettered.Load())
}

type dispatcher struct {
	cfg          *config
	client       *kgo.Client
	sender       *sender
	tracker      *offsetTracker
	health       *health
	gate         chan struct{} // at most max_in_flight deliveries at once
	delivered    atomic.Int64
	deadLettered atomic.Int64
	assigned     atomic.Int64 // partitions owned now

	mu     sync.Mutex
	chains map[chainKey][]*event // per key: records waiting behind the one in flight
	wg     sync.WaitGroup
}

type chainKey struct {
	topic     string
	partition int32
	key       string
}

func newDispatcher(cfg *config) (*dispatcher, error) {
	d := &dispatcher{
		cfg:     cfg,
		tracker: newOffsetTracker(),
		health:  newHealth(cfg.Group, seconds(cfg.StallAfterS)),
		gate:    make(chan struct{}, cfg.MaxInFlight),
		chains:  map[chainKey][]*event{},
	}
	reset := kgo.NewOffset().AtEnd()
	if cfg.InitialOffset == "earliest" {
		reset = kgo.NewOffset().AtStart()
	}
	opts := []kgo.Opt{
		kgo.SeedBrokers(splitServers(cfg.BootstrapServers)...),
		kgo.ClientID(cfg.ClientID),
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(cfg.Topics...),
		kgo.ConsumeResetOffset(reset),
		kgo.DisableAutoCommit(),
		kgo.SessionTimeout(10 * time.Second),
		kgo.HeartbeatInterval(time.Second),
		// The broker answers a fetch as soon as one record arrives; this only bounds the wait
		// on idle partitions (as the librdkafka consumers of the scoring path do).
		kgo.FetchMaxWait(100 * time.Millisecond),
		// What is fetched ahead bounds memory while the sink does not answer (with
		// max_pending); librdkafka's default would be 64 MiB.
		kgo.FetchMaxBytes(8 << 20),
		kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, got map[string][]int32) {
			d.assigned.Add(int64(count(got)))
		}),
		kgo.OnPartitionsRevoked(d.revoked),
		kgo.OnPartitionsLost(d.lost),
		// Rebalances wait until the loop has started what it polled and handed out its
		// commit (AllowRebalance), so nothing is started or committed for a partition after
		// its revoke callback has run.
		kgo.BlockRebalanceOnPoll(),
		// Dead letters: acks from every in-sync replica, idempotent (franz-go's defaults),
		// keyed records partitioned with murmur2 as Java clients do.
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
	}
	security, err := securityOptions(cfg)
	if err != nil {
		return nil, err
	}
	client, err := kgo.NewClient(append(opts, security...)...)
	if err != nil {
		return nil, err
	}
	d.client = client
	d.sender = &sender{
		client: &http.Client{
			Timeout: seconds(cfg.TimeoutS),
			Transport: &http.Transport{
				DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
				MaxIdleConns:        cfg.MaxInFlight,
				MaxIdleConnsPerHost: cfg.MaxInFlight,
				MaxConnsPerHost:     cfg.MaxInFlight,
				IdleConnTimeout:     60 * time.Second,
				DisableCompression:  true,
			},
		},
		sinks:         cfg.Sinks,
		source:        cfg.Source,
		retry:         cfg.Retry,
		exponential:   cfg.BackoffPolicy == "exponential",
		backoffDelay:  seconds(cfg.BackoffDelayS),
		sleep:         sleepContext,
		onRetry:       func() { deliveries.WithLabelValues("retry").Inc() },
		onDelivered:   func(since time.Duration) { deliverySeconds.Observe(max(0, since.Seconds())) },
		maxReasonBody: 500,
	}
	return d, nil
}

func count(partitions map[string][]int32) int {
	n := 0
	for _, p := range partitions {
		n += len(p)
	}
	return n
}

func splitServers(servers string) []string {
	var out []string
	for _, s := range strings.Split(servers, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// securityOptions maps the broker's security settings (KafkaSettings) onto franz-go.
func securityOptions(cfg *config) ([]kgo.Opt, error) {
	var opts []kgo.Opt
	protocol := cfg.SecurityProtocol
	if protocol == "" {
		protocol = "PLAINTEXT"
	}
	switch protocol {
	case "PLAINTEXT":
		return nil, nil
	case "SSL", "SASL_SSL":
		tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.SSLCAFile != "" {
			pem, err := os.ReadFile(cfg.SSLCAFile)
			if err != nil {
				return nil, fmt.Errorf("ssl_ca_file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("ssl_ca_file: %s holds no PEM certificate", cfg.SSLCAFile)
			}
			tlsConfig.RootCAs = pool
		}
		if cfg.SSLCertFile != "" {
			pair, err := tls.LoadX509KeyPair(cfg.SSLCertFile, cfg.SSLKeyFile)
			if err != nil {
				return nil, fmt.Errorf("ssl_cert_file, ssl_key_file: %w", err)
			}
			tlsConfig.Certificates = []tls.Certificate{pair}
		}
		opts = append(opts, kgo.DialTLSConfig(tlsConfig))
	case "SASL_PLAINTEXT":
	default:
		return nil, fmt.Errorf("security_protocol: %q is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL", protocol)
	}
	if protocol == "SASL_PLAINTEXT" || protocol == "SASL_SSL" {
		var mechanism sasl.Mechanism
		switch cfg.SASLMechanism {
		case "SCRAM-SHA-512":
			mechanism = scram.Auth{User: cfg.SASLUsername, Pass: cfg.SASLPassword}.AsSha512Mechanism()
		case "SCRAM-SHA-256":
			mechanism = scram.Auth{User: cfg.SASLUsername, Pass: cfg.SASLPassword}.AsSha256Mechanism()
		case "PLAIN":
			mechanism = plain.Auth{User: cfg.SASLUsername, Pass: cfg.SASLPassword}.AsMechanism()
		default:
			return nil, fmt.Errorf("sasl_mechanism: %q is not one of SCRAM-SHA-512, SCRAM-SHA-256, PLAIN", cfg.SASLMechanism)
		}
		opts = append(opts, kgo.SASL(mechanism))
	}
	return opts, nil
}

// run consumes until ctx ends, then finishes what it started (those records are not
// committed yet) within the retry budget, commits, and leaves the group.
func (d *dispatcher) run(ctx context.Context) {
	deliverCtx, cancelDeliveries := context.WithCancel(context.Background())
	defer cancelDeliveries()
	go d.measureLag(ctx)
	paused := false
	lastEvent := time.Now()
	nextCommit := time.Now().Add(seconds(d.cfg.CommitIntervalS))
	for ctx.Err() == nil {
		outstanding := d.tracker.pending()
		pending.Set(float64(outstanding))
		if outstanding >= d.cfg.MaxPending && !paused {
			d.client.PauseFetchTopics(d.cfg.Topics...)
			paused = true
			slog.Warn("records waiting for the sink: reading paused until deliveries catch up", "max_pending", d.cfg.MaxPending)
		} else if paused && outstanding < d.cfg.MaxPending {
			d.client.ResumeFetchTopics(d.cfg.Topics...)
			paused = false
		}
		pollCtx, cancel := context.WithTimeout(ctx, seconds(d.cfg.CommitIntervalS))
		fetches := d.client.PollRecords(pollCtx, 500)
		cancel()
		if fetches.IsClientClosed() {
			break
		}
		fetches.EachError(func(topic string, partition int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				slog.Warn("consumer", "topic", topic, "partition", partition, "error", err)
			}
		})
		n := 0
		fetches.EachRecord(func(r *kgo.Record) {
			n++
			d.start(deliverCtx, &event{r.Topic, r.Partition, r.Offset, r.Key, r.Value, r.Timestamp})
		})
		now := time.Now()
		if n > 0 || d.tracker.pending() > 0 {
			lastEvent = now
		} else if d.cfg.IdleExitS >= 0 && d.assigned.Load() > 0 && now.Sub(lastEvent) > seconds(d.cfg.IdleExitS) {
			break
		}
		if now.After(nextCommit) {
			// Not the signal's context: a commit in flight at SIGTERM must still land, its
			// positions have left the tracker.
			d.commit(context.Background(), false)
			nextCommit = now.Add(seconds(d.cfg.CommitIntervalS))
		}
		d.client.AllowRebalance()
	}
	d.client.AllowRebalance()
	grace := seconds(d.cfg.TimeoutS * float64(d.cfg.Retry+1))
	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		slog.Warn("stopping with deliveries unfinished: they stay uncommitted and are delivered again", "pending", d.tracker.pending())
		cancelDeliveries()
	}
	d.commit(context.Background(), true)
	d.client.CloseAllowingRebalance()
}

func (d *dispatcher) start(ctx context.Context, e *event) {
	tp := topicPartition{e.topic, e.partition}
	if !d.tracker.started(tp, e.offset) {
		return // still in flight from before a rebalance
	}
	if d.cfg.Ordering == "unordered" {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.handle(ctx, e)
		}()
		return
	}
	key := chainKey{e.topic, e.partition, string(e.key)}
	d.mu.Lock()
	if waiting, busy := d.chains[key]; busy {
		d.chains[key] = append(waiting, e)
		d.mu.Unlock()
		return
	}
	d.chains[key] = nil
	d.mu.Unlock()
	d.wg.Add(1)
	go d.runChain(ctx, key, e)
}

// runChain delivers one key's records one after another.
func (d *dispatcher) runChain(ctx context.Context, key chainKey, first *event) {
	defer d.wg.Done()
	for e := first; e != nil; {
		if !d.handle(ctx, e) {
			d.mu.Lock()
			delete(d.chains, key)
			d.mu.Unlock()
			return
		}
		d.mu.Lock()
		waiting := d.chains[key]
		if len(waiting) == 0 {
			delete(d.chains, key)
			e = nil
		} else {
			e, d.chains[key] = waiting[0], waiting[1:]
		}
		d.mu.Unlock()
	}
}

// handle delivers one record, dead-letters it if that fails, and marks it finished; false
// when stopping cut it short (it stays unfinished, so uncommitted).
func (d *dispatcher) handle(ctx context.Context, e *event) bool {
	d.gate <- struct{}{}
	reason := d.sender.deliver(ctx, e)
	<-d.gate
	if ctx.Err() != nil {
		return false
	}
	if reason == "" {
		deliveries.WithLabelValues("success").Inc()
		d.delivered.Add(1)
	} else {
		// The offset stays uncommitted until the dead letter is durable.
		for !d.deadLetter(ctx, e, reason) {
			if sleepContext(ctx, time.Second) != nil {
				return false
			}
		}
	}
	d.tracker.finished(topicPartition{e.topic, e.partition}, e.offset)
	d.health.advanced()
	return true
}

func (d *dispatcher) deadLetter(ctx context.Context, e *event, reason string) bool {
	if len(reason) > 4000 {
		reason = reason[:4000]
	}
	record := &kgo.Record{
		Topic: d.cfg.DeadLetterTopic,
		Key:   e.key,
		Value: e.value,
		Headers: []kgo.RecordHeader{
			{Key: "dlq-component", Value: []byte(component)},
			{Key: "dlq-reason", Value: []byte(reason)},
			{Key: "dlq-source-topic", Value: []byte(e.topic)},
			{Key: "dlq-source-partition", Value: []byte(strconv.Itoa(int(e.partition)))},
			{Key: "dlq-source-offset", Value: []byte(strconv.FormatInt(e.offset, 10))},
		},
	}
	produceCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := d.client.ProduceSync(produceCtx, record).FirstErr(); err != nil {
		slog.Error("dead-lettering failed; retrying", "topic", e.topic, "partition", e.partition, "offset", e.offset, "error", err)
		return false
	}
	deliveries.WithLabelValues("dead_letter").Inc()
	deadLetters.WithLabelValues(component, "delivery").Inc()
	d.deadLettered.Add(1)
	return true
}

func (d *dispatcher) commit(ctx context.Context, wait bool) {
	positions := d.tracker.committable()
	if len(positions) == 0 {
		return
	}
	offsets := map[string]map[int32]kgo.EpochOffset{}
	for tp, offset := range positions {
		if offsets[tp.topic] == nil {
			offsets[tp.topic] = map[int32]kgo.EpochOffset{}
		}
		offsets[tp.topic][tp.partition] = kgo.EpochOffset{Epoch: -1, Offset: offset}
	}
	onDone := func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, _ *kmsg.OffsetCommitResponse, err error) {
		if err != nil { // redelivered later: at-least-once
			slog.Warn("offset commit failed", "error", err)
		}
	}
	if wait {
		d.client.CommitOffsetsSync(ctx, offsets, onDone)
	} else {
		d.client.CommitOffsets(ctx, offsets, onDone)
	}
}

// revoked runs before partitions move: commit what finished; what is still in flight is
// delivered again by the partitions' next owner (at-least-once).
func (d *dispatcher) revoked(ctx context.Context, client *kgo.Client, partitions map[string][]int32) {
	d.commit(ctx, true)
	d.lost(ctx, client, partitions)
}

// lost runs when the group membership is already gone (a fatal group error): a commit
// would fail, so the partitions are only forgotten.
func (d *dispatcher) lost(_ context.Context, _ *kgo.Client, partitions map[string][]int32) {
	for topic, ps := range partitions {
		for _, p := range ps {
			d.tracker.forget(topicPartition{topic, p})
		}
	}
	d.assigned.Add(-int64(count(partitions)))
}

// measureLag reads the group's lag every 5 s, for /healthz.
func (d *dispatcher) measureLag(ctx context.Context) {
	admin := kadm.NewClient(d.client)
	ticker := time.NewTicker(5 * time.Second)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		lagCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		lags, err := admin.Lag(lagCtx, d.cfg.Group)
		cancel()
		if err != nil {
			continue
		}
		if described, ok := lags[d.cfg.Group]; ok && described.Error() == nil {
			d.health.measuredLag(described.Lag.Total())
		}
	}
}

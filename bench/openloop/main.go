// Command openloop is the bench's constant-rate load generator: requests start on a fixed schedule whatever
// the answers do (an open loop), and each one's latency is measured from its intended start, so a stall of the
// server counts against every request it delays (no coordinated omission, unlike wrk's closed loop).
//
// A request is sent by one of a pool of slots, each a request of its own (a user's login, a session's refresh);
// a slot sends one request at a time and, with `chain`, puts the refresh token of each answer into its next
// request. The schedule never waits for a slot: a request that finds none free waits for one itself, from its
// intended start, and is counted.
//
//	openloop plan.json > report.json
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"
)

// Slot is one request, as the plan gives it.
type Slot struct {
	Method  string            `json:"method"`
	Path    string            `json:"path"`
	Body    string            `json:"body"`
	Headers map[string]string `json:"headers"`
	Chain   string            `json:"chain"` // the answer's JSON member that holds the next token
	Token   string            `json:"token"` // the token in Body that it replaces
}

// Plan is what to send, where and how fast.
type Plan struct {
	URL       string  `json:"url"`
	Rate      float64 `json:"rate"` // requests per second
	Seconds   float64 `json:"seconds"`
	Timeout   float64 `json:"timeout_seconds"`
	Addresses int     `json:"addresses"` // client addresses sent as X-Forwarded-For, in turn
	Slots     []Slot  `json:"slots"`
}

type slot struct {
	Slot
	before, after string
}

type outcome struct {
	latency, slotWait, service time.Duration
	status                     int
	sample                     string
	err                        bool
	chainBreak                 bool
}

var chainable = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

func load(path string) (Plan, []*slot, error) {
	var plan Plan
	raw, err := os.ReadFile(path)
	if err != nil {
		return plan, nil, err
	}
	if err = json.Unmarshal(raw, &plan); err != nil {
		return plan, nil, err
	}
	if plan.Rate <= 0 || plan.Seconds <= 0 || len(plan.Slots) == 0 {
		return plan, nil, fmt.Errorf("a plan needs a rate, seconds and at least one slot")
	}
	slots := make([]*slot, len(plan.Slots))
	for i, s := range plan.Slots {
		slots[i] = &slot{Slot: s}
		if s.Chain != "" {
			at := strings.Index(s.Body, s.Token)
			if !chainable.MatchString(s.Token) || at < 0 || strings.Count(s.Body, s.Token) != 1 {
				return plan, nil, fmt.Errorf("slot %d: its body must carry its chainable token once", i)
			}
			slots[i].before, slots[i].after = s.Body[:at], s.Body[at+len(s.Token):]
		}
	}
	return plan, slots, nil
}

func address(n int, count int) string {
	n %= count
	return fmt.Sprintf("10.%d.%d.%d", 100+n/65536, n/256%256, n%256)
}

func send(client *http.Client, plan Plan, s *slot, n int) (status int, body []byte, failed bool) {
	payload := s.Body
	if s.Chain != "" {
		payload = s.before + s.Token + s.after
	}
	request, err := http.NewRequest(s.Method, plan.URL+s.Path, strings.NewReader(payload))
	if err != nil {
		return 0, nil, true
	}
	if payload == "" {
		request.Body, request.ContentLength = http.NoBody, 0
	}
	for name, value := range s.Headers {
		request.Header.Set(name, value)
	}
	request.Header.Set("X-Forwarded-For", address(n, plan.Addresses))
	answer, err := client.Do(request)
	if err != nil {
		return 0, nil, true
	}
	defer answer.Body.Close()
	body, err = io.ReadAll(answer.Body)
	return answer.StatusCode, body, err != nil
}

// nextToken is the chained member of a 200 answer, or "" when it has none that can be chained.
func nextToken(s *slot, status int, body []byte) string {
	if status != 200 {
		return ""
	}
	var answer map[string]any
	if json.Unmarshal(body, &answer) != nil {
		return ""
	}
	token, _ := answer[s.Chain].(string)
	if !chainable.MatchString(token) {
		return ""
	}
	return token
}

// clamp is n within [0, size).
func clamp(n, size int) int {
	if n < 0 {
		return 0
	}
	if n >= size {
		return size - 1
	}
	return n
}

func percentiles(values []time.Duration) map[string]float64 {
	found := map[string]float64{}
	if len(values) == 0 {
		return found
	}
	sort.Slice(values, func(i, j int) bool { return values[i] < values[j] })
	for _, q := range []float64{50, 90, 99, 99.9} {
		rank := int(math.Ceil(q/100*float64(len(values)))) - 1
		found[fmt.Sprintf("p%g", q)] = float64(values[clamp(rank, len(values))]) / 1e6
	}
	found["max"] = float64(values[len(values)-1]) / 1e6
	return found
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: openloop plan.json")
		os.Exit(2)
	}
	plan, slots, err := load(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "openloop:", err)
		os.Exit(2)
	}
	if plan.Addresses <= 0 {
		plan.Addresses = 1
	}
	if plan.Timeout <= 0 {
		plan.Timeout = 10 // a request is never waited for without end
	}
	timeout := time.Duration(plan.Timeout * float64(time.Second))
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{
		MaxIdleConnsPerHost: len(slots), DisableCompression: true, IdleConnTimeout: time.Minute,
		Proxy: nil, ForceAttemptHTTP2: false}}
	free := make(chan *slot, len(slots))
	for _, s := range slots {
		free <- s
	}

	total := int(plan.Rate * plan.Seconds)
	interval := time.Duration(float64(time.Second) / plan.Rate)
	outcomes := make([]outcome, total)
	lags := make([]time.Duration, total)
	var wg sync.WaitGroup
	began := time.Now().Add(10 * time.Millisecond)
	for n := 0; n < total; n++ {
		intended := began.Add(time.Duration(n) * interval)
		time.Sleep(time.Until(intended))
		lags[n] = time.Since(intended)
		wg.Add(1)
		go func(n int, intended time.Time) {
			defer wg.Done()
			ready := time.Now()
			s := <-free
			start := time.Now()
			status, body, failed := send(client, plan, s, n)
			done := time.Now()
			o := outcome{latency: done.Sub(intended), slotWait: start.Sub(ready), service: done.Sub(start),
				status: status, err: failed}
			if status >= 300 {
				sample := body
				if len(sample) > 100 {
					sample = sample[:100]
				}
				o.sample = fmt.Sprintf("%d %s", status, strings.TrimRight(string(sample), " \t\r\n"))
			}
			if s.Chain != "" {
				if token := nextToken(s, status, body); token != "" {
					s.Token = token
				} else {
					o.chainBreak = true
				}
			}
			outcomes[n] = o
			free <- s
		}(n, intended)
	}
	wg.Wait()
	finished := time.Since(began)

	statuses, bodies := map[string]int{}, map[string]int{}
	var latencies, services []time.Duration
	socketErrors, chainBreaks, waited := 0, 0, 0
	for _, o := range outcomes {
		if o.slotWait > time.Millisecond {
			waited++
		}
		if o.chainBreak {
			chainBreaks++
		}
		if o.err {
			socketErrors++
			continue
		}
		statuses[fmt.Sprint(o.status)]++
		if o.sample != "" {
			bodies[o.sample]++
		}
		latencies = append(latencies, o.latency)
		services = append(services, o.service)
	}
	report := map[string]any{
		// The schedule's length, over which the requests were offered; and until the last answer came.
		"requests": total, "rate": plan.Rate, "seconds": float64(total) / plan.Rate,
		"finished_seconds": finished.Seconds(), "slots": len(slots),
		"statuses": statuses, "bodies": bodies, "socket_errors": socketErrors, "chain_breaks": chainBreaks,
		// From each request's intended start: what a client on the schedule sees.
		"latency_ms": percentiles(latencies),
		// From the moment a slot sent it: what a closed loop would have reported.
		"service_ms": percentiles(services),
		// How late the schedule itself fired, and how many requests waited over 1 ms for a free slot.
		"dispatch_lag_ms": percentiles(lags), "waited_for_slot": waited,
	}
	var out bytes.Buffer
	encoder := json.NewEncoder(&out)
	if err := encoder.Encode(report); err != nil {
		fmt.Fprintln(os.Stderr, "openloop:", err)
		os.Exit(1)
	}
	os.Stdout.Write(out.Bytes())
}

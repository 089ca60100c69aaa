package runtime

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// probe runs the container's readiness and liveness probes while p runs.
func (c *container) probe(ctx context.Context, p *procEntry) {
	if rp := c.spec.ReadinessProbe; rp != nil {
		go c.probeLoop(ctx, rp, func(ok bool) {
			c.w.mu.Lock()
			changed := c.ready != ok && c.proc == p && c.term == nil
			if changed {
				c.ready = ok
			}
			c.w.mu.Unlock()
			if changed {
				c.w.changed()
			}
		})
	}
	if lp := c.spec.LivenessProbe; lp != nil {
		go c.probeLoop(ctx, lp, func(ok bool) {
			if ok {
				return
			}
			c.w.log().Info("liveness probe failed, restarting", "container", c.spec.Name)
			grace := int64(30)
			if g := c.w.spec.TerminationGracePeriodSeconds; g != nil {
				grace = *g
			}
			if lp.TerminationGracePeriodSeconds != nil {
				grace = *lp.TerminationGracePeriodSeconds
			}
			signalGroup(p.pid, 15)
			t := time.NewTimer(time.Duration(grace) * time.Second)
			defer t.Stop()
			select {
			case <-p.done:
			case <-t.C:
				signalGroup(p.pid, 9)
			case <-ctx.Done():
			}
		})
	}
}

// probeLoop reports a result each time the threshold logic flips it.
func (c *container) probeLoop(ctx context.Context, pr *corev1.Probe, report func(bool)) {
	period := time.Duration(max(pr.PeriodSeconds, 1)) * time.Second
	timeout := time.Duration(max(pr.TimeoutSeconds, 1)) * time.Second
	failThreshold := max(pr.FailureThreshold, 1)
	successThreshold := max(pr.SuccessThreshold, 1)
	delay := time.Duration(pr.InitialDelaySeconds) * time.Second
	t := time.NewTimer(delay)
	defer t.Stop()
	var fails, successes int32
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := c.runProbe(ctx, pr, timeout)
		if err == nil {
			fails, successes = 0, successes+1
			if successes >= successThreshold {
				report(true)
			}
		} else {
			successes, fails = 0, fails+1
			if fails >= failThreshold {
				report(false)
				fails = 0
			}
		}
		t.Reset(period)
	}
}

func (c *container) runProbe(ctx context.Context, pr *corev1.Probe, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch {
	case pr.Exec != nil:
		if len(pr.Exec.Command) == 0 {
			return errors.New("exec probe without a command")
		}
		env, dir, err := c.w.rt.execEnv(ctx, c)
		if err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, pr.Exec.Command[0], pr.Exec.Command[1:]...)
		cmd.Env, cmd.Dir = env, dir
		return cmd.Run()
	case pr.HTTPGet != nil:
		port, err := c.resolvePort(pr.HTTPGet.Port.String())
		if err != nil {
			return err
		}
		host := pr.HTTPGet.Host
		if host == "" {
			host = c.w.probeHost()
		}
		scheme := strings.ToLower(string(pr.HTTPGet.Scheme))
		if scheme == "" {
			scheme = "http"
		}
		path := pr.HTTPGet.Path
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+net.JoinHostPort(host, strconv.Itoa(port))+path, nil)
		if err != nil {
			return err
		}
		for _, h := range pr.HTTPGet.HTTPHeaders {
			req.Header.Add(h.Name, h.Value)
		}
		client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe status %d", resp.StatusCode)
		}
		return nil
	case pr.TCPSocket != nil:
		port, err := c.resolvePort(pr.TCPSocket.Port.String())
		if err != nil {
			return err
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(c.w.probeHost(), strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	}
	return errors.New("probe has no handler")
}

func (c *container) resolvePort(p string) (int, error) {
	if n, err := strconv.Atoi(p); err == nil {
		if n <= 0 || n > 65535 {
			return 0, fmt.Errorf("probe port %d out of range", n)
		}
		return n, nil
	}
	for _, cp := range c.spec.Ports {
		if cp.Name == p {
			return int(cp.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("probe port %q not found", p)
}

// probeHost is where probes connect: the pod IP with its own network, the
// node's loopback with host networking.
func (w *podWorker) probeHost() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.podIP != nil {
		return w.podIP.String()
	}
	return "127.0.0.1"
}

package kubeletapi

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	remotecommandconsts "k8s.io/apimachinery/pkg/util/remotecommand"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"

	"github.com/tether-dev/tether/internal/nodeagent/runtime"
)

const streamCreationTimeout = 30 * time.Second

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok"))
	})
	mux.HandleFunc("GET /pods", s.pods)
	mux.HandleFunc("GET /pods/{$}", s.pods)
	mux.HandleFunc("GET /runningpods/{$}", s.pods)
	mux.HandleFunc("GET /containerLogs/{ns}/{pod}/{container}", s.containerLogs)
	for _, m := range []string{"GET", "POST"} {
		mux.HandleFunc(m+" /exec/{ns}/{pod}/{container}", s.exec)
		mux.HandleFunc(m+" /exec/{ns}/{pod}/{uid}/{container}", s.exec)
		mux.HandleFunc(m+" /attach/{ns}/{pod}/{container}", s.attach)
		mux.HandleFunc(m+" /attach/{ns}/{pod}/{uid}/{container}", s.attach)
		mux.HandleFunc(m+" /portForward/{ns}/{pod}", s.portForward)
		mux.HandleFunc(m+" /portForward/{ns}/{pod}/{uid}", s.portForward)
	}
	mux.HandleFunc("POST /run/{ns}/{pod}/{container}", s.run)
	mux.HandleFunc("POST /run/{ns}/{pod}/{uid}/{container}", s.run)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, fmt.Sprintf("no kubelet API handler for %s %s", r.Method, r.URL.Path))
	})
	return mux
}

func (s *Server) pods(w http.ResponseWriter, _ *http.Request) {
	list := corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"}}
	for _, p := range s.cfg.Provider.Pods() {
		p.APIVersion, p.Kind = "v1", "Pod"
		list.Items = append(list.Items, *p)
	}
	w.Header().Set("Content-Type", "application/json")
	if err := jsonEncode(w, &list); err != nil {
		s.cfg.Logger.Debug("kubelet API: /pods", "err", err)
	}
}

// LogOptionsFromQuery parses kubelet's containerLogs query parameters.
func LogOptionsFromQuery(q url.Values) (runtime.LogOptions, error) {
	var o runtime.LogOptions
	boolParam := func(name string, dst *bool) error {
		v := q.Get(name)
		if v == "" {
			return nil
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%s: %q is not a boolean", name, v)
		}
		*dst = b
		return nil
	}
	intParam := func(name string) (*int64, error) {
		v := q.Get(name)
		if v == "" {
			return nil, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not an integer", name, v)
		}
		return &n, nil
	}
	for name, dst := range map[string]*bool{"follow": &o.Follow, "previous": &o.Previous, "timestamps": &o.Timestamps} {
		if err := boolParam(name, dst); err != nil {
			return o, err
		}
	}
	var err error
	if o.TailLines, err = intParam("tailLines"); err != nil {
		return o, err
	}
	if o.TailLines != nil && *o.TailLines < 0 {
		return o, errors.New("tailLines must be >= 0")
	}
	if o.LimitBytes, err = intParam("limitBytes"); err != nil {
		return o, err
	}
	if o.LimitBytes != nil && *o.LimitBytes < 1 {
		return o, errors.New("limitBytes must be > 0")
	}
	since, err := intParam("sinceSeconds")
	if err != nil {
		return o, err
	}
	if since != nil {
		if *since < 1 {
			return o, errors.New("sinceSeconds must be > 0")
		}
		t := time.Now().Add(-time.Duration(*since) * time.Second)
		o.SinceTime = &t
	}
	if v := q.Get("sinceTime"); v != "" {
		if since != nil {
			return o, errors.New("at most one of sinceTime or sinceSeconds may be specified")
		}
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return o, fmt.Errorf("sinceTime: %w", err)
		}
		o.SinceTime = &t
	}
	return o, nil
}

type flushWriter struct {
	w http.ResponseWriter
	f http.Flusher
}

func (f flushWriter) Write(p []byte) (int, error) { return f.w.Write(p) }
func (f flushWriter) Flush() {
	if f.f != nil {
		f.f.Flush()
	}
}

func (s *Server) containerLogs(w http.ResponseWriter, r *http.Request) {
	ns, pod, container := r.PathValue("ns"), r.PathValue("pod"), r.PathValue("container")
	opts, err := LogOptionsFromQuery(r.URL.Query())
	if err != nil {
		writeStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, err.Error())
		return
	}
	if !s.known(ns, pod, container) {
		writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, fmt.Sprintf("container %q in pod %s/%s not found on this node", container, ns, pod))
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	f, _ := w.(http.Flusher)
	if err := s.cfg.Provider.Logs(r.Context(), ns, pod, container, opts, flushWriter{w, f}); err != nil {
		if errors.Is(err, runtime.ErrNotFound) {
			writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, err.Error())
			return
		}
		writeStatus(w, http.StatusInternalServerError, metav1.StatusReasonInternalError, err.Error())
	}
}

// known reports whether ns/pod exists with container (or any, if "").
func (s *Server) known(ns, pod, container string) bool {
	for _, p := range s.cfg.Provider.Pods() {
		if p.Namespace != ns || p.Name != pod {
			continue
		}
		if container == "" {
			return true
		}
		for _, c := range append(append([]corev1.Container{}, p.Spec.Containers...), p.Spec.InitContainers...) {
			if c.Name == container {
				return true
			}
		}
	}
	return false
}

func (s *Server) exec(w http.ResponseWriter, r *http.Request) {
	ns, pod, uid, container := r.PathValue("ns"), r.PathValue("pod"), r.PathValue("uid"), r.PathValue("container")
	if !s.known(ns, pod, container) {
		writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, fmt.Sprintf("container %q in pod %s/%s not found on this node", container, ns, pod))
		return
	}
	cmd := r.URL.Query()["command"]
	if len(cmd) == 0 {
		writeStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, "exec needs at least one command parameter")
		return
	}
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, err.Error())
		return
	}
	remotecommand.ServeExec(w, r, s.cfg.Provider, ns+"/"+pod, uid, container, cmd, opts,
		s.cfg.StreamIdleTimeout, streamCreationTimeout, remotecommandconsts.SupportedStreamingProtocols)
}

func (s *Server) attach(w http.ResponseWriter, r *http.Request) {
	ns, pod, uid, container := r.PathValue("ns"), r.PathValue("pod"), r.PathValue("uid"), r.PathValue("container")
	if !s.known(ns, pod, container) {
		writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, fmt.Sprintf("container %q in pod %s/%s not found on this node", container, ns, pod))
		return
	}
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, err.Error())
		return
	}
	remotecommand.ServeAttach(w, r, s.cfg.Provider, ns+"/"+pod, uid, container, opts,
		s.cfg.StreamIdleTimeout, streamCreationTimeout, remotecommandconsts.SupportedStreamingProtocols)
}

func (s *Server) portForward(w http.ResponseWriter, r *http.Request) {
	ns, pod, uid := r.PathValue("ns"), r.PathValue("pod"), r.PathValue("uid")
	if !s.known(ns, pod, "") {
		writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, fmt.Sprintf("pod %s/%s not found on this node", ns, pod))
		return
	}
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, err.Error())
		return
	}
	portforward.ServePortForward(w, r, s.cfg.Provider, ns+"/"+pod, uid, opts,
		s.cfg.StreamIdleTimeout, streamCreationTimeout, portforward.SupportedProtocols)
}

// run executes a command and returns its combined output (kubelet /run).
func (s *Server) run(w http.ResponseWriter, r *http.Request) {
	ns, pod, uid, container := r.PathValue("ns"), r.PathValue("pod"), r.PathValue("uid"), r.PathValue("container")
	if !s.known(ns, pod, container) {
		writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, fmt.Sprintf("container %q in pod %s/%s not found on this node", container, ns, pod))
		return
	}
	if err := r.ParseForm(); err != nil {
		writeStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, err.Error())
		return
	}
	cmd := strings.Fields(r.Form.Get("cmd"))
	if len(cmd) == 0 {
		writeStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, "run needs a cmd parameter")
		return
	}
	var out limitedBuffer
	out.max = 4 << 20
	err := s.cfg.Provider.ExecInContainer(r.Context(), ns+"/"+pod, uid, container, cmd, nil, &out, &out, false, nil, time.Minute)
	if err != nil && !isExitError(err) {
		writeStatus(w, http.StatusInternalServerError, metav1.StatusReasonInternalError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write(out.b)
}

type exitCoder interface{ ExitStatus() int }

func isExitError(err error) bool {
	var e exitCoder
	return errors.As(err, &e)
}

type limitedBuffer struct {
	b   []byte
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	room := l.max - len(l.b)
	if room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) Close() error { return nil }

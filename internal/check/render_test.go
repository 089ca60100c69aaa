package check

import (
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// chromiumPath is the Debian chromium package's binary (.ci/run installs it).
const chromiumPath = "/usr/bin/chromium"

func sampleReport() *Report {
	r := &Report{Server: "https://127.0.0.1:6443", Egress: "direct", Started: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Nodes: []Node{{Name: "node-1", Ready: true}, {Name: "node-2", Ready: true}}}
	for _, p := range pathOrder {
		r.Findings = append(r.Findings, Finding{Path: p, Check: "path-wide <check>", Target: "hub", State: Pass, Risk: RiskNone, Evidence: "ok & fine"})
	}
	r.Findings = append(r.Findings,
		Finding{Path: PathHubProxy, Check: "https: proxying does not verify endpoints", Target: "hub", State: Info, Risk: RiskNone, Evidence: "seed"},
		Finding{Path: PathHubKubelet, Check: "kubelet serving certificate issued by the cluster CA", Target: "node-1", Node: "node-1",
			State: Fail, Risk: RiskHigh, Evidence: "self-signed <script>alert(1)</script>", Fix: "use a kubelet-serving CSR"},
		Finding{Path: PathHubKubelet, Check: "kubelet serving certificate issued by the cluster CA", Target: "node-2", Node: "node-2", State: Pass, Risk: RiskNone, Evidence: "cluster CA"})
	return r
}

// chromium runs headless Chromium with args on the page; it fails the test
// clearly when Chromium is not installed.
func chromium(t *testing.T, args ...string) []byte {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("headless Chromium is required to test the HTML report: %v (install the Debian package: apt-get install chromium; .ci/run does)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir()}
	cmd := exec.CommandContext(ctx, chromiumPath, append(base, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
	}
	return stdout.Bytes()
}

// TestHTMLRendersInChromium renders the report in headless Chromium: the
// DOM has one coloured SVG line per path and node with its state, the
// page's text is escaped, and the screenshot shows node-1's failing
// hub→kubelet line in red on the left and the passing paths in green.
func TestHTMLRendersInChromium(t *testing.T) {
	r := sampleReport()
	page := filepath.Join(t.TempDir(), "check.html")
	var buf bytes.Buffer
	if err := r.WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(buf.Bytes(), []byte("<script>alert")) {
		t.Fatal("evidence is not escaped")
	}
	if regexp.MustCompile(`src=|<link|url\(|@import`).Match(buf.Bytes()) {
		t.Fatal("page is not self-contained")
	}
	if err := os.WriteFile(page, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	dom := string(chromium(t, "--dump-dom", "file://"+page))
	lines := regexp.MustCompile(`<line class="path" data-path="([a-z-]+)" data-node="([a-z0-9-]*)" data-state="([a-z]*)"[^>]*stroke="(#[0-9a-f]{6})"`).FindAllStringSubmatch(dom, -1)
	if len(lines) != 2+2*len(nodePaths) {
		t.Fatalf("%d path lines in the DOM, want %d:\n%s", len(lines), 2+2*len(nodePaths), dom)
	}
	for _, l := range lines {
		path, node, state, color := l[1], l[2], State(l[3]), l[4]
		want := Pass
		switch {
		case path == PathHubKubelet && node == "node-1":
			want = Fail
		case path == PathHubProxy:
			want = Info
		}
		if state != want || color != stateColor[want] {
			t.Errorf("line %s/%s: state %s colour %s, want %s %s", path, node, state, color, want, stateColor[want])
		}
	}
	if !strings.Contains(dom, `data-exit-code="1"`) {
		t.Error("summary does not carry exit code 1")
	}

	shot := filepath.Join(t.TempDir(), "shot.png")
	chromium(t, "--window-size=1000,520", "--hide-scrollbars", "--screenshot="+shot, "file://"+page)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	var red, green, redX int
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			cr, cg, cb, _ := img.At(x, y).RGBA()
			switch [3]uint32{cr >> 8, cg >> 8, cb >> 8} {
			case [3]uint32{0xd3, 0x2f, 0x2f}:
				red++
				redX += x
			case [3]uint32{0x2e, 0x7d, 0x32}:
				green++
			}
		}
	}
	t.Logf("screenshot %dx%d: %d red, %d green pixels", b.Dx(), b.Dy(), red, green)
	if red < 300 || green < 5*red {
		t.Fatalf("screenshot: %d red, %d green pixels; want one red line among green ones", red, green)
	}
	if cx := redX / red; cx > b.Dx()/2 {
		t.Fatalf("red pixels centred at x=%d: node-1's line is on the left half", cx)
	}
}

// TestJSONRoundTrip: the JSON output decodes into a Report with a summary.
func TestJSONRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleReport().WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Report
		Summary Summary `json:"summary"`
	}
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Findings) != len(sampleReport().Findings) || got.Summary.High != 1 || got.Summary.ExitCode != 1 {
		t.Fatalf("decoded %+v", got.Summary)
	}
	var table bytes.Buffer
	if err := sampleReport().WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Hub → kubelet (logs, exec, port-forward) — FAIL", "fix: use a kubelet-serving CSR", "exit code 1"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
}

package check

import (
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"strings"
)

// Summary counts findings by state.
type Summary struct {
	Pass     int `json:"pass"`
	Info     int `json:"info"`
	Warn     int `json:"warn"`
	Fail     int `json:"fail"`
	Unknown  int `json:"unknown"`
	High     int `json:"highRisk"`
	ExitCode int `json:"exitCode"`
}

// Summarize counts r's findings.
func (r *Report) Summarize() Summary {
	var s Summary
	for _, f := range r.Findings {
		switch f.State {
		case Pass:
			s.Pass++
		case Info:
			s.Info++
		case Warn:
			s.Warn++
		case Fail:
			s.Fail++
		case Unknown:
			s.Unknown++
		}
		if f.State == Fail && f.Risk == RiskHigh {
			s.High++
		}
	}
	s.ExitCode = r.ExitCode()
	return s
}

func (s Summary) String() string {
	return fmt.Sprintf("%d pass, %d info, %d warn, %d fail (%d high risk), %d could not verify → exit code %d",
		s.Pass, s.Info, s.Warn, s.Fail, s.High, s.Unknown, s.ExitCode)
}

// WriteTable writes the report for a terminal: per path, each finding with
// its state, risk, target, evidence and fix.
func (r *Report) WriteTable(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "tether check of %s (egress: %s, %d node(s))\n", r.Server, orDash(r.Egress), len(r.Nodes))
	for _, p := range pathOrder {
		st := r.PathState(p, "")
		if st == "" {
			continue
		}
		fmt.Fprintf(&b, "\n%s — %s\n", pathTitles[p], strings.ToUpper(string(st)))
		for _, f := range r.Findings {
			if f.Path != p {
				continue
			}
			risk := ""
			if f.Risk != RiskNone && f.Risk != "" {
				risk = " (" + string(f.Risk) + " risk)"
			}
			fmt.Fprintf(&b, "  %-7s %s [%s]%s\n", strings.ToUpper(string(f.State)), f.Check, f.Target, risk)
			fmt.Fprintf(&b, "          %s\n", f.Evidence)
			if f.Fix != "" && f.State != Pass {
				fmt.Fprintf(&b, "          fix: %s\n", f.Fix)
			}
		}
	}
	fmt.Fprintf(&b, "\n%s\n", r.Summarize())
	_, err := io.WriteString(w, b.String())
	return err
}

func orDash(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// WriteJSON writes the report and its summary as JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		*Report
		Summary Summary `json:"summary"`
	}{r, r.Summarize()})
}

// stateColor is the colour of each state in the HTML page.
var stateColor = map[State]string{
	Pass: "#2e7d32", Info: "#1565c0", Warn: "#f9a825", Fail: "#d32f2f", Unknown: "#757575", "": "#bdbdbd",
}

// diagram geometry, computed for the template.
type line struct {
	X1, Y1, X2, Y2 int
	Path, Node     string
	State          State
	Color, Label   string
	LX, LY         int
}

type box struct {
	X, Y, W, H   int
	Title, Sub   string
	Color, Class string
}

type page struct {
	R       *Report
	Summary Summary
	Width   int
	Height  int
	Boxes   []box
	Lines   []line
	Paths   []pathSection
	Legend  []legendItem
}

type pathSection struct {
	ID, Title string
	State     State
	Color     string
	Findings  []Finding
}

type legendItem struct {
	State State
	Color string
}

// nodePaths are drawn once per node, left to right.
var nodePaths = []string{PathNodeToHub, PathPodToHub, PathHubKubelet, PathEgress}

var shortNames = map[string]string{PathNodeToHub: "node→hub", PathPodToHub: "pod→hub", PathHubKubelet: "hub→kubelet", PathEgress: "egress", PathAPIServer: "clients→API", PathHubProxy: "proxy", PathRBAC: "RBAC"}

func (r *Report) layout() page {
	const nodeW, nodeH, gap, top = 180, 60, 30, 30
	n := len(r.Nodes)
	width := max(900, n*(nodeW+gap)+gap)
	p := page{R: r, Summary: r.Summarize(), Width: width, Height: 420}
	hubW := min(width-420, max(240, n*len(nodePaths)*22))
	hubBox := box{X: width/2 - hubW/2, Y: top + 80, W: hubW, H: 70, Title: "hub (API server)", Sub: r.Server, Class: "hub", Color: stateColor[r.PathState(PathRBAC, "")]}
	admin := box{X: 20, Y: top, W: 170, H: 50, Title: "clients / admin", Sub: "kubectl, tether check", Class: "clients", Color: "#455a64"}
	targets := box{X: width - 200, Y: top, W: 180, H: 50, Title: "proxy targets", Sub: "nodes, pods, services", Class: "targets", Color: "#455a64"}
	p.Boxes = append(p.Boxes, admin, hubBox, targets)
	mk := func(x1, y1, x2, y2 int, path, node string) line {
		st := r.PathState(path, node)
		return line{X1: x1, Y1: y1, X2: x2, Y2: y2, Path: path, Node: node, State: st, Color: stateColor[st],
			Label: shortNames[path], LX: (x1 + x2) / 2, LY: (y1+y2)/2 - 6}
	}
	p.Lines = append(p.Lines,
		mk(admin.X+admin.W, admin.Y+admin.H/2, hubBox.X, hubBox.Y+20, PathAPIServer, ""),
		mk(hubBox.X+hubBox.W, hubBox.Y+20, targets.X, targets.Y+targets.H/2, PathHubProxy, ""))
	y := 330
	totalW := n*nodeW + (n-1)*gap
	x0 := (width - totalW) / 2
	for i, nd := range r.Nodes {
		x := x0 + i*(nodeW+gap)
		status := "NotReady"
		if nd.Ready {
			status = "Ready"
		}
		p.Boxes = append(p.Boxes, box{X: x, Y: y, W: nodeW, H: nodeH, Title: nd.Name, Sub: status, Class: "node", Color: "#37474f"})
		for j, path := range nodePaths {
			nx := x + 20 + j*(nodeW-40)/(len(nodePaths)-1)
			slots := n * len(nodePaths)
			hx := hubBox.X + 20 + (i*len(nodePaths)+j)*(hubBox.W-40)/max(1, slots-1)
			l := mk(nx, y, hx, hubBox.Y+hubBox.H, path, nd.Name)
			l.LX, l.LY = nx, y-8-10*(j%2)
			p.Lines = append(p.Lines, l)
		}
	}
	if n == 0 {
		p.Height = 260
	}
	for _, path := range pathOrder {
		st := r.PathState(path, "")
		sec := pathSection{ID: path, Title: pathTitles[path], State: st, Color: stateColor[st]}
		for _, f := range r.Findings {
			if f.Path == path {
				sec.Findings = append(sec.Findings, f)
			}
		}
		if len(sec.Findings) > 0 {
			p.Paths = append(p.Paths, sec)
		}
	}
	for _, s := range []State{Pass, Info, Warn, Fail, Unknown} {
		p.Legend = append(p.Legend, legendItem{State: s, Color: stateColor[s]})
	}
	return p
}

var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{
	"color": func(s State) string { return stateColor[s] },
	"upper": func(s State) string { return strings.ToUpper(string(s)) },
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tether check — {{.R.Server}}</title>
<style>
body{font-family:system-ui,sans-serif;margin:24px;color:#212121}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
.summary{font-weight:600}
table{border-collapse:collapse;width:100%;font-size:13px}
td,th{border-bottom:1px solid #e0e0e0;padding:4px 8px;text-align:left;vertical-align:top}
.state{color:#fff;font-weight:700;border-radius:3px;padding:1px 6px;white-space:nowrap}
.fix{color:#37474f;font-style:italic}
svg text{font-family:system-ui,sans-serif}
</style></head><body>
<h1>tether check — {{.R.Server}}</h1>
<p class="summary" id="summary" data-exit-code="{{.Summary.ExitCode}}">{{.Summary.String}}</p>
<p>egress: {{if .R.Egress}}{{.R.Egress}}{{else}}unknown{{end}} · {{len .R.Nodes}} node(s) · {{.R.Started.UTC.Format "2006-01-02 15:04:05 UTC"}}</p>
<svg id="diagram" xmlns="http://www.w3.org/2000/svg" width="{{.Width}}" height="{{.Height}}" viewBox="0 0 {{.Width}} {{.Height}}" role="img" aria-label="hub, nodes and communication paths coloured by state">
{{range .Lines}}<line class="path" data-path="{{.Path}}" data-node="{{.Node}}" data-state="{{.State}}" x1="{{.X1}}" y1="{{.Y1}}" x2="{{.X2}}" y2="{{.Y2}}" stroke="{{.Color}}" stroke-width="8" stroke-linecap="round"><title>{{.Label}} {{.Node}}: {{.State}}</title></line>
{{end}}{{range .Boxes}}<g class="box {{.Class}}"><rect x="{{.X}}" y="{{.Y}}" width="{{.W}}" height="{{.H}}" rx="8" fill="#fff" stroke="{{.Color}}" stroke-width="3"/><text x="{{.X}}" y="{{.Y}}" dx="10" dy="22" font-size="14" font-weight="700">{{.Title}}</text><text x="{{.X}}" y="{{.Y}}" dx="10" dy="42" font-size="11" fill="#555">{{.Sub}}</text></g>
{{end}}{{range .Lines}}<text x="{{.LX}}" y="{{.LY}}" font-size="10" text-anchor="middle" fill="#212121">{{.Label}}</text>
{{end}}</svg>
<p>{{range .Legend}}<span class="state" style="background:{{.Color}}">{{upper .State}}</span> {{end}}</p>
{{range .Paths}}<h2 id="{{.ID}}"><span class="state" style="background:{{.Color}}">{{upper .State}}</span> {{.Title}}</h2>
<table><tr><th>state</th><th>check</th><th>target</th><th>risk</th><th>evidence / fix</th></tr>
{{range .Findings}}<tr class="finding" data-path="{{.Path}}" data-state="{{.State}}"><td><span class="state" style="background:{{color .State}}">{{upper .State}}</span></td><td>{{.Check}}</td><td>{{.Target}}</td><td>{{.Risk}}</td><td>{{.Evidence}}{{if and .Fix (ne .State "pass")}}<br><span class="fix">fix: {{.Fix}}</span>{{end}}</td></tr>
{{end}}</table>
{{end}}</body></html>
`))

// WriteHTML writes one self-contained page: an inline SVG diagram of the
// hub, the nodes and each path coloured by state, then every finding.
func (r *Report) WriteHTML(w io.Writer) error {
	return pageTmpl.Execute(w, r.layout())
}

package runtime

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
)

// adoptAll loads the pods recorded on disk and resumes supervising them.
func (r *Runtime) adoptAll(ctx context.Context) error {
	dirs, err := r.stateDirs()
	if err != nil {
		return err
	}
	for _, dir := range dirs {
		data, err := os.ReadFile(filepath.Join(dir, "pod.json"))
		if err != nil {
			r.log.Warn("runtime: skipping pod state", "dir", dir, "err", err)
			continue
		}
		var pod corev1.Pod
		if err := json.Unmarshal(data, &pod); err != nil || pod.UID == "" {
			r.log.Warn("runtime: skipping corrupt pod state", "dir", dir, "err", err)
			continue
		}
		adopted := map[string]*containerState{}
		for _, c := range pod.Spec.Containers {
			data, err := os.ReadFile(filepath.Join(dir, c.Name, "state.json"))
			if err != nil {
				continue
			}
			var st containerState
			if json.Unmarshal(data, &st) == nil {
				adopted[c.Name] = &st
			}
		}
		w := newPodWorker(r, &pod)
		r.mu.Lock()
		if _, dup := r.pods[pod.UID]; dup {
			r.mu.Unlock()
			continue
		}
		r.pods[pod.UID] = w
		r.wg.Add(1)
		r.mu.Unlock()
		go func() {
			defer r.wg.Done()
			w.run(ctx, adopted)
		}()
	}
	return nil
}

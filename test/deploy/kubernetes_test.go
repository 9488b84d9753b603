package deploy

import (
	"context"
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgcanary/pgcanary/config"
	"github.com/pgcanary/pgcanary/flags"
)

// k8sDocs decodes every document of deploy/kubernetes/*.yaml.
func k8sDocs(t *testing.T) []map[string]any {
	t.Helper()
	files, err := filepath.Glob(deployPath(t, "kubernetes", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no deploy/kubernetes/*.yaml")
	}
	var docs []map[string]any
	for _, f := range files {
		for _, d := range yamlDocs(t, f) {
			d["#file"] = filepath.Base(f)
			docs = append(docs, d)
		}
	}
	return docs
}

func find(docs []map[string]any, kind, name string) map[string]any {
	for _, d := range docs {
		if str(d, "kind") == kind && str(d, "metadata", "name") == name {
			return d
		}
	}
	return nil
}

// TestKubernetesManifests checks the basics of every document, then the wiring of the pgcanary
// sidecar in each workload that has one.
func TestKubernetesManifests(t *testing.T) {
	docs := k8sDocs(t)
	seen := map[string]bool{}
	for _, d := range docs {
		id := fmt.Sprintf("%s %s/%s", d["#file"], str(d, "kind"), str(d, "metadata", "name"))
		if str(d, "apiVersion") == "" || str(d, "kind") == "" || str(d, "metadata", "name") == "" {
			t.Errorf("%s: apiVersion, kind and metadata.name are required", id)
		}
		key := str(d, "kind") + "/" + str(d, "metadata", "name")
		if seen[key] {
			t.Errorf("%s: defined twice", id)
		}
		seen[key] = true
	}
	for _, want := range []string{"Deployment/app", "ConfigMap/pgcanary-config", "ConfigMap/pgcanary-flags", "Secret/pgcanary-admin", "Secret/pgcanary-side", "PodMonitor/pgcanary"} {
		if !seen[want] {
			t.Errorf("deploy/kubernetes: no %s", want)
		}
	}

	sidecars := 0
	for _, d := range docs {
		spec := get(d, "spec", "template", "spec")
		if spec == nil {
			continue
		}
		for _, field := range []string{"initContainers", "containers"} {
			for _, c := range list(spec, field) {
				if str(c, "name") == "pgcanary" {
					sidecars++
					t.Run(str(d, "metadata", "name"), func(t *testing.T) {
						checkSidecar(t, docs, d, spec, c.(map[string]any), field == "initContainers")
					})
				}
			}
		}
	}
	if sidecars == 0 {
		t.Fatal("no workload has a pgcanary container")
	}

	// The PodMonitor scrapes a port of the sidecar with the admin token.
	for _, d := range docs {
		if str(d, "kind") != "PodMonitor" {
			continue
		}
		for _, ep := range list(d, "spec", "podMetricsEndpoints") {
			if str(ep, "path") != "/metrics" || str(ep, "port") == "" {
				t.Errorf("PodMonitor %s: endpoint %v: want path /metrics on a named port", str(d, "metadata", "name"), ep)
			}
			secret := str(ep, "authorization", "credentials", "name")
			if str(ep, "authorization", "type") != "Bearer" || find(docs, "Secret", secret) == nil {
				t.Errorf("PodMonitor %s: wants authorization type Bearer with credentials from a Secret defined here (got %q)", str(d, "metadata", "name"), secret)
			}
		}
	}
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

func checkSidecar(t *testing.T, docs []map[string]any, workload map[string]any, spec any, c map[string]any, native bool) {
	if img := str(c, "image"); !strings.HasPrefix(img, "pgcanary:") {
		t.Errorf("image %q: want pgcanary:<tag> (the repository's Dockerfile)", img)
	}
	// Drain on shutdown: a native sidecar is stopped after the app; a plain container needs a preStop.
	if native {
		if str(c, "restartPolicy") != "Always" {
			t.Error("pgcanary is an init container without restartPolicy: Always (not a native sidecar)")
		}
	} else if get(c, "lifecycle", "preStop") == nil {
		t.Error("pgcanary is a plain container without a preStop hook")
	}

	var args []string
	for _, a := range list(c, "args") {
		args = append(args, fmt.Sprint(a))
	}
	i := slices.Index(args, "--config")
	if len(args) == 0 || args[0] != "serve" || i < 0 || i+1 >= len(args) {
		t.Fatalf("args %q: want serve --config FILE", args)
	}
	cfgPath := args[i+1]

	// Volumes: which ConfigMap/Secret keys appear at which path in the container.
	files := mountedFiles(t, spec, c)
	cfgSrc, ok := files[cfgPath]
	if !ok || cfgSrc.kind != "ConfigMap" {
		t.Fatalf("%s is not mounted from a ConfigMap (mounted: %v)", cfgPath, files)
	}
	cm := find(docs, "ConfigMap", cfgSrc.name)
	if cm == nil {
		t.Fatalf("ConfigMap %s is not defined in deploy/kubernetes", cfgSrc.name)
	}
	raw := str(cm, "data", cfgSrc.key)
	if raw == "" {
		t.Fatalf("ConfigMap %s has no key %s", cfgSrc.name, cfgSrc.key)
	}

	// The embedded configuration, decoded by pgcanary itself; ${VAR}s come from the container's env.
	env := map[string]bool{}
	for _, e := range list(c, "env") {
		env[str(e, "name")] = true
	}
	for _, m := range envRef.FindAllStringSubmatch(raw, -1) {
		if !env[m[1]] {
			t.Errorf("the configuration uses ${%s}, which the container's env does not set", m[1])
		}
		t.Setenv(m[1], "example")
	}
	cfg, err := config.Parse(cfgPath, []byte(raw))
	if err != nil {
		t.Fatalf("ConfigMap %s: pgcanary rejects the configuration: %v", cfgSrc.name, err)
	}
	if cfg.Listen != "127.0.0.1:6432" {
		t.Errorf("listen %s: the example's app connects to 127.0.0.1:6432", cfg.Listen)
	}
	_, adminPort, err := net.SplitHostPort(cfg.Admin.Listen)
	if err != nil {
		t.Fatalf("admin.listen %q: %v", cfg.Admin.Listen, err)
	}
	host, _, _ := net.SplitHostPort(cfg.Admin.Listen)
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		// Beyond loopback: the token file must exist in the container, from a Secret.
		src, ok := files[cfg.Admin.TokenFile]
		if cfg.Admin.TokenFile == "" || !ok || src.kind != "Secret" || find(docs, "Secret", src.name) == nil {
			t.Errorf("admin.listen %s is beyond loopback: admin.token_file (%q) must be mounted from a Secret defined here", cfg.Admin.Listen, cfg.Admin.TokenFile)
		}
	}

	// Grace period: above drain_timeout, or pgcanary is killed mid-drain.
	grace := 30 * time.Second // Kubernetes' default
	if g, ok := get(spec, "terminationGracePeriodSeconds").(int); ok {
		grace = time.Duration(g) * time.Second
	}
	if grace <= cfg.DrainTimeout {
		t.Errorf("terminationGracePeriodSeconds %v must exceed drain_timeout %v", grace, cfg.DrainTimeout)
	}

	// Probes on the admin port: readiness /readyz, liveness /healthz.
	ports := map[string]string{}
	for _, p := range list(c, "ports") {
		ports[str(p, "name")] = fmt.Sprint(get(p, "containerPort"))
	}
	probe := func(kind, wantPath string) {
		p := get(c, kind, "httpGet")
		if p == nil {
			t.Errorf("%s: want an httpGet probe on %s", kind, wantPath)
			return
		}
		port := fmt.Sprint(get(p, "port"))
		if named, ok := ports[port]; ok {
			port = named
		}
		if str(p, "path") != wantPath || port != adminPort {
			t.Errorf("%s: GET %s on port %s, want %s on the admin port %s", kind, str(p, "path"), port, wantPath, adminPort)
		}
	}
	probe("readinessProbe", "/readyz")
	probe("livenessProbe", "/healthz")

	// The flag file: next to the configuration (or absolute), from a ConfigMap; it must define each
	// migration's flags.
	if cfg.Flags.File != "" {
		fp := cfg.Flags.File
		if !path.IsAbs(fp) {
			fp = path.Join(path.Dir(cfgPath), fp)
		}
		src, ok := files[fp]
		if !ok || src.kind != "ConfigMap" {
			t.Fatalf("flags.file %s is not mounted from a ConfigMap (mounted: %v)", fp, files)
		}
		fcm := find(docs, "ConfigMap", src.name)
		if fcm == nil || str(fcm, "data", src.key) == "" {
			t.Fatalf("ConfigMap %s with key %s is not defined", src.name, src.key)
		}
		local := filepath.Join(t.TempDir(), "flags.json")
		if err := os.WriteFile(local, []byte(str(fcm, "data", src.key)), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, m := range cfg.Migrations {
			for _, flag := range []string{m.ReadPercentFlag, m.CompareRatioFlag} {
				if _, err := flags.DefaultValue(local, flag); err != nil {
					t.Errorf("ConfigMap %s: migration %s: %v", src.name, m.Name, err)
				}
			}
		}
		// And pgcanary's flag source accepts the whole file.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		fsrc, err := flags.NewFile(ctx, local, nil)
		if err != nil {
			t.Errorf("ConfigMap %s: the flag file does not load: %v", src.name, err)
		} else {
			fsrc.Close()
		}
	}

	// The application reaches the sidecar on 127.0.0.1:<listen port>.
	_, listenPort, _ := net.SplitHostPort(cfg.Listen)
	found := false
	for _, other := range list(spec, "containers") {
		if str(other, "name") == "pgcanary" {
			continue
		}
		for _, e := range list(other, "env") {
			found = found || strings.Contains(str(e, "value"), "127.0.0.1:"+listenPort)
		}
	}
	if !found {
		t.Errorf("no application container is pointed at 127.0.0.1:%s", listenPort)
	}
}

type fileSource struct{ kind, name, key string }

func (f fileSource) String() string { return f.kind + " " + f.name + "/" + f.key }

// mountedFiles maps each file path the container sees through its ConfigMap, Secret and projected
// volume mounts to where it comes from. Only items listed in the volume are resolved: the example
// lists them, so that a renamed key fails here rather than in the pod.
func mountedFiles(t *testing.T, spec any, c map[string]any) map[string]fileSource {
	t.Helper()
	volumes := map[string]any{}
	for _, v := range list(spec, "volumes") {
		volumes[str(v, "name")] = v
	}
	out := map[string]fileSource{}
	for _, m := range list(c, "volumeMounts") {
		if str(m, "subPath") != "" {
			t.Errorf("volumeMount %s uses subPath: it would not be updated on a ConfigMap change", str(m, "name"))
		}
		v := volumes[str(m, "name")]
		if v == nil {
			t.Errorf("volumeMount %s: no such volume", str(m, "name"))
			continue
		}
		dir := str(m, "mountPath")
		var sources []any
		if p := list(v, "projected", "sources"); p != nil {
			sources = p
		} else {
			sources = []any{v}
		}
		for _, s := range sources {
			for kind, field := range map[string][2]string{"ConfigMap": {"configMap", "name"}, "Secret": {"secret", "secretName"}} {
				src := get(s, field[0])
				if src == nil {
					continue
				}
				name := str(src, field[1])
				if name == "" {
					name = str(src, "name") // projected secrets use name
				}
				for _, it := range list(src, "items") {
					out[path.Join(dir, str(it, "path"))] = fileSource{kind, name, str(it, "key")}
				}
			}
		}
	}
	return out
}

// TestGracePeriodParse guards the int decoding the grace check relies on.
func TestGracePeriodParse(t *testing.T) {
	d := yamlDocs(t, deployPath(t, "kubernetes", "deployment.yaml"))
	for _, doc := range d {
		if v := get(doc, "spec", "template", "spec", "terminationGracePeriodSeconds"); v != nil {
			if _, ok := v.(int); !ok {
				t.Errorf("terminationGracePeriodSeconds decoded as %T, want int", v)
			}
			if n, _ := strconv.Atoi(fmt.Sprint(v)); n <= 0 {
				t.Errorf("terminationGracePeriodSeconds %v", v)
			}
		}
	}
}

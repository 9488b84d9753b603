package deploy

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgcanary/pgcanary/test/pgtest"
)

// The image cannot be built here (no Docker engine), so these tests prove what they can without
// one: the Dockerfile is self-consistent, the binary its build stage produces needs only libraries
// the runtime image ships, and that binary serves and passes its own HEALTHCHECK as the image's
// user in a root filesystem holding nothing but itself and those libraries.

// distrolessBase is the runtime image that distrolessLibs describes.
const distrolessBase = "gcr.io/distroless/base-debian12"

// distrolessLibs are the shared libraries of gcr.io/distroless/base-debian12: glibc's (Debian
// package libc6) and OpenSSL 3's (libssl3). Anything else is missing at run time: libgcc_s.so.1
// or libstdc++.so.6, for example, need gcr.io/distroless/cc-debian12.
var distrolessLibs = map[string]bool{
	"libc.so.6": true, "libm.so.6": true, "libpthread.so.0": true, "libdl.so.2": true,
	"librt.so.1": true, "libresolv.so.2": true,
	"ld-linux-x86-64.so.2": true, "ld-linux-aarch64.so.1": true,
	"libssl.so.3": true, "libcrypto.so.3": true,
}

// debian12Glibc is the glibc of Debian 12, in the build stage (bookworm) and in
// distroless/base-debian12 alike: the binary must not need symbol versions newer than it.
const debian12Glibc = "2.36"

// distrolessUsers are the accounts of distroless' /etc/passwd; each has a group of the same id.
var distrolessUsers = map[string]uint32{"root": 0, "nobody": 65534, "nonroot": 65532}

// distrolessPasswd and distrolessGroup are those files as the image has them.
const (
	distrolessPasswd = "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
	distrolessGroup  = "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n"
)

// imageEnv is the environment of processes in the bare root: the image's PATH and nothing from
// the host.
var imageEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// libDirs are searched, in order, for the shared libraries the binary needs.
var libDirs = []string{
	"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
	"/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
	"/lib64", "/lib",
}

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	line int    // its first line, for messages
	cmd  string // the keyword, upper case: FROM, RUN, ...
	args string // the rest
}

// stage is a FROM and the instructions under it.
type stage struct {
	from, name string
	instrs     []instruction
}

// parseDockerfile splits a Dockerfile into stages. Comments, the "# syntax=" directive included,
// and blank lines are dropped, also inside a continuation as BuildKit does; ARGs before the
// first FROM are ignored.
func parseDockerfile(t *testing.T, path string) []stage {
	t.Helper()
	var stages []stage
	var pending strings.Builder
	start := 0
	for i, raw := range strings.Split(string(readFile(t, path)), "\n") {
		line := strings.TrimSpace(raw)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if pending.Len() == 0 {
			start = i + 1
		}
		if head, ok := strings.CutSuffix(line, `\`); ok {
			pending.WriteString(head + " ")
			continue
		}
		pending.WriteString(line)
		text := pending.String()
		pending.Reset()
		kw := strings.Fields(text)[0]
		in := instruction{line: start, cmd: strings.ToUpper(kw), args: strings.TrimSpace(text[len(kw):])}
		if in.cmd == "FROM" {
			// FROM [--platform=...] image [AS name]
			var words []string
			for _, w := range strings.Fields(in.args) {
				if !strings.HasPrefix(w, "--") {
					words = append(words, w)
				}
			}
			if len(words) == 0 {
				t.Fatalf("%s:%d: FROM without an image", path, start)
			}
			st := stage{from: words[0]}
			if len(words) == 3 && strings.EqualFold(words[1], "AS") {
				st.name = words[2]
			}
			stages = append(stages, st)
			continue
		}
		if len(stages) > 0 {
			stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, in)
		}
	}
	if pending.Len() > 0 {
		t.Fatalf("%s: ends inside a continuation line", path)
	}
	return stages
}

// shellCommands splits a shell-form RUN into commands (at ;, && and ||) and each command into
// words, removing quotes as sh would. Variables are not expanded.
func shellCommands(s string) [][]string {
	var cmds [][]string
	var words []string
	var w strings.Builder
	inWord := false
	endWord := func() {
		if inWord {
			words = append(words, w.String())
			w.Reset()
			inWord = false
		}
	}
	endCmd := func() {
		endWord()
		if len(words) > 0 {
			cmds = append(cmds, words)
			words = nil
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				j = len(s) - i - 1
			}
			w.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			for i++; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\$`", s[i+1]) >= 0 {
					i++
				}
				w.WriteByte(s[i])
			}
			inWord = true
		case c == '\\' && i+1 < len(s):
			i++
			w.WriteByte(s[i])
			inWord = true
		case c == ';':
			endCmd()
		case (c == '&' || c == '|') && i+1 < len(s) && s[i+1] == c:
			i++
			endCmd()
		case c == ' ' || c == '\t':
			endWord()
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	endCmd()
	return cmds
}

// execForm decodes a JSON-array (exec form) instruction. Shell form is an error: distroless has
// no /bin/sh to run it.
func execForm(in instruction) ([]string, error) {
	if !strings.HasPrefix(in.args, "[") {
		return nil, fmt.Errorf("line %d: %s is in shell form, which needs /bin/sh (distroless has none): use the JSON-array form", in.line, in.cmd)
	}
	var args []string
	if err := json.Unmarshal([]byte(in.args), &args); err != nil || len(args) == 0 {
		return nil, fmt.Errorf("line %d: %s: not a non-empty JSON array of strings: %s", in.line, in.cmd, in.args)
	}
	return args, nil
}

var assignment = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)

// envAssignments reads an ENV instruction: NAME=VALUE ... or the legacy NAME VALUE.
func envAssignments(args string) []string {
	cmds := shellCommands(args)
	if len(cmds) == 0 {
		return nil
	}
	words := cmds[0]
	if !strings.Contains(words[0], "=") {
		return []string{words[0] + "=" + strings.Join(words[1:], " ")}
	}
	return words
}

// imageSpec is what the tests need from the Dockerfile.
type imageSpec struct {
	buildFrom   string   // the build stage's base image
	buildEnv    []string // NAME=VALUE from the build stage's ENV and the RUN line's own assignments
	goArgs      []string // go's arguments: "build", flags, packages
	buildOut    string   // go build's -o
	runtimeFrom string   // the last stage's base image
	copySrc     string   // COPY --from=<build stage> copySrc binPath
	binPath     string
	user        string
	expose      []string
	healthcheck []string // the HEALTHCHECK's CMD
	entrypoint  []string
	cmd         []string
}

// readImageSpec parses the repository's Dockerfile, failing with every missing piece at once.
func readImageSpec(t *testing.T) imageSpec {
	t.Helper()
	path := filepath.Join(repoRoot(t), "Dockerfile")
	stages := parseDockerfile(t, path)
	if len(stages) == 0 {
		t.Fatalf("%s: no FROM", path)
	}
	var spec imageSpec
	build, problems := readBuildStage(stages, &spec)
	problems = append(problems, readRuntimeStage(stages, build, &spec)...)
	if len(problems) > 0 {
		t.Fatalf("%s:\n  %s", path, strings.Join(problems, "\n  "))
	}
	return spec
}

// readBuildStage finds the first RUN command that is a go build, with the environment it runs
// in, and returns its stage's index (-1 if none).
func readBuildStage(stages []stage, spec *imageSpec) (int, []string) {
	for i, st := range stages {
		var env []string
		for _, in := range st.instrs {
			switch in.cmd {
			case "ENV":
				env = append(env, envAssignments(in.args)...)
			case "RUN":
				cmds := shellCommands(in.args)
				if args, err := execForm(in); err == nil {
					cmds = [][]string{args}
				}
				for _, words := range cmds {
					n := 0 // leading NAME=VALUE words are the command's environment
					for n < len(words) && assignment.MatchString(words[n]) {
						n++
					}
					if rest := words[n:]; len(rest) >= 2 && filepath.Base(rest[0]) == "go" && rest[1] == "build" {
						spec.buildFrom = st.from
						spec.buildEnv = append(env, words[:n]...)
						spec.goArgs = rest[1:]
						spec.buildOut, _ = flagValue(spec.goArgs, "-o")
						switch {
						case i == len(stages)-1:
							return i, []string{"go build runs in the last stage: expected a separate runtime stage after it"}
						case spec.buildOut == "":
							return i, []string{"the go build RUN has no -o: the runtime stage cannot know what to copy"}
						}
						return i, nil
					}
				}
			}
		}
	}
	return -1, []string{"no RUN ... go build ... in any stage"}
}

var healthcheckCmd = regexp.MustCompile(`^(?:--\S+\s+)*(?i:CMD)\s+(.*)$`)

// readRuntimeStage reads the last stage: the COPY of the binary from the build stage, USER,
// EXPOSE, HEALTHCHECK, ENTRYPOINT and CMD. The later of two instructions wins, as in Docker.
func readRuntimeStage(stages []stage, build int, spec *imageSpec) []string {
	rt := stages[len(stages)-1]
	spec.runtimeFrom = rt.from
	buildRef := map[string]bool{strconv.Itoa(build): true} // COPY --from takes a name or an index
	if build >= 0 && stages[build].name != "" {
		buildRef[stages[build].name] = true
	}
	var problems []string
	var hasUser, hasHealth, hasEntry, hasCmd bool
	for _, in := range rt.instrs {
		var err error
		switch in.cmd {
		case "COPY":
			// COPY [--from=stage] [--chown=...] src dst
			var from string
			var paths []string
			for _, w := range strings.Fields(in.args) {
				if v, ok := strings.CutPrefix(w, "--from="); ok {
					from = v
				} else if !strings.HasPrefix(w, "--") {
					paths = append(paths, w)
				}
			}
			if build >= 0 && buildRef[from] && len(paths) == 2 {
				spec.copySrc, spec.binPath = paths[0], paths[1]
				if strings.HasSuffix(spec.binPath, "/") {
					spec.binPath += filepath.Base(spec.copySrc)
				}
			}
		case "USER":
			spec.user, hasUser = in.args, true
		case "EXPOSE":
			spec.expose = append(spec.expose, strings.Fields(in.args)...)
		case "HEALTHCHECK":
			m := healthcheckCmd.FindStringSubmatch(in.args)
			if m == nil {
				err = fmt.Errorf("line %d: HEALTHCHECK %s: want HEALTHCHECK [options] CMD [...]", in.line, in.args)
				break
			}
			spec.healthcheck, err = execForm(instruction{line: in.line, cmd: "HEALTHCHECK CMD", args: m[1]})
			hasHealth = err == nil
		case "ENTRYPOINT":
			spec.entrypoint, err = execForm(in)
			hasEntry = err == nil
		case "CMD":
			spec.cmd, err = execForm(in)
			hasCmd = err == nil
		}
		if err != nil {
			problems = append(problems, err.Error())
		}
	}
	for _, m := range []struct {
		ok   bool
		what string
	}{
		{spec.binPath != "", "COPY --from=<build stage> of the built binary"},
		{hasUser, "USER"}, {len(spec.expose) > 0, "EXPOSE"}, {hasHealth, "HEALTHCHECK"},
		{hasEntry, "ENTRYPOINT"}, {hasCmd, "CMD"},
	} {
		if !m.ok {
			problems = append(problems, "runtime stage (FROM "+rt.from+"): no usable "+m.what)
		}
	}
	return problems
}

// flagValue returns the value of a flag given as "name value" or "name=value".
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return args[i+1], true
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// setFlag returns a copy of args with the flag's value replaced, or the flag appended.
func setFlag(args []string, name, value string) []string {
	out := slices.Clone(args)
	for i, a := range out {
		if a == name && i+1 < len(out) {
			out[i+1] = value
			return out
		}
		if strings.HasPrefix(a, name+"=") {
			out[i] = name + "=" + value
			return out
		}
	}
	return append(out, name, value)
}

// imageUser resolves USER user[:group] against distroless' accounts.
func imageUser(user string) (uid, gid uint32, err error) {
	u, g, hasGroup := strings.Cut(user, ":")
	if uid, err = accountID(u); err != nil {
		return 0, 0, err
	}
	if !hasGroup {
		return uid, uid, nil // each distroless account's primary group has its id
	}
	gid, err = accountID(g)
	return uid, gid, err
}

func accountID(s string) (uint32, error) {
	if id, ok := distrolessUsers[s]; ok {
		return id, nil
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%q is neither a number nor an account of distroless' /etc/passwd", s)
	}
	return uint32(n), nil
}

func port(t *testing.T, what, hostport string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatalf("%s %q: %v", what, hostport, err)
	}
	return p
}

// TestImageDockerfile checks what the Dockerfile must agree with itself on.
func TestImageDockerfile(t *testing.T) {
	spec := readImageSpec(t)

	// The library allowlist of TestImage describes this image only.
	if rest, ok := strings.CutPrefix(spec.runtimeFrom, distrolessBase); !ok || (rest != "" && rest[0] != ':' && rest[0] != '@') {
		t.Errorf("runtime FROM %s: the tests know %s's libraries, update distrolessLibs for another image", spec.runtimeFrom, distrolessBase)
	}

	// A build stage on a newer Debian than the runtime links against a newer glibc than the
	// runtime has.
	codenames := map[string]string{"buster": "10", "bullseye": "11", "bookworm": "12", "trixie": "13"}
	var buildDebian string
	for name, v := range codenames {
		if strings.Contains(spec.buildFrom, name) {
			buildDebian = v
		}
	}
	rtDebian := ""
	if m := regexp.MustCompile(`debian(\d+)`).FindStringSubmatch(spec.runtimeFrom); m != nil {
		rtDebian = m[1]
	}
	if buildDebian == "" || buildDebian != rtDebian {
		t.Errorf("build stage FROM %s (Debian %q) and runtime FROM %s (Debian %q): name the same Debian release in both, or the binary may need a glibc the runtime lacks",
			spec.buildFrom, buildDebian, spec.runtimeFrom, rtDebian)
	}

	// golang images set GOTOOLCHAIN=local: the image's Go must be at least go.mod's.
	if m := regexp.MustCompile(`golang:(\d+)\.(\d+)`).FindStringSubmatch(spec.buildFrom); m != nil {
		mod := regexp.MustCompile(`(?m)^go (\d+)\.(\d+)`).FindStringSubmatch(string(readFile(t, filepath.Join(repoRoot(t), "go.mod"))))
		atoi := func(s string) int { n, _ := strconv.Atoi(s); return n }
		if mod != nil && (atoi(m[1]) < atoi(mod[1]) || atoi(m[1]) == atoi(mod[1]) && atoi(m[2]) < atoi(mod[2])) {
			t.Errorf("build stage FROM %s is older than go.mod's go %s.%s", spec.buildFrom, mod[1], mod[2])
		}
	}

	// The runtime copies what the build produced to where ENTRYPOINT and HEALTHCHECK run it.
	if spec.copySrc != spec.buildOut {
		t.Errorf("runtime stage copies %s from the build stage, which builds %s", spec.copySrc, spec.buildOut)
	}
	if spec.entrypoint[0] != spec.binPath || spec.healthcheck[0] != spec.binPath {
		t.Errorf("ENTRYPOINT runs %s and HEALTHCHECK runs %s; the binary is copied to %s", spec.entrypoint[0], spec.healthcheck[0], spec.binPath)
	}

	uid, _, err := imageUser(spec.user)
	if err != nil {
		t.Errorf("USER %s: %v", spec.user, err)
	} else if uid == 0 {
		t.Errorf("USER %s is root: the image must run as non-root", spec.user)
	}

	// EXPOSE documents exactly the ports the default CMD listens on.
	listen, okL := flagValue(spec.cmd, "--listen")
	admin, okA := flagValue(spec.cmd, "--admin")
	if !okL || !okA {
		t.Fatalf("CMD %q: want --listen and --admin", spec.cmd)
	}
	want := []string{port(t, "CMD --listen", listen), port(t, "CMD --admin", admin)}
	var exposed []string
	for _, e := range spec.expose {
		exposed = append(exposed, strings.TrimSuffix(e, "/tcp"))
	}
	slices.Sort(want)
	slices.Sort(exposed)
	if !slices.Equal(want, exposed) {
		t.Errorf("EXPOSE %v, but CMD listens on ports %v (--listen %s, --admin %s)", spec.expose, want, listen, admin)
	}

	// The healthcheck runs inside the container: it must reach the admin port over loopback.
	hc, ok := flagValue(spec.healthcheck, "--admin")
	if !ok {
		t.Fatalf("HEALTHCHECK %q: no --admin", spec.healthcheck)
	}
	if hp, ap := port(t, "HEALTHCHECK --admin", hc), port(t, "CMD --admin", admin); hp != ap {
		t.Errorf("HEALTHCHECK probes port %s (--admin %s), but CMD's admin listens on %s (--admin %s)", hp, hc, ap, admin)
	}
	hcHost, _, _ := net.SplitHostPort(hc)
	adminHost, _, _ := net.SplitHostPort(admin)
	if ip := net.ParseIP(hcHost); ip == nil || !ip.IsLoopback() {
		t.Errorf("HEALTHCHECK --admin %s: want a loopback IP (the bare image has no resolver configuration to rely on)", hc)
	}
	if ip := net.ParseIP(adminHost); adminHost != "" && (ip == nil || !ip.IsLoopback() && !ip.IsUnspecified()) {
		t.Errorf("CMD --admin %s is not reachable over loopback, where HEALTHCHECK probes", admin)
	}
}

// TestImage builds the binary as the Dockerfile does, checks its libraries against the runtime
// image and, as root, runs it in a bare root filesystem as the image's user.
func TestImage(t *testing.T) {
	spec := readImageSpec(t)
	bin := buildAsDockerfile(t, spec)
	deps := readDeps(t, bin)

	t.Run("libraries", func(t *testing.T) {
		t.Logf("needs %v, interpreter %s; with their own needs: %v; newest glibc symbol version: %s",
			deps.needed, deps.interp, deps.all, deps.maxGlibc)
		if deps.interp == "" && len(deps.needed) == 0 {
			t.Log("statically linked: needs no library")
			return
		}
		var missing []string
		for _, lib := range deps.all {
			if !distrolessLibs[lib] {
				missing = append(missing, lib)
			}
		}
		if len(missing) > 0 {
			t.Errorf("the binary needs %v, which %s does not ship (it has glibc and OpenSSL 3 only; libgcc_s/libstdc++ need gcr.io/distroless/cc-debian12)",
				missing, distrolessBase)
		}
		if v := deps.maxGlibc; v != "" && versionLess(debian12Glibc, v) {
			t.Errorf("the binary needs GLIBC_%s, newer than Debian 12's glibc %s: build it on bookworm", v, debian12Glibc)
		}
	})

	t.Run("bare root", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root to chroot(2) and to switch to the image's user; run the test as root to run the binary in a bare root")
		}
		runInBareRoot(t, spec, bin, deps)
	})
}

// buildAsDockerfile runs the build stage's go build from the repository root, with the RUN line's
// environment and arguments, into a temporary directory.
func buildAsDockerfile(t *testing.T, spec imageSpec) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(spec.buildOut))
	args := setFlag(spec.goArgs, "-o", out)
	cmd := exec.Command("go", args...)
	cmd.Dir = repoRoot(t)
	// The golang image sets no GOFLAGS: the host's must not change the build.
	cmd.Env = append(append(os.Environ(), "GOFLAGS="), spec.buildEnv...)
	began := time.Now()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s go %q: %v\n%s", strings.Join(spec.buildEnv, " "), args, err, b)
	}
	t.Logf("built: %s go %q in %v", strings.Join(spec.buildEnv, " "), args, time.Since(began).Round(time.Millisecond))
	return out
}

// dynDeps are a binary's dynamic dependencies.
type dynDeps struct {
	needed   []string          // DT_NEEDED of the binary
	interp   string            // PT_INTERP: the dynamic loader's absolute path
	all      []string          // sonames of needed, interp and, transitively, their own needs
	files    map[string]string // path in the root filesystem -> host file to copy there
	maxGlibc string            // the newest GLIBC_x.y symbol version the binary needs
}

// readDeps reads the binary's needs with debug/elf and finds them, and theirs, on this host.
func readDeps(t *testing.T, bin string) dynDeps {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := dynDeps{files: map[string]string{}}
	if d.needed, err = f.ImportedLibraries(); err != nil {
		t.Fatalf("%s: %v", bin, err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				t.Fatalf("%s: PT_INTERP: %v", bin, err)
			}
			d.interp = string(bytes.TrimRight(b, "\x00"))
		}
	}
	if needs, err := f.DynamicVersionNeeds(); err == nil {
		for _, n := range needs {
			for _, dep := range n.Needs {
				if v, ok := strings.CutPrefix(dep.Dep, "GLIBC_"); ok && v != "" && v[0] >= '0' && v[0] <= '9' && versionLess(d.maxGlibc, v) {
					d.maxGlibc = v
				}
			}
		}
	}

	all := map[string]bool{} // sonames needed, directly or not
	if d.interp != "" {
		host, err := filepath.EvalSymlinks(d.interp)
		if err != nil {
			t.Fatalf("interpreter %s: %v", d.interp, err)
		}
		d.files[d.interp] = host // the kernel loads it from exactly this path
		all[filepath.Base(d.interp)] = true
	}
	// Libraries' own needs too (libssl.so.3 needs libcrypto.so.3; libc.so.6 the loader under its
	// soname), each copied where the loader looks for it.
	copied := map[string]bool{}
	for queue := slices.Clone(d.needed); len(queue) > 0; queue = queue[1:] {
		name := queue[0]
		if copied[name] {
			continue
		}
		copied[name], all[name] = true, true
		host, dir := findLib(name)
		if host == "" {
			t.Errorf("%s: needed library %s not found in %v", bin, name, libDirs)
			continue
		}
		d.files[filepath.Join(dir, name)] = host
		lib, err := elf.Open(host)
		if err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		more, err := lib.ImportedLibraries()
		lib.Close()
		if err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		queue = append(queue, more...)
	}
	d.all = slices.Collect(maps.Keys(all))
	slices.Sort(d.all)
	return d
}

// findLib resolves a soname as the loader would in a Debian root: the first directory of libDirs
// holding it, and the real file behind its symlinks.
func findLib(name string) (host, dir string) {
	for _, dir := range libDirs {
		if real, err := filepath.EvalSymlinks(filepath.Join(dir, name)); err == nil {
			return real, dir
		}
	}
	return "", ""
}

// versionLess compares dotted numeric versions; "" is less than any version.
func versionLess(a, b string) bool {
	if a == "" {
		return b != ""
	}
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := range max(len(pa), len(pb)) {
		var x, y int
		if i < len(pa) {
			x, _ = strconv.Atoi(pa[i])
		}
		if i < len(pb) {
			y, _ = strconv.Atoi(pb[i])
		}
		if x != y {
			return x < y
		}
	}
	return false
}

// makeBareRoot builds a root filesystem holding only the binary at binPath, the libraries in
// files, distroless' /etc/passwd and /etc/group, and a /tmp: if the binary runs there, it needs
// nothing else from the image. Everything but /tmp is root's and read-only to others, as in the
// image.
func makeBareRoot(t *testing.T, bin, binPath string, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	copies := map[string]string{binPath: bin}
	for dst, src := range files {
		copies[dst] = src
	}
	for dst, src := range copies {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		writeRootFile(t, root, dst, b, 0o755)
	}
	writeRootFile(t, root, "/etc/passwd", []byte(distrolessPasswd), 0o644)
	writeRootFile(t, root, "/etc/group", []byte(distrolessGroup), 0o644)
	if err := os.Mkdir(filepath.Join(root, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Directories 0755 whatever the umask (t.TempDir's own is 0700), /tmp world-writable and sticky.
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		return os.Chmod(path, 0o755)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(root, "tmp"), 0o777|fs.ModeSticky); err != nil {
		t.Fatal(err)
	}
	return root
}

func writeRootFile(t *testing.T, root, path string, b []byte, mode os.FileMode) {
	t.Helper()
	dst := filepath.Join(root, path)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dst, mode); err != nil { // WriteFile's mode is subject to the umask
		t.Fatal(err)
	}
}

// inRoot is a command run in root as uid:gid, with the image's environment, from /.
func inRoot(root string, uid, gid uint32, args ...string) *exec.Cmd {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = "/" // chdir after the chroot: the working directory must not stay outside it
	cmd.Env = imageEnv
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Chroot: root,
		// Empty Groups drops root's supplementary groups.
		Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}},
	}
	return cmd
}

// proc is a started process; done is closed once it has exited, with err its Wait error.
type proc struct {
	cmd  *exec.Cmd
	out  *pgtest.Output
	done chan struct{}
	err  error
}

// start starts cmd and makes sure it is killed when the test ends.
func start(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{cmd: cmd, out: &pgtest.Output{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", cmd.Args, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// freePort returns a loopback port nobody listens on.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// serveArgs is the image's ENTRYPOINT and CMD listening on free loopback ports, plus what serve
// needs to start here: an upstream if CMD names none, given the way a container is (the
// environment; nobody listens there: /healthz does not need it), and a short drain. It returns
// the admin address, the environment to add and the drain timeout too.
func serveArgs(t *testing.T, spec imageSpec, bin string) (args []string, admin string, env []string, drain time.Duration) {
	t.Helper()
	var sub []string // CMD's subcommand words, for its --help
	for _, a := range spec.cmd {
		if strings.HasPrefix(a, "-") {
			break
		}
		sub = append(sub, a)
	}
	helpArgs := append(append(slices.Clone(spec.entrypoint[1:]), sub...), "--help")
	help, err := exec.Command(bin, helpArgs...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", bin, strings.Join(helpArgs, " "), err, help)
	}
	hasFlag := func(name string) bool { return regexp.MustCompile(`--` + name + `\s`).Match(help) }

	admin = "127.0.0.1:" + freePort(t)
	cmd := setFlag(spec.cmd, "--listen", "127.0.0.1:"+freePort(t))
	cmd = setFlag(cmd, "--admin", admin)
	if _, ok := flagValue(cmd, "--upstream"); !ok && hasFlag("upstream") {
		env = []string{"PGCANARY_UPSTREAM=127.0.0.1:" + freePort(t), "PGCANARY_UPSTREAM_SSLMODE=disable"}
		t.Logf("CMD %q names no upstream: the container's environment gives it: %s", spec.cmd, env)
	}
	drain = 30 * time.Second
	if hasFlag("drain-timeout") {
		drain = 2 * time.Second
		cmd = setFlag(cmd, "--drain-timeout", drain.String())
	}
	return append(slices.Clone(spec.entrypoint), cmd...), admin, env, drain
}

// runInBareRoot runs the binary as the image's user in a root holding only it and its libraries:
// --help, then serve with the image's CMD, probed by the image's HEALTHCHECK, then SIGTERM.
func runInBareRoot(t *testing.T, spec imageSpec, bin string, d dynDeps) {
	uid, gid, err := imageUser(spec.user)
	if err != nil {
		t.Fatalf("USER %s: %v", spec.user, err)
	}
	root := makeBareRoot(t, bin, spec.binPath, d.files)

	help, err := inRoot(root, uid, gid, spec.binPath, "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(help), "serve") {
		t.Fatalf("%s --help as %d:%d in the bare root: %v, want exit 0 and a mention of serve:\n%s", spec.binPath, uid, gid, err, help)
	}

	// Free ports are picked before serve binds them, so another process may take one first: that
	// start is retried with new ports.
	var srv *proc
	var drain time.Duration
	for attempt := 1; ; attempt++ {
		args, admin, env, d := serveArgs(t, spec, bin)
		serveCmd := inRoot(root, uid, gid, args...)
		serveCmd.Env = append(slices.Clone(serveCmd.Env), env...)
		srv, drain = start(t, serveCmd), d
		t.Logf("serving: %s", strings.Join(args, " "))
		hc := setFlag(spec.healthcheck, "--admin", net.JoinHostPort(mustHost(t, spec.healthcheck), port(t, "admin", admin)))
		err := awaitHealthy(root, uid, gid, hc, srv)
		if err == nil {
			break
		}
		if attempt < 3 && strings.Contains(srv.out.String(), "address already in use") {
			t.Logf("a port was taken before serve bound it; again with new ports: %v", err)
			continue
		}
		t.Fatal(err)
	}

	// The process really is the image's user, confined to the bare root.
	status := string(readFile(t, fmt.Sprintf("/proc/%d/status", srv.cmd.Process.Pid)))
	if m := regexp.MustCompile(`(?m)^Uid:\s+(\d+)`).FindStringSubmatch(status); m == nil || m[1] != strconv.Itoa(int(uid)) {
		t.Errorf("serve runs as uid %v, want %d", m, uid)
	}
	wantRoot, _ := filepath.EvalSymlinks(root)
	if got, err := os.Readlink(fmt.Sprintf("/proc/%d/root", srv.cmd.Process.Pid)); err != nil || got != wantRoot {
		t.Errorf("serve's root is %q (%v), want %s", got, err, wantRoot)
	}

	if err := srv.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Sessions get drain; the admin server's own shutdown and exit get a few seconds more.
	select {
	case <-srv.done:
		if srv.err != nil {
			t.Fatalf("serve exited with %v after SIGTERM, want 0:\n%s", srv.err, srv.out)
		}
	case <-time.After(drain + 5*time.Second):
		t.Fatalf("serve still running %v after SIGTERM (drain timeout %v):\n%s", drain+5*time.Second, drain, srv.out)
	}
}

// awaitHealthy runs the HEALTHCHECK command hc in root until it exits 0, for up to 10 s, or
// until serve exits.
func awaitHealthy(root string, uid, gid uint32, hc []string, srv *proc) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := inRoot(root, uid, gid, hc...).CombinedOutput()
		if err == nil {
			return nil
		}
		last := fmt.Sprintf("%v: %s", err, out)
		if time.Now().After(deadline) {
			return fmt.Errorf("HEALTHCHECK %q has not passed within 10s; last attempt: %s\nserve output:\n%s", hc, last, srv.out)
		}
		select {
		case <-srv.done:
			return fmt.Errorf("serve exited (%v) before the healthcheck passed; healthcheck: %s\nserve output:\n%s", srv.err, last, srv.out)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// mustHost is the host of the HEALTHCHECK's --admin.
func mustHost(t *testing.T, hc []string) string {
	t.Helper()
	v, ok := flagValue(hc, "--admin")
	if !ok {
		t.Fatalf("HEALTHCHECK %q: no --admin", hc)
	}
	host, _, err := net.SplitHostPort(v)
	if err != nil {
		t.Fatalf("HEALTHCHECK --admin %q: %v", v, err)
	}
	return host
}
